"""Janus / Janus-Pro through the UnifiedModel interface, on a tiny random JanusForConditionalGeneration built here
(no weights are downloaded). Seconds each on one thread."""

import shlex
import sys
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gvu.models.adapters.janus import BOI, JanusUMM, build_tiny_janus, tiny_janus_parts
from gvu.models.load import load_model
from gvu.models.protocol import DEFAULT_INSTRUCTION, SamplingConfig, UnifiedModel
from gvu.reward import RewardConfig, intrinsic_reward
from _adapters import PROMPTS, SAMPLINGS, grpo_steps



@pytest.fixture(scope="module")
def model(one_thread):
    return build_tiny_janus(seed=0)


def sample(model, sampling, seed=0, group_size=2, prompts=PROMPTS):
    return model.sample(prompts, group_size, sampling, torch.Generator().manual_seed(seed))


def test_is_a_unified_model(model):
    assert isinstance(model, UnifiedModel) and model.module is model.lm
    assert model.num_image_tokens == 16 and model.num_codes == 64


@pytest.mark.parametrize("name", list(SAMPLINGS))
def test_sampler_logprobs_match_teacher_forcing(model, name):
    sampling = SAMPLINGS[name]
    r = sample(model, sampling)
    assert r.image_tokens_NT.shape == r.logp_NT.shape == (6, 16)
    logp_NT = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
    assert logp_NT.requires_grad
    assert (logp_NT.detach() - r.logp_NT).abs().max().item() <= 1e-4
    assert torch.isfinite(r.logp_NT).all() and (r.logp_NT <= 0).all()


def test_guidance_and_filters_change_the_distribution(model):
    plain, cfg = sample(model, SAMPLINGS["plain"]), sample(model, SAMPLINGS["cfg3"])
    lp_plain = model.image_logprobs(plain.row_prompts(), plain.image_tokens_NT, SAMPLINGS["cfg3"]).detach()
    assert (lp_plain - plain.logp_NT).abs().max() > 1e-2  # the guidance rows really act
    assert not torch.equal(plain.image_tokens_NT, cfg.image_tokens_NT)
    assert sample(model, SAMPLINGS["filters-cfg"]).logp_NT.mean() > plain.logp_NT.mean() + 0.3


def test_unconditional_rows_keep_only_bos_and_boi(model):
    ids = model.generation_prefix(PROMPTS[1])
    assert ids[0] == model.bos_id and ids[-1] == model.boi_id
    unc = model.unconditional(ids)
    assert len(unc) == len(ids) and unc[0] == model.bos_id and unc[-1] == model.boi_id
    assert set(unc[1:-1]) == {model.pad_id}


@pytest.mark.parametrize("guidance", [3.0, 5.0])
def test_sampler_draws_what_transformers_generate_draws(model, guidance):
    # transformers' own Janus image generation (CFG rows in one batch, generation head, generation embeddings),
    # with its top_k=50 default turned off: our loop draws the same codes from the same seed
    janus = model.janus
    janus.generation_config.generation_kwargs = {"boi_token_id": model.boi_id}
    janus.generation_config.bos_token_id, janus.generation_config.pad_token_id = model.bos_id, model.pad_id
    for seed in range(2):
        ours = sample(model, SamplingConfig(guidance=guidance), seed=seed, prompts=PROMPTS[:1])
        ids = torch.tensor([model.generation_prefix(PROMPTS[0])])
        torch.manual_seed(seed)
        theirs = janus.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_mode="image",
                                do_sample=True, top_k=0, top_p=1.0, temperature=1.0, guidance_scale=guidance,
                                num_return_sequences=2)
        assert torch.equal(ours.image_tokens_NT, theirs)


def test_chat_template_and_built_in_format_agree():
    a, b = build_tiny_janus(seed=0, chat_template=True), build_tiny_janus(seed=0, chat_template=False)
    assert a.chat_template is not None and b.chat_template is None
    assert a.generation_prefix(PROMPTS[1]) == b.generation_prefix(PROMPTS[1])
    assert a.understanding_prefix(DEFAULT_INSTRUCTION) == b.understanding_prefix(DEFAULT_INSTRUCTION)
    text = b.tokenizer.hf.decode(b.generation_prefix("a cat"))
    assert text == "<bos><|User|>: a cat\n\n<|Assistant|>:" + BOI


def test_reward_one_pass_equals_a_token_loop(model):
    # the batched, right-padded understanding pass (decode -> image processor -> SigLIP -> lm_head) against one
    # forward per prompt token and image, multiplying probabilities in log space
    r = sample(model, SAMPLINGS["plain"], group_size=1)
    out = intrinsic_reward(model, r.image_tokens_NT, r.row_prompts(), RewardConfig(micro_batch=2))
    pixels = model.decode(r.image_tokens_NT)
    prefix = model.understanding_prefix(DEFAULT_INSTRUCTION)
    with torch.no_grad():
        for i, p in enumerate(r.row_prompts()):
            pv, ans, total = model.pixel_values(pixels[i:i + 1]), model.answer_ids(p), 0.0
            for j, x in enumerate(ans):
                logits = model.lm(input_ids=torch.tensor([prefix + ans[:j]]), pixel_values=pv).logits[0, -1]
                total += torch.log_softmax(logits.float(), -1)[x].item()
            loop = math.exp(total / len(ans))
            assert abs(out.reward_N[i].item() - loop) <= 1e-5 * loop
    assert out.mask_NL.sum(1).tolist() == [len(model.answer_ids(p)) for p in r.row_prompts()]


def test_decode_encode_and_pixels_in(model):
    r = sample(model, SAMPLINGS["plain"])
    pixels = model.decode(r.image_tokens_NT)
    assert pixels.dtype == np.uint8 and pixels.shape == (6, 16, 16, 3) and pixels.std() > 0
    assert model.encode(pixels).shape == (6, 16)
    by_codes, mask = model.prompt_logprobs(r.image_tokens_NT, r.row_prompts())
    by_pixels, _ = model.prompt_logprobs(pixels, r.row_prompts())
    assert torch.equal(by_codes, by_pixels) and mask.dtype == torch.bool
    via = intrinsic_reward(model, r.image_tokens_NT, r.row_prompts(), RewardConfig(image_path="pixels")).reward_N
    assert torch.allclose(via, intrinsic_reward(model, r.image_tokens_NT, r.row_prompts()).reward_N)


def save_tiny_checkpoint(path):
    lm, tok, ip = tiny_janus_parts(seed=0)
    lm.save_pretrained(path)
    tok.save_pretrained(path)
    ip.save_pretrained(path)
    return path


def test_two_grpo_steps_with_lora_change_only_adapters_then_save_and_reload(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "tiny-janus")
    model = load_model(f"janus:{ckpt}?dtype=float32&device=cpu")
    assert isinstance(model, JanusUMM) and model.source == str(ckpt)
    changed = grpo_steps(model)
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    # q/k/v names also match SigLIP's layers; those adapters sit outside the generation path and never move
    assert not any("vision_model" in k for k in changed)
    final = model.save_pretrained(tmp_path / "out" / "final", extra={"note": "test"})
    info = json.loads((final / "gvu.json").read_text())
    assert info["kind"] == "janus" and info["weights"] == "lora" and info["base"] == str(ckpt)
    assert (final / "adapter_model.safetensors").is_file()
    reloaded = load_model(str(tmp_path / "out"))  # a `gvu train` output folder: its final/ holds the adapter
    r = sample(model, SAMPLINGS["cfg3"], prompts=PROMPTS[:2])
    with torch.no_grad():
        a = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["cfg3"])
        b = reloaded.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["cfg3"])
    # the reloaded model has the adapter merged into its weights: float32 rounding, relative to the log-probs' size
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max().item()
    assert not hasattr(reloaded.lm, "peft_config")  # merged


def test_gradient_checkpointing_same_logprobs_and_grads_reach_lora(tmp_path):
    from peft import LoraConfig, get_peft_model

    ckpt = save_tiny_checkpoint(tmp_path / "tiny-janus")
    plain = load_model(f"janus:{ckpt}?device=cpu")
    gc = load_model(f"janus:{ckpt}?device=cpu&gradient_checkpointing=1")
    assert gc.lm.training and any(getattr(m, "gradient_checkpointing", False) for m in gc.lm.modules())
    r = sample(plain, SAMPLINGS["published"], prompts=PROMPTS[:2])
    gc.lm = get_peft_model(gc.lm, LoraConfig(r=4, lora_alpha=16, target_modules=["o_proj", "down_proj"]))
    calls, mlp = [], gc.janus.model.language_model.layers[0].mlp
    forward = mlp.forward
    mlp.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)  # (module hooks do not fire on recompute)
    logp = gc.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["published"])
    assert (logp.detach() - r.logp_NT).abs().max().item() <= 1e-4
    logp.sum().backward()
    assert len(calls) == 2  # the layer's MLP ran again in the backward pass: checkpointing is really on
    grads = [p.grad for n, p in gc.lm.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_bf16_min_p_training_stays_finite_and_counts_excluded_tokens(tmp_path):
    # The published sampling filter with a KL and two passes per rollout, in bf16: codes the sampler drew fall
    # outside the update pass's own min-p filter once the policy moves. They must leave the loss (counted), never
    # turn it into NaN (-inf - -inf) and poison the weights.
    from gvu.rl.config import load_config
    from gvu.rl.trainer import Trainer

    ckpt = save_tiny_checkpoint(tmp_path / "tiny-janus")
    out = tmp_path / "run"
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", {
        "model": f"janus:{ckpt}?dtype=bfloat16&device=cpu", "output_dir": str(out), "min_p": 0.03, "beta": 0.03,
        "num_iterations": 2, "max_steps": 20, "learning_rate": 0.003, "use_lora": True, "beta_understanding": 0.0,
        "eval_steps": 0, "save_steps": 0, "num_prompts": 64})
    trainer = Trainer(cfg)
    trainer.train(progress=False)
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 21))
    for m in lines:
        for k, v in m.items():
            if k == "reward_auc" and v is None:
                continue
            assert isinstance(v, (int, float)) and math.isfinite(v), (m["step"], k, v)
        assert m["skipped_minibatches"] == 0
    assert any(m["excluded_token_frac"] > 0 for m in lines)  # the case this guards did occur
    assert all(torch.isfinite(p).all() for p in trainer.policy.lm.parameters())


def test_trainer_on_a_real_model_monitors_rewards_and_writes_geneval_layout(tmp_path):
    # A real model paints natural images: no shapes-world judge in the step (no accuracy / reward_auc), reward
    # statistics instead; at eval_steps the fixed prompts' images in GenEval's layout, a grid, and eval_command
    # run on that folder. LoRA adapters only inside the language model (SigLIP's q/k/v share the names).
    from gvu.rl.config import load_config
    from gvu.rl.trainer import Trainer

    ckpt = save_tiny_checkpoint(tmp_path / "tiny-janus")
    out = tmp_path / "run"
    cmd = shlex.quote(sys.executable) + " -c \"import sys, pathlib; p = pathlib.Path(sys.argv[1]); print(len(list(p.glob('*/samples/*.png'))))\" {dir}"
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", {
        "model": f"janus:{ckpt}?device=cpu", "output_dir": str(out), "max_steps": 2, "use_lora": True,
        "beta_understanding": 0.0, "eval_steps": 2, "eval_limit": 3, "eval_per_prompt": 2, "save_steps": 0,
        "num_prompts": 64, "eval_command": cmd})
    trainer = Trainer(cfg)
    lora = [n for n, _ in trainer.policy.lm.named_modules() if n.endswith("lora_A")]
    assert lora and all(".language_model." in n for n in lora)
    vq, decodes = trainer.policy.janus.model.vqmodel, []
    vq_decode = vq.decode
    vq.decode = lambda *a, **k: decodes.append(1) or vq_decode(*a, **k)
    trainer.train(progress=False)
    assert len(decodes) == 2 + 2  # once per step (the reward reads those pixels) + once per evaluation (0 and 2)
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [m for m in lines if m["step"] > 0]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        assert "accuracy" not in m and "reward_auc" not in m and "time/judge" not in m
        assert m["intrinsic_reward_min"] <= m["intrinsic_reward"] <= m["intrinsic_reward_max"]
        assert all(m[f"time/{p}"] > 0 and m[f"mem/{p}"] > 0 for p in ("sample", "decode", "reward", "update"))
    assert steps[-1]["eval_images"] == 6 and steps[-1]["eval_command_rc"] == 0
    folder = out / "evals" / "step_00002"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["00000", "00001", "00002"]
    assert all(len(list((folder / d / "samples").glob("*.png"))) == 2 for d in ("00000", "00001", "00002"))
    assert (folder / "eval_command.log").read_text().splitlines()[-1] == "6"
    assert (out / "grids" / "step_00002.png").is_file()
