"""The judge reads exact renders only: an image that is not one (JPEG bytes, grayscale, resized) is refused naming
the file, or with `--unclean report` gets the verdict 'not a clean render', counted apart and never scored; a
wrong-size image is refused naming the file; `gvu score` gives such images no exact verdict."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from gvu.eval.groundtruth import render_ground_truth
from gvu.eval.judging import UNCLEAN, judge_folder, off_palette, summarise
from gvu.eval.prompts import build_geneval
from gvu.cli import main


def _reencode(path, fmt="PNG", mode="RGB", size=None, **kw):
    img = Image.open(path).convert(mode)
    if size:
        img = img.resize((size, size))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    path.write_bytes(buf.getvalue())


@pytest.fixture
def folder(tmp_path):
    rows = build_geneval("shapes")[:3]
    render_ground_truth(rows, tmp_path / "gt", per_prompt=2, seed=0, progress=False)
    return tmp_path / "gt"


def test_every_render_is_clean(folder):
    results, summary = judge_folder(folder, progress=False)
    assert summary["overall"] == 1.0 and "unclean" not in summary
    for s in folder.glob("*/samples/*.png"):
        assert off_palette(np.array(Image.open(s).convert("RGB"))) == 0


@pytest.mark.parametrize("damage", [dict(fmt="JPEG", quality=90), dict(mode="L")], ids=["jpeg", "grayscale"])
def test_unclean_images_are_refused_or_reported_never_scored(folder, capsys, damage):
    png = folder / "00001" / "samples" / "0000.png"
    _reencode(png, **damage)
    assert main(["judge", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{png} is {UNCLEAN}" in err and "--unclean report" in err
    results, summary = judge_folder(folder, progress=False, unclean="report")
    bad = [r for r in results if r["filename"] == str(png)]
    assert bad[0]["correct"] is None and bad[0]["reason"].startswith(UNCLEAN)
    assert summary["unclean"] == 1 and summary["overall"] == 1.0  # the clean images still all correct
    assert sum(summary["images"].values()) == 5
    assert main(["judge", str(folder), "--unclean", "report"]) == 0
    assert f"1 images {UNCLEAN} (not scored)" in capsys.readouterr().out


def test_a_wrong_size_image_is_refused_naming_the_file(folder, capsys):
    png = folder / "00002" / "samples" / "0001.png"
    _reencode(png, size=128)
    assert main(["judge", str(folder)]) == 2
    assert f"{png}: a 128x128 image is not a shapes-world image" in capsys.readouterr().err


def test_summaries_count_unclean_images_apart():
    rows = [{"tag": "a", "correct": True}, {"tag": "a", "correct": None}, {"tag": "b", "correct": False}]
    s = summarise(rows)
    assert s["tags"] == {"a": 1.0, "b": 0.0} and s["unclean"] == 1 and s["unclean_by_tag"] == {"a": 1}


def test_results_and_summaries_mark_wrapped_shapes():
    """A large object wrapped across the row edge (the painter's half-drawn shape) is marked in the result row and
    counted in the summary's share; a clean scene and a lone foreign quarter are not."""
    from gvu.eval.judging import judge_pixels
    from gvu.models.builtin.pretrain_data import add_wrapped
    from gvu.world.render import decode
    from gvu.world.scene import Obj, scene_tokens
    from gvu.world.spec import code_of, GRID

    row = {"tag": "single_object", "include": [{"class": "cross", "count": 1}], "prompt": "a photo of a cross"}
    lone = scene_tokens([]).reshape(GRID, GRID)
    lone[1, GRID - 1] = code_of("cross", "red", "tl")
    scenes = [scene_tokens([Obj("cross", "red", "large", 2, 2)]), lone.reshape(-1),
              add_wrapped(scene_tokens([]), np.random.default_rng(0))]
    results = [judge_pixels(px, row) for px in decode(np.stack(scenes))]
    assert [r["details"]["wrapped"] for r in results] == [False, False, True]
    assert [r["correct"] for r in results] == [True, False, False]
    assert summarise(results)["wrapped_fraction"] == pytest.approx(1 / 3)
    assert "wrapped_fraction" not in summarise([{"tag": "a", "correct": True}])  # rows written before the field


def test_score_gives_an_unclean_image_no_verdict(folder, tmp_path):
    from gvu.analysis.score import score_folder, summarise_scores
    from gvu.models.builtin.pretrain import PretrainConfig, pretrain

    model = pretrain(PretrainConfig(size="tiny", steps=2, num_scenes=50, batch_size=8), tmp_path / "b",
                     progress=False)
    _reencode(folder / "00000" / "samples" / "0001.png", fmt="JPEG", quality=90)
    records = score_folder(model, folder)
    bad = [r for r in records if r["filename"] == "00000/samples/0001.png"][0]
    assert "correct" not in bad and bad["clean"] is False
    s = summarise_scores(records)
    assert s["unclean"] == 1 and s["judged"] == len(records) - 1
    json.dumps(s)
