"""The GvU trainer end to end on a tiny base (pretrained once per module, a few seconds): weights move, metrics
are finite and named as TRL names them, the ratio is 1 where it must be, resume is exact, LoRA trains only
adapters, bad input fails before compute, and the CLI works as the README shows it."""

import json
import math
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from gvu.models.builtin.model import load_builtin
from gvu.models.builtin.pretrain import PretrainConfig, pretrain
from gvu.rl.config import load_config
from gvu.rl.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.yaml"
TRL_NAMES = ("reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "clip_ratio/low_mean",
             "clip_ratio/high_mean", "clip_ratio/region_mean", "step_time")
PHASES = ("time/sample", "time/decode", "time/reward", "time/update")


@pytest.fixture(scope="module")
def base(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("base") / "base-tiny"
    pretrain(PretrainConfig(size="tiny", steps=40, num_scenes=200, batch_size=32), out, progress=False)
    return out


def config(base, out, **kw):
    """configs/tiny.yaml with a small prompt set and no evaluation unless asked."""
    return load_config(TINY, {"model": str(base), "output_dir": str(out), "num_prompts": 32, "eval_steps": 0, **kw})


def train(cfg, resume=None) -> Trainer:
    t = Trainer(cfg, resume=resume)
    t.train(progress=False)
    return t


def read_log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def train_lines(out) -> list[dict]:
    return [m for m in read_log(out) if m["step"] > 0]


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# ------------------------------------------------------------------------------------------------ a plain run

@pytest.fixture(scope="module")
def run_a(base, tmp_path_factory):
    """4 steps, checkpoints every 2, evaluation at steps 0, 2 and 4 on 2 prompts per benchmark."""
    out = tmp_path_factory.mktemp("a") / "run"
    cfg = config(base, out, max_steps=4, save_steps=2, eval_steps=2, eval_limit=2, eval_per_prompt=1)
    return train(cfg), out


def test_run_changes_weights_and_logs_finite_metrics(base, run_a):
    trainer, out = run_a
    before = weights(load_builtin(base).lm)
    after = weights(trainer.policy.lm)
    assert max_diff(before, after) > 0
    lines = train_lines(out)
    assert [m["step"] for m in lines] == [1, 2, 3, 4]
    for m in lines:
        for k in TRL_NAMES + PHASES + ("loss", "learning_rate", "intrinsic_reward", "accuracy"):
            assert k in m, k
        for k, v in m.items():
            if k == "reward_auc" and v is None:  # one class only among the images
                continue
            assert isinstance(v, (int, float)) and math.isfinite(v), (k, v)
        assert 0 <= m["frac_reward_zero_std"] <= 1 and m["kl"] >= 0 and m["entropy"] > 0
        assert m["reward"] == pytest.approx(m["intrinsic_reward"])  # the intrinsic reward trains
    # evaluation: a step-0 line of eval_ metrics, then eval_ metrics merged into steps 2 and 4, and their grids
    first = read_log(out)[0]
    assert first["step"] == 0 and all(k == "step" or k.startswith("eval_") for k in first)
    assert [m["step"] for m in lines if "eval_geneval" in m] == [2, 4]
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["step_00000.png", "step_00002.png",
                                                                  "step_00004.png"]


def test_final_model_loads_and_equals_the_policy(run_a):
    trainer, out = run_a
    final = load_builtin(out / "final")
    assert max_diff(weights(final.lm), weights(trainer.policy.lm)) == 0
    assert json.loads((out / "final" / "gvu.json").read_text())["train"]["max_steps"] == 4
    # the last checkpoint is there too, and save_total_limit (2) keeps checkpoint-2 and checkpoint-4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


def test_evaluation_leaves_the_training_trajectory_alone(base, run_a, tmp_path):
    # evaluation draws with its own generators, so how often it runs (eval_steps, a logging choice) never changes
    # what is trained: the same run without evaluation ends with the very same weights and losses
    trainer, out = run_a
    quiet = train(config(base, tmp_path / "run", max_steps=4, save_steps=2, eval_steps=0))
    assert max_diff(weights(quiet.policy.lm), weights(trainer.policy.lm)) == 0
    assert [m["loss"] for m in train_lines(tmp_path / "run")] == [m["loss"] for m in train_lines(out)]


def test_trainer_evaluates_a_spread_subset_of_the_understanding_set(base, tmp_path):
    # the matching part of understanding costs more than the generation benchmarks together: during training it
    # reads eval_understanding_limit images spread over its tags (the smaller of it and eval_limit)
    cfg = config(base, tmp_path / "run", eval_benchmarks=["understanding"], eval_limit=0, eval_understanding_limit=50)
    t = Trainer(cfg)
    metrics = t.evaluate()
    assert len(t._eval_sets["understanding"].rows) == 50 and 0 <= metrics["eval_understanding"] <= 1
    assert len({r["tag"] for r in t._eval_sets["understanding"].rows}) > 5  # spread, not the first tag's rows
    t2 = Trainer(config(base, tmp_path / "r2", eval_benchmarks=["understanding"], eval_limit=8,
                        eval_understanding_limit=50))
    t2.evaluate()
    assert len(t2._eval_sets["understanding"].rows) == 8


def test_one_update_per_rollout_keeps_the_ratio_at_one(base, tmp_path):
    # the published setting: one pass, one minibatch, so pi_theta == pi_old when the loss is taken
    out = tmp_path / "run"
    train(config(base, out, max_steps=2, num_iterations=1, minibatch_size=16))
    for m in train_lines(out):
        assert m["clip_ratio/region_mean"] == 0.0
        assert m["ratio_max_abs_dev"] < 1e-5


def test_several_passes_with_a_large_step_clip(base, tmp_path):
    out = tmp_path / "run"
    train(config(base, out, max_steps=2, num_iterations=4, minibatch_size=4, learning_rate=0.05))
    lines = train_lines(out)
    assert max(m["clip_ratio/region_mean"] for m in lines) > 0
    assert all(math.isfinite(m["loss"]) for m in lines)


@pytest.mark.parametrize("kind,want", [
    # 2 steps x 2 passes x (16 rows / 8 per minibatch) = 8 optimizer steps, 2 of them warm-up
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.5, 1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0]),
    ("cosine", [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(7)]),
])
def test_lr_schedule_counts_optimizer_steps(kind, want, tmp_path):
    cfg = load_config(TINY, {"max_steps": 2, "warmup_steps": 2, "lr_scheduler_type": kind})
    f = Trainer._lr_lambda(types.SimpleNamespace(cfg=cfg))
    assert [f(k) for k in range(9)] == pytest.approx(want)


# ------------------------------------------------------------------------------------------------ resume

def test_resume_is_exact(base, run_a, tmp_path):
    trainer_a, out_a = run_a
    out_b = tmp_path / "b"
    train(config(base, out_b, max_steps=2, save_steps=2))
    assert (out_b / "checkpoint-2").is_dir()
    # a run that died after logging step 3 (and mid-line) without a checkpoint: the resumed run rewrites them
    with open(out_b / "log.jsonl", "a") as fp:
        fp.write(json.dumps({"step": 3, "reward": 999.0}) + "\n" + '{"step": 4, "rew')
    trainer_b = train(config(base, out_b, max_steps=4, save_steps=2), resume=out_b)
    a, b = {m["step"]: m for m in train_lines(out_a)}, train_lines(out_b)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for m in b:
        for k in ("reward", "loss", "kl", "reward_std", "entropy"):
            assert m[k] == pytest.approx(a[m["step"]][k], abs=1e-6), (m["step"], k)
    assert max_diff(weights(trainer_a.policy.lm), weights(trainer_b.policy.lm)) < 1e-6
    assert trainer_b.data_pos == trainer_a.data_pos


def interrupt_during(trainer, step, times=1):
    """Send Ctrl-C (SIGINT) to ourselves `times` times while `step` is being scored, i.e. mid-step."""
    score = trainer.intrinsic

    def score_and_interrupt(*args):
        if trainer.step + 1 == step:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return score(*args)

    trainer.intrinsic = score_and_interrupt


def test_ctrl_c_finishes_the_step_then_saves_a_checkpoint_that_resumes_exactly(base, run_a, tmp_path):
    trainer_a, out_a = run_a
    out = tmp_path / "c"
    cfg = config(base, out, max_steps=4, save_steps=0)  # no periodic checkpoints: only the Ctrl-C one
    trainer = Trainer(cfg)
    interrupt_during(trainer, step=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(progress=False)
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert [m["step"] for m in read_log(out)] == [1, 2]
    resumed = train(cfg, resume=out)
    assert max_diff(weights(trainer_a.policy.lm), weights(resumed.policy.lm)) < 1e-6
    a = {m["step"]: m for m in train_lines(out_a)}
    for m in train_lines(out):
        assert m["reward"] == pytest.approx(a[m["step"]]["reward"], abs=1e-6)


def test_second_ctrl_c_stops_at_once_without_a_half_done_checkpoint(base, tmp_path):
    out = tmp_path / "d"
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when run in the background
    trainer = Trainer(config(base, out, max_steps=4, save_steps=0))
    interrupt_during(trainer, step=2, times=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(progress=False)
    assert list(out.glob("checkpoint-*")) == []
    assert [m["step"] for m in read_log(out)] == [1]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


# ------------------------------------------------------------------------------------------------ variants

def test_lora_trains_only_adapters_and_saves_a_merged_model(base, tmp_path):
    out = tmp_path / "lora"
    trainer = Trainer(config(base, out, max_steps=2, use_lora=True, beta=0.05, learning_rate=0.01))
    assert trainer.reference is None  # the reference is the policy with its adapter disabled
    before = weights(trainer.policy.lm)
    trainer.train(progress=False)
    after = weights(trainer.policy.lm)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)  # B starts at zero: the adapter really moved
    # the adapter-disabled reference differs from the policy, so the KL is positive
    assert train_lines(out)[-1]["kl"] > 0
    ckpt = torch.load(out / "checkpoint-2" / "trainable.pt", weights_only=True)
    assert ckpt and all("lora_" in k for k in ckpt)
    final = load_builtin(out / "final")
    base_w, final_w = weights(load_builtin(base).lm), weights(final.lm)
    assert max_diff(base_w, final_w) > 0  # merged adapters
    assert not any("lora" in k for k in final_w)


def test_the_default_reward_is_the_blend_of_the_built_in_set(base, run_a, tmp_path):
    trainer, out = run_a  # tiny.yaml leaves the variant unset
    assert (trainer.reward_cfg.variant, trainer.reward_cfg.blend_weight) == ("blend", 0.25)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps(ROW) + "\n")
    t = Trainer(config(base, tmp_path / "run", prompts=str(prompts), reward_blend_weight=0.5))
    assert (t.reward_cfg.variant, t.reward_cfg.blend_weight) == ("geomean", 0.5)


def test_reference_scorer_with_beta_zero(base, tmp_path):
    out = tmp_path / "ref"
    trainer = train(config(base, out, max_steps=1, beta=0.0, reward_scorer="reference"))
    assert trainer.reference is not None
    m = train_lines(out)[0]
    assert "kl" not in m and math.isfinite(m["reward"]) and 0 < m["reward"] <= 1


def test_oracle_reward_with_reference_scorer_and_no_kl(base, tmp_path):
    # the intrinsic reward is still logged, scored by the frozen reference (which beta = 0 alone would not load)
    out = tmp_path / "oracle"
    train(config(base, out, max_steps=1, beta=0.0, reward="oracle_binary", reward_scorer="reference"))
    m = train_lines(out)[0]
    assert 0 <= m["reward"] <= 1 and m["reward"] == pytest.approx(m["accuracy"])  # the judge is the reward
    assert 0 < m["intrinsic_reward"] <= 1


def test_replay_old_logps_match_the_sampler(base, tmp_path):
    out = tmp_path / "replay"
    train(config(base, out, max_steps=2, old_logp_source="replay"))
    for m in train_lines(out):
        assert m["rollout_replay_max_abs_diff"] < 1e-4


# ------------------------------------------------------------------------------------------------ bad input

ROW = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}


def test_prompt_outside_the_vocabulary_names_file_and_line(base, tmp_path):
    path = tmp_path / "prompts.jsonl"
    bad = {**ROW, "prompt": "a photo of a zebra"}
    path.write_text(json.dumps(ROW) + "\n\n" + json.dumps(bad) + "\n")  # a blank line: the bad row is on line 3
    with pytest.raises(ValueError) as err:
        Trainer(config(base, tmp_path / "out", prompts=str(path)))
    assert f"{path}:3:" in str(err.value) and "'zebra'" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing ran


def test_empty_and_malformed_prompt_files(base, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="file has no rows"):
        Trainer(config(base, tmp_path / "out", prompts=str(empty)))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ROW) + "\n{not json\n")
    with pytest.raises(ValueError, match=f"{broken}:2: malformed JSON"):
        Trainer(config(base, tmp_path / "out", prompts=str(broken)))
    with pytest.raises(ValueError, match="no training prompts"):
        Trainer(config(base, tmp_path / "out", num_prompts=0))
    with pytest.raises(ValueError, match="instruction: word 'thoroughly'"):
        Trainer(config(base, tmp_path / "out", instruction="Describe the image thoroughly."))
    assert not (tmp_path / "out").exists()


def test_one_generation_is_refused(base, tmp_path):
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        config(base, tmp_path / "out", num_generations=1, minibatch_size=4)


def test_resume_from_a_folder_without_checkpoints(base, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        Trainer(config(base, tmp_path / "out"), resume=tmp_path)


# ------------------------------------------------------------------------------------------------ CLI

def gvu(*args) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "gvu"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gvu.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(cmd + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two fresh processes, each importing transformers
def test_cli_train_then_resume(base, tmp_path):
    out = tmp_path / "cli"
    r = gvu("train", "--config", "configs/tiny.yaml", f"model={base}", f"output_dir={out}", "max_steps=2",
            "eval_steps=0", "num_prompts=32", "threads=1")
    assert r.returncode == 0, r.stderr
    assert (out / "final").is_dir() and "wrote the trained policy" in r.stdout
    load_builtin(out / "final")
    r = gvu("train", "--resume", str(out), "max_steps=3")
    assert r.returncode == 0, r.stderr
    assert [m["step"] for m in read_log(out)] == [1, 2, 3]
    assert json.loads((out / "final" / "gvu.json").read_text())["train"]["max_steps"] == 3


def test_cli_bad_input_exits_2_with_a_message(base, tmp_path):
    r = gvu("train", "--config", "configs/tiny.yaml", f"model={base}", f"output_dir={tmp_path / 'x'}", "beta_kl=0.1")
    assert r.returncode == 2
    assert "unknown config key(s) ['beta_kl']" in r.stderr and "known keys:" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_cli_resume_keeps_exponent_floats(base, tmp_path):
    from gvu.cli import main

    out = tmp_path / "small-lr"
    train(config(base, out, max_steps=1, learning_rate=1e-5))  # json.dumps writes 1e-05
    assert main(["train", "--resume", str(out), "max_steps=2"]) == 0
    assert [m["step"] for m in read_log(out)] == [1, 2]


def test_nonfinite_minibatches_are_skipped_counted_then_stop_the_run(base, tmp_path, monkeypatch):
    real = Trainer.minibatch_loss
    calls = {"n": 0}

    def poisoned(self, *args):
        loss, st = real(self, *args)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), st  # the second minibatch of the run

    monkeypatch.setattr(Trainer, "minibatch_loss", poisoned)
    t = Trainer(config(base, tmp_path / "a", max_steps=1))
    before = weights(t.policy.lm)
    t.train(progress=False)
    (m,) = train_lines(tmp_path / "a")
    assert m["skipped_minibatches"] == 1 and all(math.isfinite(v) for v in m.values() if isinstance(v, float))
    assert all(torch.isfinite(v).all() for v in weights(t.policy.lm).values())
    assert max_diff(before, weights(t.policy.lm)) > 0  # the other minibatches did update

    monkeypatch.setattr(Trainer, "minibatch_loss", lambda self, *a: (real(self, *a)[0] * float("inf"), {}))
    t = Trainer(config(base, tmp_path / "b", max_steps=3))
    before = weights(t.policy.lm)
    with pytest.raises(RuntimeError, match="5 minibatches in a row had a non-finite loss"):
        t.train(progress=False)
    assert max_diff(before, weights(t.policy.lm)) == 0
