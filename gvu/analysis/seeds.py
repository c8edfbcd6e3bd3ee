"""Several training seeds of one demo, read together: the headline number is their mean, with an interval that
holds both sources of doubt (docs/protocol.md).

Each seed's run evaluates the same base on the same prompts with the same evaluation seed, so "before" is one
measurement shared by every seed, and "after" is one per seed. The mean gain over S seeds is
mean(after) - before; its 95% half-width combines
- the seeds' spread: Student's t with S - 1 degrees of freedom times the standard error of the mean of the after
  scores (sd / sqrt(S)); this spread already holds each after-evaluation's own sampling error, since every seed's
  images are drawn anew;
- the before-evaluation's sampling error, 1.96 x its standard error, which no number of seeds averages away,
added in quadrature. With one seed there is no spread to read, and the interval is the evaluation's alone (the single
run's report); the aggregate then says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from scipy import stats

from gvu.analysis.report import _pct, BENCH_TITLES, tag_variance, write_report
from gvu.eval.metadata import atomic_write_text


def seed_dirs(out: str | os.PathLike, seeds: list[int]) -> list[Path]:
    """The folder of each seed's run under a `gvu demo --seeds` folder."""
    return [Path(out) / f"seed-{s}" for s in seeds]


def seed_runs(folder: str | os.PathLike) -> list[Path]:
    """The seed-K runs of a `gvu demo --seeds` folder, by seed (none: not such a folder)."""
    runs = [p for p in Path(folder).glob("seed-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(runs, key=lambda p: int(p.name[5:]))


def _interval(afters: list[float], before: float, se_before: float | None) -> dict:
    a = np.asarray(afters, dtype=float)
    mean, n = float(a.mean()), len(a)
    spread = float(stats.t.ppf(0.975, n - 1) * a.std(ddof=1) / np.sqrt(n)) if n > 1 else None
    eval_part = None if se_before is None else 1.96 * se_before
    parts = [p for p in (spread, eval_part) if p is not None]
    return {"after_mean": mean, "after": [float(x) for x in a], "gain": mean - before,
            "relative": None if before == 0 else (mean - before) / before,
            "gain_ci95_half_width": float(np.sqrt(sum(p * p for p in parts))) if spread is not None else None,
            "seed_half_width": spread, "before_half_width": eval_part}


TITLES = {**BENCH_TITLES, "dpg": "DPG-shapes (dense prompts; rows: its categories)"}


def _as_tags(c: dict | None) -> dict | None:
    """DPG-shapes compares categories where the other benchmarks compare tags (gvu.analysis.dpg.compare_dpg)."""
    if c is None or "tags" in c:
        return c
    return {**c, "images": {}, "tags": {k: v for k, v in c["categories"].items()
                                        if v["before"] is not None and v["after"] is not None}}


def aggregate(runs: list[str | os.PathLike]) -> dict:
    """Mean over the runs (one per training seed, the same base and evaluation) with combined intervals, overall and
    per tag, per benchmark."""
    reports, seeds = [], []
    for run in runs:
        path = Path(run) / "report.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no report; finish that seed's run first (the same gvu demo command "
                                    "resumes it)")
        reports.append(json.loads(path.read_text()))
        seeds.append(((reports[-1].get("demo") or {}).get("demo") or {}).get("seed"))
    out: dict = {"runs": [str(r) for r in runs], "seeds": seeds, "benchmarks": {}}
    for bench in TITLES:
        comps = [_as_tags(r["comparison"].get(bench)) for r in reports]
        if not all(comps):
            continue
        befores = {round(c["overall"]["before"], 9) for c in comps}
        if len(befores) > 1:
            raise ValueError(f"{bench}: the runs' before-scores differ ({sorted(befores)}): aggregate runs of one base "
                             "and one evaluation only")
        first = comps[0]
        before = first["overall"]["before"]
        entry = {"before": before, "se_before": first["overall"].get("se_before"),
                 "overall": _interval([c["overall"]["after"] for c in comps], before,
                                      first["overall"].get("se_before")), "tags": {}}
        for tag, v in first["tags"].items():
            n = (first.get("images") or {}).get(tag, {}).get("before")
            se = tag_variance(v["before"], n) ** 0.5 if n else None  # as the report's tag rows
            entry["tags"][tag] = {"before": v["before"],
                                  **_interval([c["tags"][tag]["after"] for c in comps], v["before"], se)}
        out["benchmarks"][bench] = entry
    return out


def markdown(agg: dict) -> str:
    seeds = ", ".join(str(s) for s in agg["seeds"])
    lines = [f"# GvU over {len(agg['runs'])} training seeds ({seeds})", "",
             "Mean of the seeds' after-scores; the gain's 95% interval combines the seeds' spread (Student's t) and "
             "the before-evaluation's sampling error (docs/protocol.md). * marks a gain whose interval excludes "
             "zero.", ""]
    for bench, e in agg["benchmarks"].items():
        lines += [f"## {TITLES[bench]}", "", "| tag | before | after (mean) | each seed | gain (95% interval) |",
                  "|---|---|---|---|---|"]
        rows = [(t, v) for t, v in e["tags"].items()] + [("**overall**", {"before": e["before"], **e["overall"]})]
        for tag, v in rows:
            half = v["gain_ci95_half_width"]
            gain = f"{v['gain']:+.3f}" + ("" if half is None else f" ± {half:.3f}" + (" *" if abs(v["gain"]) > half
                                                                                     else ""))
            lines.append(f"| {tag} | {v['before']:.3f} | {v['after_mean']:.3f} ({_pct(v['relative'])}) | "
                         f"{' / '.join(f'{a:.3f}' for a in v['after'])} | {gain} |")
        lines.append("")
    return "\n".join(lines)


def write_seeds(out: str | os.PathLike, runs: list[str | os.PathLike]) -> Path:
    """seeds.json and seeds.md in `out`, from the runs' reports."""
    agg = aggregate(runs)
    out = Path(out)
    atomic_write_text(out / "seeds.json", json.dumps(agg, indent=1) + "\n")
    atomic_write_text(out / "seeds.md", markdown(agg) + "\n")
    return out / "seeds.md"


def cmd_report(a) -> None:
    """`gvu report RUN`: rebuild a demo's report, or, on a `gvu demo --seeds` folder, its seeds.md and seeds.json."""
    runs = seed_runs(a.run)
    if runs:
        print(f"seeds: {write_seeds(a.run, runs)} (and seeds.json beside it)")
        return
    print(f"report: {write_report(a.run, oracle=a.oracle)} (and report.html, report.json beside it)")
