"""Benchmark 2, the rollout: our KV-cached sampler (model.sample) vs transformers' `generate` on the same
LlamaForCausalLM, with a logits processor masking non-image ids, top_k=0, top_p=1, temperature 1, and for guidance
transformers' own UnbatchedClassifierFreeGuidanceLogitsProcessor (the unconditional branch is a second forward per
step, as in the published code). Checked: generate's processed scores at every step equal our filter_logits on the
same prefix (teacher-forced), and our sampler's recorded log-probs equal its replay.

Letters: N rows, T image tokens, C image codes, B batch, S sequence length.
"""

from __future__ import annotations

import math

from gvu.models.builtin.model import build_builtin
from gvu.models.forward import pad_batch, positions
from gvu.models.protocol import SamplingConfig
from gvu.perf.measure import speedup, speedup_range, Plan, SCORES_LOGP_ATOL, SCORES_PROB_ATOL, timed_pair
from gvu.perf.reward import train_prompts

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
                _, t_ours, _, t_hf = timed_pair(lambda: model.sample(prompts, G, s, gen),
                                                lambda: hf_generate(model, rows, s), p.repeats, p.baseline_repeats,
                                                min_sample_s=p.min_sample_s)
                cases.append({"batch": B, "group_size": G, "guidance": guidance,
                              "forward_rows": B * (2 if s.uses_guidance else 1), "baseline": t_hf, "ours": t_ours,
                              "speedup": speedup(t_hf, t_ours), "speedup_range": speedup_range(t_hf, t_ours),
                              "baseline_tokens_per_s": B * T / t_hf["median_s"],
                              "ours_tokens_per_s": B * T / t_ours["median_s"], **_check_rollout(model, rows, s, G)})
    fit = fit_and_ceilings(cases)
    return {"model": p.size, "image_tokens": T, "baseline_name": "transformers generate (unbatched CFG processor)",
            "sampling": "temperature 1, top_k 0, top_p 1, min_p 0", "ours_fit": fit, "cases": cases}


def fit_and_ceilings(cases: list[dict]) -> dict:
    """per_row_fit over the cases, and each case's `ceiling` from it (where the fitted per-row cost is positive)."""
    fit = per_row_fit(cases)
    for c in cases:
        c.pop("ceiling", None)
        if fit["per_row_s"] > 0:
            c["ceiling"] = c["baseline"]["median_s"] / (fit["per_row_s"] * c["forward_rows"])
    return fit


def per_row_fit(cases: list[dict]) -> dict:
    """Our rollout's median time as `overhead_s + per_row_s x rows` (least squares over the cases; rows: a case's
    `forward_rows`, the batch doubled with guidance, as every step forwards the unconditional rows too).
    `per_row_s` is the work that grows with the rows, which any sampler of this model must do at least once per row
    and step, generate included; a case's `ceiling` (the baseline's median over per_row_s x its rows) is the speedup
    a sampler with no per-step cost at all would reach over the baseline."""
    xs = [c["forward_rows"] for c in cases]
    ys = [c["ours"]["median_s"] for c in cases]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    return {"overhead_s": my - b * mx, "per_row_s": b, "points": n,
            "max_abs_residual_s": max(abs(y - (my - b * mx) - b * x) for x, y in zip(xs, ys))}
