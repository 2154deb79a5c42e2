"""Figures 1-4 of the report (headline front, front against learning rate, PLD drift, forgetting predictors).

Every figure function takes the tidy frames and the method styles and returns a matplotlib Figure sized
for a paper: one column (3.5 in) or two (7 in) wide, 8-pt text. Nothing here knows a method by name:
colours, markers and the legend order come from `method_styles`, which follows the registry order.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness import metric_names as N  # noqa: E402
from reports.frame import Frames, best_lr, final_checkpoints, trained_checkpoints, validated_front  # noqa: E402

COLUMN, PAGE = 3.5, 7.0  # inches: one and two columns
# Colour-blind-safe (Okabe-Ito first, then tab10's extras), markers as a second channel.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C564B",
           "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "h", "<", ">", "p", "*"]
RC = {"font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
      "legend.fontsize": 7, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
      "lines.linewidth": 1.2, "lines.markersize": 4, "errorbar.capsize": 1.5, "savefig.bbox": "tight",
      "savefig.pad_inches": 0.03, "pdf.fonttype": 42, "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.5}

GAIN = "target gain (accuracy points)"
DROP = "non-target drop (accuracy points)"


def method_styles(registry_order: list[str], present: list[str]) -> dict[str, dict]:
    """{method: {color, marker, label, rank}}: registry methods keep their slot whether present or not."""
    order = list(registry_order) + sorted(set(present) - set(registry_order))
    return {m: {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)], "label": m, "rank": i}
            for i, m in enumerate(order)}


def ordered(styles: dict[str, dict], df: pd.DataFrame) -> list[str]:
    """Methods present in `df`, in registry order."""
    have = set(df["method"].dropna())
    return [m for m in sorted(styles, key=lambda m: styles[m]["rank"]) if m in have]


def at_lr(df: pd.DataFrame, lr: float) -> pd.DataFrame:
    """Rows of `df` at learning rate `lr` (NaN matches NaN)."""
    return df[df["lr"].isna()] if pd.isna(lr) else df[np.isclose(df["lr"].astype(float), lr, rtol=1e-6, atol=0)]


def fmt_lr(lr: float) -> str:
    return "lr ?" if pd.isna(lr) else f"lr {lr:.0e}".replace("e-0", "e-")


def _err(df: pd.DataFrame, m: str) -> np.ndarray | None:
    """Asymmetric error bars (2, n) from `<m>_lo/_hi`; None when no interval was logged."""
    if f"{m}_lo" not in df or df[f"{m}_lo"].isna().all():
        return None
    lo = (df[m] - df[f"{m}_lo"]).clip(lower=0).fillna(0)
    hi = (df[f"{m}_hi"] - df[m]).clip(lower=0).fillna(0)
    return np.vstack([lo.to_numpy(), hi.to_numpy()])


def legend_below(fig, styles: dict[str, dict], methods: list[str], extra: list | None = None, ncol: int = 4,
                 y: float = -0.02, lines: bool = True) -> None:
    """One figure-level legend of the methods (registry names), under the axes."""
    handles = [plt.Line2D([], [], color=styles[m]["color"], marker=styles[m]["marker"], lw=1.2 if lines else 0,
                          label=styles[m]["label"]) for m in methods] + list(extra or [])
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, y), ncol=ncol, handlelength=1.8,
               columnspacing=1.0)


def gain_and_drop_axes(axes, xlabel: str) -> None:
    """Label a (gain, drop) pair of panels that share a log-scale x axis; zero line on both."""
    for ax, label in zip(axes, (GAIN, DROP)):
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.axhline(0, color="0.6", lw=0.6, zorder=0)


def _gain_drop(ax, ck: pd.DataFrame, styles: dict[str, dict], methods: list[str]) -> pd.DataFrame:
    """Draw trajectories, checkpoints, final CIs and fronts of `methods` on `ax`; returns all front points."""
    fronts = []
    ax.axhline(0, color="0.6", lw=0.6, zorder=0)
    ax.axvline(0, color="0.6", lw=0.6, zorder=0)
    for m in methods:
        st, sub = styles[m], ck[ck["method"] == m]
        for _, run in sub.groupby("run_id", sort=False):
            run = run.sort_values("step")
            ax.plot(run[N.TARGET_GAIN], run[N.NONTARGET_DROP], color=st["color"], lw=0.5, alpha=0.3, zorder=1)
        trained = trained_checkpoints(sub)
        ax.scatter(trained[N.TARGET_GAIN], trained[N.NONTARGET_DROP], s=7, color=st["color"], marker=st["marker"],
                   alpha=0.35, linewidths=0, zorder=2)
        fin = final_checkpoints(sub)
        ax.errorbar(fin[N.TARGET_GAIN], fin[N.NONTARGET_DROP], xerr=_err(fin, N.TARGET_GAIN),
                    yerr=_err(fin, N.NONTARGET_DROP), fmt=st["marker"], color=st["color"], ms=4, mec="white",
                    mew=0.4, elinewidth=0.6, zorder=4)
        front = validated_front(trained)
        ax.step(front[N.TARGET_GAIN], front[N.NONTARGET_DROP], where="pre", color=st["color"], lw=1.1, alpha=0.85,
                zorder=3)
        fronts.append(front)
    ax.plot([0], [0], marker="*", color="black", ms=9, ls="none", zorder=5)
    ax.set_xlabel(GAIN)
    return pd.concat(fronts) if fronts else ck.iloc[:0]


def zoom_window(ck: pd.DataFrame, fronts: pd.DataFrame) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) of the high-gain corner: the top 15% of the gain range and the drops of the front and
    final points there that are below 30% of the drop range (all of them if none is), so methods that all
    reach the top gain can be told apart."""
    g, d = ck[N.TARGET_GAIN], ck[N.NONTARGET_DROP]
    gmax, gspan = float(g.max()), float(max(g.max(), 0) - min(g.min(), 0)) or 1.0
    dspan = float(max(d.max(), 0) - min(d.min(), 0)) or 1.0
    x0 = gmax - 0.15 * gspan
    near = pd.concat([fronts, final_checkpoints(ck)])
    near = near[near[N.TARGET_GAIN] >= x0]
    low = near[near[N.NONTARGET_DROP] <= 0.3 * dspan]
    near = low if len(low) else near  # every top-gain point forgets a lot: show them all
    hi = near[N.NONTARGET_DROP_HI].fillna(near[N.NONTARGET_DROP]) if N.NONTARGET_DROP_HI in near else near[
        N.NONTARGET_DROP]
    y1 = max(float(hi.max()) if len(near) else 0.3 * dspan, 0.02 * dspan, 0.5) * 1.1
    y0 = min(float(near[N.NONTARGET_DROP].min()) if len(near) else 0.0, 0.0) - 0.06 * y1
    xhi = near[N.TARGET_GAIN_HI].max() if N.TARGET_GAIN_HI in near and len(near) else np.nan
    x1 = max(gmax, float(xhi) if pd.notna(xhi) else gmax) + 0.02 * gspan
    return x0, x1, y0, y1


def headline(fr: Frames, styles: dict[str, dict]) -> plt.Figure:
    """Target gain against non-target drop: every checkpoint, trajectories, final CIs, Pareto fronts;
    (a) everything, (b) the high-gain corner enlarged."""
    ck = fr.ckpts
    methods = ordered(styles, ck)
    fig, (ax, zx) = plt.subplots(1, 2, figsize=(PAGE, 3.0), gridspec_kw={"width_ratios": [1.15, 1]})
    fronts = _gain_drop(ax, ck, styles, methods)
    ax.annotate("base", (0, 0), xytext=(4, 4), textcoords="offset points", fontsize=7)
    _gain_drop(zx, ck, styles, methods)
    x0, x1, y0, y1 = zoom_window(trained_checkpoints(ck), fronts)
    zx.set_xlim(x0, x1)
    zx.set_ylim(y0, y1)
    zx.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="0.35", lw=0.7, ls=":", zorder=6))
    ax.set_ylabel(DROP)
    ax.set_title("(a) all checkpoints", loc="left")
    zx.set_title("(b) high-gain corner (dotted box in a)", loc="left")
    fig.tight_layout(w_pad=1.5)
    extra = [plt.Line2D([], [], color="0.3", lw=1.1, label="Pareto front"),
             plt.Line2D([], [], color="0.3", lw=0.5, alpha=0.5, marker="o", ms=2.5, label="run trajectory"),
             plt.Line2D([], [], color="0.3", ls="none", marker="o", ms=4, label="final ± 95% CI"),
             plt.Line2D([], [], color="black", ls="none", marker="*", ms=7, label="base")]
    entries = len(methods) + len(extra)
    legend_below(fig, styles, methods, extra, ncol=entries if entries <= 6 else -(-entries // 2))
    return fig


def front_vs_lr(fr: Frames, styles: dict[str, dict]) -> plt.Figure:
    """Final gain and drop (mean over seeds, 95% CI) against the learning rate, one line per method."""
    from reports.frame import aggregate_seeds

    agg = aggregate_seeds(final_checkpoints(fr.ckpts))
    fig, axes = plt.subplots(1, 2, figsize=(PAGE, 2.5), sharex=True)
    methods = ordered(styles, agg)
    n = max(1, len(methods))
    for i, m in enumerate(methods):
        st, sub = styles[m], agg[agg["method"] == m].sort_values("lr")
        # spread overlapping methods a little along the log axis so their error bars stay apart
        jitter = 10 ** ((i - (n - 1) / 2) * 0.012)
        for ax, key in zip(axes, (N.TARGET_GAIN, N.NONTARGET_DROP)):
            ax.errorbar(sub["lr"] * jitter, sub[key], yerr=_err(sub, key), color=st["color"], marker=st["marker"],
                        ms=3.5, lw=1.0, elinewidth=0.6)
    gain_and_drop_axes(axes, "learning rate (log scale)")
    fig.tight_layout(w_pad=2.0)
    legend_below(fig, styles, methods, ncol=min(8, n))
    return fig


def pld_drift_curves(fr: Frames, styles: dict[str, dict]) -> plt.Figure:
    """PLD drift over training steps for every method at its best-trade-off learning rate (mean over seeds)."""
    ck = fr.ckpts
    best = best_lr(final_checkpoints(ck))
    fig, ax = plt.subplots(figsize=(COLUMN, 3.0))
    ax.axhline(0, color="0.6", lw=0.6, zorder=0)
    handles = []
    for m in ordered(styles, ck):
        st = styles[m]
        sub = at_lr(ck[ck["method"] == m], best[m])
        curve = sub.groupby("step")[N.PLD_DRIFT].mean()
        (h,) = ax.plot(curve.index, curve.to_numpy(), color=st["color"], marker=st["marker"], ms=3, lw=1.1,
                       label=f"{st['label']} ({fmt_lr(best[m])})")
        handles.append(h)
    ax.set_yscale("symlog", linthresh=1.0, linscale=1.0)
    lo, hi = ax.get_ylim()
    ticks = [t for t in (-100, -50, -20, -10, -5, -2, -1, -0.5, -0.2, 0, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if lo <= t <= hi]
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("PLD drift (nats/token, symlog scale)")
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.0), ncol=2, handlelength=1.8)
    return fig


PREDICTORS = ((N.PLD_RISE, "PLD rise from its running min (nats/token)"), (N.PLD_DRIFT, "PLD drift (nats/token)"),
              (N.KL_TO_BASE, "KL to base (nats/response)"), ("data_phi_mean", "training data mean φ (nats/token)"))


def predictor_stats(fr: Frames) -> dict[str, dict[str, float]]:
    """{predictor: reports.stats.clustered_correlation of final non-target drop on it} over every run's final
    checkpoint: pooled r, R² and line; p-values from the methods' means (runs of one method are not independent)."""
    from reports.stats import clustered_correlation
    fin = final_checkpoints(fr.ckpts).merge(fr.runs[["run_id", "data_phi_mean"]], on="run_id", how="left")
    return {k: clustered_correlation(fin[k], fin[N.NONTARGET_DROP], fin["method"]) for k, _ in PREDICTORS}


def predictors(fr: Frames, styles: dict[str, dict]) -> plt.Figure:
    """Non-target drop against PLD drift, KL to base and mean φ of the training data, with a fitted line."""
    fin = final_checkpoints(fr.ckpts).merge(fr.runs[["run_id", "data_phi_mean"]], on="run_id", how="left")
    fig, axes = plt.subplots(1, len(PREDICTORS), figsize=(PAGE, 2.4), sharey=True)
    methods = ordered(styles, fin)
    stats = predictor_stats(fr)
    for ax, (key, label) in zip(axes, PREDICTORS):
        for m in methods:
            sub = fin[fin["method"] == m]
            ax.scatter(sub[key], sub[N.NONTARGET_DROP], s=14, color=styles[m]["color"], marker=styles[m]["marker"],
                       alpha=0.85, linewidths=0)
        fit = stats[key]
        if np.isfinite(fit["slope"]):
            xs = np.linspace(np.nanmin(fin[key]), np.nanmax(fin[key]), 50)
            ax.plot(xs, fit["slope"] * xs + fit["intercept"], color="0.25", ls="--", lw=0.9,
                    label=f"fit: r = {fit['r']:+.2f}, R² = {fit['r2']:.2f} (n = {fit['n']:.0f})")
        else:
            ax.plot([], [], ls="none", label=f"no fit (n = {fit['n']:.0f})")
        ax.legend(loc="upper left", handlelength=1.5, borderaxespad=0.2)
        ax.set_xlabel(label)
    axes[0].set_ylabel(DROP)
    top = np.nanmax(fin[N.NONTARGET_DROP]) if fin[N.NONTARGET_DROP].notna().any() else 1.0
    axes[0].set_ylim(top=max(top, 1.0) * 1.25)  # room for the fit legend above the points
    fig.tight_layout(w_pad=1.0)
    legend_below(fig, styles, methods, ncol=min(8, max(1, len(methods))), lines=False)
    return fig
