"""Benchmark 5, `gvu bench --only step_ab`: today's default step against the step before it, paired and interleaved
in one process. Two trainers start from the same base with the same seed: BEFORE recomputes the policy's prompt
log-probs in the update, judges every kept image and runs every row's whole generation sequence in the
teacher-forced passes (reuse_reward_pass false, monitor_images 0, share_prompt_prefix false), AFTER is
TrainConfig()'s step. Their steps alternate (A B, B A, A B, ...: neither always runs second, on a warm cache or a
hotter CPU), and as the two steps compute the same numbers up to float rounding, step k of both does the same work
(the same draws, the same number of sampling rounds): checked, with the largest differences of the logged loss and
reward reported.

Reported per arm: each phase and the seconds per kept image as median, min and max over the paired steps; then the
reduction of the seconds per kept image, 1 - median(after) / median(before), with its range from the extreme pairs,
[1 - max(after) / min(before), 1 - min(after) / max(before)], and the median and range of the per-pair reductions
1 - after_k / before_k.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from gvu.perf.measure import Plan
from gvu.perf.step import step_summary, step_trainer, STEP_FIELDS

BEFORE = {"reuse_reward_pass": False, "monitor_images": 0, "share_prompt_prefix": False}
"""The step before the reuse of the reward's forward, the sampled monitor and the shared prompt prefix."""


def bench_step_ab(p: Plan, threads: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        arms = {"before": step_trainer(p, Path(tmp), "before", threads, **BEFORE),
                "after": step_trainer(p, Path(tmp), "after", threads)}
        for tr in arms.values():  # warm-up: both take their first step, untimed
            tr.train_step()
        logs: dict[str, list[dict]] = {k: [] for k in arms}
        for k in range(p.step_repeats):
            for name in (("before", "after") if k % 2 == 0 else ("after", "before")):
                logs[name].append(arms[name].train_step())
        cfg = arms["after"].cfg
    kept = cfg.rows_per_step
    res = {name: step_summary(ls, kept) for name, ls in logs.items()}
    b, a = (res[n]["s_per_kept_image"] for n in ("before", "after"))
    pairs = [1 - x / y for x, y in zip(a["times_s"], b["times_s"])]
    same = {key: max(abs(x[key] - y[key]) for x, y in zip(logs["before"], logs["after"])) for key in ("loss", "reward")}
    return {"model": f"bases/{p.step_base}" if p.step_base else f"random {p.size}", "images_per_step": kept,
            "config": {k: getattr(cfg, k) for k in STEP_FIELDS}, "before_changes": BEFORE, **res,
            "reduction_s_per_kept_image": 1 - a["median_s"] / b["median_s"],
            "reduction_range": [1 - a["max_s"] / b["min_s"], 1 - a["min_s"] / b["max_s"]],
            "paired_reductions": {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs),
                                  "values": pairs},
            "same_work": res["before"]["sampling_rounds"] == res["after"]["sampling_rounds"],
            "max_abs_diff": same}
