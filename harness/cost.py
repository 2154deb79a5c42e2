"""Compute cost of a run: one counter that every pass the method runs reports its tokens into, by kind.

DESIGN.md: 6N FLOPs per trained token (forward + backward), 2N per token of any
forward-only pass. A token is a position the model runs on: prompt and
response tokens alike, padding excluded. Kinds:

| kind    | pass                                                             | FLOPs/token |
|---------|------------------------------------------------------------------|-------------|
| train   | the engine's updates on the evaluated trajectory                 | 6N |
| teacher | updates outside it (TMS's teacher run)                           | 6N |
| prefill | every prompt token of every sample, before its first new token   | 2N |
| gen     | every generated token                                            | 2N |
| ref     | frozen-base log-probs (GRPO's KL reference, SFT's kl_beta)       | 2N |
| old     | π_old log-probs (GRPO with num_iterations > 1)                   | 2N |
| hinted  | Hinted Decoding's second (hinted) stream: its prefill and steps  | 2N |

Generated tokens are counted once each, as if every sequence stopped at its
own end token: padding rows of a batch that runs on are not counted. Forward
passes that only compute logged diagnostics are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from harness import metric_names as N

TRAINED = ("train", "teacher")
KINDS = (*TRAINED, "prefill", "gen", "ref", "old", "hinted")


def flops(n_params: int, train_tokens: int, forward_tokens: int) -> float:
    """Estimated FLOPs: 6N per trained token (forward + backward) plus 2N per forward-only token."""
    return 6.0 * n_params * train_tokens + 2.0 * n_params * forward_tokens


@dataclass
class Cost:
    """Token counts per kind of pass; `metrics(N)` turns them into the run's `cost/` FLOPs."""

    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def add(self, kind: str, tokens: int) -> None:
        """Count `tokens` positions of a pass of `kind`."""
        if kind not in self.tokens:
            raise ValueError(f"unknown cost kind {kind!r}; valid: {', '.join(KINDS)}")
        self.tokens[kind] += int(tokens)

    def forward(self, kind: str, examples) -> None:
        """Count one forward pass of `kind` over whole examples (prompt + response)."""
        self.add(kind, sum(len(e.prompt_ids) + len(e.response_ids) for e in examples))

    @property
    def trained_tokens(self) -> int:
        """Tokens of every training pass (the run's own and auxiliary ones)."""
        return sum(self.tokens[k] for k in TRAINED)

    def metrics(self, n_params: int) -> dict[str, float]:
        """`cost/flops_<kind>` for every kind and their total `cost/flops`."""
        out = {f"{N.COST_FLOPS}_{k}": flops(n_params, v, 0) if k in TRAINED else flops(n_params, 0, v)
               for k, v in self.tokens.items()}
        out[N.COST_FLOPS] = sum(out.values())
        return out
