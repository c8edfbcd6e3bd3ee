"""The full-size step benchmark (gvu.perf.fullsize) on its scaled-down `tiny` preset: the same path (a random
Janus saved as a transformers checkpoint, loaded by `janus:`, one Trainer.train() step with guidance, min_p, LoRA,
beta > 0 and the checkpoint writes), checked for every phase's time and memory in the JSON. The Janus-Pro-1B
preset is checked against the published architecture without building its weights (meta device)."""

import json

import pytest
import torch

from gvu.cli import build_parser
from gvu.perf import fullsize


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fullsize")
    res = fullsize.run_fullsize("tiny", out=tmp / "step.json", threads=1, workdir=tmp, dtype="bfloat16")
    return res, tmp


def test_every_phase_has_time_and_memory(run):
    res, tmp = run
    written = json.loads((tmp / "step.json").read_text())
    assert written["phases"] == res["phases"]
    for phase in fullsize.STEP_PHASES + fullsize.OWN_PHASES:
        assert phase in written["phases"], phase
        assert written["phases"][phase]["s"] > 0, phase
        assert written["phases"][phase]["peak_mib"] > 0, phase
    assert written["missing_phases"] == []
    assert written["wall_s"] >= written["step_s"] > 0
    # the process's peak covers every phase (the per-phase resets also reset ru_maxrss on Linux)
    assert written["peak_rss_mib"] >= max(p["peak_mib"] for p in written["phases"].values())
    assert written["machine"]["load_average"] is not None
    assert [p for p in tmp.iterdir() if p.name.startswith("fullsize-")] == []  # the checkpoint is removed


def test_the_step_ran_the_recipe(run):
    res, _ = run
    cfg = res["config"]
    assert cfg["model"].startswith("janus:")
    assert cfg["model"].endswith("?dtype=bfloat16&device=cpu&gradient_checkpointing=1")
    assert (cfg["guidance_scale"], cfg["min_p"], cfg["beta"], cfg["num_generations"]) == (5.0, 0.03, 0.03, 2)
    assert cfg["use_lora"] and (cfg["lora_r"], cfg["lora_alpha"]) == (8, 32)
    assert res["checkpoint"]["dtype"] == "bfloat16" and res["checkpoint"]["parameters"] > 0
    assert res["dtype_choice"] == "asked for"
    assert res["step_metrics"]["step"] == 1 and res["step_metrics"]["skipped_minibatches"] == 0


def test_a_missing_phase_is_reported():
    phases = {p: {"s": 1.0, "peak_mib": 100.0} for p in fullsize.STEP_PHASES + fullsize.OWN_PHASES}
    assert fullsize.missing_phases(phases) == []
    del phases["reference"]
    phases["update"]["peak_mib"] = None
    phases["save"]["s"] = 0.0
    assert fullsize.missing_phases(phases) == ["reference", "update", "save"]


def test_phase_table_takes_the_trainer_phases_in_order():
    metrics = {"step": 1, "time/sample": 2.0, "mem/sample": 10.0, "time/decode": 1.0, "loss": 0.5}
    record = {"time/load": 3.0, "mem/load": 9.0, "time/save": 0.1, "mem/save": 11.0}
    table = fullsize.phase_table(metrics, record)
    assert list(table) == ["load", "sample", "decode", "save", "save_final"]
    assert table["decode"] == {"s": 1.0, "peak_mib": None} and table["save_final"]["s"] is None


def test_janus_pro_1b_preset_is_the_published_architecture():
    from transformers import JanusForConditionalGeneration

    from gvu.models.hf import tiny_byte_tokenizer
    from gvu.models.adapters.janus import BOI, EOI, IMAGE

    tok = tiny_byte_tokenizer(["<pad>", "<bos>", "<eos>", BOI, EOI, IMAGE], bos="<bos>", eos="<eos>", pad="<pad>")
    cfg = fullsize.janus_config("janus-pro-1b", tok)
    assert (cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.text_config.vocab_size) == \
        (2048, 24, 102400)
    assert cfg.image_token_id == tok.convert_tokens_to_ids(IMAGE)
    with torch.device("meta"):
        lm = JanusForConditionalGeneration(cfg)
    assert lm.model.vqmodel.quantize.quant_state_dims == [24, 24]  # 576 codes
    assert lm.config.vision_config.image_size // lm.config.vision_config.patch_size == 24  # 576 SigLIP tokens
    n = sum(p.numel() for p in lm.parameters())
    assert 2.05e9 < n < 2.1e9  # the published checkpoint: ~2.09B parameters (separate lm_head)


def test_cli_runs_only_the_full_size_step(monkeypatch, capsys, run):
    res, tmp = run
    calls = []
    monkeypatch.setattr(fullsize, "run_fullsize", lambda arch, out=None, **kw: calls.append((arch, out, kw)) or res)
    a = build_parser().parse_args(["bench", "--full-size", "tiny", "--out", str(tmp / "x")])
    a.func(a)
    assert calls == [("tiny", str(tmp / "x"), {"dtype": "auto"})]
    out = capsys.readouterr().out
    for phase in fullsize.STEP_PHASES:
        assert f"\n{phase} " in out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--full-size", "janus-pro-7b"])
    a = build_parser().parse_args(["bench", "--full-size", "tiny", "--dtype", "float32", "--threads", "1"])
    a.func(a)
    assert calls[-1] == ("tiny", None, {"dtype": "float32", "threads": 1})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--full-size", "tiny", "--dtype", "float16"])
    a = build_parser().parse_args(["bench", "--dtype", "float32"])
    with pytest.raises(ValueError, match="--full-size"):
        a.func(a)


def test_auto_dtype_is_bf16_only_where_the_cpu_computes_it():
    assert fullsize.resolve_dtype("auto", {"avx2", "fma"})[0] == "float32"
    assert fullsize.resolve_dtype("auto", {"avx2", "avx512f", "avx512_bf16"}) == \
        ("bfloat16", "auto: the CPU computes bf16 natively (avx512_bf16)")
    assert fullsize.resolve_dtype("auto", {"amx_bf16", "amx_tile"})[0] == "bfloat16"
    assert fullsize.resolve_dtype("bfloat16", {"avx2"}) == ("bfloat16", "asked for")
    assert fullsize.resolve_dtype("auto")[0] == ("bfloat16" if fullsize.cpu_flags() & {"avx512_bf16", "amx_bf16"}
                                                 else "float32")
    with pytest.raises(ValueError, match="float16"):
        fullsize.resolve_dtype("float16")
