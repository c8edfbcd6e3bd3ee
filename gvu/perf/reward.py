"""Benchmark 1, the reward: our one batched, log-space pass (gvu.reward.intrinsic_reward) vs the PUBLISHED loop (per
prompt token a full forward over [understanding prefix, x_<j], one image at a time, raw probabilities multiplied,
L-th root). Compared against the loop's own per-token probabilities multiplied in float64, because the published
float32 product underflows to 0 on long prompts (counted in the JSON).

Letters: N rows, T image tokens, L prompt tokens.
"""

from __future__ import annotations

import functools
import statistics

from gvu.eval.prompts import build_train
from gvu.models.adapters.janus import build_tiny_janus
from gvu.models.builtin.model import build_builtin
from gvu.models.builtin.tokenizer import split_words
from gvu.perf.measure import speedup, speedup_range, Plan, REWARD_RTOL, timed_pair, TOKEN_RTOL
from gvu.reward import intrinsic_reward, RewardConfig
from gvu.world import spec

# ---------------------------------------------------------------------------------------------- 1. reward

def _long_color_attr(L: int, k: int) -> str:
    """A colour-attribute prompt of exactly L tokens in the grammar's words: 'a photo of a red circle, a blue
    star, ..., and a ...', with 'larger' on the first (L - 3) % 4 objects to hit the length."""
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

    model = model or build_builtin(p.size)
    cfg = RewardConfig(micro_batch=max(p.reward_batches))  # one pass per batch
    gen = torch.Generator().manual_seed(0)
    cases = []
    for L in p.reward_lengths:
        for B in p.reward_batches:
            prompts, source = prompts_of_length(model.tokenizer, L, B)
            codes = torch.randint(0, model.layout.num_codes, (B, model.layout.num_image_tokens), generator=gen)
            ours, t_ours, loop, t_loop = timed_pair(
                lambda: intrinsic_reward(model, codes, prompts, cfg),
                lambda: [published_reward(model, c, q, cfg.instruction) for c, q in zip(codes.tolist(), prompts)],
                p.repeats, p.baseline_repeats, base_warmup=0, min_sample_s=p.min_sample_s)
            cases.append({"prompt_tokens": L, "batch": B, "prompts": source, "example": prompts[0],
                          "baseline": t_loop, "ours": t_ours, "speedup": speedup(t_loop, t_ours),
                          "speedup_range": speedup_range(t_loop, t_ours), **_compare_reward(ours, loop)})
    return {"model": p.size, "instruction": cfg.instruction, "cases": cases}


def bench_janus_reward(p: Plan) -> dict | str:
    """The same comparison on a tiny random Janus (a decoupled model: the reward reads pixels through SigLIP)."""
    import torch

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

        ours, t_ours, res, t_loop = timed_pair(lambda: intrinsic_reward(model, codes, prompts, cfg), loop, p.repeats,
                                               p.baseline_repeats, base_warmup=0, min_sample_s=p.min_sample_s)
        return {"model": "tiny random Janus (gvu.models.adapters.janus.build_tiny_janus)", "batch": p.janus_batch,
                "prompt_tokens_mean": statistics.mean(len(x) for _, x in res), "baseline": t_loop, "ours": t_ours,
                "speedup": speedup(t_loop, t_ours), "speedup_range": speedup_range(t_loop, t_ours),
                **_compare_reward(ours, res)}
    except Exception as err:  # the Janus adapter is optional and young: report, never break the other benchmarks
        return {"checked": False, "error": f"{type(err).__name__}: {err}"}


class _Words:
    """Counts words the way the built-in tokenizer does, to pick prompts of a given length for other tokenizers."""

    def encode(self, text: str) -> list[str]:
        return split_words(text)
