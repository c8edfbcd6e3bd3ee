"""The comparisons against a baseline (reward, Janus reward, rollout) run in several fresh processes, one after
another, and their repeats pooled: two runs of `gvu bench --quick` minutes apart differed in a case's median by
more than the spread of its repeats in one process (docs/performance.md, "Two quick runs in a row"), so part of
what moves a timing is fixed for a process's life (where its tensors landed in memory, the state of the machine
when it started) and only repeats from several processes show it. Each process times its own repeats after its
own warm-up; the pooled summary is the median, min and max over all of them, the speedup's range the extreme
pairs over all of them, and each side keeps every process's median (`process_medians`)."""

from __future__ import annotations

import multiprocessing

from gvu.perf.measure import Plan, speedup, speedup_range, summary
from gvu.perf.reward import bench_janus_reward, bench_reward
from gvu.perf.rollout import bench_rollout, fit_and_ceilings

BENCH = {"reward": bench_reward, "janus": bench_janus_reward, "rollout": bench_rollout}


def _run_one(name: str, p: Plan, threads: int):
    import torch

    if threads:
        torch.set_num_threads(threads)
    return BENCH[name](p)


def in_processes(name: str, p: Plan, threads: int = 0):
    """BENCH[name](p) in `p.processes` fresh processes one after another (in this one where it is 1), merged."""
    if p.processes <= 1:
        return BENCH[name](p)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:  # a new process for every run
        parts = [pool.apply(_run_one, (name, p, threads)) for _ in range(p.processes)]
    return merge(name, parts)


def merge_case(cases: list[dict]) -> dict:
    """One case timed in several processes: both sides' repeats pooled in process order, the speedup and its
    range recomputed over them, every `max_*` check the largest, `checked` only where every process checked."""
    out = dict(cases[0])
    for side in ("baseline", "ours"):
        out[side] = {**summary([t for c in cases for t in c[side]["times_s"]]),
                     "process_medians": [c[side]["median_s"] for c in cases],
                     "calls_per_sample": [c[side].get("calls_per_sample", 1) for c in cases]}
    out["speedup"], out["speedup_range"] = speedup(out["baseline"], out["ours"]), speedup_range(out["baseline"],
                                                                                                out["ours"])
    out["process_speedups"] = [speedup(c["baseline"], c["ours"]) for c in cases]
    for key, value in cases[0].items():
        if key.startswith("max_") and isinstance(value, (int, float)):
            out[key] = max(c[key] for c in cases)
    if "checked" in out:
        out["checked"] = all(c.get("checked") is True for c in cases)
    return out


def merge(name: str, parts: list) -> dict | str:
    """A benchmark's results from several processes as one (see merge_case); a part that reports an error (the
    optional Janus adapter) is returned as it is."""
    bad = next((x for x in parts if not isinstance(x, dict) or "error" in x), None)
    if bad is not None:
        return bad
    if name == "janus":
        return {**merge_case(parts), "processes": len(parts)}
    out = {**parts[0], "processes": len(parts),
           "cases": [merge_case([x["cases"][i] for x in parts]) for i in range(len(parts[0]["cases"]))]}
    if name == "rollout":  # what is derived from the medians, from the pooled ones
        T = out["image_tokens"]
        for c in out["cases"]:
            c["baseline_tokens_per_s"] = c["batch"] * T / c["baseline"]["median_s"]
            c["ours_tokens_per_s"] = c["batch"] * T / c["ours"]["median_s"]
        out["ours_fit"] = fit_and_ceilings(out["cases"])
    return out
