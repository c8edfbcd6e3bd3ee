"""Benchmarks 3 and 4: one GRPO step of gvu.rl.trainer.Trainer as `gvu train` runs it by default (TrainConfig()'s
step on the shipped bases/regular; the per-phase times it logs, seconds per kept image, peak resident memory), and
the limit: torch.matmul GFLOP/s at the model's shapes (the peak is the best of them) and the model FLOPs
utilisation (MFU = tokens/s x 6 x params / peak) of pretraining and of the update phase. 6 x params per token is
the usual estimate: it leaves out attention's S^2 terms and counts the tied lm_head on every position.

Letters: B batch, S sequence length.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

from gvu.demo import BASES
from gvu.models.builtin.model import build_builtin, save_builtin
from gvu.models.builtin.pretrain import build_pool, lm_loss, make_batch, PretrainConfig
from gvu.perf.measure import Plan, summary, timed
from gvu.rl.monitor import peak_rss_since_reset, process_peak_rss_mib, reset_peak_rss
from gvu.rl.config import TrainConfig
from gvu.rl.trainer import Trainer
from gvu.world.kinds import KINDS

# ---------------------------------------------------------------------------------------------- 3. one RL step

def _count_tokens(lm, counter: dict, key: str, only_grad: bool):
    """Forward pre-hook adding each call's real (unpadded) tokens to counter[key]."""
    import torch

    def hook(module, args, kwargs):
        if only_grad and not torch.is_grad_enabled():
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        counter[key] += int(mask.sum()) if mask is not None else ids.numel()
    return lm.register_forward_pre_hook(hook, with_kwargs=True)


STEP_FIELDS = ("prompts_per_step", "num_generations", "dynamic_sampling", "max_sampling_rounds", "curriculum",
               "minibatch_size", "num_iterations", "beta", "beta_understanding", "reward", "variant",
               "reward_scorer", "guidance_scale", "old_logp_source", "reuse_reward_pass", "share_prompt_prefix",
               "monitor_images")
"""What defines the step's work, as reported; the benchmark takes every field of TrainConfig() except where the run
goes (`step_config`), so these are the defaults unless the plan is the tiny one."""


def step_config(p: Plan, tmp: Path, name: str = "run", threads: int = 0, **changes) -> TrainConfig:
    """The trainer's default step: TrainConfig() with only the model, the run folder, no evaluation or checkpoints
    (outside the step) and the threads set; the tiny plan's overrides and `changes` (the A/B's old step) on top."""
    model = str(BASES / p.step_base) if p.step_base else str(tmp / "model")
    return TrainConfig(model=model, output_dir=str(tmp / name), eval_steps=0, save_steps=0, threads=threads,
                       **dict(p.step_overrides), **changes)


def step_trainer(p: Plan, tmp: Path, name: str = "run", threads: int = 0, **changes) -> Trainer:
    """A Trainer on step_config, the model loaded as `gvu train` loads it (a random one saved first for tiny)."""
    from transformers.utils import logging as hf_logging

    cfg = step_config(p, tmp, name, threads, **changes)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # saving and loading the model would draw bars
    try:
        if not p.step_base and not Path(cfg.model).exists():
            save_builtin(build_builtin(p.size), cfg.model)
        return Trainer(cfg)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def step_summary(logs: list[dict], kept: int) -> dict:
    """Each phase the trainer logs (and step_time) and the seconds per kept image, as summaries over the steps."""
    phases = [k for k in logs[0] if k.startswith("time/")] + ["step_time"]
    return {"phases": {k: summary([m.get(k, 0.0) for m in logs]) for k in phases},
            "s_per_kept_image": summary([m["step_time"] / kept for m in logs]),
            "sampling_rounds": [m.get("sampling_rounds", 1) for m in logs]}


def bench_step(p: Plan, threads: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tr = step_trainer(p, Path(tmp), threads=threads)
        cfg = tr.cfg
        counter = {"update": 0, "reference": 0}
        hooks = [_count_tokens(tr.policy.lm, counter, "update", only_grad=True)]
        if tr.reference is not None:
            hooks.append(_count_tokens(tr.reference.lm, counter, "reference", only_grad=False))
        tr.train_step()  # warm-up
        reset = reset_peak_rss()
        logs, tokens = [], []
        for _ in range(p.step_repeats):
            counter.update(update=0, reference=0)
            logs.append(tr.train_step())
            tokens.append(dict(counter))
        for h in hooks:
            h.remove()
        params = tr.policy.num_parameters()
    N = cfg.rows_per_step
    out = step_summary(logs, N)
    med = {k: v["median_s"] for k, v in out["phases"].items()}
    update_flops = statistics.median(6 * params * t["update"] + 2 * params * t["reference"] for t in tokens)
    return {"model": f"bases/{p.step_base}" if p.step_base else f"random {p.size}", "parameters": params,
            "images_per_step": N, "config": {k: getattr(cfg, k) for k in STEP_FIELDS}, **out, "median_s": med,
            "images_per_s": N / med["step_time"], "update_tokens": tokens[-1],
            "update_tokens_note": "tokens of every policy forward with grad (with reuse_reward_pass the reward's "
                                  "forward of the understanding sequences, whose backward runs in the update)",
            "update_flops": update_flops, "update_gflops_per_s": update_flops / med["time/update"] / 1e9,
            "peak_rss_mib": peak_rss_since_reset() if reset else process_peak_rss_mib(),
            "peak_rss_scope": "this benchmark (VmHWM reset before the timed steps)" if reset else "whole process",
            "ru_maxrss_mib": process_peak_rss_mib()}


# ---------------------------------------------------------------------------------------------- 4. the limit

def model_matmul_shapes(config, B: int, S: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    h, i, V, H = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_attention_heads
    M, d = B * S, h // H
    return {"q/k/v/o_proj": ((M, h), (h, h)), "gate/up_proj": ((M, h), (h, i)), "down_proj": ((M, i), (i, h)),
            "lm_head": ((M, h), (h, V)), "attn_scores": ((B * H, S, d), (B * H, d, S)),
            "attn_values": ((B * H, S, S), (B * H, S, d)), "square_512 (reference)": ((512, 512), (512, 512))}


def matmul_gflops(a_shape, b_shape, repeats: int, weight_layout: bool = False) -> dict:
    """GFLOP/s of a @ b. `weight_layout`: b is the transpose of a stored [out, in] matrix, as `nn.Linear` multiplies
    (the layout matters: without native bf16, a bf16 matmul on a plain [in, out] matrix runs ~20x slower)."""
    import torch

    a = torch.randn(a_shape)
    b = torch.randn(tuple(reversed(b_shape))).T if weight_layout else torch.randn(b_shape)
    flops = 2 * math.prod(a_shape) * b_shape[-1]
    torch.matmul(a, b)  # the first call allocates; time the second
    t0 = time.perf_counter()
    torch.matmul(a, b)
    inner = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))  # ~20 ms per timed repeat

    def run():
        for _ in range(inner):
            torch.matmul(a, b)
    _, t = timed(run, repeats)
    return {"a": list(a_shape), "b": list(b_shape), "flops": flops, "inner": inner,
            "gflops_per_s": flops * inner / t["median_s"] / 1e9, **t}


def bench_limit(p: Plan, step: dict | None = None) -> dict:
    import numpy as np
    import torch

    model = build_builtin(p.size)
    cfg = PretrainConfig(size=p.size, batch_size=p.pretrain_batch, num_scenes=p.pretrain_scenes)
    pool = build_pool(cfg.num_scenes, cfg.seed, KINDS, progress=False)
    rng = np.random.default_rng(0)
    S = make_batch(model, pool, cfg, rng).ids.shape[1]
    shapes = model_matmul_shapes(model.lm.config, p.pretrain_batch, S)
    mm = {k: matmul_gflops(a, b, max(5, p.repeats)) for k, (a, b) in shapes.items()}
    peak_name = max((k for k in mm if "reference" not in k), key=lambda k: mm[k]["gflops_per_s"])
    peak = mm[peak_name]["gflops_per_s"]

    lm, params = model.lm.train(), model.num_parameters()
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-4)
    times, tokens, batch_times = [], [], []
    for k in range(p.pretrain_steps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        b = make_batch(model, pool, cfg, rng)
        t1 = time.perf_counter()
        loss, _ = lm_loss(lm, b.ids, b.mask, b.labels, b.is_gen, b.neg_rows, b.true_rows, cfg.negative_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        if k:
            times.append(time.perf_counter() - t0)
            batch_times.append(t1 - t0)
            tokens.append(int(b.mask.sum()))
    tps = sum(tokens) / sum(times)
    pretrain = {"batch": p.pretrain_batch, "times_s": times, "median_s": statistics.median(times),
                "make_batch_median_s": statistics.median(batch_times), "tokens_per_s": tps,
                "gflops_per_s": 6 * params * tps / 1e9}
    out = {"model": p.size, "parameters": params, "sequence_length": S, "matmul": mm, "peak_gflops_per_s": peak,
           "peak_shape": peak_name, "square_512_gflops_per_s": mm["square_512 (reference)"]["gflops_per_s"],
           "pretrain": pretrain, "pretrain_mfu": pretrain["gflops_per_s"] / peak,
           "formula": "tokens/s x 6 x params / peak matmul GFLOP/s at the model's shapes"}
    if step is not None:
        out["update_mfu"] = step["update_gflops_per_s"] / peak
        out["update_formula"] = "(6 x params x trained tokens + 2 x params x reference tokens) / update time / peak"
    return out
