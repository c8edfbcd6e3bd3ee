"""The Fig. 8 sensitivity study (ablated prompts through the grammar, same-image comparisons, outputs) and the
plot helpers, on a tiny random model."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gvu.eval import plots
from gvu.cli import build_parser
from gvu.analysis.sensitivity import (ABLATIONS, ablate, ablated_prompts, run_sensitivity,
                                      score_ablations, study_images, summarise)
from gvu.eval.prompts import build_genevalpp
from gvu.models.builtin.model import build_builtin, save_builtin
from gvu.world.grammar import parse_prompt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return build_builtin("tiny", seed=0)


def test_ablation_names():
    assert ABLATIONS == ("none", "count", "color", "region", "color+count", "count+region", "color+region",
                         "color+count+region")


@pytest.mark.parametrize("prompt, fields, expected", [
    ("a photo of four stars", ("count",), "a photo of stars"),
    ("a photo of one diamond at the bottom and three stars at the top", ("count",),
     "a photo of a diamond at the bottom and stars at the top"),
    ("a photo of one diamond at the bottom and three stars at the top", ("region",),
     "a photo of one diamond and three stars"),
    ("a photo of one orange star and two green circles", ("color",), "a photo of one star and two circles"),
    ("a photo of one orange star and two green circles", ("color", "count"), "a photo of a star and circles"),
    ("a photo of an orange star on the left and a red heart on the right", ("color", "region"),
     "a photo of a star and a heart"),
    ("a photo of a larger square on the right and a smaller star on the left", ("region",),
     "a photo of a larger square and a smaller star"),
])
def test_ablate_through_the_grammar(prompt, fields, expected):
    row = parse_prompt(prompt)
    out = ablate(row, fields)
    assert out["prompt"] == expected
    assert out["tag"] == row["tag"] and row["prompt"] == prompt  # the input row is left alone
    with pytest.raises(ValueError, match="unknown ablation"):
        ablate(row, ("size",))


def test_ablated_prompts_only_where_the_text_changes():
    got = ablated_prompts(parse_prompt("a photo of an orange star, a red heart, and a blue cross"))
    assert set(got) == {"none", "color", "color+count", "color+region", "color+count+region"}
    assert got["color"] == got["color+count+region"] == "a photo of a star, a heart, and a cross"
    # a single uncounted object: "a star" keeps its article (an article is not a count word)
    assert set(ablated_prompts(parse_prompt("a photo of a star on the left and a heart on the right"))) == {
        "none", "region", "color+region", "count+region", "color+count+region"}
    # every GenEval++-shapes prompt has something to remove
    assert all(len(ablated_prompts(r)) > 1 for r in build_genevalpp("shapes", n=3))


def test_each_ablation_is_compared_on_the_same_images(model):
    rows = build_genevalpp("shapes", n=1)
    images = study_images(model, rows, per_prompt=2, seed=0)
    assert set(images) == {"ground_truth", "samples"}
    assert all(v.shape == (len(rows) * 2, 36) for v in images.values())
    recs = score_ablations(model, rows, images, 2)
    assert len(recs) == 2 * len(rows) * 2 and all("none" in r["rewards"] for r in recs)
    summ = summarise(recs)
    for name in ABLATIONS[1:]:
        sel = [r for r in recs if name in r["rewards"]]
        assert sel and (len(sel) < len(recs) or "+" in name)  # a single field is missing from some prompts
        assert summ[name]["none_same_prompts"] == pytest.approx(np.mean([r["rewards"]["none"] for r in sel]))
        assert summ[name]["drop"] == pytest.approx(summ[name]["none_same_prompts"] - summ[name]["mean"])
        assert summ[name]["images"] == len(sel)
    assert summ["none"]["mean"] == pytest.approx(np.mean([r["rewards"]["none"] for r in recs]))
    assert summ["color+count+region"]["all_fields"]["images"] == 0  # no GenEval++ tag has all three
    assert summ["color+count"]["all_fields"]["images"] > 0
    both = [r for r in recs if "color" in r["rewards"] and "count" in r["rewards"]]
    paired = summ["color+count"]["vs_parts"]
    assert paired["images"] == len(both) and paired["mean"] == summ["color+count"]["all_fields"]["mean"]
    assert paired["parts"]["count"] == pytest.approx(np.mean([r["rewards"]["count"] for r in both]))
    below = [r["rewards"]["color+count"] < min(r["rewards"]["color"], r["rewards"]["count"]) for r in both]
    assert paired["frac_below_every_part"] == pytest.approx(np.mean(below))
    with pytest.raises(ValueError, match="contrastive"):
        from gvu.reward import RewardConfig

        score_ablations(model, rows, images, 2, RewardConfig(variant="contrastive"))


def _check_outputs(out: Path):
    means = json.loads((out / "sensitivity.json").read_text())
    assert list(means) == list(ABLATIONS)
    assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in means.values())
    details = json.loads((out / "sensitivity_details.json").read_text())
    assert set(details) == {"config", "ablations"}
    for name, s in details["ablations"].items():
        assert set(s["by_source"]) == {"ground_truth", "samples"}
        assert math.isfinite(s["drop"]) and s["mean"] == means[name]
    png = out / "sensitivity.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_sensitivity_writes_outputs(model, tmp_path):
    summary = run_sensitivity(model, tmp_path / "sens", per_prompt=1, prompts_per_tag=1, seed=0)
    assert set(summary) == set(ABLATIONS)
    _check_outputs(tmp_path / "sens")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, model):
    return save_builtin(model, tmp_path_factory.mktemp("m") / "tiny")


def test_sensitivity_command_through_argparse(tiny_dir, tmp_path, capsys):
    a = build_parser().parse_args(["sensitivity", "--model", str(tiny_dir), "--out", str(tmp_path / "o"), "--per-prompt", "1",
                      "--prompts-per-tag", "1"])
    a.func(a)
    _check_outputs(tmp_path / "o")
    printed = capsys.readouterr().out
    assert all(name in printed for name in ABLATIONS) and "rel drop" in printed


@pytest.mark.slow  # a fresh interpreter imports torch + transformers: 5-20 s on two busy cores
def test_sensitivity_cli_subprocess(tiny_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gvu.cli", "sensitivity", "--model", str(tiny_dir), "--out",
                           str(tmp_path / "o"), "--per-prompt", "1", "--prompts-per-tag", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    _check_outputs(tmp_path / "o")


# ---------------------------------------------------------------------------------------------- plots

def test_tile_images_borders():
    imgs = np.zeros((3, 4, 5, 3), np.uint8)
    tile = plots.tile_images(imgs, correct=[True, False, None], ncols=2, border=1, pad=1)
    assert tile.shape == (2 * (4 + 4), 2 * (5 + 4), 3) and tile.dtype == np.uint8
    assert tuple(tile[1, 1]) == plots.GREEN and tuple(tile[1, 10]) == plots.RED and tuple(tile[9, 1]) == plots.GREY
    assert tile[2:6, 2:7].max() == 0  # the image itself
    with pytest.raises(ValueError):
        plots.tile_images(imgs, correct=[True])
    with pytest.raises(ValueError):
        plots.tile_images([np.zeros((4, 5, 3), np.float32)])


def test_plot_files(tmp_path):
    from gvu.world.render import blank_tokens, decode

    imgs = decode(np.stack([blank_tokens()] * 3))
    assert plots.image_grid(imgs, tmp_path / "g.png", captions=["a photo of a star"] * 3,
                            correct=[True, False, True], title="t").is_file()
    assert plots.line_plot({"reward": ([0, 1, 2], [0.1, 0.2, 0.15])}, tmp_path / "l.png").is_file()
    recs = [{"step": i, "reward": 0.1 * i, "kl": None if i % 2 else 0.01 * i, "note": "x"} for i in range(5)]
    assert plots.metrics_plot(recs, ["reward", "kl", "note"], tmp_path / "m.png").is_file()
    assert plots.bar_chart(["a", "b"], [1.0, 2.0], tmp_path / "b.png", annotations=["", "+1"]).is_file()
    with pytest.raises(ValueError):
        plots.bar_chart(["a"], [1.0, 2.0], tmp_path / "x.png")
