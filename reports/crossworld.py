"""One table across worlds (targets, world seeds, bases): does the core effect hold in each?

`harness report --experiment a,b,c` builds it from several sweeps' MLflow runs, each summarised by the same
procedure as the claims table (reports/claims.py): per world the base's eval accuracy on the target, the base's
NLL of the teacher labels, g, each anchor's eval drop at g with its interval, the KL→drop R² and the verdicts
of the two core claims (GRPO vs SFT, on-policy SFT vs SFT).
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from harness import metric_names as N
from reports import claims as C
from reports.frame import Frames, final_checkpoints, trained_checkpoints
from reports.stats import correlation

CORE = {"GRPO: less drop than SFT at comparable gain": next(c for c in C.CLAIMS if c.subject == "grpo"),
        "on-policy SFT: less drop than SFT": next(c for c in C.CLAIMS if c.subject == "onpolicy_sft")}


def world_row(fr: Frames) -> dict:
    """One world's line of the cross-world table."""
    runs = fr.runs
    target = runs["target"].dropna().iloc[0] if runs["target"].notna().any() else "?"
    seed = runs["world_seed"].dropna().iloc[0] if "world_seed" in runs and runs["world_seed"].notna().any() else np.nan
    base_acc = np.nan
    if len(fr.base) and N.acc(target) in fr.base:
        base_acc = float(fr.base[N.acc(target)].dropna().iloc[0])
    g, rows = C.claims(fr)
    per_seed = C.drop_at_gain(fr.ckpts, g)
    row = {"experiment": fr.experiment, "world": runs["world"].dropna().iloc[0] if len(runs) else "?",
           "target": target, "world seed": "–" if pd.isna(seed) else str(int(seed)),
           "base accuracy on target (%)": base_acc,
           "base NLL of teacher labels (nats/answer)": runs.get(N.BASE_LABEL_NLL_SEQ, pd.Series(np.nan)).mean(),
           "g": g}
    for arm in C.ANCHORS:
        if arm not in set(fr.ckpts["arm"]):
            row[f"{arm} drop at g"] = "–"
        elif not np.isfinite(g):  # no matched gain exists: there is nothing to reach
            row[f"{arm} drop at g"] = "no g"
        else:
            row[f"{arm} drop at g"] = C.arm_drop(per_seed, arm).text()
    fin = final_checkpoints(trained_checkpoints(fr.ckpts))
    row["KL→drop R²"] = f"{correlation(fin[N.KL_TO_BASE], fin[N.NONTARGET_DROP])['r2']:.2f}"
    for label, spec in CORE.items():
        row[label] = next(c for c in rows if c.statement == spec.statement).verdict
    row["why no g"] = C.never_gained(fr.ckpts) if not np.isfinite(g) else ""
    return row


def crossworld_table(frames: list[Frames]) -> pd.DataFrame:
    """The cross-world table, one row per experiment in the order given."""
    return pd.DataFrame([world_row(fr) for fr in frames])


def write_crossworld(frames: list[Frames], out: Path) -> dict[str, Path]:
    """crossworld.csv, crossworld.md and crossworld.html (a self-contained page) in `out`."""
    from reports.figures_tables import markdown_table

    out.mkdir(parents=True, exist_ok=True)
    table = crossworld_table(frames)
    lead = ("Each row is one sweep, summarised by the claims' procedure: g from validation, per seed the learning "
            "rate chosen on validation, eval drop at that run's own eval crossing of g; mean over seeds [95% "
            "interval, seeds + shared prompt error]; verdicts reproduced / contradicted / inconclusive / not tested "
            "(reports/claims.py).")
    files = {"crossworld.csv": out / "crossworld.csv", "crossworld.md": out / "crossworld.md",
             "crossworld.html": out / "crossworld.html"}
    table.to_csv(files["crossworld.csv"], index=False)
    files["crossworld.md"].write_text(f"# The core effect across worlds\n\n{lead}\n\n{markdown_table(table)}\n")
    body = table.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.1f}", border=0)
    files["crossworld.html"].write_text(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>The core effect across worlds</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}table{border-collapse:collapse;font-size:.85rem}"
        "th,td{border:1px solid #ccc;padding:.2rem .5rem}</style></head><body><h1>The core effect across worlds"
        f"</h1><p>{html.escape(lead)}</p>{body}</body></html>\n")
    return files
