"""The cheaper default step changes no trajectory: with reuse_reward_pass the update backpropagates through the
reward's forward instead of running it again (one policy forward less per step), and the weights, losses and
logged numbers follow the recomputing step to float rounding; the monitor judging a sample of the images changes
nothing the update sees and says how many it judged."""

import numpy as np
import pytest
import torch

from gvu.models.builtin.model import build_builtin, save_builtin
from gvu.rl.config import TrainConfig
from gvu.rl.trainer import Trainer
from gvu.world.judge import judge_image

ATOL = 1e-5  # float rounding of the same passes in other batch shapes (micro-batches vs one batch)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "tiny"
    save_builtin(build_builtin("tiny", seed=0), out)
    return out


def trainer(base, out, **kw) -> Trainer:
    """TrainConfig's step (dynamic sampling, one optimizer step per rollout, both KL terms) at a tiny size."""
    cfg = TrainConfig(model=str(base), output_dir=str(out), num_prompts=32, prompts_per_step=4, num_generations=4,
                      eval_steps=0, save_steps=0, learning_rate=1e-2, warmup_steps=0, **kw)
    return Trainer(cfg)


def count_forwards(tr: Trainer) -> dict:
    calls = {"n": 0}
    tr.policy.lm.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    return calls


LOGGED = ("loss", "kl", "kl_understanding", "reward", "intrinsic_reward", "grad_norm", "clip_ratio/region_mean")


@pytest.mark.parametrize("reward", ["intrinsic", "oracle_binary"])
def test_reusing_the_reward_pass_keeps_the_trajectory(base, tmp_path, reward):
    old = trainer(base, tmp_path / "old", reward=reward, reuse_reward_pass=False)
    new = trainer(base, tmp_path / "new", reward=reward)
    assert new.reuses_reward_pass() and not old.reuses_reward_pass()
    n_old, n_new = count_forwards(old), count_forwards(new)
    logs_old, logs_new, drift = [], [], []
    for _ in range(3):
        logs_old.append(old.train_step())
        logs_new.append(new.train_step())
        wa, wb = old.policy.lm.state_dict(), new.policy.lm.state_dict()
        drift.append(max((wa[k] - wb[k]).abs().max().item() for k in wa))
    # the same rows every step (sampling depends on the weights: a diverged trajectory draws other codes)
    assert [m["sampling_rounds"] for m in logs_old] == [m["sampling_rounds"] for m in logs_new]
    for a, b in zip(logs_old, logs_new):
        for k in LOGGED:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=ATOL), (k, a[k], b[k])
    # the first optimizer step lands on the same weights; Adam's m / sqrt(v) then magnifies rounding in the
    # near-zero gradient entries a little each step (measured: 0, 3e-7, 3e-5 at learning rate 1e-2)
    assert drift[0] < 1e-6 and drift[-1] < 1e-4, drift
    moved = max((wa[k] - v).abs().max().item() for k, v in build_builtin("tiny", seed=0).lm.state_dict().items())
    assert moved > 1e-3  # the weights did move: the comparison is not between two untouched models
    # the reused forward is gone: one policy forward less per step (under the oracle when it scores the kept rows,
    # under the intrinsic reward when every drawn group was kept)
    saved = sum(1 for m in logs_new if reward != "intrinsic" or m["sampling_rounds"] == 1)
    assert saved >= 1 and n_old["n"] - n_new["n"] == saved


def test_reuse_is_off_where_the_update_would_see_other_weights_or_sequences(base, tmp_path):
    for kw in ({"num_iterations": 2}, {"minibatch_size": 8}, {"reward_scorer": "reference"},
               {"beta_understanding": 0.0}, {"reward_image_path": "pixels"}):
        assert not trainer(base, tmp_path / "x", **kw).reuses_reward_pass(), kw


def test_a_draw_with_dropped_groups_recomputes(base, tmp_path):
    """Dynamic sampling that drops a group: the kept rows are not the reward's batch, so the update recomputes."""
    tr = trainer(base, tmp_path / "run", reward_variant="geomean")  # the blend adds its negatives' pass
    real = tr.intrinsic_scored

    def tie_first_group(*a):  # equal rewards in the first group: it carries no signal and is dropped
        r, scored = real(*a)
        r = r.clone()
        r[:4] = 0.5
        return r, scored
    tr.intrinsic_scored = tie_first_group
    calls = count_forwards(tr)
    m = tr.train_step()
    assert m["sampling_rounds"] == 2 and np.isfinite(m["loss"])
    # sample (36 incremental forwards x 2 draws), rewards of both draws (both with the intrinsic reward: 2), the
    # update's image pass (the shared prompt prefixes, then the image blocks: 2) and understanding pass (1):
    # nothing reused
    T = tr.policy.layout.num_image_tokens
    assert calls["n"] == 2 * T + 2 + 3


def test_the_monitor_judges_a_seeded_sample_and_says_how_many(base, tmp_path):
    tr = trainer(base, tmp_path / "run", monitor_images=5)
    seen = []
    real = tr.monitor.per_image
    tr.monitor.per_image = lambda px, rows: seen.append((px, rows)) or real(px, rows)
    m = tr.train_step()
    (px, rows), = seen
    assert m["monitor_images"] == 5 == len(rows)
    assert m["accuracy"] == pytest.approx(np.mean([judge_image(p, r)[0].correct for p, r in zip(px, rows)]))
    every = trainer(base, tmp_path / "all", monitor_images=0).train_step()
    assert every["monitor_images"] == 16
    # the sample changes nothing the update sees
    assert every["loss"] == pytest.approx(m["loss"], abs=ATOL) and every["reward"] == pytest.approx(m["reward"])
