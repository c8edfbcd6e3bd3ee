"""DAPO's dynamic sampling in the trainer's step (gvu.rl.step.GRPOStep.fill_with_signal): groups whose rewards are all
equal leave the batch, more prompts are drawn until the batch is full of groups that teach something, the batch size
never changes, only the kept groups get the reference pass, and what was drawn is logged apart from what was kept."""

import contextlib
import types

import numpy as np
import torch

from gvu.rl.config import TrainConfig
from gvu.rl.step import Draw, GRPOStep

G, T = 2, 3


class Dist:
    enabled, world = False, 1

    def mean_dict(self, d):
        return d


def fake_draw(prompt_ids, rewards, intrinsic=False):
    """A Draw whose rows carry their prompt id in the tokens and the pixels, with the given rewards (G per prompt)."""
    tok = torch.tensor([[p] * T for p in prompt_ids for _ in range(G)])
    pixels = np.stack([np.full((2, 2, 3), p, np.uint8) for p in prompt_ids for _ in range(G)])
    reward = torch.tensor(rewards, dtype=torch.float32)
    return Draw([{"prompt": f"p{i}"} for i in prompt_ids], tok, -tok.float(), pixels, reward,
                reward.clone() if intrinsic else None)


def stepper(draws, **cfg):
    """A GRPOStep whose draws are the given (prompt ids, rewards) pairs, in order."""
    s = GRPOStep()
    s.cfg = TrainConfig(prompts_per_step=2, num_generations=G, reuse_reward_pass=False, **cfg)  # no model here
    s.dist = Dist()
    queue = [fake_draw(*d) for d in draws]
    s.calls = 0

    def draw_local(clock, opening=False):
        s.calls += 1
        return queue.pop(0)
    s.draw_local = draw_local
    return s


def test_zero_std_groups_are_replaced_by_new_prompts():
    s = stepper([([0, 1], [1, 1, 0, 1]), ([2, 3], [0, 0, 1, 0])], dynamic_sampling=True)
    d, stats = s.fill_with_signal(s.draw_local(None), None)
    assert [r["prompt"] for r in d.rows] == ["p1", "p3"]
    assert d.tokens_NT[:, 0].tolist() == [1, 1, 3, 3] and d.pixels[:, 0, 0, 0].tolist() == [1, 1, 3, 3]
    assert d.reward_N.tolist() == [0, 1, 1, 0] and d.sampled_NT[:, 0].tolist() == [-1, -1, -3, -3]
    assert stats["sampling_rounds"] == 2 and s.calls == 2
    assert stats["frac_reward_zero_std_drawn"] == 0.5
    assert abs(stats["reward_drawn"] - 4 / 8) < 1e-6


def test_a_full_first_draw_draws_nothing_more():
    s = stepper([([0, 1], [1, 0, 0, 1]), ([2, 3], [0, 1, 1, 0])], dynamic_sampling=True)
    d, stats = s.fill_with_signal(s.draw_local(None), None)
    assert [r["prompt"] for r in d.rows] == ["p0", "p1"] and s.calls == 1 and stats["sampling_rounds"] == 1


def test_after_the_last_round_the_batch_is_filled_with_dropped_groups():
    s = stepper([([0, 1], [1, 1, 0, 0]), ([2, 3], [0, 0, 1, 0])], dynamic_sampling=True, max_sampling_rounds=2)
    d, stats = s.fill_with_signal(s.draw_local(None), None)
    assert [r["prompt"] for r in d.rows] == ["p3", "p0"]  # the informative group first, then the first dropped one
    assert d.reward_N.tolist() == [1, 0, 1, 1] and len(d.pixels) == 4
    assert stats["frac_reward_zero_std_drawn"] == 0.75


def watch_finishing(s) -> dict:
    """Stub the finishing passes of stepper `s`, recording the prompts each one sees."""
    seen = {}

    def record(name, prompts, value):
        seen[name] = list(prompts)
        return value
    s.intrinsic = lambda tok, pix, prompts, meta: record("intrinsic", prompts, torch.zeros(len(tok)))
    s.monitor = types.SimpleNamespace(per_image=lambda pix, meta: record("monitor", [m["prompt"] for m in meta], []))
    s._reference_pass = lambda tok, sampled, prompts: record("reference", prompts, (sampled, None, None, {}))
    return seen


def no_clock(name):
    return contextlib.nullcontext()


def test_only_the_kept_groups_are_finished():
    """The logged intrinsic reward, the monitor and the reference pass see the kept groups only."""
    s = stepper([([0, 1], [1, 1, 0, 1]), ([2, 3], [0, 0, 1, 0])], dynamic_sampling=True)
    seen = watch_finishing(s)
    d, stats = s.draw_batch(no_clock)
    kept = ["p1", "p1", "p3", "p3"]
    assert seen == {"intrinsic": kept, "monitor": kept, "reference": kept} and d.prompts == kept
    assert s.calls == 2 and stats["sampling_rounds"] == 2


def test_without_it_the_first_draw_is_the_batch():
    s = stepper([([0, 1], [1, 1, 0, 0])], dynamic_sampling=False)
    seen = watch_finishing(s)
    d, stats = s.draw_batch(no_clock)
    assert d.prompts == ["p0", "p0", "p1", "p1"] == seen["reference"]
    assert "sampling_rounds" not in stats and s.calls == 1
