"""X-Omni through `xomni:` on a tiny X-Omni that these tests write (tests/_tiny_xomni.py, X-Omni's own conventions):
gvu's X-Omni code on its weights, its generation mode, codes beyond lm_head, its own chat format, the checkpoint's
own vision code (set up by init_vision on the model's device, called with its own signature), the model without
vision, and the published recipe end to end through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gvu.models.load import load_model
from gvu.models.protocol import UnifiedModel
import gvu.models.xomni as xomni
from gvu.models.xomni import XOmniUMM
from _adapters import PROMPTS, SAMPLINGS
from _tiny_xomni import write_flux_folder, write_tiny_xomni

ROOT = Path(__file__).resolve().parents[1]
BASE = "?device=cpu&dtype=float32&grid=4x4&code_pixels=2"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_xomni(tmp_path_factory.mktemp("xomni") / "tiny-xomni")


@pytest.fixture(scope="module")
def spec(folder, tmp_path_factory):
    # flux= runs the checkpoint's own vision code: the spec consents (tests/test_remote_code.py)
    return f"{BASE}&flux={write_flux_folder(tmp_path_factory.mktemp('flux') / 'FLUX.1-dev')}&trust_remote_code=1"


@pytest.fixture(scope="module")
def model(folder, spec):
    return load_model(f"xomni:{folder}{spec}")


def test_loads_x_omnis_weights_with_codes_beyond_lm_head(model):
    assert isinstance(model, XOmniUMM) and isinstance(model, UnifiedModel)
    assert type(model.lm).__module__ == "gvu.models.xomni_lm"  # gvu's X-Omni code (tests/test_xomni_lm.py)
    assert model.layout.image_token_offset == model.lm.get_output_embeddings().weight.shape[0]  # beyond lm_head
    assert model.reads_pixels  # with flux: the reward decodes and re-encodes, as the official trainer


@pytest.mark.parametrize("name", ["plain", "published", "cfg3", "filters-cfg"])
def test_sampler_logprobs_match_teacher_forcing_in_image_mode(model, name):
    sampling = SAMPLINGS[name]
    r = model.sample(PROMPTS, 2, sampling, torch.Generator().manual_seed(0))
    assert model.lm.generation_mode == "text"  # restored after sampling
    assert r.image_tokens_NT.shape == (6, 16) and int(r.image_tokens_NT.max()) < model.layout.num_codes
    with torch.no_grad():
        logp = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
    assert (logp - r.logp_NT).abs().max().item() <= 1e-4
    assert torch.isfinite(logp).all()  # image mode: the code logits are real, not bf16's lowest value


def test_generation_and_understanding_in_x_omnis_own_format(model):
    tok = model.tokenizer.hf
    prompt, instruction = "a photo of a cat", "Describe the image in detail."
    want = tok.encode(prompt + "<SOM>4 4<IMAGE>", add_special_tokens=False)
    assert model.layout.generation_prefix(model.tokenizer.encode(prompt)) == want
    assert model.layout.generation_prefix([]) == tok.encode("<SOM>4 4<IMAGE>", add_special_tokens=False)  # guidance
    codes = list(range(16))
    image = "<SOM>4 4<IMAGE>" + "".join(f"<MM-Token-{k}>" for k in codes) + "<EOM>"
    msgs = [{"role": "user", "content": image + "\n" + instruction}]
    chat = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    seq, (a, b) = model.layout.understanding_sequence(codes, model.tokenizer.encode(instruction),
                                                      model._answer_ids([prompt])[0])
    assert seq[:a] == tok.encode(chat, add_special_tokens=False)  # token for token what its chat template makes
    assert seq[a:b] == tok.encode(prompt, add_special_tokens=False)  # the reward scores the prompt right after


def test_decoder_takes_one_prompt_no_images_and_a_seed_and_the_reward_reads_pixels(model):
    r = model.sample(PROMPTS[:2], 2, SAMPLINGS["plain"], torch.Generator().manual_seed(1))
    codes, prompts = r.image_tokens_NT, r.row_prompts()
    a = model.decode(codes, prompts=prompts, seeds=[1, 2, 3, 4])
    assert a.shape == (4, 8, 8, 3) and a.dtype == np.uint8
    assert np.array_equal(a, model.decode(codes, prompts=prompts, seeds=[1, 2, 3, 4]))  # seeded: reproducible
    assert not np.array_equal(a[3], model.decode(codes, prompts=prompts, seeds=[1, 2, 3, 5])[3])  # the seed draws
    assert not np.array_equal(a, model.decode(codes, prompts=["x"] * 4, seeds=[1, 2, 3, 4]))  # the prompt conditions
    assert torch.equal(model.encode(a), codes.cpu())  # re-encoded by its image tokenizer
    logp, mask = model.prompt_logprobs(a, prompts)
    assert model.lm.generation_mode == "text" and torch.isfinite(logp[mask]).all()


def test_vision_is_set_up_by_init_vision_on_the_models_final_device(folder, spec, monkeypatch):
    moved_before_vision = []
    real = xomni.finish_loading

    def watched(lm, *args, **kwargs):  # the model is moved here; X-Omni's vision parts must not exist yet
        moved_before_vision.append(not hasattr(lm, "image_tokenizer") and not hasattr(lm, "decoder_pipe"))
        return real(lm, *args, **kwargs)

    monkeypatch.setattr(xomni, "finish_loading", watched)
    xo = load_model(f"xomni:{folder}{spec}").lm
    assert moved_before_vision == [True]
    assert not isinstance(xo.decoder_pipe, torch.nn.Module)  # the model's .to() would never reach it
    assert xo.decoder_pipe.moves == [str(xo.device)]  # told once, by init_vision, where the model is
    assert all(not p.requires_grad for p in xo.image_tokenizer.parameters())  # frozen, as in X-Omni


def test_without_flux_it_samples_and_judges_codes_and_says_how_to_get_pixels(folder):
    model = load_model(f"xomni:{folder}{BASE}")
    assert not hasattr(model.lm, "image_tokenizer") and not model.reads_pixels
    r = model.sample(PROMPTS[:1], 2, SAMPLINGS["plain"], torch.Generator().manual_seed(0))
    logp, mask = model.prompt_logprobs(r.image_tokens_NT, r.row_prompts())  # the judge reads the codes
    assert torch.isfinite(logp[mask]).all()
    with pytest.raises(ValueError, match=r"no pixels; load with xomni:PATH\?flux=FLUX_PATH"):
        model.decode(r.image_tokens_NT, prompts=r.row_prompts(), seeds=[0, 1])


def test_a_flux_folder_that_is_not_one_is_an_error_naming_it(folder, tmp_path):
    with pytest.raises(OSError, match="model_index.json"):
        load_model(f"xomni:{folder}{BASE}&flux={tmp_path}&trust_remote_code=1")


def test_a_bad_code_option_is_refused(folder):
    with pytest.raises(ValueError, match="code='x'; 'gvu'"):
        load_model(f"xomni:{folder}{BASE}&code=x")


def gvu(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "gvu.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_train_two_steps_with_the_published_recipe_then_generate_in_geneval_layout(tmp_path, folder, spec):
    gvu("prompts", "train", "--world", "coco", "-n", 32, "--out", tmp_path / "prompts", cwd=ROOT)
    out = tmp_path / "run"
    gvu("train", "--config", ROOT / "configs" / "gvu-xomni.yaml", f"model=xomni:{folder}{spec}",
        f"output_dir={out}", f"prompts={tmp_path / 'prompts' / 'evaluation_metadata.jsonl'}", "max_steps=2",
        "eval_steps=0", "save_steps=0", "threads=1", "learning_rate=0.01", cwd=ROOT)
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(np.isfinite(m["loss"]) and m["skipped_minibatches"] == 0 for m in lines)
    info = json.loads((out / "final" / "gvu.json").read_text())
    assert info["kind"] == "xomni" and info["weights"] == "lora" and info["train"]["beta"] == 0.03
    assert "trust_remote_code" not in info["options"]
    rows = [json.loads(line) for line in (tmp_path / "prompts" / "evaluation_metadata.jsonl").read_text().splitlines()]
    (tmp_path / "two.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    # the saved run does not record the consent (it is the user's): the folder spec gives it again
    gvu("generate", "--model", f"{out}?trust_remote_code=1", "--metadata", tmp_path / "two.jsonl", "--outdir",
        tmp_path / "images", "--per-prompt", 2, "--min-p", 0.03, cwd=ROOT)
    for i in range(2):
        d = tmp_path / "images" / f"{i:05d}"
        assert json.loads((d / "metadata.jsonl").read_text())["prompt"] == rows[i]["prompt"]
        assert sorted(p.name for p in (d / "samples").iterdir()) == ["0000.png", "0001.png"]
