"""The protocol the headline rests on (docs/protocol.md): training sets hold no test or validation scene in any
wording, the validation benchmark is its own set of scenes with its own seed, and several training seeds are read
together with an interval that holds their spread."""

import json

import pytest

from gvu.analysis.seeds import aggregate
from gvu.eval.evaluate import benchmark_rows, benchmark_seed, BENCHMARKS, GROUPS
from gvu.eval.prompts import (build_geneval, build_genevalpp, build_train, build_val, held_out_scenes, benchmark_scenes,
                              VAL_BENCHMARKS, VAL_EVAL_SEED)
from gvu.world.grammar import parse_prompt
from gvu.world.kinds import GENEVAL_KINDS, GENEVALPP_KINDS, scene_key


def key(text: str) -> str:
    return scene_key(parse_prompt(text))


def test_one_scene_whatever_the_wording_order_or_tag():
    # a relation read in either direction, object order, and the tag (two_object vs multi_object_count_attr)
    assert key("a photo of a hexagon below a cross") == key("a photo of a cross above a hexagon")
    assert key("a photo of a square to the right of a circle") == key("a photo of a circle to the left of a square")
    assert key("a photo of one square and one cross") == key("a photo of a cross and a square")
    assert key("a photo of a red circle and a blue square") == key("a photo of a blue square and a red circle")
    # ... but another scene stays another scene
    assert key("a photo of a hexagon above a cross") != key("a photo of a cross above a hexagon")
    assert key("a photo of a hexagon left of a cross".replace("left of", "to the left of")) != key(
        "a photo of a hexagon above a cross")
    assert key("a photo of a red circle and a blue square") != key("a photo of a blue circle and a red square")
    assert key("a photo of two squares and one cross") != key("a photo of a cross and a square")


def test_the_default_training_set_holds_no_test_or_validation_scene():
    """`gvu prompts train --world shapes` (seed 0, 50,000 rows): keyed by prompt string and object order alone,
    1,980 of these rows described test scenes (126 of GenEval-shapes' 319 rows)."""
    train = build_train("shapes", seed=0, n=50_000)
    scenes = {scene_key(r) for r in train}
    assert not scenes & benchmark_scenes("shapes")
    assert not scenes & {scene_key(r) for r in build_val("shapes")}
    for text in ("a photo of a hexagon below a cross", "a photo of one square and one cross"):
        assert key(text) in benchmark_scenes("shapes")  # the rows the string key let through
        assert key(text) not in scenes
    # the kinds that still train, and the ones that ran dry (docs/protocol.md names what teaches their skill)
    tags = {r["tag"] for r in train}
    assert {"position", "colors", "color_attr", "color_count_attr", "color_spatial_attr"} <= tags
    assert not tags & {"single_object", "counting"}


def test_the_validation_set_is_its_own_scenes_and_seed():
    val = build_val("shapes")
    scenes = [scene_key(r) for r in val]
    assert len(scenes) == len(set(scenes)) > 250  # distinct scenes
    assert not set(scenes) & benchmark_scenes("shapes")
    assert set(scenes) <= held_out_scenes("shapes")
    assert val == build_val("shapes")  # fixed draw
    # both benchmarks' kinds that have free scenes are there; the dry ones are not
    geneval, genevalpp = benchmark_rows("val_geneval"), benchmark_rows("val_genevalpp")
    assert {r["tag"] for r in geneval} == {"colors", "position", "color_attr"}
    assert {r["tag"] for r in genevalpp} == {t.removesuffix("_pp") for t in GENEVALPP_KINDS} - {"counting"}
    assert len(geneval) + len(genevalpp) == len(val)
    assert all(len(r["include"]) == 2 for r in geneval if r["tag"] == "color_attr")  # GenEval's form
    # a scarce kind keeps half its free scenes for training
    position_train = {scene_key(r) for r in build_train("shapes", n=3000, weights={"position": 1.0})}
    assert position_train and not position_train & set(scenes)
    # its own evaluation seed, not the test benchmarks'
    assert VAL_EVAL_SEED != 1234
    assert benchmark_seed("val_geneval", 1234) == VAL_EVAL_SEED and benchmark_seed("geneval", 1234) == 1234
    assert set(GROUPS["val"]) == set(VAL_BENCHMARKS) and set(VAL_BENCHMARKS) <= set(BENCHMARKS)
    assert VAL_BENCHMARKS["val_geneval"] == GENEVAL_KINDS
    # a test set is unchanged by all this
    assert len(build_geneval("shapes")) == 319 and len(build_genevalpp("shapes")) == 272


def _report(tmp_path, name, seed, after, tag_after):
    run = tmp_path / name
    run.mkdir()
    comparison = {"geneval": {"overall": {"before": 0.5, "after": after, "se_before": 0.01},
                              "tags": {"position": {"before": 0.4, "after": tag_after}},
                              "images": {"position": {"before": 100, "after": 100}}}}
    (run / "report.json").write_text(json.dumps({"comparison": comparison, "demo": {"demo": {"seed": seed}}}))
    return run


def test_seeds_combine_their_spread_with_the_evaluation_error(tmp_path):
    runs = [_report(tmp_path, f"seed-{s}", s, a, t) for s, a, t in ((0, 0.70, 0.5), (1, 0.74, 0.3), (2, 0.72, 0.4))]
    agg = aggregate(runs)
    o = agg["benchmarks"]["geneval"]["overall"]
    assert o["after_mean"] == pytest.approx(0.72) and o["gain"] == pytest.approx(0.22)
    # Student's t with 2 degrees of freedom (4.303) x sd 0.02 / sqrt(3), and 1.96 x the before's 0.01
    seed_part, eval_part = 4.3027 * 0.02 / 3 ** 0.5, 1.96 * 0.01
    assert o["seed_half_width"] == pytest.approx(seed_part, rel=1e-3)
    assert o["gain_ci95_half_width"] == pytest.approx((seed_part ** 2 + eval_part ** 2) ** 0.5, rel=1e-3)
    tag = agg["benchmarks"]["geneval"]["tags"]["position"]
    assert tag["gain"] == pytest.approx(0.0) and tag["gain_ci95_half_width"] > abs(tag["gain"])  # not a gain
    assert agg["seeds"] == [0, 1, 2]
    other = _report(tmp_path, "other-base", 3, 0.7, 0.4)
    report = json.loads((other / "report.json").read_text())
    report["comparison"]["geneval"]["overall"]["before"] = 0.6
    (other / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="before-scores differ"):
        aggregate(runs + [other])


def test_each_tag_of_a_report_carries_its_gains_interval():
    from gvu.analysis.report import compare

    def summary(pos, col):
        return {"geneval": {"overall": (pos + col) / 2, "tags": {"position": pos, "colors": col},
                            "images": {"position": 100, "colors": 64}}}

    c = compare(summary(0.30, 0.0), summary(0.50, 0.0))["geneval"]["tags"]
    q0, q1 = 31 / 102, 51 / 102  # one success and one failure added to each side
    assert c["position"]["gain_ci95_half_width"] == pytest.approx(
        1.96 * (q0 * (1 - q0) / 102 + q1 * (1 - q1) / 102) ** 0.5)
    assert c["colors"]["gain_ci95_half_width"] > 0.03  # 0 -> 0 on 64 images is no proof of "no change"
