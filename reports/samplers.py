"""Which generation backend drew each run's data (tag `sampler`), and the report's refusal to pool backends.

vLLM samples a bf16 copy of the fp32 policy (harness.vllm_sampler), transformers the policy itself: arms sampled by
different backends differ in their data, not only in their method, so a report compares them only when told.
"""
from __future__ import annotations

import pandas as pd

from harness.errors import HarnessError


def run_samplers(wide: pd.DataFrame) -> pd.Series:
    """Each run's sampler: its `sampler` tag, else its `train.sampler` parameter (runs logged before the tag)."""
    def col(name: str) -> pd.Series:
        return wide[name] if name in wide.columns else pd.Series([None] * len(wide), index=wide.index, dtype=object)
    return col("tags.sampler").fillna(col("params.train.sampler"))


def check_samplers(runs: pd.DataFrame, experiment: str, allow_mixed: bool = False) -> str | None:
    """None when every run with a known sampler used the same one; else a one-line note if `allow_mixed`, and a
    HarnessError naming the backends and their arms if not."""
    if "sampler" not in runs.columns:
        return None
    known = runs.dropna(subset=["sampler"])
    if known["sampler"].nunique() <= 1:
        return None
    arms = known.groupby("sampler")["arm"].agg(lambda a: ", ".join(sorted(set(map(str, a)))))
    listed = "; ".join(f"{backend}: {names}" for backend, names in arms.items())
    if not allow_mixed:
        raise HarnessError(f"experiment {experiment!r} pools runs sampled by different backends ({listed}); vLLM "
                           f"samples a bf16 copy of the policy, so their data differ beyond the method: report them "
                           f"apart, or pass --mixed-samplers to compare them anyway")
    return f"Runs sampled by different backends are compared ({listed}); vLLM samples a bf16 copy of the policy."
