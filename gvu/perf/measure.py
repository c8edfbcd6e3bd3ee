"""What every speed benchmark shares (gvu.perf): the plan of what to run, machine information, timing medians and
peak resident memory. See gvu/perf/run.py for the benchmarks themselves."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path


REWARD_RTOL = 1e-5  # reward values: ours vs the published loop's probabilities multiplied in float64
TOKEN_RTOL = 1e-5  # each prompt token's probability (float32 softmax in both, different batch shapes)
SCORES_PROB_ATOL = 1e-5  # rollout: per-step probabilities, generate's processed scores vs our filter_logits
SCORES_LOGP_ATOL = 1e-5  # the same as log-probs (on codes with probability > 1e-6), and our replay


@dataclass(frozen=True)
class Plan:
    """What each benchmark runs; `plan(quick, size)` picks one."""

    size: str = "default"
    repeats: int = 2  # timed repeats of every measurement of ours, in each of `processes`
    baseline_repeats: int = 2  # of the slow baselines (the published loop, transformers' generate)
    processes: int = 3  # the comparisons run in this many fresh processes, their repeats pooled (gvu.perf.processes)
    reward_lengths: tuple[int, ...] = (8, 16, 32)
    reward_batches: tuple[int, ...] = (1, 16, 64)
    rollout_batches: tuple[int, ...] = (16, 64)
    rollout_guidance: float = 3.0
    step_base: str = "regular"  # the step starts from bases/<step_base> as the trainer loads it; "": random init
    step_overrides: tuple[tuple[str, object], ...] = ()  # TrainConfig fields changed from their defaults (tiny only)
    step_repeats: int = 5
    min_sample_s: float = 0.1  # a timed sample of the reward and the rollout lasts at least this (calls in a row)
    pretrain_batch: int = 64
    pretrain_steps: int = 10
    pretrain_scenes: int = 2000
    janus_batch: int = 4


def plan(quick: bool, size: str = "default", repeats: int | None = None) -> Plan:
    p = Plan(size=size)
    if quick:  # fewer sizes, as many repeats and processes (the range of one run has to hold the next run's median:
        # docs/performance.md); the step keeps 3 (its 8-10 s repeats are most of the quick run's time)
        p = replace(p, reward_batches=(1, 16), step_repeats=3, pretrain_steps=3,
                    pretrain_scenes=256)
    if size == "tiny":  # tests and smoke runs: the smallest cases that still exercise every path, a random model
        p = replace(p, reward_lengths=(16, 32), reward_batches=(4,), rollout_batches=(8,), step_base="",
                    step_overrides=(("prompts_per_step", 2), ("num_generations", 4)), min_sample_s=0.0,
                    processes=1, pretrain_batch=16, pretrain_scenes=64, janus_batch=1)
    if repeats is not None:
        p = replace(p, repeats=repeats, baseline_repeats=repeats, step_repeats=repeats, pretrain_steps=max(2, repeats))
    return p


# ---------------------------------------------------------------------------------------------- measuring

def machine_info() -> dict:
    import torch
    import transformers

    cpu = cpuinfo("model name") or platform.processor() or "unknown"
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu, "nproc": nproc,
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def summary(times: list[float]) -> dict:
    """{median_s, min_s, max_s, times_s} of repeated timings."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": list(times)}


def timed(fn, repeats: int, warmup: int = 1):
    """(last result, summary) of `fn()` run `warmup` times untimed, then `repeats` times."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, summary(times)


def _calls_per_sample(fn, warmup: int, min_sample_s: float) -> int:
    """Run `fn` `warmup` times; the number of calls one timed sample needs to last `min_sample_s` by the last
    warm-up call's time (1 without warm-up or without a minimum)."""
    took = 0.0
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        took = time.perf_counter() - t
    if not warmup or min_sample_s <= 0:
        return 1
    return max(1, min(1000, math.ceil(min_sample_s / max(took, 1e-9))))


def timed_pair(ours_fn, base_fn, repeats: int, base_repeats: int, warmup: int = 1, base_warmup: int = 1,
               min_sample_s: float = 0.0):
    """(our last result, our summary, the baseline's last result, its summary), the two timed in turn (ours, the
    baseline, ours, ...) after their warm-ups, so that a machine that slows down or speeds up while they run slows
    or speeds both: two runs of a benchmark then differ in their ratio less than in either time. Each summary
    carries `times_s` in the order run. With `min_sample_s`, a function whose warm-up call took less runs that
    many times in a row per sample (`calls_per_sample`) and each time is the mean of one call in it: a 7 ms call
    timed alone varies with every interruption of the machine, a run of fifteen much less."""
    n_ours = _calls_per_sample(ours_fn, warmup, min_sample_s)
    n_base = _calls_per_sample(base_fn, base_warmup, min_sample_s)
    t_ours, t_base, ours, base = [], [], None, None
    for r in range(max(repeats, base_repeats, 1)):
        if r < max(1, repeats):
            t = time.perf_counter()
            for _ in range(n_ours):
                ours = ours_fn()
            t_ours.append((time.perf_counter() - t) / n_ours)
        if r < max(1, base_repeats):
            t = time.perf_counter()
            for _ in range(n_base):
                base = base_fn()
            t_base.append((time.perf_counter() - t) / n_base)
    return ours, {**summary(t_ours), "calls_per_sample": n_ours}, base, {**summary(t_base), "calls_per_sample": n_base}


def cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo ("model name", "flags"); None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def write_json(out, res: dict) -> None:
    """A benchmark's JSON at `out` (its folder made)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=1) + "\n")


def speedup(base: dict, ours: dict) -> float:
    """The ratio of the medians, baseline over ours."""
    return base["median_s"] / ours["median_s"]


def speedup_range(base: dict, ours: dict) -> list[float]:
    """[lowest, highest] speedup over the extreme pairs of repeats: the baseline's fastest over our slowest, its
    slowest over our fastest (every pairing of one baseline time and one of ours lies inside)."""
    return [base["min_s"] / ours["max_s"], base["max_s"] / ours["min_s"]]
