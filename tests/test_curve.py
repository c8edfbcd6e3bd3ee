"""`gvu curve`: a run's checkpoints become the policy of their step (full weights and LoRA), every point is
evaluated once (the shared starting point once for all runs, a second call evaluates nothing), a folder that holds
another evaluation is refused, and the gains and the own-sample accuracy's slope carry the intervals
docs/protocol.md gives them."""

import json
import math

import numpy as np
import pytest
import torch

from gvu.analysis import curve
from gvu.models.builtin.model import load_builtin
from gvu.rl.config import load_config
from gvu.rl.trainer import Trainer

from test_trainer import TINY, base, gvu  # noqa: F401 (base: the tiny pretrained base fixture)


def train(base, out, **kw):
    cfg = load_config(TINY, {"model": str(base), "output_dir": str(out), "num_prompts": 32, "eval_steps": 0,
                             "max_steps": 4, "save_steps": 2, "save_total_limit": 0, "learning_rate": 0.01, **kw})
    Trainer(cfg).train(progress=False)
    return out


@pytest.fixture(scope="module")
def runs(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [train(base, root / f"seed-{s}" / "train", seed=s) for s in (0, 1)]


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_every_checkpoint_is_kept_and_the_last_one_is_the_final_policy(base, runs):
    cfg, points = curve.run_points(runs[0])
    assert [s for s, _ in points] == [0, 2, 4]
    assert cfg["model"] == str(base)
    last, final = state(curve.model_at(cfg, points[-1][1]).lm), state(load_builtin(runs[0] / "final").lm)
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in last)
    start, middle = state(curve.model_at(cfg, None).lm), state(curve.model_at(cfg, points[1][1]).lm)
    assert all(torch.equal(start[k], v) for k, v in state(load_builtin(base).lm).items())
    assert any(not torch.equal(middle[k], last[k]) for k in last)  # step 2 is not step 4


def test_a_lora_checkpoint_is_its_adapters_on_the_base(base, tmp_path):
    out = train(base, tmp_path / "lora", use_lora=True, beta=0.05, max_steps=2)
    cfg, points = curve.run_points(out)
    policy = curve.model_at(cfg, points[-1][1])
    merged = policy.module.merge_and_unload()
    final = load_builtin(out / "final")
    got, want = merged.state_dict(), final.module.state_dict()
    assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-5
    assert max((got[k] - v).abs().max().item() for k, v in load_builtin(base).module.state_dict().items()) > 0


def test_a_checkpoint_of_another_model_is_refused(base, runs, tmp_path):
    cfg, points = curve.run_points(runs[0])
    weights = torch.load(points[-1][1] / "trainable.pt", weights_only=True)
    weights["no.such.parameter"] = torch.zeros(1)
    torch.save(weights, points[-1][1].parent / "bad.pt")
    bad = points[-1][1].parent / "checkpoint-6"
    bad.mkdir()
    (bad / "trainer_state.json").write_text((points[-1][1] / "trainer_state.json").read_text())
    (points[-1][1].parent / "bad.pt").rename(bad / "trainable.pt")
    try:
        with pytest.raises(ValueError, match="no.such.parameter"):
            curve.model_at(cfg, bad)
    finally:
        for f in bad.iterdir():
            f.unlink()
        bad.rmdir()
    with pytest.raises(FileNotFoundError, match="save_total_limit=0"):
        curve.run_points(tmp_path)


def test_points_are_evaluated_once_and_resume(runs, tmp_path, monkeypatch):
    from gvu.eval import evaluate

    calls = []
    real = evaluate.evaluate_model

    def counting(model, benchmark, **kw):
        calls.append(kw["out"])
        return real(model, benchmark, **kw)

    monkeypatch.setattr(evaluate, "evaluate_model", counting)
    kw = dict(benchmark="val_geneval", per_prompt=1, limit=3, progress=False)
    md = curve.write_curve([str(r) for r in runs], tmp_path / "c", **kw)
    # step 0 of both seeds is one model on the same prompts and seeds: evaluated once
    assert len(calls) == 5
    data = json.loads((tmp_path / "c" / "curve.json").read_text())
    assert list(data["runs"]) == ["seed-0", "seed-1"]
    assert set(data["own_sample_accuracy"]) == {"seed-0", "seed-1", "mean over the runs"}
    mean = data["scores"]["val_geneval"]["mean"]
    assert [m["step"] for m in mean] == [0, 2, 4]
    assert mean[0]["runs"][0] == mean[0]["runs"][1]
    assert set(data["scores"]["val_geneval"]["gain_after"]) == set()  # no step 20 in a 4-step run
    assert (tmp_path / "c" / "curve.png").stat().st_size > 0 and "| 4 |" in md.read_text()
    calls.clear()
    again = curve.write_curve([str(r) for r in runs], tmp_path / "c", **kw, against=2)
    assert calls == []  # read back, nothing evaluated again
    gains = json.loads((tmp_path / "c" / "curve.json").read_text())["scores"]["val_geneval"]["gain_after"]
    assert set(gains) == {"seed-0", "seed-1"} and "step 2 -> 4" in again.read_text()
    with pytest.raises(ValueError, match="holds another evaluation"):
        curve.write_curve([str(runs[0])], tmp_path / "c", **{**kw, "per_prompt": 2})


def points(values: dict[str, list[tuple[int, float]]], n: int = 100) -> dict:
    """Synthetic evaluation results: one tag of n images a point."""
    return {lab: {s: {"val_geneval": {"overall": v, "tags": {"t": v}, "images": {"t": n}}} for s, v in pts}
            for lab, pts in values.items()}


def test_the_gain_after_a_step_and_its_intervals():
    res = points({"a": [(0, 0.3), (20, 0.5), (60, 0.7)], "b": [(0, 0.3), (20, 0.55), (60, 0.7)],
                  "c": [(0, 0.3), (20, 0.45), (60, 0.65)]})
    c = curve.score_curves(res, against=20)["val_geneval"]
    a = c["gain_after"]["a"]
    assert a["gain"] == pytest.approx(0.2)
    assert a["half_width"] == pytest.approx(1.96 * math.sqrt(0.5 * 0.5 / 100 + 0.7 * 0.3 / 100))
    over = c["gain_after_mean"]
    g = np.array([0.2, 0.15, 0.2])
    assert over["gain"] == pytest.approx(g.mean())
    assert over["half_width"] == pytest.approx(4.302653 * g.std(ddof=1) / math.sqrt(3), rel=1e-5)
    assert c["mean"][-1]["mean"] == pytest.approx((0.7 + 0.7 + 0.65) / 3)
    one = curve.score_curves(points({"a": [(0, 0.3), (20, 0.5)]}), against=20)["val_geneval"]
    assert one["mean"][1]["half_width"] == pytest.approx(1.96 * math.sqrt(0.25 / 100))
    assert one["gain_after"] == {}  # the last step is the step itself: no gain after it


def test_the_own_sample_accuracy_slope_over_the_last_third(tmp_path):
    rng = np.random.default_rng(0)
    rising = [(s, 0.3 + 0.004 * s + rng.normal(0, 0.02)) for s in range(1, 121)]
    t = curve.accuracy_trend(rising)
    assert t["rising"] and t["slope_per_step"] == pytest.approx(0.004, abs=0.0015)
    assert t["last_third"] == [81, 120] and t["thirds"][0] < t["thirds"][1] < t["thirds"][2]
    flat = [(s, 0.5 + (0.3 if s <= 80 and s % 7 == 0 else 0.0) + rng.normal(0, 0.05)) for s in range(1, 121)]
    assert not curve.accuracy_trend(flat)["rising"]
    assert curve.accuracy_trend(rising[:5]) is None
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps({"step": s, "accuracy": a}) for s, a in rising[:9])
                                        + "\n" + json.dumps({"step": 0, "val_geneval": 0.2}) + "\n")
    assert curve.log_points(tmp_path) == [(s, a) for s, a in rising[:9]]
    # the pooled curve: the mean at the steps every run logged
    assert curve.mean_points([[(1, 0.2), (2, 0.4), (3, 0.5)], [(2, 0.6), (3, 0.7)]]) == [(2, 0.5), (3, 0.6)]


def test_cli_refuses_bad_steps_and_a_folder_without_checkpoints(tmp_path):
    r = gvu("curve", str(tmp_path), "--out", str(tmp_path / "c"), "--steps", "0,x")
    assert r.returncode == 2 and "give steps as whole numbers" in r.stderr
    r = gvu("curve", str(tmp_path), "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "no checkpoint-N folder" in r.stderr and "Traceback" not in r.stderr
