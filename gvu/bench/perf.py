"""Performance benchmarks (docs/design.md, "Tests and benchmarks"): each one runs a BASELINE and OURS in the same
process, asserts they compute the same numbers, and reports medians and every repeat time as JSON. Never timed in
tests.

1. reward:  our one batched, log-space pass (gvu.reward.intrinsic_reward) vs the PUBLISHED loop (per prompt token a
            full forward over [understanding prefix, x_<j], one image at a time, raw probabilities multiplied,
            L-th root). Compared against the loop's own per-token probabilities multiplied in float64, because the
            published float32 product underflows to 0 on long prompts (counted in the JSON).
2. rollout: our KV-cached sampler (model.sample) vs transformers' `generate` on the same LlamaForCausalLM, with a
            logits processor masking non-image ids, top_k=0, top_p=1, temperature 1, and for guidance transformers'
            own UnbatchedClassifierFreeGuidanceLogitsProcessor (the unconditional branch is a second forward per
            step, as in the published code). Checked: generate's processed scores at every step equal our
            filter_logits on the same prefix (teacher-forced), and our sampler's recorded log-probs equal its replay.
3. step:    one GRPO step of gvu.rl.trainer.Trainer on a randomly initialised model: the per-phase times it logs,
            images/s and peak resident memory.
4. limit:   torch.matmul GFLOP/s at the model's shapes (the peak is the best of them) and the model FLOPs utilisation
            (MFU = tokens/s x 6 x params / peak) of pretraining and of the update phase. 6 x params per token is
            the usual estimate: it leaves out attention's S^2 terms and counts the tied lm_head on every position.

Letters: N rows, T image tokens, C image codes, L prompt tokens, B batch, S sequence length.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REWARD_RTOL = 1e-5  # reward values: ours vs the published loop's probabilities multiplied in float64
TOKEN_RTOL = 1e-5  # each prompt token's probability (float32 softmax in both, different batch shapes)
SCORES_PROB_ATOL = 1e-5  # rollout: per-step probabilities, generate's processed scores vs our filter_logits
SCORES_LOGP_ATOL = 1e-5  # the same as log-probs (on codes with probability > 1e-6), and our replay


@dataclass(frozen=True)
class Plan:
    """What each benchmark runs; `plan(quick, size)` picks one."""

    size: str = "default"
    repeats: int = 5  # timed repeats of every measurement of ours
    baseline_repeats: int = 3  # of the slow baselines (the published loop, transformers' generate)
    reward_lengths: tuple[int, ...] = (8, 16, 32)
    reward_batches: tuple[int, ...] = (1, 16, 64)
    rollout_batches: tuple[int, ...] = (16, 64)
    rollout_guidance: float = 3.0
    step_prompts: int = 16  # TrainConfig's defaults: 16 prompts x 8 images, minibatches of 64
    step_generations: int = 8
    step_minibatch: int = 64
    step_repeats: int = 5
    pretrain_batch: int = 64
    pretrain_steps: int = 10
    pretrain_scenes: int = 2000
    janus_batch: int = 4


def plan(quick: bool, size: str = "default", repeats: int | None = None) -> Plan:
    p = Plan(size=size)
    if quick:
        p = replace(p, repeats=2, baseline_repeats=1, reward_batches=(1, 16), rollout_batches=(16,), step_repeats=2,
                    pretrain_steps=3, pretrain_scenes=256)
    if size == "tiny":  # tests and smoke runs: the smallest cases that still exercise every path
        p = replace(p, reward_lengths=(16, 32), reward_batches=(4,), rollout_batches=(8,), step_prompts=2,
                    step_generations=4, step_minibatch=8, pretrain_batch=16, pretrain_scenes=64, janus_batch=1)
    if repeats is not None:
        p = replace(p, repeats=repeats, baseline_repeats=repeats, step_repeats=repeats, pretrain_steps=max(2, repeats))
    return p


# ---------------------------------------------------------------------------------------------- measuring

def machine_info() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu, "nproc": nproc,
            "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def timed(fn, repeats: int, warmup: int = 1):
    """(last result, {median_s, times_s}) of `fn()` run `warmup` times untimed, then `repeats` times."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, {"median_s": statistics.median(times), "times_s": times}


def ru_maxrss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (2 ** 20 if sys.platform == "darwin" else 1024)


def reset_peak_rss() -> bool:
    """Linux: reset this process's VmHWM so `peak_rss_since_reset` measures one phase; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _speedup(base: dict, ours: dict) -> float:
    return base["median_s"] / ours["median_s"]


# ---------------------------------------------------------------------------------------------- 1. reward

def _long_color_attr(L: int, k: int) -> str:
    """A colour-attribute prompt of exactly L tokens in the grammar's words: 'a photo of a red circle, a blue
    star, ..., and a ...', with 'larger' on the first (L - 3) % 4 objects to hit the length."""
    from gvu.world import spec

    n, extra = divmod(L - 3, 4)
    if n < 2:
        raise ValueError(f"no constructed prompt of {L} tokens")
    items = []
    for i in range(n):
        size = "larger " if i < extra else ""
        color, shape = spec.COLORS[(i + k) % len(spec.COLORS)], spec.SHAPES[(3 * i + k) % len(spec.SHAPES)]
        items.append(f"a {size}{color} {shape}")
    return "a photo of " + ", ".join(items[:-1]) + ", and " + items[-1]


@functools.lru_cache(maxsize=2)
def train_prompts(n: int) -> tuple[str, ...]:
    """The first n distinct prompts of the built-in training set (building it takes a while: cached)."""
    from gvu.bench.prompts import build_train

    return tuple(dict.fromkeys(r["prompt"] for r in build_train("shapes", seed=0, n=n)))


def prompts_of_length(tokenizer, L: int, n: int) -> tuple[list[str], str]:
    """n prompts of exactly L tokens: distinct grammar prompts (training set) when there are some, else constructed."""
    exact = [q for q in train_prompts(1000) if len(tokenizer.encode(q)) == L]
    if exact:
        return [exact[i % len(exact)] for i in range(n)], "grammar"
    prompts = [_long_color_attr(L, k) for k in range(n)]
    assert all(len(tokenizer.encode(p)) == L for p in prompts)
    return prompts, "constructed color_attr"


def published_reward(model, codes_T: list[int], prompt: str, instruction: str):
    """The published algorithm, literally (as in tests/test_reward.py): one image, a full forward per prompt token,
    a float32 product of raw probabilities, the L-th root. Returns (reward, the per-token probabilities)."""
    import torch

    inst_ids = model.tokenizer.encode(instruction)
    x = model.tokenizer.encode(prompt)
    prefix = model.layout.understanding_prefix(list(codes_T), inst_ids)
    prod, probs = torch.tensor(1.0, dtype=torch.float32), []
    with torch.no_grad():
        for j in range(len(x)):
            logits = model.lm(input_ids=torch.tensor([prefix + x[:j]])).logits[0, -1]
            p = torch.softmax(logits.float(), dim=-1)[x[j]]
            probs.append(p.item())
            prod = prod * p
    return (prod ** (1.0 / len(x))).item(), probs


def _compare_reward(ours, loop: list) -> dict:
    """Ours vs the loop: reward values against the float64 product of the loop's probabilities, and token by token."""
    import numpy as np

    r32 = np.array([r for r, _ in loop], dtype=np.float64)
    r64 = np.array([np.prod(np.array(p, dtype=np.float64)) ** (1.0 / len(p)) for _, p in loop])
    mine = ours.reward_N.double().numpy()
    assert (r64 > 0).all(), "the loop's float64 product underflowed too: use shorter prompts"
    rel = float(np.max(np.abs(mine - r64) / r64))
    tok = 0.0
    for n, (_, p) in enumerate(loop):
        q = ours.logp_NL[n, :len(p)].double().exp().numpy()
        tok = max(tok, float(np.max(np.abs(q - p) / np.array(p))))
    normal = r32 ** np.array([len(p) for _, p in loop]) >= np.finfo(np.float32).tiny  # product stayed normal
    assert rel <= REWARD_RTOL, f"reward differs from the published loop: max relative difference {rel:.3g}"
    assert tok <= TOKEN_RTOL, f"a prompt token's probability differs from the published loop's by {tok:.3g} (relative)"
    return {"checked": True, "compared": "ours vs the loop's per-token probabilities multiplied in float64",
            "max_rel_diff": rel, "max_token_rel_diff": tok, "rtol": REWARD_RTOL,
            "loop_float32_zero": int((r32 == 0).sum()), "loop_float32_product_subnormal_or_zero": int((~normal).sum()),
            "max_rel_diff_vs_float32_loop": float(np.max(np.abs(mine - r32)[normal] / r32[normal])) if normal.any()
            else None}


def bench_reward(p: Plan, model=None) -> dict:
    import torch

    from gvu.models.builtin import build_builtin
    from gvu.reward import RewardConfig, intrinsic_reward

    model = model or build_builtin(p.size)
    cfg = RewardConfig(micro_batch=max(p.reward_batches))  # one pass per batch
    gen = torch.Generator().manual_seed(0)
    cases = []
    for L in p.reward_lengths:
        for B in p.reward_batches:
            prompts, source = prompts_of_length(model.tokenizer, L, B)
            codes = torch.randint(0, model.layout.num_codes, (B, model.layout.num_image_tokens), generator=gen)
            ours, t_ours = timed(lambda: intrinsic_reward(model, codes, prompts, cfg), p.repeats)
            loop, t_loop = timed(lambda: [published_reward(model, c, q, cfg.instruction)
                                          for c, q in zip(codes.tolist(), prompts)], p.baseline_repeats, warmup=0)
            cases.append({"prompt_tokens": L, "batch": B, "prompts": source, "example": prompts[0],
                          "baseline": t_loop, "ours": t_ours, "speedup": _speedup(t_loop, t_ours),
                          **_compare_reward(ours, loop)})
    return {"model": p.size, "instruction": cfg.instruction, "cases": cases}


def bench_janus_reward(p: Plan) -> dict | str:
    """The same comparison on a tiny random Janus (a decoupled model: the reward reads pixels through SigLIP)."""
    try:
        from gvu.models.janus import build_tiny_janus
    except ImportError as err:
        return f"not available ({err})"
    import torch

    from gvu.reward import RewardConfig, intrinsic_reward

    try:
        model = build_tiny_janus()
        cfg = RewardConfig()
        prompts = prompts_of_length(_Words(), 16, p.janus_batch)[0]
        codes = torch.randint(0, model.num_codes, (p.janus_batch, model.num_image_tokens),
                              generator=torch.Generator().manual_seed(0))

        def loop():
            out = []
            for c, q in zip(codes, prompts):  # published: decode, preprocess, then a full forward per token
                pv = model.pixel_values(model.decode(c[None]))
                prefix, ans = model.understanding_prefix(cfg.instruction), model.answer_ids(q)
                prod, probs = torch.tensor(1.0), []
                with torch.no_grad():
                    for j in range(len(ans)):
                        logits = model.lm(input_ids=torch.tensor([prefix + ans[:j]]), pixel_values=pv).logits[0, -1]
                        pj = torch.softmax(logits.float(), dim=-1)[ans[j]]
                        probs.append(pj.item())
                        prod = prod * pj
                out.append(((prod ** (1.0 / len(ans))).item(), probs))
            return out

        ours, t_ours = timed(lambda: intrinsic_reward(model, codes, prompts, cfg), p.repeats)
        res, t_loop = timed(loop, p.baseline_repeats, warmup=0)
        return {"model": "tiny random Janus (gvu.models.janus.build_tiny_janus)", "batch": p.janus_batch,
                "prompt_tokens_mean": statistics.mean(len(x) for _, x in res), "baseline": t_loop, "ours": t_ours,
                "speedup": _speedup(t_loop, t_ours), **_compare_reward(ours, res)}
    except Exception as err:  # the Janus adapter is optional and young: report, never break the other benchmarks
        return {"checked": False, "error": f"{type(err).__name__}: {err}"}


class _Words:
    """Counts words the way the built-in tokenizer does, to pick prompts of a given length for other tokenizers."""

    def encode(self, text: str) -> list[str]:
        from gvu.models.tokenizer import split_words
        return split_words(text)


# ---------------------------------------------------------------------------------------------- 2. rollout

def _image_only(offset: int, num_codes: int):
    import torch
    from transformers import LogitsProcessor

    class ImageOnly(LogitsProcessor):
        """Every id outside the image codes to -inf (our sampler slices the code range instead)."""

        def __call__(self, input_ids, scores):
            out = torch.full_like(scores, -math.inf)
            out[:, offset:offset + num_codes] = scores[:, offset:offset + num_codes]
            return out

    return ImageOnly()


def hf_generate(model, prompts_N: list[str], sampling, scores: bool = False):
    """Image codes [N, T] drawn by transformers' generate (and its processed scores per step when asked)."""
    import torch
    from transformers import LogitsProcessorList

    from gvu.models.forward import pad_batch

    lay, T = model.layout, model.layout.num_image_tokens
    ids, mask = pad_batch([lay.generation_prefix(x) for x in model._encode_prompts(prompts_N)], lay.pad_id, "left")
    kw = {}
    if sampling.uses_guidance:  # the unconditional rows: the empty prompt, as our sampler builds them
        u = torch.tensor([lay.generation_prefix([])] * len(prompts_N))
        kw = dict(guidance_scale=sampling.guidance, negative_prompt_ids=u,
                  negative_prompt_attention_mask=torch.ones_like(u))
    out = model.lm.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                            temperature=sampling.temperature, max_new_tokens=T, pad_token_id=lay.pad_id,
                            logits_processor=LogitsProcessorList([_image_only(lay.image_token_offset, lay.num_codes)]),
                            output_scores=scores, return_dict_in_generate=True, **kw)
    codes = out.sequences[:, ids.shape[1]:] - lay.image_token_offset
    assert codes.shape == (len(prompts_N), T) and codes.min() >= 0 and codes.max() < lay.num_codes
    return codes, out.scores


def teacher_forced_distribution(model, prompts_N: list[str], codes_NT, sampling):
    """Our sampling distribution [N, T, C] (filter_logits) at every prefix of the given codes, in one forward."""
    import torch

    from gvu.models.forward import pad_batch, positions

    lay, guided, (N, T) = model.layout, sampling.uses_guidance, codes_NT.shape
    pre, pmask = pad_batch(model._generation_prefixes(model._encode_prompts(prompts_N), guided), lay.pad_id, "left")
    img = (codes_NT[:, :-1] + lay.image_token_offset).repeat(2 if guided else 1, 1)
    ids, mask = torch.cat([pre, img], 1), torch.cat([pmask, torch.ones_like(img)], 1)
    with torch.no_grad():
        logits = model.lm(input_ids=ids, attention_mask=mask, position_ids=positions(mask), logits_to_keep=T).logits
    C = lay.num_codes
    return model._step_logprobs(model._code_logits(logits).reshape(-1, C), N * T, sampling).reshape(N, T, C)


def _check_rollout(model, prompts_N, sampling, group: int) -> dict:
    import torch

    codes, scores = hf_generate(model, prompts_N, sampling, scores=True)
    lay = model.layout
    hf = torch.log_softmax(torch.stack(scores, 1)[..., lay.image_token_offset:][..., :lay.num_codes].float(), -1)
    ours = teacher_forced_distribution(model, prompts_N, codes, sampling)
    dp = (hf.exp() - ours.exp()).abs().max().item()
    big = ours.exp() > 1e-6
    dlogp = (hf - ours)[big].abs().max().item()
    # our sampler's recorded log-probs against its own teacher-forced replay
    roll = model.sample(prompts_N[::group], group, sampling, torch.Generator().manual_seed(1))
    with torch.no_grad():
        replay = model.image_logprobs(roll.row_prompts(), roll.image_tokens_NT, sampling)
    dreplay = (replay - roll.logp_NT).abs().max().item()
    assert dp <= SCORES_PROB_ATOL and dlogp <= SCORES_LOGP_ATOL, \
        f"generate's processed scores differ from our filter_logits: |dp| {dp:.3g}, |dlogp| {dlogp:.3g}"
    assert dreplay <= SCORES_LOGP_ATOL, f"our sampler's log-probs differ from their replay by {dreplay:.3g}"
    return {"checked": True, "compared": "generate's processed scores per step vs our filter_logits on the same prefix "
            "(teacher-forced), all codes; our sampler's log-probs vs image_logprobs", "max_abs_diff_prob": dp,
            "max_abs_diff_logp": dlogp, "ours_replay_max_abs_diff_logp": dreplay, "atol_prob": SCORES_PROB_ATOL,
            "atol_logp": SCORES_LOGP_ATOL}


def bench_rollout(p: Plan, model=None) -> dict:
    import torch

    from gvu.models.builtin import build_builtin
    from gvu.models.protocol import SamplingConfig

    model = model or build_builtin(p.size)
    T = model.layout.num_image_tokens
    pool = train_prompts(1000)
    cases = []
    with torch.random.fork_rng(devices=[]):  # generate draws from the global generator: leave it as it was
        torch.manual_seed(0)
        for B in p.rollout_batches:
            G = min(8, B)  # TrainConfig's group size
            prompts = list(pool[:B // G])
            rows = [q for q in prompts for _ in range(G)]
            for guidance in (1.0, p.rollout_guidance):
                s = SamplingConfig(guidance=guidance)
                gen = torch.Generator().manual_seed(0)
                _, t_ours = timed(lambda: model.sample(prompts, G, s, gen), p.repeats)
                _, t_hf = timed(lambda: hf_generate(model, rows, s), p.baseline_repeats)
                cases.append({"batch": B, "group_size": G, "guidance": guidance, "baseline": t_hf, "ours": t_ours,
                              "speedup": _speedup(t_hf, t_ours), "baseline_tokens_per_s": B * T / t_hf["median_s"],
                              "ours_tokens_per_s": B * T / t_ours["median_s"], **_check_rollout(model, rows, s, G)})
    return {"model": p.size, "image_tokens": T, "baseline_name": "transformers generate (unbatched CFG processor)",
            "sampling": "temperature 1, top_k 0, top_p 1, min_p 0", "cases": cases}


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


def bench_step(p: Plan, threads: int = 0) -> dict:
    from transformers.utils import logging as hf_logging

    from gvu.models.builtin import build_builtin, save_builtin
    from gvu.rl.config import TrainConfig
    from gvu.rl.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        model = build_builtin(p.size)
        cfg = TrainConfig(model=str(Path(tmp) / "model"), output_dir=str(Path(tmp) / "run"), num_prompts=64,
                          prompts_per_step=p.step_prompts, num_generations=p.step_generations,
                          minibatch_size=p.step_minibatch, eval_steps=0, save_steps=0, threads=threads)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # saving and loading the model would draw bars
        try:
            save_builtin(model, cfg.model)
            tr = Trainer(cfg)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
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
        params = model.num_parameters()
    phases = [k for k in logs[0] if k.startswith("time/")] + ["step_time"]  # whatever phases the trainer logs
    med = {k: statistics.median(m[k] for m in logs) for k in phases}
    update_flops = statistics.median(6 * params * t["update"] + 2 * params * t["reference"] for t in tokens)
    N = cfg.rows_per_step
    return {"model": p.size, "parameters": params, "images_per_step": N, "config": {
                k: getattr(cfg, k) for k in ("prompts_per_step", "num_generations", "minibatch_size", "num_iterations",
                                             "beta", "guidance_scale", "reward_variant")},
            "median_s": med, "times_s": {k: [m[k] for m in logs] for k in phases},
            "images_per_s": N / med["step_time"], "update_tokens": tokens[-1],
            "update_flops": update_flops, "update_gflops_per_s": update_flops / med["time/update"] / 1e9,
            "peak_rss_mib": peak_rss_since_reset() if reset else ru_maxrss_mib(),
            "peak_rss_scope": "this benchmark (VmHWM reset before the timed steps)" if reset else "whole process",
            "ru_maxrss_mib": ru_maxrss_mib()}


# ---------------------------------------------------------------------------------------------- 4. the limit

def model_matmul_shapes(config, B: int, S: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    h, i, V, H = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_attention_heads
    M, d = B * S, h // H
    return {"q/k/v/o_proj": ((M, h), (h, h)), "gate/up_proj": ((M, h), (h, i)), "down_proj": ((M, i), (i, h)),
            "lm_head": ((M, h), (h, V)), "attn_scores": ((B * H, S, d), (B * H, d, S)),
            "attn_values": ((B * H, S, S), (B * H, S, d)), "square_512 (reference)": ((512, 512), (512, 512))}


def matmul_gflops(a_shape, b_shape, repeats: int) -> dict:
    import torch

    a, b = torch.randn(a_shape), torch.randn(b_shape)
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

    from gvu.bench.prompts import KINDS
    from gvu.models.builtin import build_builtin
    from gvu.models.pretrain import PretrainConfig, build_pool, lm_loss, make_batch

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


# ---------------------------------------------------------------------------------------------- all of them

def _headline(cases: list[dict], exact: dict, near: dict) -> dict:
    """The case matching `exact` whose `near` keys are closest (the plan's own case when it has one)."""
    cases = [c for c in cases if all(c[k] == v for k, v in exact.items())]
    return min(cases, key=lambda c: sum(abs(math.log(c[k] / v)) for k, v in near.items()))


def run_benchmarks(quick: bool = False, out: str | os.PathLike | None = None, threads: int = 0,
                   size: str = "default", repeats: int | None = None, janus: bool = True,
                   only: tuple[str, ...] = ("reward", "rollout", "step", "limit")) -> dict:
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
            res["reward"] = bench_reward(p)
            c = _headline(res["reward"]["cases"], {}, {"prompt_tokens": 16, "batch": 16})
            res["reward_speedup"] = c["speedup"]
            heads["reward_speedup"] = {"prompt_tokens": c["prompt_tokens"], "batch": c["batch"]}
            walls["reward"], t = time.perf_counter() - t, time.perf_counter()
            res["janus"] = bench_janus_reward(p) if janus else "not run"
            walls["janus"] = time.perf_counter() - t
        if "rollout" in only:
            t = time.perf_counter()
            res["rollout"] = bench_rollout(p)
            for key, g in (("rollout_speedup_nocfg", 1.0), ("rollout_speedup_cfg", p.rollout_guidance)):
                c = _headline(res["rollout"]["cases"], {"guidance": g}, {"batch": 16})
                res[key] = c["speedup"]
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
        res["peak_rss_mib"] = ru_maxrss_mib()
        res["wall_s"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1) + "\n")
    return res


def format_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"{m['cpu']} ({m['nproc']} cpus, {m['threads']} threads, load {m['load_average']}), torch {m['torch']}",
             f"{'benchmark':34s} {'baseline s':>11s} {'ours s':>9s} {'speedup':>8s}  check"]

    def row(name, c, check):
        lines.append(f"{name:34s} {c['baseline']['median_s']:11.4f} {c['ours']['median_s']:9.4f} "
                     f"{c['speedup']:7.1f}x  {check}")
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
        row(f"rollout B={c['batch']} guidance={c['guidance']:g}", c,
            f"|dp| {c['max_abs_diff_prob']:.1e}, ours {c['ours_tokens_per_s']:,.0f} tok/s")
    if "step" in res:
        s = res["step"]
        ph = ", ".join(f"{k.removeprefix('time/')} {v:.3f}" for k, v in s["median_s"].items())
        lines.append(f"RL step ({s['images_per_step']} images): {ph} s; {s['images_per_s']:.1f} images/s; "
                     f"peak RSS {s['peak_rss_mib']:.0f} MiB")
    if "limit" in res:
        li = res["limit"]
        lines.append(f"limit: peak matmul {li['peak_gflops_per_s']:.1f} GFLOP/s ({li['peak_shape']}); pretrain "
                     f"{li['pretrain']['tokens_per_s']:,.0f} tok/s, MFU {li['pretrain_mfu']:.1%}"
                     + (f"; update MFU {li['update_mfu']:.1%}" if li.get("update_mfu") is not None else ""))
    lines.append(f"peak RSS (process) {res['peak_rss_mib']:.0f} MiB; wall {res['wall_s']:.1f} s")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a smoke run, not a measurement)")
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--size", choices=["default", "tiny"], default="default", help="built-in model preset")
    parser.add_argument("--repeats", type=int, default=None, help="override every repeat count")
    from gvu.bench.fullsize import ARCHS

    parser.add_argument("--full-size", choices=sorted(ARCHS), help="instead: one complete GvU training step of this "
                        "architecture with random weights, each phase timed once (gvu.bench.fullsize)")
    return parser


def cmd_bench(a: argparse.Namespace, only: tuple[str, ...] = ("reward", "rollout", "step", "limit")) -> None:
    if getattr(a, "full_size", None):
        from gvu.bench.fullsize import format_fullsize, run_fullsize

        res = run_fullsize(a.full_size, out=a.out, **({"threads": a.threads} if a.threads else {}))
        print(format_fullsize(res))
        if a.out:
            print(f"wrote {a.out}")
        return
    res = run_benchmarks(quick=a.quick, out=a.out, threads=a.threads, size=a.size, repeats=a.repeats, only=only)
    print(format_table(res))
    if a.out:
        print(f"wrote {a.out}")


def register(subparsers) -> argparse.ArgumentParser:
    b = subparsers.add_parser("bench", help="speed benchmarks: ours vs the published baselines, checked equal (JSON)")
    add_arguments(b).set_defaults(func=cmd_bench)
    return b


def script_main(only: tuple[str, ...], argv: list[str] | None = None) -> int:
    """Entry of the benchmarks/*.py scripts: the same options as `gvu bench`, for a subset of the benchmarks."""
    a = add_arguments(argparse.ArgumentParser(description=f"gvu benchmark: {', '.join(only)}")).parse_args(argv)
    cmd_bench(a, only)
    return 0
