"""`gvu curve`: whether a run's gains keep coming, read from full-size evaluations rather than the in-training
evaluation's few images a prompt (docs/protocol.md, "Gains over the steps").

Each run is a `gvu train` output folder. Its points are the model it started from (step 0) and every checkpoint-K
it kept (train with `save_total_limit=0` to keep them all); each point is evaluated as `gvu eval` would (by
default the validation benchmarks, 8 images a prompt, the validation seed), into OUT/LABEL/step-K, and a point
already evaluated is read back, so an interrupted curve resumes. The runs' step-0 points share one evaluation when
they start from the same model (same prompts, same evaluation seed: the same images).

Read from the points, per benchmark:
- the score at every step, each run's and the mean over runs with its 95% interval (Student's t over the runs, or
  the evaluation's own images for one run);
- the gain from step `against` (20 by default: where the defaults of earlier versions stopped gaining) to the last
  step, per run (its interval from the two evaluations' images) and over the runs (Student's t over the runs'
  gains, which already hold each evaluation's sampling error);
and from each run's log.jsonl, the own-sample exact accuracy (`accuracy`, the exact judge on the step's monitored
images): its mean by thirds of the steps and its least-squares slope over the last third with a 95% interval.
Written: curve.json, curve.md, curve.png.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from scipy import stats

from gvu.analysis.report import BENCH_TITLES, overall_se
from gvu.eval import evaluate
from gvu.eval.metadata import atomic_write_text
from gvu.eval.plots import _figure, _save
from gvu.models.load import load_model
from gvu.models.protocol import SamplingConfig
from gvu.rl import distributed as D
from gvu.rl.checkpoint import list_checkpoints, load_weights, read_state
from gvu.rl.config import load_config
from gvu.rl.setup import wrap_lora

THIRDS = 3


def run_points(run: str | os.PathLike) -> tuple[dict, list[tuple[int, Path | None]]]:
    """A training run's config and its points: (0, None) for the model it started from, then (K, checkpoint-K)."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such training run folder (a `gvu train` output_dir)")
    ckpts = list_checkpoints(run)
    if not ckpts:
        raise FileNotFoundError(f"{run}: no checkpoint-N folder to evaluate; train with save_steps > 0, and "
                                "save_total_limit=0 to keep every checkpoint")
    cfg = read_state(ckpts[-1])["config"]
    return cfg, [(0, None)] + [(int(c.name.rpartition("-")[2]), c) for c in ckpts]


def model_at(cfg: dict, ckpt: Path | None):
    """The policy at a checkpoint: the model the run started from with the checkpoint's trainable weights."""
    policy = load_model(cfg["model"])
    if ckpt is None:
        return policy
    train = load_config(None, {k: v for k, v in cfg.items() if k != "output_dir"})
    if train.use_lora:
        wrap_lora(policy, train)
    weights = load_weights(ckpt)
    unknown = sorted(set(weights) - {n for n, _ in policy.module.named_parameters()})
    if unknown:
        raise ValueError(f"{ckpt}: its weights {unknown[:3]} are not parameters of {cfg['model']}; was the run "
                         "trained from another model folder?")
    D.load_model_state(policy.module, weights)
    return policy


def evaluate_points(runs: list[tuple[str, Path]], out: Path, benchmark: str, per_prompt: int, seed: int,
                    val_seed: int, steps: set[int] | None = None, progress: bool = True,
                    limit: int | None = None) -> dict:
    """{label: {step: summary}}: each run's points evaluated into OUT/LABEL/step-K (or read back from there)."""
    shared: dict[tuple, Path] = {}  # (model, settings) -> the folder of its step-0 evaluation
    results: dict = {}
    for label, run in runs:
        cfg, points = run_points(run)
        results[label] = {}
        for step, ckpt in points:
            if steps is not None and step not in steps:
                continue
            folder = out / label / f"step-{step}"
            point = {"run": str(run.resolve()), "step": step, "model": cfg["model"], "benchmark": benchmark,
                     "per_prompt": per_prompt, "seed": seed, "val_seed": val_seed, "limit": limit}
            if (folder / "point.json").is_file():
                recorded = json.loads((folder / "point.json").read_text())
                if recorded != point:
                    raise ValueError(f"{folder} holds another evaluation ({recorded}); choose another --out")
            key = (cfg["model"], benchmark, per_prompt, seed, val_seed, limit) if ckpt is None else None
            if not (folder / "summary.json").is_file():
                if folder.exists():  # an evaluation cut short: start it again
                    shutil.rmtree(folder)
                folder.mkdir(parents=True)
                atomic_write_text(folder / "point.json", json.dumps(point, indent=1) + "\n")
                if key in shared:  # the same model, prompts and evaluation seeds: the same images
                    shutil.copy(shared[key] / "summary.json", folder / "summary.json")
                else:
                    if progress:
                        print(f"{label}: step {step} ({ckpt or cfg['model']})", flush=True)
                    evaluate.evaluate_model(model_at(cfg, ckpt), benchmark, sampling=SamplingConfig(),
                                            per_prompt=per_prompt, seed=seed, val_seed=val_seed, out=folder,
                                            progress=progress, limit=limit)
            if key is not None:
                shared.setdefault(key, folder)
            results[label][step] = json.loads((folder / "summary.json").read_text())
    return results


def _t_half(values: list[float]) -> float | None:
    a = np.asarray(values, dtype=float)
    return float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else None


def score_curves(results: dict, against: int) -> dict:
    """Per benchmark: each run's (step, score, se), the mean over the runs at the steps all of them have, and the
    gain from `against` to each run's last step."""
    out = {}
    benches = [b for b in BENCH_TITLES if all(b in s for pts in results.values() for s in pts.values())]
    for bench in benches:
        per_run = {label: [(step, s[bench]["overall"], overall_se(s[bench])) for step, s in sorted(pts.items())]
                   for label, pts in results.items()}
        shared = sorted(set.intersection(*(set(pts) for pts in results.values())))
        mean = []
        for step in shared:
            vals = [results[label][step][bench]["overall"] for label in results]
            half = _t_half(vals) if len(vals) > 1 else 1.96 * (overall_se(results[next(iter(results))][step][bench])
                                                                or 0.0)
            tags = {t: float(np.mean([results[label][step][bench]["tags"][t] for label in results]))
                    for t in results[next(iter(results))][step][bench].get("tags", {})}
            mean.append({"step": step, "mean": float(np.mean(vals)), "half_width": half, "runs": vals, "tags": tags})
        gains = {}
        for label, pts in per_run.items():
            at = {step: (v, se) for step, v, se in pts}
            last = max(at)
            if against in at and last > against:
                (v0, se0), (v1, se1) = at[against], at[last]
                half = None if se0 is None or se1 is None else 1.96 * (se0 ** 2 + se1 ** 2) ** 0.5
                gains[label] = {"from": against, "to": last, "gain": v1 - v0, "half_width": half}
        over = None
        if len(gains) > 1:
            g = [x["gain"] for x in gains.values()]
            over = {"gain": float(np.mean(g)), "half_width": _t_half(g), "runs": len(g)}
        out[bench] = {"runs": {k: [{"step": s, "score": v, "se": se} for s, v, se in pts] for k, pts in
                               per_run.items()}, "mean": mean, "gain_after": gains, "gain_after_mean": over}
    return out


def log_points(run: Path, key: str = "accuracy") -> list[tuple[int, float]]:
    """(step, value) of a run's log.jsonl for one key, by step (none without a log)."""
    log, pts = run / "log.jsonl", []
    for line in (log.read_text().splitlines() if log.is_file() else []):
        rec = json.loads(line) if line.strip() else {}
        if isinstance(rec.get(key), (int, float)) and "step" in rec and np.isfinite(rec[key]):
            pts.append((int(rec["step"]), float(rec[key])))
    return sorted(pts)


def mean_points(runs: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The runs' values averaged at the steps every run logged (the pooled curve's noise is 1/sqrt(runs) of one)."""
    shared = set.intersection(*(set(dict(pts)) for pts in runs)) if runs else set()
    return [(s, float(np.mean([dict(pts)[s] for pts in runs]))) for s in sorted(shared)]


def accuracy_trend(pts: list[tuple[int, float]]) -> dict | None:
    """Own-sample exact accuracy by step: its mean by thirds of the steps, and the slope over the last third (per
    step, least squares, with its 95% interval). None with fewer than two points a third."""
    if len(pts) < 2 * THIRDS:
        return None
    steps = np.array([p[0] for p in pts], dtype=float)
    acc = np.array([p[1] for p in pts])
    parts = np.array_split(np.arange(len(pts)), THIRDS)
    last = parts[-1]
    fit = stats.linregress(steps[last], acc[last])
    half = float(stats.t.ppf(0.975, len(last) - 2) * fit.stderr)
    return {"thirds": [float(acc[p].mean()) for p in parts], "steps": [int(steps[0]), int(steps[-1])],
            "last_third": [int(steps[last[0]]), int(steps[last[-1]])], "slope_per_step": float(fit.slope),
            "slope_half_width": half, "rising": bool(fit.slope - half > 0)}


def markdown(curves: dict, trends: dict, against: int) -> str:
    lines = ["# Gains over the steps", "",
             "Each point evaluated as `gvu eval` would; the mean's ± is the 95% interval (Student's t over the runs; "
             "one run: its images). * marks an interval that excludes zero (docs/protocol.md).", ""]
    for bench, c in curves.items():
        labels = list(c["runs"])
        lines += [f"## {BENCH_TITLES[bench]}", "", "| step | " + " | ".join(labels) + " | mean |",
                  "|---|" + "---|" * (len(labels) + 1)]
        at = {lab: {p["step"]: p["score"] for p in pts} for lab, pts in c["runs"].items()}
        for m in c["mean"]:
            half = "" if m["half_width"] is None else f" ± {m['half_width']:.3f}"
            lines.append(f"| {m['step']} | " + " | ".join(f"{at[lab][m['step']]:.3f}" for lab in labels)
                         + f" | {m['mean']:.3f}{half} |")
        lines.append("")
        for lab, g in c["gain_after"].items():
            half = g["half_width"]
            lines.append(f"- {lab}: step {g['from']} -> {g['to']}: {g['gain']:+.3f}"
                         + ("" if half is None else f" ± {half:.3f}" + (" *" if g["gain"] - half > 0 else "")))
        if c["gain_after_mean"]:
            g = c["gain_after_mean"]
            half = g["half_width"]
            lines.append(f"- over the {g['runs']} runs: step {against} -> last: {g['gain']:+.3f} ± {half:.3f}"
                         + (" *" if g["gain"] - half > 0 else ""))
        lines.append("")
    lines += ["## Own-sample exact accuracy (the run's log)", "",
              "| run | by thirds | slope over the last third (per 10 steps) |", "|---|---|---|"]
    for lab, t in trends.items():
        if t is None:
            lines.append(f"| {lab} | no accuracy in log.jsonl | |")
            continue
        lines.append(f"| {lab} | {' / '.join(f'{x:.3f}' for x in t['thirds'])} | {10 * t['slope_per_step']:+.4f} ± "
                     f"{10 * t['slope_half_width']:.4f}" + (" *" if t["rising"] else "") +
                     f" (steps {t['last_third'][0]}-{t['last_third'][1]}) |")
    return "\n".join(lines) + "\n"


def _accuracy_panel(ax, logs: dict) -> None:
    for lab, pts in logs.items():
        if pts:
            xs, ys = zip(*pts)
            w = max(1, len(ys) // 12)
            ax.plot(xs[w - 1:], np.convolve(ys, np.ones(w) / w, mode="valid"), lw=1.2, label=lab)
    ax.set_title("own-sample exact accuracy (running mean)", fontsize=9)


def _score_panel(ax, c: dict, title: str) -> None:
    for lab, pts in c["runs"].items():
        ax.plot([p["step"] for p in pts], [p["score"] for p in pts], lw=0.8, alpha=0.6, marker=".", label=lab)
    xs = [m["step"] for m in c["mean"]]
    ys = np.array([m["mean"] for m in c["mean"]])
    hw = np.array([m["half_width"] or 0.0 for m in c["mean"]])
    ax.plot(xs, ys, color="k", lw=1.8, label="mean")
    ax.fill_between(xs, ys - hw, ys + hw, color="k", alpha=0.12)
    ax.set_title(title, fontsize=9)


def plot(curves: dict, logs: dict, path: Path) -> Path:
    """Top: each benchmark's score by step (runs, mean, 95% band) and the own-sample accuracy; below: each
    benchmark's tags, the mean over the runs."""
    cols = len(curves) + 1
    fig = _figure(3.6 * cols, 5.6)
    for k, (name, c) in enumerate(curves.items()):
        _score_panel(fig.add_subplot(2, cols, k + 1), c, BENCH_TITLES[name])
        ax = fig.add_subplot(2, cols, cols + k + 1)
        for tag in (c["mean"][0]["tags"] if c["mean"] else {}):
            ax.plot([m["step"] for m in c["mean"]], [m["tags"][tag] for m in c["mean"]], lw=1.2, marker=".", label=tag)
        ax.set_title(f"{BENCH_TITLES[name]}: tags (mean)", fontsize=9)
        ax.legend(fontsize=6)
    _accuracy_panel(fig.add_subplot(2, cols, cols), logs)
    for ax in fig.axes:
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def labels_for(runs: list[str], given: list[str] | None) -> list[str]:
    """A name per run: the given ones, or the folder's name (its parent's when it is called train), made unique."""
    if given:
        if len(given) != len(runs):
            raise ValueError(f"--label given {len(given)} times for {len(runs)} runs: give one per run, in order")
        return list(given)
    names = [Path(r).resolve().parent.name if Path(r).name == "train" else Path(r).name for r in runs]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def write_curve(runs: list[str], out: str | os.PathLike, *, labels: list[str] | None = None, benchmark: str = "val",
                per_prompt: int = 8, seed: int = 1234, val_seed: int = 4321, against: int = 20,
                steps: set[int] | None = None, progress: bool = True, limit: int | None = None) -> Path:
    """Evaluate the runs' points into `out` (resuming) and write curve.json, curve.md and curve.png there. `limit`
    keeps that many prompts of each benchmark (quick runs; gvu eval's `limit`)."""
    out = Path(out)
    named = list(zip(labels_for(runs, labels), [Path(r) for r in runs]))
    results = evaluate_points(named, out, benchmark, per_prompt, seed, val_seed, steps, progress, limit)
    curves = score_curves(results, against)
    logs = {lab: log_points(run) for lab, run in named}
    trends = {lab: accuracy_trend(pts) for lab, pts in logs.items()}
    if len(logs) > 1:
        trends["mean over the runs"] = accuracy_trend(mean_points(list(logs.values())))
    atomic_write_text(out / "curve.json", json.dumps({"runs": {lab: str(run) for lab, run in named},
                                                      "benchmark": benchmark, "per_prompt": per_prompt,
                                                      "against": against, "scores": curves,
                                                      "own_sample_accuracy": trends}, indent=1) + "\n")
    atomic_write_text(out / "curve.md", markdown(curves, trends, against))
    plot(curves, logs, out / "curve.png")
    return out / "curve.md"


def cmd_curve(a) -> None:
    md = write_curve(a.runs, a.out, benchmark=a.benchmark, per_prompt=a.per_prompt, seed=a.seed,
                     val_seed=a.val_seed, against=a.against, steps=a.steps)
    print(md.read_text())
    print(f"wrote {md} (and curve.json, curve.png beside it)")
