"""Does GvU's gain follow the judge's lead? Per GenEval tag: how well the base's own reward ranks its own samples
(the reward-vs-correctness AUC on the images the base drew before training) against how much that tag gained.

The paper's premise is that a model understands better than it draws, so the judge can see what the painter gets
wrong; where the judge is blind (AUC near 0.5) GRPO has no signal and the tag should not move. The demo writes
`eval_before/geneval/scores.jsonl` (every before-image's reward and exact verdict); this module joins it with the
before/after summaries of one or more demo runs (e.g. the 2-D reader and the flat-raster ablation, or the regular
and the weak base) into one table and one scatter plot, `gvu lead RUN [RUN ...]`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from gvu.analysis.score import summarise_scores
from gvu.eval.metadata import atomic_write_text
from gvu.eval.plots import labelled_scatter

SCORES = Path("eval_before") / "geneval" / "scores.jsonl"


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {path.parents[1]} a finished `gvu demo` folder?")
    return json.loads(path.read_text())


def run_lead(run: str | os.PathLike) -> dict:
    """Per tag of GenEval-shapes: the base's reward AUC on its own samples, its accuracy before, after, the gain."""
    run = Path(run)
    path = run / SCORES
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: rerun `gvu demo` (it scores the base's own samples) or "
                                f"write it with `gvu score {run / 'eval_before' / 'geneval'} --model BASE --out {path}`")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    scores = summarise_scores(records)
    before = _read_json(run / "eval_before" / "summary.json")["geneval"]["tags"]
    after = _read_json(run / "eval_after" / "summary.json")["geneval"]["tags"]
    tags = {}
    for tag, b in before.items():
        auc = (scores.get("tags") or {}).get(tag, {}).get("auc")
        tags[tag] = {"auc": auc, "before": b, "after": after.get(tag), "gain": after.get(tag, b) - b}
    aucs = [(t["auc"], t["gain"]) for t in tags.values() if t["auc"] is not None]
    corr = float(np.corrcoef(*zip(*aucs))[0, 1]) if len(aucs) >= 3 else None
    return {"run": str(run), "tags": tags, "auc_gain_correlation": corr, "auc_pooled": scores.get("auc")}


def lead_plot(leads: dict[str, dict], path: str | os.PathLike) -> Path:
    """One point per (run, tag): x = reward AUC on the base's own samples, y = the tag's gain."""
    series = {}
    for label, lead in leads.items():
        corr = lead["auc_gain_correlation"]
        series[label + ("" if corr is None else f" (r = {corr:+.2f})")] = [
            (t["auc"], t["gain"], tag) for tag, t in lead["tags"].items() if t["auc"] is not None]
    return labelled_scatter(series, path, title="GenEval-shapes: GvU gain per tag against the judge's lead",
                            xlabel="judge's lead: reward AUC on the base's own samples (0.5 = blind)",
                            ylabel="GvU gain on the tag (accuracy after - before)", hline=0.0, vline=0.5)


def format_lead(leads: dict[str, dict]) -> str:
    lines = []
    for label, lead in leads.items():
        corr = lead["auc_gain_correlation"]
        lines.append(f"{label} ({lead['run']}); correlation of AUC and gain over tags: "
                     + ("n/a" if corr is None else f"{corr:+.2f}"))
        lines.append(f"  {'tag':<14} {'AUC':>5} {'before':>7} {'after':>7} {'gain':>7}")
        for tag, t in lead["tags"].items():
            auc = "  n/a" if t["auc"] is None else f"{t['auc']:.3f}"
            lines.append(f"  {tag:<14} {auc:>5} {t['before']:7.3f} {t['after']:7.3f} {t['gain']:+7.3f}")
    return "\n".join(lines)


def cmd_lead(a: argparse.Namespace) -> None:
    labels = a.label or [Path(r).name for r in a.runs]
    if len(labels) != len(a.runs):
        raise ValueError(f"--label was given {len(labels)} times for {len(a.runs)} runs; give one per run or none")
    leads = {label: run_lead(r) for label, r in zip(labels, a.runs)}
    print(format_lead(leads))
    out = Path(a.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(leads, indent=1) + "\n")
    print(f"wrote {lead_plot(leads, out.with_suffix('.png'))} and {out.with_suffix('.json')}")
