"""Verdicts of the published claims from the read-point estimates (reports/claims.py computes those).

Four labels (claim_specs.VERDICTS): "reproduced" (every test significant in the claimed direction),
"contradicted" (some test significant in the opposite direction), "inconclusive" (neither; the result gives
the power each test that did not reject had for the claim's effect), "not tested" (the result says why).
Drop and gain tests are `reports.stats.directional` (seeds + the prompt error the seeds share); a predictor is
tested at the level its runs replicate (methods), never with runs as independent points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from harness import metric_names as N
from reports import stats as S
from reports.claim_specs import COMPARABLE_GAIN, R2_PREDICTS, ClaimSpec

if TYPE_CHECKING:
    from reports.claims import Estimate

VAL_GAIN = N.VAL_TARGET_GAIN


@dataclass
class Claim:
    """One row of claims.csv: the claim, what the tests found, and its verdict (claim_specs.VERDICTS)."""

    source: str
    statement: str
    result: str
    verdict: str
    read_point: str = ""    # both gains (eval, validation) of each arm at the read point


def predictor_test(fin: pd.DataFrame, key: str) -> tuple[str, str]:
    """(result sentence, verdict) of "`key` predicts the final drop": pooled fit, p-value at the method level."""
    if key not in fin:
        return f"{key}: not logged", "not tested"
    fit = S.clustered_correlation(fin[key], fin[N.NONTARGET_DROP], fin["method"])
    if not np.isfinite(fit["r"]):
        return f"{key}: fewer than 3 runs with a value", "not tested"
    within = []
    for m, sub in fin.groupby("method", sort=True):
        r = S.correlation(sub[key], sub[N.NONTARGET_DROP])["r"]
        if np.isfinite(r):
            within.append(f"{m} {r:+.2f}")
    res = (f"final {key} vs drop over {fit['n']:.0f} runs: r = {fit['r']:+.2f}, R² = {fit['r2']:.2f}; runs of one "
           f"method are not independent, so the test is on the {fit['clusters']:.0f} methods' means: r = "
           f"{fit['r_clusters']:+.2f}, one-sided p = {fit['p_pos']:.2g} (criterion p < {S.ALPHA} and pooled "
           f"R² ≥ {R2_PREDICTS}); within-method r: " + (", ".join(within) or "–"))
    if not np.isfinite(fit["p_pos"]):
        return res + f"; fewer than {S.MIN_CLUSTERS} methods: no valid p-value", "not tested"
    if fit["p_pos"] < S.ALPHA and fit["r2"] >= R2_PREDICTS:
        return res, "reproduced"
    if fit["p_neg"] < S.ALPHA:
        return res + "; the relation has the opposite sign", "contradicted"
    return res, "inconclusive"


def _gains_at_read(spec: ClaimSpec, per_seed: pd.DataFrame | None) -> str:
    if per_seed is None or not len(per_seed) or "crossed" not in per_seed:
        return ""
    out = []
    for a in spec.arms:
        hit = per_seed[(per_seed["arm"] == a) & per_seed["crossed"].astype(bool)]
        if len(hit):
            out.append(f"{a}: eval {hit[N.TARGET_GAIN].mean():.1f}, validation {hit[VAL_GAIN].mean():.1f}, "
                       f"step {hit['step'].mean():.1f}")
    return "; ".join(out)


def evaluate_claim(spec: ClaimSpec, g: float, drop: dict[str, Estimate], gain: dict[str, Estimate],
                   fin: pd.DataFrame, why_no_g: str = "", identical: frozenset = frozenset(),
                   per_seed: pd.DataFrame | None = None) -> Claim:
    """Run a ClaimSpec's tests and give one of the four verdicts (claim_specs.VERDICTS)."""
    if spec.predictor is not None:
        res, verdict = predictor_test(fin, spec.predictor)
        return Claim(spec.source, spec.statement, res, verdict)
    absent = [a for a in spec.arms if a not in drop]
    if absent:
        return Claim(spec.source, spec.statement, f"{', '.join(absent)} not in this sweep", "not tested")
    if not np.isfinite(g):
        why = f" ({why_no_g})" if why_no_g else ""
        return Claim(spec.source, spec.statement, "no positive matched gain: some seed of an anchor method never "
                     f"gained on validation{why}", "not tested")
    shown = "; ".join(f"{a} {drop[a].text()}" for a in spec.arms)
    head = f"drop at g = {g:.1f}: {shown}; "
    reads = _gains_at_read(spec, per_seed)
    lacking = [drop[a].why_not(a) for a in spec.arms if not drop[a].ok]
    lacking += [gain[a].why_not(a) for p in spec.gain_noninferior for a in p if not gain[a].ok and drop[a].ok]
    if lacking:
        return Claim(spec.source, spec.statement, head + "; ".join(lacking), "not tested", reads)
    same = [p for p in spec.more + spec.not_more + spec.gain_noninferior if frozenset(p) in identical]
    if same:
        return Claim(spec.source, spec.statement, head + "; ".join(
            f"{a} and {b} are identical at the read point (same checkpoint metrics at every evaluation up to it)"
            for a, b in dict.fromkeys(same)) + "; not tested: identical at the read point", "not tested", reads)
    parts, signs, need = [], [], []   # need: (test, power) of the tests that did not show the claim
    for a, b in spec.gain_noninferior:
        t = S.directional(gain[b].values, gain[a].values, gain[b].halves, gain[a].halves, -COMPARABLE_GAIN,
                          COMPARABLE_GAIN, what=f"final gain {b} − {a} at the chosen lr (margin −{COMPARABLE_GAIN:g})")
        said = _say(t, "comparable", "lower by more than the margin", "not shown comparable")
        parts.append(f"gain {b} {gain[b].text()} vs {a} {gain[a].text()}: {said} ({t.text})")
        signs.append(t.sign)
        need += [(f"comparable gain {b} vs {a}", t.power)] if t.sign == 0 else []
    # "A forgets more than B" (spec.more) is shown by a significant A > B; "A does not" (spec.not_more) is
    # contradicted by one, and otherwise reads as shown (its sign flipped), without a power figure.
    for a, b, claimed in [(a, b, True) for a, b in spec.more] + [(a, b, False) for a, b in spec.not_more]:
        t = S.directional(drop[a].values, drop[b].values, drop[a].halves, drop[b].halves, 0.0, spec.effect,
                          what=f"drop {a} − {b}")
        said = _say(t, "yes", "no, the opposite", "not shown") if claimed else \
            _say(t, "yes (the claim needs no)", "no", "not shown")
        parts.append(f"{a} > {b}: {said} ({t.text})")
        signs.append(t.sign if claimed or t.sign is None else -1 if t.sign == 1 else 1)
        need += [(f"{a} > {b}", t.power)] if claimed and t.sign == 0 else []
    body = head + "; ".join(parts)
    if any(s is None for s in signs):
        return Claim(spec.source, spec.statement, body, "not tested", reads)
    if any(s == -1 for s in signs):
        return Claim(spec.source, spec.statement, body, "contradicted", reads)
    if all(s == 1 for s in signs):
        return Claim(spec.source, spec.statement, body, "reproduced", reads)
    power = ", ".join(f"{name} {p:.0%}" for name, p in need)
    return Claim(spec.source, spec.statement, body + f"; power of the tests that did not reject, for a true difference "
                 f"of {spec.effect:g} points in the drop (for comparable gain: at equal true gains): {power}",
                 "inconclusive", reads)


def _say(t: S.Test, shown: str, opposite: str, neither: str) -> str:
    return {1: shown, -1: opposite, 0: neither}.get(t.sign, "not tested")
