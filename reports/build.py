"""`build_report`: MLflow runs -> tidy frames -> figures (PNG + PDF), tables (CSV + Markdown), one self-contained
HTML page and a Markdown summary -> logged back under `report/` on every parent run of the experiment.

Reads MLflow only: it never trains and never opens the Optuna storage.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from harness import metric_names as N
from reports import claims as C
from reports import dial as D
from reports import figures as F
from reports import figures_tables as T
from reports.frame import Frames, final_checkpoints, load
from reports.samplers import check_samplers

PNG_DPI = 200


@dataclass(frozen=True)
class Figure:
    stem: str
    title: str
    make: Callable[[Frames, dict], object]
    caption: Callable[[Frames, dict], str]


def _n(fr: Frames) -> str:
    return f"{len(fr.runs)} runs, {len(fr.ckpts)} checkpoints"


def _cap_predictors(fr: Frames, styles: dict) -> str:
    stats = F.predictor_stats(fr)
    parts = [f"{label.split(' (')[0]}: r = {s['r']:+.2f}, R² = {s['r2']:.2f}" for (key, label), s
             in zip(F.PREDICTORS, stats.values())]
    return ("Final non-target drop of every run against three candidate predictors of forgetting, with a "
            "least-squares line pooled over all runs (" + "; ".join(parts) + "). For reference, RL's Razor reports "
            "R² ≈ 0.71 for KL to the base and Retaining by Doing r ≈ 0.52 for its on-policy measure.")


FIGURES = [
    Figure("fig1_gain_drop", "Target gain against non-target drop", F.headline, lambda fr, s: (
        f"Every evaluation checkpoint of every run ({_n(fr)}) as a small point, each run's trajectory from the "
        "base (★, origin) drawn faintly; the final checkpoint of each run is the large marker with 95% paired-"
        "bootstrap intervals in both directions; the thick line joins each method's Pareto-front checkpoints, "
        "chosen on validation and drawn at their eval values (higher gain, lower drop is better). Drop > 0 means "
        "forgetting.")),
    Figure("fig2_front_vs_lr", "Gain and drop against learning rate", F.front_vs_lr, lambda fr, s: (
        "Final target gain (left) and non-target drop (right) against the learning rate, mean over seeds with 95% "
        "intervals; methods are offset slightly along the log axis so overlapping points stay visible.")),
    Figure("fig3_pld_drift", "PLD drift over training", F.pld_drift_curves, lambda fr, s: (
        "Policy–label divergence drift (held-out NLL of the expert labels minus the base's) over training steps, "
        "for each method at its best-trade-off learning rate (highest final validation gain − drop, shown in the "
        "legend); "
        "negative means the policy moved towards the expert labels.")),
    Figure("fig4_predictors", "Predictors of forgetting", F.predictors, _cap_predictors),
    Figure("fig5_per_task_drop", "Drop per non-target task", T.per_task_drop, lambda fr, s: (
        "Final drop on each non-target task (eval split): bars at each method's best-trade-off learning rate "
        "(chosen on validation), open circles at the learning rate where that task dropped most.")),
    Figure("fig6_compute_front", "Gain and drop against compute", T.compute_front, lambda fr, s: (
        "Target gain (left) and non-target drop (right) at every checkpoint against cumulative training and "
        "generation compute (6N FLOPs per trained token, 2N per token of every forward-only pass: prompt prefill, "
        "generated tokens, reference and π_old log-probs, Hinted Decoding's second stream); bold: each method's "
        "best-trade-off learning rate, faint: the others.")),
    Figure("fig7_matched_gain", "Drop at matched gain", T.matched_gain, lambda fr, s: (
        "For each gain level g, each method's eval drop at g by the claims' procedure (per seed, the learning rate "
        "with the lowest validation drop at its run's validation crossing of g; the drop read at that run's own "
        "eval crossing of g), mean over seeds; a line stops where some seed never reaches g. Values, and the "
        "validation gain at each read point, in matched_gain.csv.")),
    Figure("fig8_offpolicy_dial", "The off-policy dial", T.dial_figure, lambda fr, s: (
        "SFT on the same prompts with labels in each teacher style: left, its drop at matched gain (the claims' "
        "procedure and g; mean over seeds, 95% interval) against how surprising the labels are to the base (its "
        "NLL of them); right, the same drop for every g. `own` is the model's own style (the on-policy end).")),
]


def slug(name: str) -> str:
    """A directory-safe form of an experiment name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


def _front_display(front: pd.DataFrame, method: str) -> pd.DataFrame:
    """One method's front rows as formatted strings (shared by the Markdown and HTML tables)."""
    def ci(v, lo, hi):
        return f"{T._num(v, 1)} [{T._num(lo, 1)}, {T._num(hi, 1)}]"
    sub = front[front["method"] == method]
    return pd.DataFrame({
        "lr": [F.fmt_lr(v)[3:] for v in sub["lr"]], "seed": sub["seed"].astype(str), "step": sub["step"].astype(str),
        "target gain [95% CI]": [ci(*r) for r in sub[[N.TARGET_GAIN, N.TARGET_GAIN_LO, N.TARGET_GAIN_HI]].to_numpy()],
        "non-target drop [95% CI]": [ci(*r) for r in
                                     sub[[N.NONTARGET_DROP, N.NONTARGET_DROP_LO, N.NONTARGET_DROP_HI]].to_numpy()],
        "PLD drift (nats/tok)": [T._num(v) for v in sub[N.PLD_DRIFT]],
        "KL to base (nats)": [T._num(v) for v in sub[N.KL_TO_BASE]],
        "FLOPs": ["–" if pd.isna(v) else f"{v:.2e}" for v in sub[N.COST_FLOPS]],
    })


def _eval_at_best(fin: pd.DataFrame, key: str, pick) -> float:
    """`key` on eval at the final checkpoint whose validation `key` is best (`pick` = max or min)."""
    val = fin[N.VAL + key].dropna()
    if val.empty:  # nothing was chosen on validation, so nothing is shown
        return float("nan")
    return float(fin.loc[val.idxmax() if pick is max else val.idxmin(), key])


def _overview(fr: Frames, styles: dict) -> pd.DataFrame:
    fin = final_checkpoints(fr.ckpts)
    rows = []
    for m in F.ordered(styles, fr.runs):
        sub = fin[fin["method"] == m]
        lrs = sub["lr"].dropna()
        rows.append({"method": m, "runs": str(len(sub)),
                     "learning rates": f"{lrs.min():.0e} – {lrs.max():.0e}" if len(lrs) else "–",
                     # the run is picked on validation, its eval number shown
                     "best final gain": _eval_at_best(sub, N.TARGET_GAIN, max),
                     "lowest final drop": _eval_at_best(sub, N.NONTARGET_DROP, min)})
    return pd.DataFrame(rows)


CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
figure{margin:1.5rem 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.9rem;color:#444}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.2rem .5rem;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}code{font-size:.85rem}"""


def _html_table(df: pd.DataFrame, digits: int = 1) -> str:
    return df.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.{digits}f}", border=0)


def build_report(experiment: str | None, out: Path | None = None, *, log_artifacts: bool = True,
                 client=None, mixed_samplers: bool = False) -> dict[str, Path]:
    """Write every figure, table and page for `experiment` into `out`; returns {file name: path}.

    `experiment=None` picks the most recently updated experiment with runs tagged kind=run; `out=None` means
    `reports/out/<experiment>/`. With `log_artifacts`, every file is also logged under `report/` on each
    parent run (kind=parent) of the experiment. Runs sampled by different backends (tag `sampler`) are refused
    unless `mixed_samplers` (then the summary says so).
    """
    import matplotlib.pyplot as plt

    from harness.store import init_store
    from harness.method import method_names

    client = client or init_store()
    fr = load(experiment, client)
    mixed = check_samplers(fr.all_runs, fr.experiment, mixed_samplers)
    out = Path(out) if out is not None else Path("reports") / "out" / slug(fr.experiment)
    out.mkdir(parents=True, exist_ok=True)
    styles = F.method_styles(method_names(), fr.runs["method"].dropna().unique().tolist())
    files: dict[str, Path] = {}
    sections: list[tuple[str, str, str]] = []  # (title, stem or "", caption)
    has_dial = bool(T.teacher_styles(fr))  # only a world with teacher styles (the toy ones) has an off-policy dial
    for fig_spec in (f for f in FIGURES if has_dial or f.make is not T.dial_figure):
        with plt.rc_context(F.RC):
            fig = fig_spec.make(fr, styles)
            for ext in ("png", "pdf"):
                path = out / f"{fig_spec.stem}.{ext}"
                fig.savefig(path, dpi=PNG_DPI if ext == "png" else None)
                files[path.name] = path
            plt.close(fig)
        sections.append((fig_spec.title, fig_spec.stem, fig_spec.caption(fr, styles)))

    matched = T.matched_gain_table(fr, styles)
    front = T.front_table(fr, styles)
    stats = pd.DataFrame([{"predictor": label, "r": s["r"], "r2": s["r2"], "methods": int(s["clusters"]),
                           "r (method means)": s["r_clusters"], "p (r > 0, method means)": s["p_pos"],
                           "slope": s["slope"], "intercept": s["intercept"], "n": int(s["n"])}
                          for (_, label), s in zip(F.PREDICTORS, F.predictor_stats(fr).values())])
    g, claims = C.claims_frame(fr)
    dial = D.dial(fr, g) if has_dial else pd.DataFrame()
    if len(dial) >= 2:  # a dial needs the sweep to have run SFT on more than one teacher style
        res, verdict = D.dial_verdict(dial)
        claims.loc[len(claims)] = {"source": "this harness (the off-policy dial)", "claim": D.DIAL_CLAIM,
                                   "result": res, "verdict": verdict}
    tables = {"claims.csv": claims, "dial.csv": dial.drop(columns="values", errors="ignore"),
              "matched_gain.csv": matched, "front.csv": front,
              "predictors.csv": stats,
              "checkpoints.csv": fr.all_ckpts, "runs.csv": fr.all_runs}  # every arm, told apart by `arm`
    for m in F.ordered(styles, front):
        tables[f"front_{m}.csv"] = front[front["method"] == m]
    for name, df in tables.items():
        df.to_csv(out / name, index=False)
        files[name] = out / name

    overview = _overview(fr, styles)
    md, body = _pages(fr, styles, sections, overview, matched, stats, front, out, (g, claims, dial))
    (out / "summary.md").write_text(f"> {mixed}\n\n{md}" if mixed else md)
    (out / "report.html").write_text(body)
    files["summary.md"], files["report.html"] = out / "summary.md", out / "report.html"

    if log_artifacts:
        for pid in fr.parents["run_id"]:
            client.log_artifacts(pid, str(out), "report")
    return files


def _claims_md(g: float, claims: pd.DataFrame) -> list[str]:
    lead = (f"Matched gain g = {g:.1f} points ({C.FRACTION:g} × the smallest best validation gain among the seeds "
            f"of {', '.join(C.ANCHORS)}). Per run, the first crossing of g on validation; per seed, the learning "
            "rate with the lowest validation drop there; the seed's value is that run's eval drop at its own eval "
            "crossing of g (both gains at that read point: gains_at_read_point). Drops: mean over seeds [95% "
            "interval: seed spread plus the prompts' sampling error the seeds share]; \"A > B\" tests the "
            "difference with both arms' seed and prompt terms at α = 0.05. Verdicts: reproduced / contradicted "
            "(significant the other way) / inconclusive (neither; with the tests' power) / not tested (why) "
            "(reports/claims.py, reports/verdicts.py).")
    return ["## Claims", "", lead, "", T.markdown_table(claims), ""]


def _dial_rows(dial: pd.DataFrame) -> pd.DataFrame:
    if dial.empty:
        return dial
    return pd.DataFrame({"teacher style": dial["teacher_style"], "label NLL (nats/seq)": dial["label_nll_seq"],
                         "label NLL (nats/token)": dial["label_nll_token"], "seeds at g": [f"{a} of {b}" for a, b in dial[["seeds_at_g", "seeds"]].to_numpy()],
                         "SFT drop at g": [f"{m:.1f} [{lo:.1f}, {hi:.1f}]" if pd.notna(m) else "never reached g"
                                           for m, lo, hi in dial[["drop_at_g", "drop_lo", "drop_hi"]].to_numpy()],
                         "best gain": dial["best_gain"]})


def _pages(fr: Frames, styles: dict, sections, overview, matched, stats, front, out: Path,
           claims_part) -> tuple[str, str]:
    """(Markdown summary, self-contained HTML page)."""
    ctx = fr.runs.iloc[0]
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    style = ctx.get("teacher_style")  # a real world has none
    style = f", teacher style `{style}`" if isinstance(style, str) else ""
    meta = f"world `{ctx.get('world')}`, target `{ctx.get('target')}`{style}; {_n(fr)}; generated {when} from MLflow only."
    g, claims, dial = claims_part
    cl = _claims_md(g, claims)
    md = [f"# Forgetting report: experiment `{fr.experiment}`", "", meta, "", *cl, "## Runs", "",
          T.markdown_table(overview), ""]
    h = [f"<h1>Forgetting report: experiment <code>{html.escape(fr.experiment)}</code></h1>",
         f"<p>{html.escape(meta).replace('`', '')}</p>", "<h2>Claims</h2>", f"<p>{html.escape(cl[2])}</p>",
         _html_table(claims), "<h2>Runs</h2>", _html_table(overview)]
    for i, (title, stem, caption) in enumerate(sections, 1):
        md += [f"## {i}. {title}", "", f"![{title}]({stem}.png)", "", caption, f"([PDF]({stem}.pdf))", ""]
        raw = (out / f"{stem}.png").read_bytes()
        data = base64.b64encode(raw).decode()
        # show column-wide figures at half the page: width in px over a page-wide figure's px
        pct = min(100, round(100 * int.from_bytes(raw[16:20], "big") / (F.PAGE * PNG_DPI)))
        h += [f"<h2>{i}. {html.escape(title)}</h2>", "<figure>",
              f'<img src="data:image/png;base64,{data}" alt="{html.escape(title)}" style="width:{pct}%">',
              f"<figcaption>{html.escape(caption)}</figcaption></figure>"]
        if stem.startswith("fig4"):
            shown = stats.drop(columns="intercept").rename(columns={"r2": "R²", "slope": "slope (points per unit)"})
            md += ["Fits (final checkpoint of every run):", "", T.markdown_table(shown, 3), ""]
            h += [_html_table(shown, 3)]
        if stem.startswith("fig7"):
            md += ["Lowest non-target drop among checkpoints with target gain ≥ g (– : never reached):", "",
                   T.markdown_table(matched), ""]
            h += [_html_table(matched)]
        if stem.startswith("fig8") and not dial.empty:
            res, v = D.dial_verdict(dial)
            verdict = f"{D.DIAL_CLAIM}? {v}: {res}."
            md += [T.markdown_table(_dial_rows(dial), 2), "", verdict, ""]
            h += [_html_table(_dial_rows(dial), 2), f"<p>{html.escape(verdict)}</p>"]
    md += [f"## {len(sections) + 1}. Best trade-off points per method", "",
           "Each method's Pareto-front checkpoints over all its runs and evaluation steps, chosen on validation and "
           "shown with their eval numbers; checkpoints tied at the same eval gain and drop are listed once, the "
           "cheapest (CSV: `front_<method>.csv`).",
           ""]
    h += [f"<h2>{len(sections) + 1}. Best trade-off points per method</h2>",
          "<p>Each method's Pareto-front checkpoints over all its runs and evaluation steps, chosen on validation "
          "and shown with their eval numbers; checkpoints tied at the same eval gain and drop are listed once, the "
          "cheapest.</p>"]
    for m in F.ordered(styles, front):
        disp = _front_display(front, m)
        md += [f"### {m}", "", T.markdown_table(disp), ""]
        h += [f"<h3>{html.escape(m)}</h3>", _html_table(disp)]
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>Forgetting report: {html.escape(fr.experiment)}</title><style>{CSS}</style></head><body>"
            + "\n".join(h) + "</body></html>\n")
    return "\n".join(md) + "\n", page


def timed_build(experiment: str | None, out: Path | None, log_artifacts: bool = True) -> tuple[dict[str, Path], float]:
    """build_report and its wall time in seconds."""
    t0 = time.perf_counter()
    files = build_report(experiment, out, log_artifacts=log_artifacts)
    return files, time.perf_counter() - t0
