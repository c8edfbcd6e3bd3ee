"""gvu's own X-Omni language model (gvu/models/adapters/xomni_lm.py) against X-Omni's own modelling code: the tiny
X-Omni of tests/_tiny_xomni.py keeps the original's conventions, and its logits in both generation modes, computed by
that code under transformers 4.51.3 (scripts/xomni_reference.py), are in tests/data/xomni_reference.json. Under
the transformers installed here the original code does not run at all; these tests show that it breaks, that the
load says what to install, and that gvu's code computes what the original computed."""

import json
from pathlib import Path

import pytest
import torch

from gvu.models.adapters.xomni import check_one_token
from gvu.models.load import load_model
from _tiny_xomni import KEEP, logits_both_modes, reference_batch, write_tiny_xomni

REF = json.loads((Path(__file__).parent / "data" / "xomni_reference.json").read_text())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_xomni(tmp_path_factory.mktemp("xomni-lm") / "tiny-xomni")


def test_the_reference_was_computed_by_x_omnis_own_code_under_its_pin():
    assert REF["transformers"] == "4.51.3" and REF["code"].endswith("modeling_tiny_xomni")
    assert REF["rope_theta"] == 1e6  # X-Omni's, read by 4.51.3 from the config's top level


def test_gvus_x_omni_code_reproduces_x_omnis_own_logits_in_both_modes(folder):
    model = load_model(f"xomni:{folder}?device=cpu&dtype=float32")
    assert type(model.lm).__module__ == "gvu.models.adapters.xomni_lm"
    ids, mask, pos = reference_batch(folder)
    assert ids.tolist() == REF["input_ids"] and mask.tolist() == REF["attention_mask"]
    got = logits_both_modes(model.lm, ids, mask, pos)
    for mode in ("text", "image"):
        want = torch.tensor(REF[mode])
        assert want.shape[1] == KEEP and (torch.tensor(got[mode]) - want).abs().max().item() <= 1e-4, mode


def test_x_omnis_own_code_breaks_under_this_transformers_and_the_load_names_the_pin(folder):
    with pytest.raises(ValueError, match=r"remote code.*transformers==4\.51\.3.*diffusers==0\.34\.0.*timm.*einops"):
        load_model(f"xomni:{folder}?device=cpu&dtype=float32&code=remote&trust_remote_code=1")


def test_the_one_token_check_turns_a_first_forward_failure_into_what_to_install(folder):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    original = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)  # builds; its forward is what breaks
    with pytest.raises(ValueError, match=r"one token through X-Omni's remote code failed \(AttributeError: .*"
                                         r"has_sliding_layers.*transformers==4\.51\.3"):
        check_one_token(original, str(folder), "remote")
    assert original.generation_mode == "text"  # restored even on failure


def test_a_checkpoint_missing_one_of_x_omnis_weights_is_refused_not_initialised_at_random(folder, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    weights = load_file(str(broken / "model.safetensors"))
    del weights["mm_head.weight"]
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks weights gvu's X-Omni code needs: \['mm_head\.weight'\]"):
        load_model(f"xomni:{broken}?device=cpu&dtype=float32")
