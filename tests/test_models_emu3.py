"""Emu3 through the UnifiedModel interface, on a tiny random Emu3ForConditionalGeneration built here (4x4 token
grid, 64 codes; no weights are downloaded). Seconds each on one thread."""

import json
import math

import numpy as np
import pytest
import torch

from gvu.models.adapters.emu3 import EOF, EOI, EOL, IMAGE, Emu3UMM, build_tiny_emu3, tiny_emu3_parts
from gvu.models.load import load_model
from gvu.models.protocol import DEFAULT_INSTRUCTION, SamplingConfig, UnifiedModel
from gvu.reward import RewardConfig, intrinsic_reward
from _adapters import PROMPTS, SAMPLINGS, grpo_steps



@pytest.fixture(scope="module")
def model(one_thread):
    return build_tiny_emu3(seed=0, grid=(4, 4))


def sample(model, sampling, seed=0, group_size=2, prompts=PROMPTS):
    return model.sample(prompts, group_size, sampling, torch.Generator().manual_seed(seed))


def test_is_a_unified_model_with_emu3_layout(model):
    assert isinstance(model, UnifiedModel) and model.module is model.lm
    hf, lay = model.tokenizer.hf, model.layout
    assert lay.num_image_tokens == 16 and lay.num_codes == 64 and lay.row_width == 4
    assert lay.row_end == (hf.convert_tokens_to_ids(EOL),)
    assert hf.decode(lay.generation_prefix(model.tokenizer.encode("a cat"))) == \
        "<|extra_203|>a cat<|image start|>4*4<|image token|>"
    ids = lay.image_ids(range(16))
    assert len(ids) == 20 and [ids[k] for k in (4, 9, 14, 19)] == [lay.row_end[0]] * 4


@pytest.mark.parametrize("name", list(SAMPLINGS))
def test_sampler_logprobs_match_teacher_forcing(model, name):
    sampling = SAMPLINGS[name]
    r = sample(model, sampling)
    assert r.image_tokens_NT.shape == r.logp_NT.shape == (6, 16)
    assert r.image_tokens_NT.min() >= 0 and r.image_tokens_NT.max() < 64
    logp_NT = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
    assert logp_NT.requires_grad
    assert (logp_NT.detach() - r.logp_NT).abs().max().item() <= 1e-4


def test_guidance_and_filters_change_the_distribution(model):
    plain = sample(model, SAMPLINGS["plain"])
    lp = model.image_logprobs(plain.row_prompts(), plain.image_tokens_NT, SAMPLINGS["cfg3"]).detach()
    assert (lp - plain.logp_NT).abs().max() > 1e-2
    assert sample(model, SAMPLINGS["filters-cfg"]).logp_NT.mean() > plain.logp_NT.mean() + 0.3


def test_same_mask_as_emu3_prefix_allowed_tokens(model):
    # transformers' generate under the prefix_allowed_tokens_fn from Emu3's documentation (visual tokens inside a
    # row, EOL at row ends, then EOF, EOI, EOS): greedy picks the same codes as our top_k=1 sampler, its per-step
    # log-probs at code positions equal image_logprobs, and at row ends the forced EOL has log-prob exactly 0
    hf, lay = model.tokenizer.hf, model.layout
    rows, cols = model.grid
    wrapper = hf.convert_tokens_to_ids("<|image token|>")
    visual = list(range(lay.image_token_offset, lay.image_token_offset + lay.num_codes))
    tail = [hf.convert_tokens_to_ids(EOF), hf.convert_tokens_to_ids(EOI), hf.eos_token_id]

    def allowed(batch_id, input_ids):
        offset = input_ids.shape[0] - int(torch.nonzero(input_ids == wrapper)[0, 0])
        if offset % (cols + 1) == 0 and offset <= rows * (cols + 1):
            return [lay.row_end[0]]
        k = offset - rows * (cols + 1) - 1
        return visual if k < 0 else [tail[k]] if k < 3 else [hf.pad_token_id]

    ids = torch.tensor([lay.generation_prefix(model.tokenizer.encode(PROMPTS[1]))])
    out = model.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                            max_new_tokens=rows * (cols + 1) + 3, prefix_allowed_tokens_fn=allowed,
                            pad_token_id=hf.pad_token_id, output_scores=True, return_dict_in_generate=True)
    gen = out.sequences[0, ids.shape[1]:]
    assert gen[-3:].tolist() == tail
    step_logp = torch.stack([torch.log_softmax(s[0].float(), -1)[t] for s, t in zip(out.scores, gen)])
    code_pos = lay.code_positions(rows * cols)
    codes = gen[code_pos] - lay.image_token_offset
    ours = sample(model, SamplingConfig(top_k=1), prompts=PROMPTS[1:2], group_size=1)
    assert torch.equal(ours.image_tokens_NT[0], codes)
    with torch.no_grad():
        tf = model.image_logprobs(PROMPTS[1:2], codes[None], SamplingConfig())[0]
    assert (tf - step_logp[code_pos]).abs().max().item() <= 1e-4
    eol_pos = [p for p in range(rows * (cols + 1)) if p not in set(code_pos.tolist())]
    assert step_logp[eol_pos].abs().max().item() == 0.0


def test_reward_one_pass_equals_a_token_loop(model):
    r = sample(model, SAMPLINGS["plain"], group_size=1)
    out = intrinsic_reward(model, r.image_tokens_NT, r.row_prompts(), RewardConfig(micro_batch=2))
    inst = model.tokenizer.encode(DEFAULT_INSTRUCTION)
    with torch.no_grad():
        for i, (codes, p) in enumerate(zip(r.image_tokens_NT.tolist(), r.row_prompts())):
            prefix, ans = model.layout.understanding_prefix(codes, inst), model._answer_ids([p])[0]
            total = 0.0
            for j, x in enumerate(ans):
                logits = model.lm(input_ids=torch.tensor([prefix + ans[:j]])).logits[0, -1]
                total += torch.log_softmax(logits.float(), -1)[x].item()
            loop = math.exp(total / len(ans))
            assert abs(out.reward_N[i].item() - loop) <= 1e-5 * loop


def test_reward_via_tokens_is_emu3s_own_pixel_path(model):
    # Emu3ForConditionalGeneration given pixel_values VQ-encodes them, maps codes to visual tokens, adds the EOLs
    # and scatters them over the <image> placeholders; our token sequence is the same, so the scores agree
    r = sample(model, SAMPLINGS["plain"], group_size=1, prompts=PROMPTS[:1])
    pixels = model.decode(r.image_tokens_NT)
    assert pixels.shape == (1, 8, 8, 3) and pixels.dtype == np.uint8
    ours, mask = model.prompt_logprobs(pixels, PROMPTS[:1])  # re-encodes the pixels
    lay, hf = model.layout, model.tokenizer.hf
    inst, ans = model.tokenizer.encode(DEFAULT_INSTRUCTION), model._answer_ids(PROMPTS[:1])[0]
    placeholders = [hf.convert_tokens_to_ids(IMAGE)] * (4 * 5)
    ids = [*lay.und_prefix, *placeholders, *lay.und_after_image, *inst, *lay.und_before_answer, *ans]
    x = (pixels.astype(np.float32) / 255 - 0.5) / 0.5
    with torch.no_grad():
        logits = model.lm(input_ids=torch.tensor([ids]), pixel_values=torch.tensor(x.transpose(0, 3, 1, 2)),
                          image_sizes=torch.tensor([[8, 8]])).logits[0].float()
    start = len(ids) - len(ans)
    theirs = torch.log_softmax(logits[start - 1:-1], -1).gather(1, torch.tensor(ans)[:, None])[:, 0]
    assert mask.all() and (ours[0] - theirs).abs().max().item() <= 1e-5
    assert model.encode(pixels).shape == (1, 16)
    via = intrinsic_reward(model, r.image_tokens_NT, PROMPTS[:1], RewardConfig(image_path="pixels")).reward_N
    assert torch.allclose(via, ours[0].mean().exp(), rtol=1e-5)


def test_two_grpo_steps_with_lora_change_only_adapters_then_save_and_reload(tmp_path):
    lm, tok = tiny_emu3_parts(seed=0)
    lm.save_pretrained(tmp_path / "tiny-emu3")
    tok.save_pretrained(tmp_path / "tiny-emu3")
    model = load_model(f"emu3:{tmp_path / 'tiny-emu3'}?grid=4x4&device=cpu&dtype=float32")
    assert isinstance(model, Emu3UMM) and model.grid == (4, 4)
    changed = grpo_steps(model)
    assert changed and all("lora_" in k for k in changed) and not any("vqmodel" in k for k in changed)
    r = model.sample(PROMPTS[:2], 2, SamplingConfig(), torch.Generator().manual_seed(0))
    final = model.save_pretrained(tmp_path / "run" / "final")
    info = json.loads((final / "gvu.json").read_text())
    assert info["kind"] == "emu3" and info["weights"] == "lora" and info["options"]["grid"] == "4x4"
    reloaded = load_model(str(final))
    with torch.no_grad():
        a = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["cfg3"])
        b = reloaded.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["cfg3"])
    # the reloaded model has the adapter merged into its weights: float32 rounding, relative to the log-probs' size
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max().item()


def test_dropout_is_switched_off_at_load(tmp_path):
    # Emu3's text config ships attention_dropout=0.1; a training-mode pass must still match the sampler
    lm, tok = tiny_emu3_parts(seed=0)
    lm.config.text_config.attention_dropout = 0.1
    lm.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model = load_model(f"emu3:{tmp_path / 'm'}?grid=4x4&device=cpu&gradient_checkpointing=1")
    assert model.lm.training
    r = sample(model, SAMPLINGS["published"], prompts=PROMPTS[:2])
    logp = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["published"])
    assert (logp.detach() - r.logp_NT).abs().max().item() <= 1e-4


@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_chunked_code_logits_equal_the_full_pass_with_gradients(chunk):
    # Emu3's vocabulary is ~184k: the teacher-forced pass computes the code columns only, a few positions at a
    # time, recomputed in backward. Same log-probs and same gradients as the full-logits pass, with guidance
    # and every filter (the filters act on the code distribution, which the chunks see whole).
    full, chunked = build_tiny_emu3(seed=0), build_tiny_emu3(seed=0)
    chunked.logits_chunk = chunk
    sampling = SAMPLINGS["filters-cfg"]
    r = full.sample(PROMPTS, 2, sampling, torch.Generator().manual_seed(0))
    a = full.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
    b = chunked.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
    assert (a - b).abs().max().item() <= 1e-5
    finite = torch.isfinite(a)
    a[finite].sum().backward()
    b[finite].sum().backward()
    for (n, p), q in zip(full.lm.named_parameters(), chunked.lm.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), n
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in chunked.lm.parameters())
