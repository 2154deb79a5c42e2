"""Figures 5-8 (per-task drop, compute-normalised front, drop at matched gain, off-policy dial) and the report's tables."""
from __future__ import annotations

import numpy as np
import pandas as pd

from harness import metric_names as N
from reports.figures import COLUMN, PAGE, at_lr, gain_and_drop_axes, legend_below, ordered, plt
from reports.frame import Frames, best_lr, final_checkpoints, trained_checkpoints, validated_front
from reports.pareto import gain_grid


def task_columns(runs: pd.DataFrame) -> list[str]:
    """The `drop/<task>` columns present, sorted by task name."""
    return sorted(c for c in runs.columns if c.startswith(N.DROP) and runs[c].notna().any())


def per_task_drop(fr: Frames, styles: dict[str, dict]) -> plt.Figure:
    """Grouped bars: each method's final drop per non-target task at its best learning rate (o: worst lr)."""
    runs, tasks = fr.runs, task_columns(fr.runs)
    best = best_lr(final_checkpoints(fr.ckpts))
    methods = ordered(styles, runs)
    fig, ax = plt.subplots(figsize=(PAGE, 2.4))
    x = np.arange(len(tasks))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        sub = runs[runs["method"] == m]
        at_best = at_lr(sub, best.get(m, np.nan))[tasks].mean() if tasks else pd.Series(dtype=float)
        worst = sub.groupby("lr", dropna=False)[tasks].mean().max() if tasks else pd.Series(dtype=float)
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, at_best.to_numpy(), width * 0.92, color=styles[m]["color"], label=styles[m]["label"])
        ax.scatter(pos, worst.to_numpy(), s=9, facecolors="none", edgecolors=styles[m]["color"], linewidths=0.7,
                   zorder=3)
    ax.axhline(0, color="0.3", lw=0.6)
    ax.set_xticks(x, [t.split("/", 1)[1] for t in tasks])
    ax.set_xlabel("non-target task")
    ax.set_ylabel("drop (accuracy points)")
    ax.grid(axis="x", visible=False)
    extra = [plt.Line2D([], [], ls="none", marker="o", mfc="none", mec="0.3", ms=3.5, label="worst learning rate")]
    fig.tight_layout()
    legend_below(fig, styles, methods, extra, ncol=min(9, len(methods) + 1))
    return fig


def compute_front(fr: Frames, styles: dict[str, dict]) -> plt.Figure:
    """Gain and drop against training compute (FLOPs): every run faint, the best-lr run bold."""
    ck = trained_checkpoints(fr.ckpts).dropna(subset=[N.COST_FLOPS])
    ck = ck[ck[N.COST_FLOPS] > 0]
    best = best_lr(final_checkpoints(fr.ckpts))
    fig, axes = plt.subplots(1, 2, figsize=(PAGE, 2.5), sharex=True)
    methods = ordered(styles, ck)
    for m in methods:
        st, sub = styles[m], ck[ck["method"] == m]
        chosen = set(at_lr(sub, best.get(m, np.nan))["run_id"])
        for rid, run in sub.groupby("run_id", sort=False):
            run = run.sort_values("step")
            bold = rid in chosen
            for ax, key in zip(axes, (N.TARGET_GAIN, N.NONTARGET_DROP)):
                ax.plot(run[N.COST_FLOPS], run[key], color=st["color"], marker=st["marker"],
                        lw=1.2 if bold else 0.5, ms=3 if bold else 1.8, alpha=1.0 if bold else 0.3,
                        zorder=3 if bold else 1)
    gain_and_drop_axes(axes, "training + generation compute (FLOPs, log scale)")
    fig.tight_layout(w_pad=2.0)
    extra = [plt.Line2D([], [], color="0.3", lw=1.2, label="best lr"),
             plt.Line2D([], [], color="0.3", lw=0.5, alpha=0.4, label="other lr")]
    legend_below(fig, styles, methods, extra, ncol=min(10, len(methods) + 2) // 2 + 1)
    return fig


def read_curves(ck: pd.DataFrame, grid: np.ndarray, by: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of `key`'s eval drop at each matched gain g (the claims' procedure) and of its validation
    gain at the same read point (the eval gain there is g by construction); NaN where a seed never reaches g."""
    from reports.claims import VAL_GAIN, arm_drop, drop_at_gain
    drop, val = [], []
    for g in grid:
        per_seed = drop_at_gain(ck, float(g), by=by)
        e = arm_drop(per_seed, key, by=by)
        ok = bool(e.values) and not e.missing
        drop.append(e.mean if ok else np.nan)
        val.append(arm_drop(per_seed, key, by=by, key=VAL_GAIN).mean if ok else np.nan)
    return np.asarray(drop, dtype=float), np.asarray(val, dtype=float)


def drop_curve(ck: pd.DataFrame, grid: np.ndarray, by: str, key: str) -> np.ndarray:
    """Mean over seeds of `key`'s eval drop at each matched gain g (`read_curves`' first array)."""
    return read_curves(ck, grid, by, key)[0]


VAL_SUFFIX = " val gain"


def matched_gain_table(fr: Frames, styles: dict[str, dict]) -> pd.DataFrame:
    """Rows: gain thresholds g; columns: methods (the mean over seeds of the drop at g by the claims' procedure:
    learning rate chosen at the validation crossing, eval drop read at the run's own eval crossing of g), then
    per method the mean validation gain at that read point (`<method> val gain`)."""
    ck = fr.ckpts
    trained = trained_checkpoints(ck)
    top = trained.groupby(["method", "seed"])[N.VAL_TARGET_GAIN].max().max() if len(trained) else np.nan
    grid = gain_grid(float(top), max_ticks=8)
    table = pd.DataFrame({"gain_at_least": grid})
    methods = ordered(styles, trained)
    curves = {m: read_curves(ck[ck["method"] == m], grid, "arm", m) for m in methods}
    for m in methods:
        table[m] = curves[m][0]
    for m in methods:
        table[m + VAL_SUFFIX] = curves[m][1]
    return table


def matched_gain(fr: Frames, styles: dict[str, dict]) -> plt.Figure:
    """Line plot of `matched_gain_table`: where a line stops, the method never reached that gain."""
    table = matched_gain_table(fr, styles)
    fig, ax = plt.subplots(figsize=(COLUMN, 3.0))
    methods = [c for c in table.columns if c != "gain_at_least" and not c.endswith(VAL_SUFFIX)]
    grid = table["gain_at_least"].to_numpy()
    step = float(grid[1] - grid[0]) if len(grid) > 1 else 1.0
    n = max(1, len(methods))
    for i, m in enumerate(methods):
        # methods often tie (e.g. all at zero drop): dodge along x so every method's marker stays visible
        dodge = (i - (n - 1) / 2) * step * 0.09
        ax.plot(grid + dodge, table[m], color=styles[m]["color"], marker=styles[m]["marker"], ms=3.2, lw=0.9)
    ax.set_xlabel("matched gain g (eval accuracy points; lr chosen on validation)")
    ax.set_xticks(grid)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(axis="x", visible=False)
    ax.set_ylabel("drop at matched gain\n(accuracy points, mean over seeds)")
    ax.axhline(0, color="0.6", lw=0.6, zorder=0)
    never = [styles[m]["label"] for m in methods if table[m].isna().all()]
    if never and len(grid):
        ax.text(0.98, 0.5, f"never reached g = {grid[0]:g}:\n" + ", ".join(never), transform=ax.transAxes,
                ha="right", va="center", fontsize=7, color="0.3")
    legend_below(fig, styles, methods, ncol=3, y=0.0)
    return fig


FRONT_COLUMNS = ["method", "lr", "seed", "step", N.TARGET_GAIN, N.TARGET_GAIN_LO, N.TARGET_GAIN_HI, N.NONTARGET_DROP,
                 N.NONTARGET_DROP_LO, N.NONTARGET_DROP_HI, N.PLD_DRIFT, N.KL_TO_BASE, N.COST_FLOPS, "run_id"]


def front_table(fr: Frames, styles: dict[str, dict]) -> pd.DataFrame:
    """Every method's Pareto-front checkpoints (over all its trained checkpoints), by method then gain.

    Checkpoints tied at the same (gain, drop) appear once: the cheapest (fewest FLOPs, then earliest step).
    """
    ck = trained_checkpoints(fr.ckpts)
    parts = []
    for m in ordered(styles, ck):
        sub = ck[ck["method"] == m]
        front = validated_front(sub)
        front = front.sort_values([N.COST_FLOPS, "step"], kind="stable", na_position="last")
        parts.append(front.drop_duplicates([N.TARGET_GAIN, N.NONTARGET_DROP]).sort_values(N.TARGET_GAIN,
                                                                                         kind="stable"))
    if not parts:
        return pd.DataFrame(columns=FRONT_COLUMNS)
    out = pd.concat(parts)
    return out[[c for c in FRONT_COLUMNS if c in out.columns]].reset_index(drop=True)


def _num(v: float, digits: int = 2) -> str:
    return "–" if v is None or pd.isna(v) else f"{v:.{digits}f}"


def markdown_table(df: pd.DataFrame, digits: int = 1) -> str:
    """A plain Markdown table of a frame (numbers to `digits` decimals, NaN as –)."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(_num(v, digits) if isinstance(v, (float, np.floating)) else str(v) for v in row) + " |"
            for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def teacher_styles(fr: Frames, method: str = "sft") -> list[str]:
    """The teacher styles `method` was run on in this sweep: none in a world without styles (a real world)."""
    runs = fr.all_runs if fr.all_runs is not None else fr.runs
    if "teacher_style" not in runs.columns:
        return []
    return sorted(runs.loc[runs["method"] == method, "teacher_style"].dropna().unique().tolist())


def dial_figure(fr: Frames, styles: dict[str, dict]) -> plt.Figure:
    """The off-policy dial: SFT's drop at matched gain against the base's NLL of each teacher style's labels."""
    from reports.claims import matched_level
    from reports.dial import dial, shared_rate
    g = matched_level(fr.ckpts)
    # a world without teacher styles (a real one) has no dial: never ask for one there
    table = dial(fr, g) if teacher_styles(fr) else pd.DataFrame()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(PAGE, 2.6))
    colour = styles.get("sft", {"color": "#0072B2"})["color"]
    ok = table.dropna(subset=["drop_at_g"]) if len(table) else table
    if len(ok):
        yerr = np.vstack([(ok["drop_at_g"] - ok["drop_lo"]).clip(lower=0), (ok["drop_hi"] - ok["drop_at_g"]).clip(lower=0)])
        ax.errorbar(ok["label_nll_seq"], ok["drop_at_g"], yerr=yerr, fmt="o-", color=colour, ms=4, lw=0.9)
        for _, r in ok.iterrows():
            ax.annotate(f"{r['teacher_style']} (n={r['seeds_at_g']})", (r["label_nll_seq"], r["drop_at_g"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("base NLL of the SFT labels (nats/sequence, log)")
    ax.set_ylabel(f"SFT drop at matched gain g = {g:.0f}\n(accuracy points)" if np.isfinite(g) else "SFT drop at matched gain")
    ax.axhline(0, color="0.6", lw=0.6, zorder=0)
    ck = fr.all_ckpts if fr.all_ckpts is not None else fr.ckpts
    ck = ck[ck["method"] == "sft"]
    runs = fr.all_runs if fr.all_runs is not None else fr.runs
    rate = shared_rate(runs[runs["method"] == "sft"]) if teacher_styles(fr) else None
    if rate is not None:  # the styles trained one stated rate: both panels read them there
        ck = ck[np.isclose(ck["lr"], rate)]
    trained = trained_checkpoints(ck)
    grid = gain_grid(float(trained[N.VAL_TARGET_GAIN].max()) if len(trained) else np.nan, max_ticks=8)
    greys = plt.get_cmap("viridis")
    order = table["teacher_style"].tolist() if len(table) else []
    for i, style in enumerate(order):
        bx.plot(grid, drop_curve(ck, grid, "teacher_style", style), marker="o", ms=3,
                lw=0.9, color=greys(i / max(1, len(order) - 1) * 0.85), label=style)
    if np.isfinite(g):
        bx.axvline(g, color="0.5", ls=":", lw=0.8)
    bx.set_xlabel("matched gain g (accuracy points, crossed on validation)")
    bx.set_ylabel("SFT drop at matched gain\n(accuracy points, mean over seeds)")
    bx.axhline(0, color="0.6", lw=0.6, zorder=0)
    if order:
        bx.legend(title="teacher style", loc="center right")
    fig.tight_layout(w_pad=2.0)
    return fig
