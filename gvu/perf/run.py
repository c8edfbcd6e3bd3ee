"""Performance benchmarks, `gvu bench [--only NAME,...]` (docs/design.md, "Tests and benchmarks"): each one runs a
BASELINE and OURS in the same process, asserts they compute the same numbers, and reports medians and every repeat
time as JSON. Never timed in tests. `gvu bench --full-size ARCH` runs gvu.perf.fullsize instead.

1. reward:  our one batched, log-space pass (gvu.reward.intrinsic_reward) vs the PUBLISHED loop (per prompt token a
            full forward over [understanding prefix, x_<j], one image at a time, raw probabilities multiplied,
            L-th root). Compared against the loop's own per-token probabilities multiplied in float64, because the
            published float32 product underflows to 0 on long prompts (counted in the JSON).
2. rollout: our KV-cached sampler (model.sample) vs transformers' `generate` on the same LlamaForCausalLM, with a
            logits processor masking non-image ids, top_k=0, top_p=1, temperature 1, and for guidance transformers'
            own UnbatchedClassifierFreeGuidanceLogitsProcessor (the unconditional branch is a second forward per
            step, as in the published code). Checked: generate's processed scores at every step equal our
            filter_logits on the same prefix (teacher-forced), and our sampler's recorded log-probs equal its replay.
3. step:    the default GRPO step of gvu.rl.trainer.Trainer (TrainConfig()'s settings on bases/regular; a random
            model for --size tiny): the per-phase times it logs, seconds per kept image and peak resident memory.
4. limit:   torch.matmul GFLOP/s at the model's shapes (the peak is the best of them) and the model FLOPs utilisation
            (MFU = tokens/s x 6 x params / peak) of pretraining and of the update phase. 6 x params per token is
            the usual estimate: it leaves out attention's S^2 terms and counts the tied lm_head on every position.
5. step_ab: (only when named) the default step against the step before reuse_reward_pass and monitor_images,
            paired and interleaved in one process (gvu.perf.stepab).

Every time is a median with its min and max over the repeats; every speedup the ratio of the medians with its range
from the extreme pairs (`speedup_range`: the baseline's min over our max, its max over our min). Ours and the
baseline are timed in turn (`timed_pair`), so a machine that drifts while they run moves both; benchmarks 1 and 2
run in several fresh processes one after another, their repeats pooled (gvu.perf.processes).

Letters: N rows, T image tokens, C image codes, L prompt tokens, B batch, S sequence length.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict

from gvu.perf import fullsize
from gvu.perf.measure import machine_info, plan, write_json
from gvu.perf.processes import in_processes
from gvu.perf.step import bench_limit, bench_step
from gvu.perf.stepab import bench_step_ab
from gvu.rl.monitor import process_peak_rss_mib

BENCHMARKS = ("reward", "rollout", "step", "limit", "step_ab")
DEFAULT_BENCHMARKS = BENCHMARKS[:4]  # step_ab runs when named

# ---------------------------------------------------------------------------------------------- all of them

def _headline(cases: list[dict], exact: dict, near: dict) -> dict:
    """The case matching `exact` whose `near` keys are closest (the plan's own case when it has one)."""
    cases = [c for c in cases if all(c[k] == v for k, v in exact.items())]
    return min(cases, key=lambda c: sum(abs(math.log(c[k] / v)) for k, v in near.items()))


def run_benchmarks(quick: bool = False, out: str | os.PathLike | None = None, threads: int = 0,
                   size: str = "default", repeats: int | None = None, janus: bool = True,
                   only: tuple[str, ...] = DEFAULT_BENCHMARKS) -> dict:
    """Run the benchmarks in `only`, write JSON to `out` (when given) and return it. `threads` 0 keeps torch's
    default; `size` the built-in preset ('tiny' for tests); `repeats` overrides the plan's repeat counts."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        p = plan(quick, size, repeats)
        heads: dict = {}
        res: dict = {"machine": machine_info(), "quick": quick, "plan": asdict(p), "headline_cases": heads}
        t0 = time.perf_counter()
        walls = res["wall_s_by_benchmark"] = {}
        if "reward" in only:
            t = time.perf_counter()
            res["reward"] = in_processes("reward", p, threads)
            c = _headline(res["reward"]["cases"], {}, {"prompt_tokens": 16, "batch": 16})
            res["reward_speedup"], res["reward_speedup_range"] = c["speedup"], c["speedup_range"]
            heads["reward_speedup"] = {"prompt_tokens": c["prompt_tokens"], "batch": c["batch"]}
            walls["reward"], t = time.perf_counter() - t, time.perf_counter()
            res["janus"] = in_processes("janus", p, threads) if janus else "not run"
            walls["janus"] = time.perf_counter() - t
        if "rollout" in only:
            t = time.perf_counter()
            res["rollout"] = in_processes("rollout", p, threads)
            for key, g in (("rollout_speedup_nocfg", 1.0), ("rollout_speedup_cfg", p.rollout_guidance)):
                c = _headline(res["rollout"]["cases"], {"guidance": g}, {"batch": 64})  # the goal: 2x at 64
                res[key], res[f"{key}_range"] = c["speedup"], c["speedup_range"]
                heads[key] = {"batch": c["batch"], "guidance": g}
            walls["rollout"] = time.perf_counter() - t
        if "step" in only:
            t = time.perf_counter()
            res["step"] = bench_step(p, threads)
            walls["step"] = time.perf_counter() - t
        if "limit" in only:
            t = time.perf_counter()
            res["limit"] = bench_limit(p, res.get("step"))
            res["pretrain_mfu"] = res["limit"]["pretrain_mfu"]
            res["update_mfu"] = res["limit"].get("update_mfu")
            walls["limit"] = time.perf_counter() - t
        if "step_ab" in only:
            t = time.perf_counter()
            res["step_ab"] = bench_step_ab(p, threads)
            walls["step_ab"] = time.perf_counter() - t
        res["peak_rss_mib"] = process_peak_rss_mib()
        res["wall_s"] = time.perf_counter() - t0
        res["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    finally:
        torch.set_num_threads(before)
    if out:
        write_json(out, res)
    return res


def format_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"{m['cpu']} ({m['nproc']} cpus, {m['threads']} threads, load {m['load_average']} at the start), "
             f"torch {m['torch']}; medians [min-max]",
             f"{'benchmark':30s} {'baseline s':>20s} {'ours s':>20s} {'speedup':>18s}  check"]

    def span(t):
        return f"{t['median_s']:.4f} [{t['min_s']:.3f}-{t['max_s']:.3f}]"

    def row(name, c, check):
        lo, hi = c["speedup_range"]
        lines.append(f"{name:30s} {span(c['baseline']):>20s} {span(c['ours']):>20s} "
                     f"{c['speedup']:6.2f}x [{lo:.2f}-{hi:.2f}]  {check}")
    for c in res.get("reward", {}).get("cases", []):
        row(f"reward L={c['prompt_tokens']} B={c['batch']}", c,
            f"rel {c['max_rel_diff']:.1e}; f32 product underflows {c['loop_float32_product_subnormal_or_zero']}"
            f"/{c['batch']}")
    j = res.get("janus")
    if isinstance(j, dict) and "speedup" in j:
        row(f"reward tiny Janus B={j['batch']}", j, f"rel {j['max_rel_diff']:.1e}")
    elif j is not None:
        lines.append(f"{'reward tiny Janus':34s} {j if isinstance(j, str) else j.get('error')}")
    for c in res.get("rollout", {}).get("cases", []):
        ceiling = f", ceiling {c['ceiling']:.2f}x" if "ceiling" in c else ""
        row(f"rollout B={c['batch']} guidance={c['guidance']:g}", c,
            f"|dp| {c['max_abs_diff_prob']:.1e}, ours {c['ours_tokens_per_s']:,.0f} tok/s{ceiling}")
    if "ours_fit" in res.get("rollout", {}):
        f = res["rollout"]["ours_fit"]
        lines.append(f"rollout, ours: {f['overhead_s']:.3f} s + {f['per_row_s'] * 1e3:.2f} ms per forwarded row "
                     f"(least squares over {f['points']} cases, largest residual {f['max_abs_residual_s']:.3f} s); "
                     "ceiling: the baseline over the per-row work alone")
    if "step" in res:
        s = res["step"]
        ph = ", ".join(f"{k.removeprefix('time/')} {v:.3f}" for k, v in s["median_s"].items())
        k = s["s_per_kept_image"]
        lines.append(f"RL step ({s['model']}, {s['images_per_step']} kept images): {ph} s (medians); "
                     f"{k['median_s'] * 1e3:.2f} ms per kept image [{k['min_s'] * 1e3:.2f}-{k['max_s'] * 1e3:.2f}]; "
                     f"peak RSS {s['peak_rss_mib']:.0f} MiB")
    if "step_ab" in res:
        ab = res["step_ab"]
        b, a = (ab[n]["s_per_kept_image"] for n in ("before", "after"))
        lo, hi = ab["reduction_range"]
        lines.append(f"step A/B ({ab['model']}, {len(a['times_s'])} interleaved pairs): ms per kept image before "
                     f"{b['median_s'] * 1e3:.2f} [{b['min_s'] * 1e3:.2f}-{b['max_s'] * 1e3:.2f}], after "
                     f"{a['median_s'] * 1e3:.2f} [{a['min_s'] * 1e3:.2f}-{a['max_s'] * 1e3:.2f}]; "
                     f"{ab['reduction_s_per_kept_image']:.1%} lower [{lo:.1%} to {hi:.1%}]; same work "
                     f"{ab['same_work']}, |d loss| {ab['max_abs_diff']['loss']:.1e}")
    if "limit" in res:
        li = res["limit"]
        lines.append(f"limit: peak matmul {li['peak_gflops_per_s']:.1f} GFLOP/s ({li['peak_shape']}); pretrain "
                     f"{li['pretrain']['tokens_per_s']:,.0f} tok/s, MFU {li['pretrain_mfu']:.1%}"
                     + (f"; update MFU {li['update_mfu']:.1%}" if li.get("update_mfu") is not None else ""))
    lines.append(f"peak RSS (process) {res['peak_rss_mib']:.0f} MiB; wall {res['wall_s']:.1f} s")
    return "\n".join(lines)


def cmd_bench(a: argparse.Namespace) -> None:
    if getattr(a, "full_size", None):
        res = fullsize.run_fullsize(a.full_size, out=a.out, dtype=getattr(a, "dtype", None) or "auto",
                                    **({"threads": a.threads} if a.threads else {}))
        print(fullsize.format_fullsize(res))
        if a.out:
            print(f"wrote {a.out}")
        return
    if getattr(a, "dtype", None):
        raise ValueError("--dtype sets the weights of the full-size step; give it with --full-size ARCH")
    res = run_benchmarks(quick=a.quick, out=a.out, threads=a.threads, size=a.size, repeats=a.repeats,
                         only=a.only or DEFAULT_BENCHMARKS)
    print(format_table(res))
    if a.out:
        print(f"wrote {a.out}")
