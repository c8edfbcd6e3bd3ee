"""`gvu score` and the AUC helpers: ranking statistics against brute force, scoring a ground-truth folder with
corrupted images, which model scores, and the command through argparse (and through the real CLI once wired)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gvu.eval.quality import auc, auc_by_tag, within_group_auc
from gvu.cli import build_parser
from gvu.analysis.score import is_shapes_benchmark, resolve_scorer, score_folder, summarise_scores
from gvu.eval.groundtruth import render_ground_truth
from gvu.eval.layout import load_image, write_prompt_dir
from gvu.eval.prompts import build_genevalpp
from gvu.models.builtin.model import build_builtin, save_builtin
from gvu.reward import RewardConfig, intrinsic_reward
from gvu.world.render import blank_tokens, decode, encode

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ AUC

def brute_auc(s, y):
    pos = [a for a, t in zip(s, y) if t]
    neg = [a for a, t in zip(s, y) if not t]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


def test_auc_hand_values_and_ties():
    assert auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert auc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    assert auc([5, 5], [0, 1]) == 0.5
    assert auc([1, 2, 2, 3], [0, 1, 0, 1]) == pytest.approx(brute_auc([1, 2, 2, 3], [0, 1, 0, 1]))
    assert auc([1, 2], [1, 1]) is None and auc([1, 2], [0, 0]) is None and auc([], []) is None
    with pytest.raises(ValueError):
        auc([1, 2], [1])
    with pytest.raises(ValueError, match="NaN"):
        auc([float("nan"), 1], [0, 1])


def test_auc_matches_brute_force_on_random_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        s = rng.integers(0, 5, n).astype(float)  # many ties
        y = rng.random(n) < 0.5
        if y.all() or not y.any():
            continue
        assert auc(s, y) == pytest.approx(brute_auc(s, y))


def test_auc_by_tag_and_within_group():
    s = [0.1, 0.9, 0.2, 0.8, 0.5, 0.4]
    y = [0, 1, 1, 0, 1, 1]
    tags = ["a", "a", "b", "b", "c", "c"]
    out = auc_by_tag(s, y, tags)
    assert out["overall"] == pytest.approx(brute_auc(s, y))
    assert out["tags"] == {"a": 1.0, "b": 0.0, "c": None}
    assert out["counts"] == {"a": (1, 1), "b": (1, 1), "c": (2, 0)}
    mean, groups = within_group_auc(s, y, tags)
    assert (mean, groups) == (0.5, 2)
    assert within_group_auc([1, 2], [1, 1], ["g", "g"]) == (None, 0)


# ------------------------------------------------------------------------------------------ scoring

ROWS = build_genevalpp("shapes", n=1)[:4]  # color_attr, counting, spatial_count_attr, color_spatial_attr


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model = build_builtin("tiny", seed=0)
    return save_builtin(model, tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """Ground truth for 4 prompts, 2 images each, the second image of prompts 0 and 2 blanked (incorrect)."""
    out = tmp_path_factory.mktemp("bench") / "gt"
    render_ground_truth(ROWS, out, per_prompt=2, seed=0, progress=False)
    blank = decode(blank_tokens()[None])[0]
    for i in (0, 2):
        write_prompt_dir(out, i, ROWS[i], [load_image(out / f"{i:05d}/samples/0000.png"), blank])
    return out


def test_score_folder_records(tiny_dir, bench_dir):
    from gvu.models.load import load_model

    model = load_model(str(tiny_dir))
    recs = score_folder(model, bench_dir, RewardConfig(micro_batch=3))
    assert len(recs) == 8
    assert [r["filename"] for r in recs[:2]] == ["00000/samples/0000.png", "00000/samples/0001.png"]
    for r in recs:
        assert {"filename", "prompt", "tag", "reward", "correct"} <= set(r)
        assert math.isfinite(r["reward"]) and 0 < r["reward"] < 1
        assert r["prompt"] == ROWS[r["index"]]["prompt"] and r["tag"] == ROWS[r["index"]]["tag"]
    assert [r["correct"] for r in recs] == [True, False, True, True, True, False, True, True]
    # pixels re-encoded == the reward on the rendered codes
    px = np.stack([load_image(bench_dir / r["filename"]) for r in recs])
    direct = intrinsic_reward(model, torch.as_tensor(encode(px)), [r["prompt"] for r in recs]).reward_N
    np.testing.assert_allclose([r["reward"] for r in recs], direct.numpy(), rtol=1e-5)
    summary = summarise_scores(recs)
    assert summary["judged"] == 8 and summary["accuracy"] == 0.75
    assert summary["auc"] is not None and 0 <= summary["auc"] <= 1
    assert summary["within_prompt_groups"] == 2
    assert summary["tags"]["counting"]["auc"] is None  # one class only


def test_cli_choices_are_the_rewards(capsys):
    import gvu.reward as reward

    for scorer in reward.SCORERS:
        for variant in reward.VARIANTS:
            a = build_parser().parse_args(["score", "d", "--model", "m", "--scorer", scorer, "--variant", variant])
            assert (a.scorer, a.variant) == (scorer, variant)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", "d", "--model", "m", "--variant", "bogus"])
    err = capsys.readouterr().err
    assert "invalid choice 'bogus'" in err and all(v in err for v in reward.VARIANTS)


def test_is_shapes_benchmark():
    px = decode(blank_tokens()[None])[0]
    assert is_shapes_benchmark(ROWS[0], px)
    assert not is_shapes_benchmark({"tag": "single_object", "include": [{"class": "dog", "count": 1}]}, px)
    assert not is_shapes_benchmark(ROWS[0], np.zeros((64, 64, 3), np.uint8))


def test_resolve_scorer(tiny_dir, tmp_path):
    assert resolve_scorer(str(tiny_dir), "policy")[0] == str(tiny_dir)
    assert resolve_scorer(str(tiny_dir), "reference")[0] == str(tiny_dir)  # a plain model is its own reference
    # a `gvu train` output: final/ records the model it was trained from
    run = tmp_path / "run"
    save_builtin(build_builtin("tiny", seed=1), run / "final", extra={"trained_from": str(tiny_dir)})
    assert resolve_scorer(str(run), "reference")[0] == str(tiny_dir)
    assert resolve_scorer(str(run), "policy")[0] == str(run)
    # an explicit reference/ link wins
    os.symlink(tiny_dir, run / "reference")
    assert resolve_scorer(str(run), "reference")[0] == str(run / "reference")
    # a run with no record of its base, or a record pointing nowhere, is an error that says how to fix it
    bare = tmp_path / "bare"
    save_builtin(build_builtin("tiny", seed=1), bare / "final")
    with pytest.raises(ValueError, match="no record of its base"):
        resolve_scorer(str(bare), "reference")
    gone = tmp_path / "gone"
    save_builtin(build_builtin("tiny", seed=1), gone / "final", extra={"trained_from": str(tmp_path / "nope")})
    with pytest.raises(ValueError, match="no model is there"):
        resolve_scorer(str(gone), "reference")
    with pytest.raises(ValueError, match="scorer"):
        resolve_scorer(str(tiny_dir), "teacher")


def _parser():
    return build_parser()


def test_score_command_through_argparse(tiny_dir, bench_dir, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    a = _parser().parse_args(["score", str(bench_dir), "--model", str(tiny_dir), "--variant", "contrastive",
                              "--out", str(out), "--micro-batch", "5"])
    a.func(a)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 8 and all(0 < r["reward"] <= 1 for r in recs)
    assert all(set(("filename", "prompt", "reward", "tag", "correct")) <= set(r) for r in recs)
    printed = capsys.readouterr().out
    assert "AUC" in printed and "overall" in printed and "within-prompt" in printed
    with pytest.raises(SystemExit):
        _parser().parse_args(["score", str(bench_dir), "--model", str(tiny_dir), "--scorer", "teacher"])


def test_score_blend_weight_reaches_the_reward(tiny_dir, bench_dir, tmp_path, capsys):
    rewards = {}
    for variant, w in (("geomean", 0.5), ("contrastive", 0.5), ("blend", 0.25), ("blend", 0.75)):
        out = tmp_path / f"{variant}-{w}.jsonl"
        a = _parser().parse_args(["score", str(bench_dir), "--model", str(tiny_dir), "--variant", variant,
                                  "--blend-weight", str(w), "--out", str(out)])
        a.func(a)
        rewards[variant, w] = np.array([json.loads(line)["reward"] for line in out.read_text().splitlines()])
    geo, con = rewards["geomean", 0.5], rewards["contrastive", 0.5]
    for w in (0.25, 0.75):
        np.testing.assert_allclose(rewards["blend", w], geo ** (1 - w) * con ** w, rtol=1e-4)
    assert capsys.readouterr().out.count("intrinsic reward (blend)") == 2


@pytest.mark.slow  # a fresh interpreter imports torch + transformers: 5-20 s on two busy cores
def test_score_cli_subprocess(tiny_dir, bench_dir, tmp_path):
    out = tmp_path / "s.jsonl"
    proc = subprocess.run([sys.executable, "-m", "gvu.cli", "score", str(bench_dir), "--model", str(tiny_dir),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "AUC" in proc.stdout
    assert len(out.read_text().splitlines()) == 8


def test_score_records_strict_verdicts_and_malformed_blobs(tiny_dir, tmp_path):
    """An extra copy is right by GenEval's rule and wrong by the strict one; a half-drawn object is a malformed blob.
    The summary's AUCs against each label follow (fails without the strict verdict and the malformed count)."""
    from gvu.models.load import load_model
    from gvu.world.scene import Obj, scene_tokens
    from gvu.models.builtin.pretrain_data import add_wrapped
    from gvu.world.spec import code_of, GRID

    row = {"tag": "single_object", "include": [{"class": "cross", "count": 1}], "prompt": "a photo of a cross"}
    broken = scene_tokens([Obj("cross", "red", "large", 2, 2)]).reshape(GRID, GRID)
    broken[2, 3] = code_of("square", "red", "tr")  # one foreign quarter: not a cross, not anything
    scenes = [scene_tokens([Obj("cross", "red", "small", 0, 0)]),
              scene_tokens([Obj("cross", "red", "small", 0, 0), Obj("cross", "blue", "small", 4, 4)]),
              broken.reshape(-1), scene_tokens([Obj("square", "red", "small", 3, 3)]),
              add_wrapped(scene_tokens([]), np.random.default_rng(0))]  # a cross wrapped across the row edge
    write_prompt_dir(tmp_path, 0, row, list(decode(np.stack(scenes))))
    recs = score_folder(load_model(str(tiny_dir)), tmp_path)
    assert [r["correct"] for r in recs] == [True, True, False, False, False]
    assert [r["correct_strict"] for r in recs] == [True, False, False, False, False]
    assert [r["malformed"] > 0 for r in recs] == [False, False, True, False, True]
    assert [r["wrapped"] for r in recs] == [False, False, False, False, True]  # a foreign quarter is no wrap
    assert summarise_scores(recs)["wrapped_fraction"] == pytest.approx(0.2)
    recs = recs[:4]
    # the summary on hand-set rewards: the extra copy and the broken drawing ranked like the right image
    for r, reward in zip(recs, [0.9, 0.2, 0.95, 0.1]):
        r["reward"] = reward
    t = summarise_scores(recs)["tags"]["single_object"]
    assert t["auc"] == pytest.approx(brute_auc([0.9, 0.2, 0.95, 0.1], [1, 1, 0, 0]))  # 0.5
    assert t["auc_strict"] == pytest.approx(brute_auc([0.9, 0.2, 0.95, 0.1], [1, 0, 0, 0]))  # 2/3
    assert t["auc_well_formed"] == 1.0 and t["malformed_incorrect"] == 1
    old = [{k: v for k, v in r.items() if k not in ("correct_strict", "malformed")} for r in recs]
    t = summarise_scores(old)["tags"]["single_object"]  # score files written before these fields
    assert t["auc_strict"] is None and t["auc_well_formed"] is None and t["malformed_incorrect"] == 0


def test_score_reads_the_reward_by_how_the_binding_and_the_side_came_out(tiny_dir, tmp_path):
    """Each two-colour image is recorded as drawn as asked, swapped or with an object missing, each relation image as
    drawn as asked or reversed, and the summary gives the mean reward per outcome (fails without the outcomes)."""
    from gvu.analysis.score import format_scores
    from gvu.eval.prompts import build_geneval
    from gvu.models.load import load_model
    from gvu.world.scene import Obj, scene_tokens

    rows = build_geneval("shapes")
    colour = next(r for r in rows if r["tag"] == "color_attr")
    place = next(r for r in rows if r["tag"] == "position" and r["include"][1]["position"][0] == "left of")
    (a, ca), (b, cb) = [(q["class"], q["color"]) for q in colour["include"]]
    colour_scenes = [[Obj(a, ca, "small", 0, 0), Obj(b, cb, "small", 4, 4)],  # as asked
                     [Obj(a, cb, "small", 0, 0), Obj(b, ca, "small", 4, 4)],  # swapped
                     [Obj(a, ca, "small", 0, 0)]]  # the second object missing
    ref, moved = place["include"][0]["class"], place["include"][1]["class"]  # `moved` asked left of `ref`
    place_scenes = [[Obj(moved, "red", "small", 2, 0), Obj(ref, "blue", "small", 2, 4)],  # as asked
                    [Obj(moved, "red", "small", 2, 4), Obj(ref, "blue", "small", 2, 0)]]  # reversed
    write_prompt_dir(tmp_path, 0, colour, list(decode(np.stack([scene_tokens(s) for s in colour_scenes]))))
    write_prompt_dir(tmp_path, 1, place, list(decode(np.stack([scene_tokens(s) for s in place_scenes]))))
    recs = score_folder(load_model(str(tiny_dir)), tmp_path)
    assert [r.get("colour_outcome") for r in recs] == ["as asked", "swapped", "missing", None, None]
    assert [r.get("relation_outcome") for r in recs] == [None] * 3 + [["left of", "as asked"], ["left of", "reversed"]]
    for r, reward in zip(recs, [0.9, 0.5, 0.1, 0.8, 0.3]):
        r["reward"] = reward
    by = summarise_scores(recs)["reward_by_outcome"]
    assert list(by) == ["colours", "left of"]
    assert {o: v["mean_reward"] for o, v in by["colours"].items()} == {"as asked": 0.9, "swapped": 0.5, "missing": 0.1}
    assert by["left of"]["reversed"] == {"images": 1, "mean_reward": 0.3}
    text = format_scores(summarise_scores(recs))
    assert "colours   as asked 0.900 (1), swapped 0.500 (1), missing 0.100 (1)" in text
