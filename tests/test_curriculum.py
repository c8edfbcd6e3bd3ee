"""The prompt curriculum (gvu.rl.curriculum): kinds whose groups carry more reward spread are drawn more, none starves,
the order is a pure function of its state (a resumed run draws the same prompts), and in the trainer it follows the
rewards and survives a checkpoint."""

import collections

import numpy as np
import pytest
import torch

from gvu.rl.config import TrainConfig
from gvu.rl.curriculum import KindCurriculum

from tests.test_trainer import base, config, read_log, train, train_lines  # noqa: F401 (the fixture)

G = 4


def rows(counts: dict[str, int]) -> list[dict]:
    return [{"tag": k, "prompt": f"{k} {i}"} for k, n in counts.items() for i in range(n)]


def kinds_drawn(c: KindCurriculum, data: list[dict], start: int, n: int) -> collections.Counter:
    return collections.Counter(data[c.next_index(p)]["tag"] for p in range(start, start + n))


def test_unseen_kinds_are_drawn_equally_then_the_spread_sets_the_mix():
    data = rows({"a": 30, "b": 30, "c": 30})
    c = KindCurriculum(data, seed=0, floor=0.25)
    assert np.allclose(c.weights(), 1 / 3)
    # kind a: every group all-equal; b: rewards split within groups; c never observed yet
    group_rows = [{"tag": "a"}] * 2 + [{"tag": "b"}] * 2
    reward = torch.tensor([1.0] * G + [1.0] * G + [0.0, 1.0, 0.0, 1.0] * 2)
    c.fold(c.group_sums(group_rows, reward, G))
    w = dict(zip(c.kinds, c.weights()))
    assert w["a"] == pytest.approx(0.25 / 3)  # the floor only: it teaches nothing but stays in the mix
    assert w["b"] == pytest.approx(w["c"]) and w["b"] > 0.4  # not yet seen: as often as the best seen
    drawn = kinds_drawn(c, data, 0, 600)
    assert drawn["a"] < 0.15 * 600 and drawn["b"] > 0.3 * 600 and drawn["c"] > 0.3 * 600


def test_a_prior_sets_the_mix_while_signals_are_equal():
    """prompt_weights with the curriculum: the mix asked for is the mix drawn until the signals differ; then each
    kind's share is its weight times its signal (and the floor is spread by the weights too)."""
    data = rows({"a": 30, "b": 30, "c": 30})
    c = KindCurriculum(data, seed=0, floor=0.25, prior={"a": 6, "b": 2, "c": 0})
    assert c.weights() == pytest.approx([0.75, 0.25, 0.0])
    drawn = kinds_drawn(c, data, 0, 400)
    assert drawn["c"] == 0 and 0.65 * 400 < drawn["a"] < 0.85 * 400
    c.observe({"a": (0.1, 1.0), "b": (0.3, 1.0)})  # b carries three times a's signal: they draw alike
    assert c.weights() == pytest.approx([0.25 * 0.75 + 0.75 * 0.5, 0.25 * 0.25 + 0.75 * 0.5, 0.0])
    uniform = KindCurriculum(data, seed=0, floor=0.25)  # no prior: every kind alike, as before priors existed
    assert uniform.weights() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="prior"):
        KindCurriculum(data, seed=0, prior={"z": 1.0})


def test_the_trainer_gives_prompt_weights_to_the_curriculum(base, tmp_path):  # noqa: F811
    """On the built-in training set the curriculum draws by tag: prompt_weights (by kind; color_attr and
    color_attr_pp share a tag) must reach it, or the weights would only set which rows exist, not how often a
    tag is drawn."""
    from gvu.rl.trainer import Trainer
    w = {"position": 4.0, "color_attr": 1.0, "color_attr_pp": 1.0, "color_spatial_attr": 2.0}
    t = Trainer(config(base, tmp_path / "w", curriculum=True, prompt_weights=w, num_prompts=400))
    mix = dict(zip(t.curriculum.kinds, t.curriculum.weights()))
    assert set(mix) == {"position", "color_attr", "color_spatial_attr"}
    assert mix == pytest.approx({"position": 0.5, "color_attr": 0.25, "color_spatial_attr": 0.25})


def test_running_signal_decays_toward_new_draws():
    data = rows({"a": 5, "b": 5})
    c = KindCurriculum(data, seed=0, floor=0.0, decay=0.5)
    c.observe({"a": (0.4, 1.0), "b": (0.4, 1.0)})
    c.observe({"a": (0.0, 2.0), "b": (0.0, 0.0)})  # b not drawn this time: its estimate stays
    assert c.signal == {"a": pytest.approx(0.2), "b": pytest.approx(0.4)}
    assert c.weights() == pytest.approx([1 / 3, 2 / 3])


def test_each_kind_walks_through_all_its_rows_before_repeating():
    data = rows({"a": 7, "b": 3})
    c = KindCurriculum(data, seed=3, floor=1.0)
    seen = collections.defaultdict(list)
    for p in range(200):
        i = c.next_index(p)
        seen[data[i]["tag"]].append(i)
    for kind, n in (("a", 7), ("b", 3)):
        first = seen[kind][:n]
        assert sorted(first) == sorted({i for i, r in enumerate(data) if r["tag"] == kind})


def test_the_order_is_a_function_of_the_state():
    data = rows({"a": 10, "b": 10, "c": 10})
    one = KindCurriculum(data, seed=1)
    one.observe({"a": (0.3, 1.0), "b": (0.1, 1.0)})
    [one.next_index(p) for p in range(17)]
    two = KindCurriculum(data, seed=1)
    two.load_state_dict(one.state_dict())
    assert [one.next_index(p) for p in range(17, 60)] == [two.next_index(p) for p in range(17, 60)]
    other = KindCurriculum(rows({"a": 10, "b": 10}), seed=1)
    with pytest.raises(ValueError, match="resume with the same prompts"):
        other.load_state_dict(one.state_dict())


@pytest.mark.parametrize("floor, decay, msg", [(1.5, 0.5, "curriculum_floor"), (0.2, 0.0, "curriculum_decay")])
def test_bad_settings_are_refused(floor, decay, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(curriculum_floor=floor, curriculum_decay=decay)


def test_trainer_follows_the_reward_spread_and_resumes_exactly(base, tmp_path):  # noqa: F811
    """An oracle run with the curriculum: the logged mix moves away from equal shares toward the kinds whose groups
    split, and a run resumed from its step-2 checkpoint draws the same prompts and ends with the same weights."""
    kw = dict(reward="oracle_strict", curriculum=True, num_prompts=64, dynamic_sampling=False)
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    ta = train(config(base, out_a, max_steps=3, **kw))
    logged = train_lines(out_a)
    mixes = [np.array([m[k] for k in sorted(m) if k.startswith("curriculum/")]) for m in logged]
    assert len(mixes[0]) == len(ta.curriculum.kinds) >= 2
    assert all(abs(m.sum() - 1) < 1e-9 for m in mixes)
    spread = {k: v for k, v in ta.curriculum.signal.items() if v is not None}
    weights = dict(zip(ta.curriculum.kinds, ta.curriculum.weights()))
    assert spread  # the rewards were folded in
    if len(set(spread.values())) > 1:  # among the kinds seen, the one with the most spread weighs the most
        assert max(spread, key=spread.get) == max(spread, key=weights.get)
    train(config(base, out_b, max_steps=2, save_steps=2, **kw))
    tb = train(config(base, out_b, max_steps=3, save_steps=2, **kw), resume=out_b)
    assert tb.data_pos == ta.data_pos and tb.curriculum.state_dict() == ta.curriculum.state_dict()
    assert [m["reward"] for m in train_lines(out_b)] == pytest.approx([m["reward"] for m in logged], abs=1e-6)
    assert read_log(out_b)[-1]["step"] == 3
