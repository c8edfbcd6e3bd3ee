"""A checkpoint's own Python runs only when the user asks (`trust_remote_code=1` in the model spec): on the tiny
X-Omni (tests/_tiny_xomni.py), whose every Python file writes its module name into a marker file when it runs,
the loads that need its code are refused without consent, naming the option and what would run, with the marker
still absent; with consent they load. X-Omni's tokenizer loads without the checkpoint's code where its files
allow; a saved folder's gvu.json cannot consent for the user, nor a causal-lm adapter file, nor a recorded base."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gvu.models.load import load_model
from _tiny_xomni import write_flux_folder, write_tiny_xomni

ROOT = Path(__file__).resolve().parents[1]
BASE = "?device=cpu&dtype=float32&grid=4x4&code_pixels=2"


@pytest.fixture
def double(tmp_path):
    """A fresh tiny X-Omni (its own module names, so nothing of an earlier import counts) and its marker file."""
    marker = tmp_path / "ran.txt"
    return write_tiny_xomni(tmp_path / "tiny-xomni", marker=marker), marker


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    return write_flux_folder(tmp_path_factory.mktemp("flux") / "FLUX.1-dev")


def ran(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


@pytest.mark.parametrize("option, runs", [
    ("flux", r"flux= sets up X-Omni's vision parts with the checkpoint's own code \(init_vision and "
             r"detokenize_image in .*tiny-xomni: modeling_tiny_xomni\.py and what it imports\)"),
    ("code=remote", r"code=remote runs the checkpoint's own modelling code \(modeling_tiny_xomni\.py"),
])
def test_what_runs_the_checkpoints_code_is_refused_without_consent_and_nothing_of_it_runs(double, flux, option,
                                                                                        runs):
    folder, marker = double
    spec = f"xomni:{folder}{BASE}&" + (f"flux={flux}" if option == "flux" else option)
    with pytest.raises(ValueError, match=runs + r".*add trust_remote_code=1 to the model spec"):
        load_model(spec)
    assert ran(marker) == []


def test_with_consent_the_checkpoints_vision_code_runs(double, flux):
    folder, marker = double
    model = load_model(f"xomni:{folder}{BASE}&flux={flux}&trust_remote_code=1")
    assert model.reads_pixels and "modeling_tiny_xomni" in " ".join(ran(marker))
    assert "trust_remote_code" not in model.options  # a saved run never records the consent


def test_x_omnis_tokenizer_and_language_model_load_without_the_checkpoints_code(double):
    folder, marker = double
    model = load_model(f"xomni:{folder}{BASE}")
    assert type(model.tokenizer.hf).__module__.startswith("transformers.")  # transformers' own class
    assert type(model.lm).__module__ == "gvu.models.adapters.xomni_lm"
    assert ran(marker) == []


def test_a_tokenizer_that_is_the_checkpoints_own_code_needs_consent(tmp_path):
    marker = tmp_path / "ran.txt"
    folder = write_tiny_xomni(tmp_path / "own-tokenizer", marker=marker, own_tokenizer=True)
    with pytest.raises(ValueError, match=r"its tokenizer is the checkpoint's own Python code .*auto_map.*add "
                                         r"trust_remote_code=1"):
        load_model(f"xomni:{folder}{BASE}")
    assert ran(marker) == []
    model = load_model(f"xomni:{folder}{BASE}&trust_remote_code=1")
    assert type(model.tokenizer.hf).__name__ == "TinyXOmniTokenizer"
    modules = {m.rsplit(".", 1)[-1] for m in ran(marker)}  # transformers reads the config class with it too
    assert "tokenization_tiny_xomni" in modules and "modeling_tiny_xomni" not in modules  # gvu's X-Omni code


def test_a_saved_folder_cannot_consent_the_user_does(double, flux, tmp_path):
    """A model folder (full weights) whose gvu.json claims trust_remote_code: refused; DIR?trust_remote_code=1
    loads it."""
    folder, marker = double
    saved = tmp_path / "saved"
    shutil.copytree(folder, saved)
    (saved / "gvu.json").write_text(json.dumps({"kind": "xomni", "weights": "full", "options": {
        "dtype": "float32", "device": "cpu", "grid": "4x4", "code_pixels": "2", "flux": str(flux),
        "trust_remote_code": "1"}}))
    with pytest.raises(ValueError, match="add trust_remote_code=1"):
        load_model(saved)
    assert ran(marker) == []
    assert load_model(f"{saved}?trust_remote_code=1").reads_pixels and ran(marker)


def test_a_folder_spec_takes_only_the_consent_option(double, tmp_path):
    saved = tmp_path / "saved"
    shutil.copytree(double[0], saved)
    (saved / "gvu.json").write_text(json.dumps({"kind": "xomni", "weights": "full", "options": {}}))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['dtype'\] for a model folder; known: "
                                         r"trust_remote_code"):
        load_model(f"{saved}?dtype=float32")


def test_a_causal_lm_adapter_file_cannot_consent_for_the_user(tmp_path):
    from test_models_causal_lm import write_tiny_model

    folder = write_tiny_model(tmp_path / "tiny", trust_remote_code=True)
    with pytest.raises(ValueError, match=r"gvu_causal_lm\.json says trust_remote_code: true.*add "
                                         r"trust_remote_code=1"):
        load_model(f"causal-lm:{folder}?device=cpu")
    assert load_model(f"causal-lm:{folder}?device=cpu&trust_remote_code=1").layout.num_codes == 32


def test_gvu_generate_without_consent_exits_2_naming_the_option(double, flux, tmp_path):
    folder, marker = double
    (tmp_path / "one.jsonl").write_text(json.dumps({"tag": "single_object", "include": [{"class": "cat", "count": 1}],
                                                    "prompt": "a photo of a cat"}) + "\n")
    r = subprocess.run([sys.executable, "-m", "gvu.cli", "generate", "--model", f"xomni:{folder}{BASE}&flux={flux}",
                        "--metadata", tmp_path / "one.jsonl", "--outdir", tmp_path / "out"], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "trust_remote_code=1" in r.stderr, r.stderr
    assert ran(marker) == []


def test_score_gives_the_reference_the_users_consent_never_a_recorded_one(tmp_path):
    from gvu.analysis.score import resolve_scorer

    base, run = tmp_path / "base", tmp_path / "run"
    base.mkdir()
    (base / "gvu.json").write_text("{}")
    (run / "final").mkdir(parents=True)
    (run / "final" / "gvu.json").write_text(json.dumps({"trained_from": f"{base}?trust_remote_code=1"}))
    assert resolve_scorer(run, "reference")[0] == str(base)  # the record names the base; its option is dropped
    assert resolve_scorer(f"{run}?trust_remote_code=1", "reference")[0] == f"{base}?trust_remote_code=1"
