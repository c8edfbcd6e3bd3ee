"""X-Omni through `xomni:` on a tiny X-Omni that these tests write (tests/_tiny_xomni.py, X-Omni's own conventions):
gvu's X-Omni code on its weights, its generation mode, codes beyond lm_head, its own chat format, the checkpoint's
own vision code (set up by init_vision, then put on the model's device, called with its own signature; its files
read through name_or_path; hub ids made local folders first; flash-attn checked), the sampling values of the
checkpoint's generation_config.json, the model without vision, and the published recipe end to end through the
CLI."""

import importlib.util
import inspect
import json
import re
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import gvu.models.adapters.xomni as xomni
from gvu.models.adapters.xomni import FLUX_FILES, XOmniUMM
from gvu.models.adapters.xomni_lm import XOmniConfig, XOmniForCausalLM, XOmniModel
from gvu.models.load import load_model
from gvu.models.protocol import SamplingConfig, UnifiedModel
from gvu.models.shared_vocab import SharedVocabUMM
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
    assert type(model.lm).__module__ == "gvu.models.adapters.xomni_lm"  # gvu's X-Omni code (tests/test_xomni_lm.py)
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
    assert xo.decoder_pipe.moves == [str(xo.device)] * 2  # by init_vision (MX:149), then by gvu
    params = list(xo.image_tokenizer.parameters())
    assert params and all(not p.requires_grad for p in params)  # the tokenizer's weights, frozen as in X-Omni


def test_the_decoder_pipeline_is_put_on_the_models_device_when_init_vision_leaves_it(tmp_path, spec):
    folder = write_tiny_xomni(tmp_path / "no-move", moves_pipeline=False)
    model = load_model(f"xomni:{folder}{spec}")
    assert model.lm.decoder_pipe.moves == [str(model.lm.device)]  # init_vision never moved it; gvu did
    r = model.sample(PROMPTS[:1], 2, SAMPLINGS["plain"], torch.Generator().manual_seed(0))
    assert model.decode(r.image_tokens_NT, prompts=r.row_prompts(), seeds=[0, 1]).shape == (2, 8, 8, 3)


def _vision_module(folder):
    spec = importlib.util.spec_from_file_location("tiny_xomni_vision", folder / "vision_tiny_xomni.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hub_ids_become_local_snapshots_before_init_vision(folder, spec, monkeypatch):
    import huggingface_hub

    # given a hub id, X-Omni's init_vision asks the hub through diffusers 0.34 (DC:390-403, DP:1485-1490), whose
    # legacy arguments the huggingface_hub installed here drops (no TypeError: measured with the real diffusers
    # 0.34.0, docs/real-models.md); the tiny vision code does the same, then finds no network
    vision = _vision_module(folder)
    for load in (lambda: vision.TinyFluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev"),
                 lambda: vision.TinyFluxTransformer.from_pretrained("X-Omni/X-Omni-En", subfolder="flux_transformer")):
        with pytest.raises(OSError, match="the tests reach no hub"):
            load()

    flux = spec.split("flux=")[1].split("&")[0]
    hub = {"X-Omni/X-Omni-En": str(folder), "black-forest-labs/FLUX.1-dev": flux}
    calls = []

    def snapshot_download(repo_id, allow_patterns=None, **kwargs):  # the hub, as the local folders above
        calls.append((repo_id, allow_patterns))
        return hub[repo_id]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    model = load_model(f"xomni:{folder}{BASE}&flux=black-forest-labs/FLUX.1-dev&vision_source=X-Omni/X-Omni-En"
                       "&trust_remote_code=1")
    assert calls == [("X-Omni/X-Omni-En", None), ("black-forest-labs/FLUX.1-dev", FLUX_FILES)]  # the hub once each
    assert model.lm.name_or_path == str(folder)  # init_vision read every file from the snapshot, none from the hub
    assert (model.options["flux"], model.options["vision_source"]) == ("black-forest-labs/FLUX.1-dev",
                                                                       "X-Omni/X-Omni-En")  # a save re-resolves
    r = model.sample(PROMPTS[:1], 2, SAMPLINGS["plain"], torch.Generator().manual_seed(0))
    assert torch.equal(model.encode(model.decode(r.image_tokens_NT, prompts=r.row_prompts(), seeds=[0, 1])),
                       r.image_tokens_NT.cpu())


def test_init_vision_reads_the_tokenizers_files_through_name_or_path(folder, spec, tmp_path):
    # a full-weights save holds no vision files: they are read from the published checkpoint (vision_source)
    weights_only = tmp_path / "weights-only"
    shutil.copytree(folder, weights_only, ignore=shutil.ignore_patterns("vision", "flux_transformer"))
    with pytest.raises(FileNotFoundError, match="siglip_tiny.pt"):
        load_model(f"xomni:{weights_only}{spec}")
    model = load_model(f"xomni:{weights_only}{spec}&vision_source={folder}")
    assert model.lm.name_or_path == str(folder) and model.reads_pixels


def test_a_checkpoint_whose_vision_code_imports_flash_attn_needs_it_built_for_this_torch(tmp_path, spec,
                                                                                       monkeypatch):
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here; the test shows the error of an environment without it")
    folder = write_tiny_xomni(tmp_path / "with-flash-attn", imports_flash_attn=True)
    with pytest.raises(ValueError, match=r"image tokenizer \(vision_tiny_xomni\.py\) imports flash_attn, which does "
                                         r"not import here .*pip install 'diffusers==0\.34\.0' timm einops "
                                         r"torchvision, then pip install flash-attn --no-build-isolation \(compiled "
                                         r"against the torch installed here, " + re.escape(torch.__version__)):
        load_model(f"xomni:{folder}{spec}")
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))  # importable, as on a GPU box
    with pytest.raises(ValueError, match=r"runs flash-attn in every attention, a CUDA kernel, and the model is on "
                                         r"cpu: load with flux on a GPU"):
        load_model(f"xomni:{folder}{spec}")


def test_the_decoder_runs_x_omnis_true_cfg_only(model):
    pipe, latents = model.lm.decoder_pipe, torch.rand(1, 16, 3)
    with pytest.raises(AssertionError):  # X-Omni's pipeline asserts a scale above 1 and a negative prompt
        pipe(latents, ["a cat"], negative_prompt=[""], height=8, width=8, true_cfg_scale=1.0)
    with pytest.raises(AssertionError):
        pipe(latents, ["a cat"], negative_prompt=None, height=8, width=8, true_cfg_scale=1.5)
    assert pipe(latents, ["a cat"], negative_prompt=[""], height=8, width=8, true_cfg_scale=1.5).images


def test_the_checkpoints_generation_config_replaces_transformers_defaults_as_in_x_omnis_trainer(tmp_path, capsys):
    gen = {"temperature": 0.7, "top_k": 3, "top_p": 1.0, "repetition_penalty": 1.05, "transformers_version": "4.51.3"}
    model = load_model(f"xomni:{write_tiny_xomni(tmp_path / 'gen', generation_config=gen)}{BASE}")
    assert model.sampling_defaults == {"temperature": 0.7, "top_k": 3}
    err = capsys.readouterr().err
    assert "generation_config.json sets temperature 0.7, top_k 3" in err
    assert "also sets repetition_penalty 1.05, which X-Omni's trainer applies and gvu's sampler does not" in err
    recipe = SamplingConfig(temperature=1.0, top_k=50, top_p=1.0, min_p=0.03)  # configs/gvu-xomni.yaml
    assert model.effective_sampling(recipe) == SamplingConfig(temperature=0.7, top_k=3, top_p=1.0, min_p=0.03)
    own = SamplingConfig(temperature=0.9, top_k=10, min_p=0.03)  # values a run sets itself stay
    assert model.effective_sampling(own) == own
    r = model.sample(PROMPTS[:2], 2, recipe, torch.Generator().manual_seed(0))
    with torch.no_grad(), model.mode("image"):
        direct = SharedVocabUMM.image_logprobs(model, r.row_prompts(), r.image_tokens_NT,
                                               model.effective_sampling(recipe))
    assert (direct - r.logp_NT).abs().max().item() <= 1e-4  # drawn from the checkpoint's top_k 3, temperature 0.7
    assert (r.logp_NT > -torch.log(torch.tensor(3.0)) - 1e-4).any()  # three codes at most: one has p >= 1/3
    old = dict(gen, transformers_version="4.37.0")  # a file older than 4.50 lends only its token ids
    assert load_model(f"xomni:{write_tiny_xomni(tmp_path / 'old', generation_config=old)}{BASE}").sampling_defaults == {}


def test_gvus_forward_names_the_cache_cache_and_warns_of_nothing(model):
    assert "cache" in inspect.signature(XOmniForCausalLM.forward).parameters
    assert "past_key_values" not in inspect.signature(XOmniForCausalLM.forward).parameters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = model.sample(PROMPTS[:1], 2, SAMPLINGS["plain"], torch.Generator().manual_seed(0))  # with the KV cache
        model.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["plain"])
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_rope_follows_x_omnis_config_values(model):
    def inv_freq(theta, d):
        return 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)

    rot = model.lm.model.rotary_emb  # the tiny checkpoint carries X-Omni's rope_theta
    assert torch.allclose(rot.inv_freq.double(), inv_freq(1e6, 16), rtol=1e-6)
    # X-Omni-En's language model (Qwen2.5-7B's values, in transformers 4.51.3's config.json layout): head_dim 128,
    # rope_theta 1e6, 32,768 positions; vocabularies and layers cut so the model builds in a moment
    cfg = XOmniConfig.from_dict({"hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
                                 "rope_theta": 1000000.0, "max_position_embeddings": 32768, "rope_scaling": None,
                                 "num_hidden_layers": 0, "vocab_size": 8, "mm_vocab_size": 8, "image_vocab_size": 4})
    rot = XOmniModel(cfg).rotary_emb
    assert torch.allclose(rot.inv_freq.double(), inv_freq(1e6, 128), rtol=1e-6)
    pos = torch.tensor([[0, 1, 577, 4095]])  # within float32's reach of the angle (ulp of 4095: 5e-4 rad)
    cos, sin = rot(torch.zeros(1, 4, 128), pos)
    angle = pos[0, :, None].double() * inv_freq(1e6, 128)
    assert torch.allclose(cos[0, :, :64].double(), angle.cos(), atol=1e-3)
    assert torch.allclose(sin[0, :, 64:].double(), angle.sin(), atol=1e-3)


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
