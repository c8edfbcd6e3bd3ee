"""One contract, every model: the UnifiedModel interface the trainer, the reward and the evaluation rely on, run
over the built-in model and each transformers adapter (tiny models built here). Adapter-specific behaviour is
tested in tests/test_models_*.py."""

import numpy as np
import pytest
import torch

from gvu.models.load import load_model
from gvu.models.protocol import SamplingConfig, UnifiedModel
from gvu.rl.setup import lora_targets

PROMPTS = ["a photo of a red circle", "two blue squares"]
KINDS = ["builtin", "janus", "emu3", "causal-lm", "xomni"]


def build(kind, tmp):
    if kind == "builtin":
        from gvu.models.builtin.model import build_builtin

        return build_builtin("tiny", seed=0)
    if kind == "janus":
        from gvu.models.adapters.janus import tiny_janus_parts

        parts = tiny_janus_parts(seed=0)
        for part in parts:
            part.save_pretrained(tmp / "janus")
        return load_model(f"janus:{tmp / 'janus'}?device=cpu")
    if kind == "emu3":
        from gvu.models.adapters.emu3 import tiny_emu3_parts

        for part in tiny_emu3_parts(seed=0):
            part.save_pretrained(tmp / "emu3")
        return load_model(f"emu3:{tmp / 'emu3'}?device=cpu&grid=4x4")
    if kind == "causal-lm":
        from test_models_causal_lm import write_tiny_model

        return load_model(f"causal-lm:{write_tiny_model(tmp / 'clm')}?device=cpu")
    from _tiny_xomni import write_flux_folder, write_tiny_xomni

    flux = write_flux_folder(tmp / "flux")
    return load_model(f"xomni:{write_tiny_xomni(tmp / 'xo')}?device=cpu&grid=4x4&code_pixels=2&flux={flux}"
                      "&trust_remote_code=1")


@pytest.fixture(scope="module", params=KINDS)
def model(request, tmp_path_factory):
    return build(request.param, tmp_path_factory.mktemp(request.param))


def test_the_interface_is_whole(model):
    assert isinstance(model, UnifiedModel)
    assert isinstance(model.module, torch.nn.Module) and model.device == torch.device("cpu")
    assert model.kind in ("builtin", "janus", "emu3", "causal-lm", "xomni")
    assert model.world in ("shapes", None) and (model.world == "shapes") == (model.kind == "builtin")
    assert isinstance(model.supports_fsdp2, bool) and isinstance(model.reads_pixels, bool)
    assert model.tokenizer.encode("a photo of a red circle")


def test_lora_scope_names_the_language_model(model):
    import re

    names = [n for n, _ in model.module.named_modules()]
    pattern = re.compile(lora_targets(model, ["q_proj", "v_proj"]))
    hits = [n for n in names if pattern.fullmatch(n)]
    assert hits and all(n.startswith(model.lora_scope + ".") for n in hits)


def test_sample_teacher_force_score_decode(model):
    sampling = SamplingConfig(min_p=0.03, guidance=2.0)
    r = model.sample(PROMPTS, 2, sampling, torch.Generator().manual_seed(0))
    N, T = r.image_tokens_NT.shape
    assert N == 4 and r.logp_NT.shape == (N, T) and r.prompt_index_N.tolist() == [0, 0, 1, 1]
    again = model.sample(PROMPTS, 2, sampling, torch.Generator().manual_seed(0))
    assert torch.equal(r.image_tokens_NT, again.image_tokens_NT)  # reproducible from the generator
    logp = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
    assert logp.requires_grad and (logp.detach() - r.logp_NT).abs().max().item() <= 1e-4
    pixels = model.decode(r.image_tokens_NT, prompts=r.row_prompts(), seeds=[0, 1, 2, 3])
    assert pixels.dtype == np.uint8 and pixels.ndim == 4 and pixels.shape[0] == N and pixels.shape[3] == 3
    images = pixels if model.reads_pixels else r.image_tokens_NT
    with torch.no_grad():
        lp, mask = model.prompt_logprobs(images, r.row_prompts())
    assert lp.shape == mask.shape and lp.shape[0] == N and mask.dtype == torch.bool
    assert torch.isfinite(lp[mask]).all() and (lp[mask] <= 0).all() and (lp[~mask] == 0).all()


def test_save_and_load_back(model, tmp_path):
    sampling = SamplingConfig()
    r = model.sample(PROMPTS[:1], 2, sampling, torch.Generator().manual_seed(1))
    out = model.save_pretrained(tmp_path / "saved", extra={"note": "contract"})
    consent = "?trust_remote_code=1" if model.kind == "xomni" else ""  # its vision code, not recorded in gvu.json
    back = load_model(f"{out}{consent}", device="cpu")
    assert back.kind == model.kind
    with torch.no_grad():
        a = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
        b = back.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
    assert (a - b).abs().max().item() <= 1e-5


def test_transformers_older_than_the_floor_is_refused_with_the_fix(monkeypatch):
    import transformers

    from gvu.models.hf import TRANSFORMERS_FLOOR, check_transformers

    check_transformers("janus")  # the installed version is at least the floor
    monkeypatch.setattr(transformers, "__version__", "5.21.0")
    with pytest.raises(ImportError, match=r"need transformers >= 5\.22, this is 5\.21\.0; upgrade with: pip install"):
        check_transformers("janus")
    with pytest.raises(ImportError, match="upgrade with"):
        load_model("janus:/nonexistent/folder")
    assert TRANSFORMERS_FLOOR == (5, 22)
