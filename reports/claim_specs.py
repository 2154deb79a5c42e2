"""The published claims as data: which arms each compares and which tests must all pass (reports/claims.py runs
them). A new claim is one entry here, not a branch on method names."""
from __future__ import annotations

from dataclasses import dataclass

from harness import metric_names as N

# "contradicted": significant in the opposite direction; "inconclusive": neither (with the power the test had);
# "not tested": the result says why (an arm missing, a seed that never reached g, arms identical at the read point)
VERDICTS = ("reproduced", "contradicted", "inconclusive", "not tested")
R2_PREDICTS = 0.5       # "predicts forgetting": explains at least half of the drop's variance across runs
COMPARABLE_GAIN = 5.0   # points: "comparable gain" = non-inferior to SFT's by at most this margin


@dataclass(frozen=True)
class ClaimSpec:
    """One published claim as data: the arms it compares and the tests that must all pass."""

    source: str
    statement: str
    more: tuple[tuple[str, str], ...] = ()              # (A, B): A's drop at g significantly above B's
    not_more: tuple[tuple[str, str], ...] = ()          # (A, B): A's drop at g not significantly above B's
    gain_noninferior: tuple[tuple[str, str], ...] = ()  # (A, B): B's gain not COMPARABLE_GAIN below A's
    predictor: str | None = None                         # final-checkpoint column predicting the drop (r > 0)
    subject: str | None = None                           # the method a sweep variant of gets its own row
    effect: float = 5.0   # points of drop the claim means at the least: the power an "inconclusive" verdict reports

    def for_variant(self, variant: str) -> "ClaimSpec":
        """The same claim with the subject's variant arm (e.g. tms@teacher-lr-3e-4) in its place."""
        swap = lambda pairs: tuple(tuple(variant if a == self.subject else a for a in p) for p in pairs)  # noqa: E731
        return ClaimSpec(self.source, f"{self.statement} [variant {variant}]", swap(self.more), swap(self.not_more),
                         swap(self.gain_noninferior), None, None, self.effect)

    @property
    def arms(self) -> list[str]:
        pairs = self.more + self.not_more + self.gain_noninferior
        return list(dict.fromkeys(a for p in pairs for a in p))


RBD, TMS = "Retaining by Doing (arXiv 2510.18874)", "TMS (arXiv 2602.03073)"
CLAIMS = (
    ClaimSpec(RBD, "RL (GRPO) reaches comparable or higher target gain with far less non-target drop than SFT on "
              "off-policy labels", more=(("sft", "grpo"),), gain_noninferior=(("sft", "grpo"),), subject="grpo"),
    ClaimSpec(RBD, "per-epoch on-policy SFT substantially reduces forgetting (vs SFT)", more=(("sft", "onpolicy_sft"),),
              subject="onpolicy_sft"),
    ClaimSpec(RBD, "data sampled only from the initial policy (Self-SFT) is not enough: it forgets more than "
              "per-epoch on-policy SFT", more=(("self_sft", "onpolicy_sft"),), subject="self_sft"),
    ClaimSpec(TMS, "TMS forgets less than SFT and iterative SFT and lies between SFT and GRPO",
              more=(("sft", "tms"), ("iterative_sft", "tms")), not_more=(("grpo", "tms"),), subject="tms"),
    ClaimSpec(TMS, "the rise of PLD from its running minimum tracks forgetting", predictor=N.PLD_RISE),
    ClaimSpec("TRAPO (arXiv 2512.17636)", "TRAPO keeps general ability better than SFT at similar or better target "
              "gain", more=(("sft", "trapo"),), gain_noninferior=(("sft", "trapo"),), subject="trapo"),
    ClaimSpec("Towards On-Policy SFT (IDFT, arXiv 2602.12222)", "IDFT forgets less than SFT", more=(("sft", "idft"),),
              subject="idft"),
    ClaimSpec("RL's Razor (arXiv 2509.04259)", "KL to the base on the target task predicts forgetting (R² 0.71 "
              "reported; RbD r ≈ 0.52)", predictor=N.KL_TO_BASE),
)
