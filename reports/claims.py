"""The seeds' published claims, tested on one sweep's runs: drop at matched gain across seeds, predictors, the dial.

Matched gain. g = FRACTION × the smallest best gain that every seed of every anchor method (SFT, GRPO,
on-policy SFT) reached, so each of their seeds has a checkpoint at gain ≥ g. For one (arm, seed) the drop at
matched gain is the lowest non-target drop among its trained checkpoints (all learning rates, every
evaluation step) with target gain ≥ g, as in DESIGN.md's matched-gain comparison.

Across seeds. An arm's estimate is the mean over its seeds with a 95% interval of half-width
hypot(t₀.₉₇₅,ₙ₋₁·sd/√n, mean per-checkpoint bootstrap half-width): seed-to-seed spread plus the evaluation
prompts' sampling noise, which the seeds share. "A forgets more than B" holds when A's interval lies wholly
above B's, or when a hierarchical bootstrap (seeds resampled with replacement, each checkpoint's drop drawn
from its bootstrap error) gives P(mean_A ≤ mean_B) < 0.05; the table says which.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from reports.frame import Frames, trained_checkpoints

ANCHORS = ("sft", "grpo", "onpolicy_sft")
FRACTION = 0.5
R2_PREDICTS = 0.5       # "predicts forgetting": explains at least half of the drop's variance across runs
COMPARABLE_GAIN = 5.0   # points: "comparable gain" means a best gain at most this far below SFT's
ALPHA = 0.05


@dataclass
class Estimate:
    """An arm's drop (or gain) at matched gain over its seeds: mean and 95% interval; NaN when no seed reached g."""

    mean: float
    lo: float
    hi: float
    values: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)   # per-seed bootstrap standard errors
    missing: int = 0                                      # seeds that never reached g

    @property
    def ok(self) -> bool:
        return bool(self.values) and self.missing == 0

    def text(self) -> str:
        if not self.values:
            return "never reached g"
        tail = f", {self.missing} seed(s) never reached g" if self.missing else ""
        return f"{self.mean:.1f} [{self.lo:.1f}, {self.hi:.1f}] (n={len(self.values)}{tail})"


def matched_level(ckpts: pd.DataFrame, anchors=ANCHORS, fraction: float = FRACTION) -> float:
    """g: `fraction` of the smallest per-seed best gain among the anchor methods present (NaN if none)."""
    ck = trained_checkpoints(ckpts)
    ck = ck[ck["method"].isin(anchors)]
    if ck.empty:
        return float("nan")
    return fraction * float(ck.groupby(["method", "seed"])["target_gain"].max().min())


def at_matched_gain(ckpts: pd.DataFrame, g: float, by: str = "arm") -> pd.DataFrame:
    """Per (`by`, seed): the lowest-drop trained checkpoint with gain ≥ g (drop NaN when none reaches g)."""
    rows = []
    for (key, seed), sub in trained_checkpoints(ckpts).groupby([by, "seed"], sort=False):
        hit = sub[sub["target_gain"] >= g]
        if hit.empty:
            rows.append({by: key, "seed": seed, "nontarget_drop": np.nan, "best_gain": sub["target_gain"].max()})
            continue
        best = hit.sort_values(["nontarget_drop", "step"], kind="stable").iloc[0]
        rows.append({by: key, "seed": seed, "nontarget_drop": best["nontarget_drop"],
                     "nontarget_drop_lo": best.get("nontarget_drop_lo"), "nontarget_drop_hi": best.get("nontarget_drop_hi"),
                     "target_gain": best["target_gain"], "lr": best["lr"], "step": best["step"],
                     "best_gain": sub["target_gain"].max()})
    return pd.DataFrame(rows, columns=None if rows else [by, "seed", "nontarget_drop", "best_gain"])


def estimate(values: list[float], halves: list[float], missing: int = 0) -> Estimate:
    """Mean over seeds and the module docstring's 95% interval (halves: per-seed bootstrap half-widths)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return Estimate(np.nan, np.nan, np.nan, missing=missing)
    h = np.nan_to_num(np.asarray(halves, dtype=float))
    spread = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    half = float(np.hypot(spread, h.mean()))
    return Estimate(float(v.mean()), float(v.mean() - half), float(v.mean() + half), v.tolist(),
                    (h / 1.96).tolist(), missing)


def arm_drop(per_seed: pd.DataFrame, arm: str, by: str = "arm") -> Estimate:
    """An arm's drop-at-matched-gain estimate from `at_matched_gain`'s rows."""
    sub = per_seed[per_seed[by] == arm]
    hit = sub[sub["nontarget_drop"].notna()]
    halves = ((hit.get("nontarget_drop_hi", np.nan) - hit.get("nontarget_drop_lo", np.nan)) / 2).tolist() \
        if len(hit) else []
    return estimate(hit["nontarget_drop"].tolist(), halves, missing=len(sub) - len(hit))


def p_greater(a: Estimate, b: Estimate, iters: int = 20000, seed: int = 0) -> float:
    """Hierarchical bootstrap P(mean_a ≤ mean_b): seeds resampled, each seed's drop drawn from its error."""
    rng = np.random.default_rng(seed)

    def means(e: Estimate) -> np.ndarray:
        v, s = np.asarray(e.values), np.asarray(e.errors)
        idx = rng.integers(0, len(v), size=(iters, len(v)))
        return (v[idx] + rng.standard_normal(idx.shape) * s[idx]).mean(axis=1)
    return float(np.mean(means(a) <= means(b)))


def forgets_more(a: Estimate, b: Estimate) -> tuple[bool, str]:
    """(a's drop significantly above b's, how it was decided)."""
    if not (a.values and b.values):
        return False, "not comparable (an arm never reached g)"
    if a.lo > b.hi:
        return True, "95% intervals do not overlap"
    p = p_greater(a, b)
    return p < ALPHA, f"intervals overlap; bootstrap p = {p:.3f}"


def best_gain(ckpts: pd.DataFrame, arm: str) -> Estimate:
    """Mean over seeds of each seed's best checkpoint gain, with the across-seed 95% interval."""
    ck = trained_checkpoints(ckpts)
    per_seed = ck[ck["arm"] == arm].groupby("seed")["target_gain"].max()
    return estimate(per_seed.tolist(), [0.0] * len(per_seed))


@dataclass
class Claim:
    source: str
    statement: str
    result: str
    verdict: str


def _verdict(ok: bool | None) -> str:
    return "not tested" if ok is None else ("reproduced" if ok else "not reproduced")


def claims(fr: Frames, fits: dict[str, dict[str, float]]) -> tuple[float, list[Claim]]:
    """(g, one Claim per seed statement) from the sweep's method arms; `fits` are the predictor fits."""
    ck = fr.ckpts
    g = matched_level(ck)
    if np.isfinite(g) and g <= 0:  # some anchor seed never gained: no positive gain that all of them reach
        g = float("nan")
    per_seed = at_matched_gain(ck, g)
    have = set(ck["arm"])
    drop = {m: arm_drop(per_seed, m) for m in have}
    gain = {m: best_gain(ck, m) for m in have}
    out: list[Claim] = []

    def need(*ms: str) -> bool:
        return all(m in have for m in ms) and np.isfinite(g)

    def line(*ms: str) -> str:
        return "; ".join(f"{m} {drop[m].text()}" for m in ms)

    def vs(a: str, b: str) -> tuple[bool, str]:
        ok, how = forgets_more(drop[a], drop[b])
        return ok, f"{a} > {b}: {'yes' if ok else 'no'} ({how})"

    rbd = "Retaining by Doing (arXiv 2510.18874)"
    if need("sft", "grpo"):
        more, how = vs("sft", "grpo")
        comparable = gain["grpo"].mean >= gain["sft"].mean - COMPARABLE_GAIN
        res = (f"best gain grpo {gain['grpo'].text()} vs sft {gain['sft'].text()}; drop at gain ≥ {g:.1f}: "
               f"{line('sft', 'grpo')}; {how}")
        out.append(Claim(rbd, "RL (GRPO) reaches comparable or higher target gain with far less non-target drop "
                         "than SFT on off-policy labels", res, _verdict(more and comparable)))
    else:
        why = ("no positive matched gain: some seed of an anchor method never gained" if not np.isfinite(g)
               else "sft or grpo not in this sweep")
        out.append(Claim(rbd, "GRPO vs SFT", why, _verdict(None)))
    if need("sft", "onpolicy_sft"):
        more, how = vs("sft", "onpolicy_sft")
        out.append(Claim(rbd, "per-epoch on-policy SFT substantially reduces forgetting (vs SFT)",
                         f"drop at gain ≥ {g:.1f}: {line('sft', 'onpolicy_sft')}; {how}", _verdict(more)))
    if need("self_sft", "onpolicy_sft"):
        more, how = vs("self_sft", "onpolicy_sft")
        out.append(Claim(rbd, "data sampled only from the initial policy (Self-SFT) is not enough: it forgets more "
                         "than per-epoch on-policy SFT", f"drop at gain ≥ {g:.1f}: {line('self_sft', 'onpolicy_sft')}; "
                         f"{how}", _verdict(more)))
    tms = "TMS (arXiv 2602.03073)"
    if need("tms", "sft", "iterative_sft", "grpo"):
        a, how_a = vs("sft", "tms")
        b, how_b = vs("iterative_sft", "tms")
        below_grpo, how_c = vs("grpo", "tms")
        ok = a and b and not below_grpo and drop["tms"].ok
        out.append(Claim(tms, "TMS forgets less than SFT and iterative SFT and lies between SFT and GRPO",
                         f"drop at gain ≥ {g:.1f}: {line('tms', 'sft', 'iterative_sft', 'grpo')}; {how_a}; {how_b}; "
                         f"{how_c}", _verdict(ok)))
    pld = fits.get("pld_drift", {})
    if pld:
        predicts = bool(pld["r2"] >= R2_PREDICTS)
        sign = ("" if pld["r"] > 0 else "; the sign is opposite to TMS's rising PLD: here the runs that forget "
                "are those that fit the expert labels, so their label NLL falls")
        out.append(Claim(tms, "PLD drift predicts forgetting",
                         f"final PLD drift vs drop over {pld['n']:.0f} runs: r = {pld['r']:+.2f}, R² = {pld['r2']:.2f} "
                         f"(criterion R² ≥ {R2_PREDICTS}){sign}",
                         "partly reproduced" if predicts and pld["r"] < 0 else _verdict(predicts)))
    if need("trapo", "sft"):
        more, how = vs("sft", "trapo")
        comparable = gain["trapo"].mean >= gain["sft"].mean - COMPARABLE_GAIN
        out.append(Claim("TRAPO (arXiv 2512.17636)", "TRAPO keeps general ability better than SFT at similar or "
                         "better target gain", f"best gain trapo {gain['trapo'].text()} vs sft {gain['sft'].text()}; "
                         f"drop at gain ≥ {g:.1f}: {line('sft', 'trapo')}; {how}", _verdict(more and comparable)))
    if need("idft", "sft"):
        more, how = vs("sft", "idft")
        res = f"drop at gain ≥ {g:.1f}: {line('sft', 'idft')}; {how}"
        if not drop["idft"].values:
            res = f"IDFT's best gain {gain['idft'].text()} never reaches g = {g:.1f}, so no matched-gain comparison"
        out.append(Claim("Towards On-Policy SFT (IDFT, arXiv 2602.12222)", "IDFT forgets less than SFT", res,
                         _verdict(more)))
    kl = fits.get("kl_to_base", {})
    if kl:
        out.append(Claim("RL's Razor", "KL to the base on the target task predicts forgetting (R² 0.71 reported; "
                         "RbD r ≈ 0.52)", f"final KL vs drop over {kl['n']:.0f} runs: r = {kl['r']:+.2f}, "
                         f"R² = {kl['r2']:.2f} (criterion R² ≥ {R2_PREDICTS})", _verdict(bool(kl["r2"] >= R2_PREDICTS))))
    return g, out


def claims_frame(fr: Frames, fits: dict[str, dict[str, float]]) -> tuple[float, pd.DataFrame]:
    """`claims` as a table (source, claim, toy result, verdict)."""
    g, rows = claims(fr, fits)
    return g, pd.DataFrame([{"source": c.source, "claim": c.statement, "toy result": c.result, "verdict": c.verdict}
                            for c in rows], columns=["source", "claim", "toy result", "verdict"])


def dial(fr: Frames, g: float, method: str = "sft") -> pd.DataFrame:
    """The off-policy dial: per teacher style, the base's NLL of its labels and `method`'s drop at gain ≥ g."""
    runs = fr.all_runs if fr.all_runs is not None else fr.runs
    ck = fr.all_ckpts if fr.all_ckpts is not None else fr.ckpts
    ck = ck[ck["method"] == method]
    if ck.empty or not np.isfinite(g):
        return pd.DataFrame()
    per_seed = at_matched_gain(ck, g, by="teacher_style")
    rows = []
    for style, sub in runs[runs["method"] == method].groupby("teacher_style"):
        e = arm_drop(per_seed, style, by="teacher_style")
        rows.append({"teacher_style": style, "label_nll_seq": sub.get("base/label_nll_seq", pd.Series(np.nan)).mean(),
                     "label_nll_token": sub.get("base/label_nll_token", pd.Series(np.nan)).mean(),
                     "seeds": len(per_seed[per_seed["teacher_style"] == style]),
                     "drop_at_g": e.mean, "drop_lo": e.lo, "drop_hi": e.hi,
                     "best_gain": per_seed.loc[per_seed["teacher_style"] == style, "best_gain"].mean()})
    return pd.DataFrame(rows).sort_values("label_nll_seq", kind="stable").reset_index(drop=True)


def dial_verdict(table: pd.DataFrame) -> str:
    """Does the drop at matched gain grow with the labels' NLL under the base (Spearman ρ over styles)?"""
    ok = table.dropna(subset=["drop_at_g", "label_nll_seq"])
    if len(ok) < 2:
        return "not tested (fewer than two teacher styles reached g)"
    rho = stats.spearmanr(ok["label_nll_seq"], ok["drop_at_g"]).statistic
    grows = bool(np.all(np.diff(ok["drop_at_g"].to_numpy()) > 0))
    return (f"{'yes' if grows else 'no'}: drop at matched gain {'rises' if grows else 'does not rise'} monotonically "
            f"with the labels' NLL (Spearman ρ = {rho:+.2f} over {len(ok)} styles)")
