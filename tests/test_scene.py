"""The scene sampler (`realise`) and the scene describer (`describe`)."""

from collections import Counter

import numpy as np
import pytest

from gvu.eval.prompts import build_geneval, world_classes, world_lexicon
from gvu.world.kinds import KIND_TAG, KINDS, draw
from gvu.world.describe import describe
from gvu.world.grammar import parse_prompt
from gvu.world.judge import evaluate, in_region, judge_image
from gvu.world.render import decode
from gvu.world.scene import MAX_TRIES, Obj, UnsatisfiableError, realise, scene_detections, scene_tokens
from gvu.world.spec import CELL, GRID

CLASSES, LEX = world_classes("shapes"), world_lexicon("shapes")


def rows_of_every_kind(per_kind: int, seed: int = 0) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    return [(kind, draw(kind, rng, CLASSES, LEX)) for kind in KINDS for _ in range(per_kind)]


def random_scene(rng: np.random.Generator, n: int) -> list[Obj]:
    """Up to n objects of random class, colour and size at random free places (no prompt behind them)."""
    occupied = np.zeros((GRID, GRID), dtype=bool)
    objs = []
    for _ in range(n):
        span = 2 if rng.random() < 0.3 else 1
        spots = [(r, c) for r in range(GRID - span + 1) for c in range(GRID - span + 1)
                 if not occupied[r:r + span, c:c + span].any()]
        if not spots:
            continue
        r, c = spots[rng.integers(len(spots))]
        occupied[r:r + span, c:c + span] = True
        objs.append(Obj(CLASSES[rng.integers(len(CLASSES))], ["red", "blue", "green"][rng.integers(3)],
                        "large" if span == 2 else "small", r, c))
    return objs


def test_realise_satisfies_rows():
    rng = np.random.default_rng(1)
    rows = rows_of_every_kind(15) + [("geneval", r) for r in build_geneval("shapes")]
    for _, row in rows:
        objs = realise(row, rng)
        tokens = scene_tokens(objs)  # raises on overlap
        assert tokens.shape == (GRID * GRID,)
        dets = scene_detections(objs)
        for mode in ("geneval", "strict"):
            v = evaluate(dets, row, mode)
            assert v.correct, (row["prompt"], mode, v.reason)
        # Exactly the objects the row asks for, each with its stated facts, in include order.
        specs = [req for req in row["include"] for _ in range(req["count"])]
        assert len(objs) == len(specs)
        for req, o in zip(specs, objs):
            assert o.cls == req["class"]
            assert 0 <= o.row <= GRID - o.span and 0 <= o.col <= GRID - o.span
            if "color" in req:
                assert o.color == req["color"]
            if "size" in req:
                assert o.size == {"larger": "large", "smaller": "small"}[req["size"]]
            if "region" in req:
                d = next(d for d in dets.objects[o.cls] if (d.box[1] // CELL, d.box[0] // CELL) == (o.row, o.col))
                assert in_region(d, req["region"])


def test_realise_through_pixels():
    rng = np.random.default_rng(2)
    for _, row in rows_of_every_kind(3, seed=5):
        pixels = decode(scene_tokens(realise(row, rng)))
        for mode in ("geneval", "strict"):
            v, dets = judge_image(pixels, row, mode)
            assert v.correct and dets.malformed == 0, (row["prompt"], mode, v.reason)


def test_same_seed_same_scene():
    for _, row in rows_of_every_kind(2, seed=3):
        a = realise(row, np.random.default_rng(11))
        b = realise(row, np.random.default_rng(11))
        assert a == b
    row = draw("color_attr_pp", np.random.default_rng(0), CLASSES, LEX)
    assert len({tuple(realise(row, np.random.default_rng(s))) for s in range(8)}) > 1


def _row(include, exclude=None, tag="counting"):
    row = {"tag": tag, "include": include, "prompt": "test prompt"}
    if exclude is not None:
        row["exclude"] = exclude
    return row


@pytest.mark.parametrize("row, message", [
    (_row([{"class": "circle", "count": 40}]), "40 objects do not fit on a 6x6 grid"),
    (_row([{"class": "circle", "count": 20}, {"class": "star", "count": 20}], tag="multi_object_count_attr"),
     "40 objects do not fit"),
    (_row([{"class": "circle", "count": 3}], [{"class": "circle", "count": 2}]),
     "asks for 3 circle but excludes 2 or more"),
    (_row([{"class": "circle", "count": 2}, {"class": "circle", "count": 2}], [{"class": "circle", "count": 4}],
          tag="multi_object_count_attr"), "asks for 4 circle but excludes 4 or more"),
    (_row([{"class": "circle", "count": 10, "region": "left"}, {"class": "star", "count": 10, "region": "left"}],
          tag="spatial_count_attr"), "20 objects do not fit in the left half"),
    (_row([{"class": "star", "count": 19, "region": "below"}], tag="spatial_count_attr"),
     "19 objects do not fit in the below half"),
    (_row([{"class": "dog", "count": 1}], tag="single_object"), "unknown class 'dog'"),
    (_row([{"class": "star", "count": 1, "color": "teal"}], tag="colors"), "unknown colour 'teal'"),
])
def test_unsatisfiable_rows_fail_fast_with_reason(row, message):
    with pytest.raises(UnsatisfiableError, match=message):
        realise(row, np.random.default_rng(0))


def test_unsatisfiable_after_sampling():
    # Ten large objects pass the object count (10 <= 36) but need 40 cells: every draw fails.
    row = _row([{"class": "circle", "count": 10, "size": "larger"}], tag="size_spatial_attr")
    with pytest.raises(UnsatisfiableError, match=f"no scene satisfies 'test prompt' after {MAX_TRIES} tries"):
        realise(row, np.random.default_rng(0))
    assert issubclass(UnsatisfiableError, ValueError)


def check_description(objs: list[Obj], row: dict, pixels=None) -> None:
    assert row["prompt"]
    parsed = parse_prompt(row["prompt"])
    assert (parsed["tag"], parsed["include"], parsed.get("exclude")) == \
        (row["tag"], row["include"], row.get("exclude")), row["prompt"]
    dets = scene_detections(objs)
    for mode in ("strict", "geneval"):
        assert evaluate(dets, row, mode).correct, (row["prompt"], mode, objs)
    if pixels is not None:
        v, _ = judge_image(pixels, row, "strict")
        assert v.correct, (row["prompt"], v.reason)


def test_describe_is_true_and_parses_back():
    rng = np.random.default_rng(4)
    tags = Counter()
    scenes = [realise(row, rng) for _, row in rows_of_every_kind(8, seed=6)]
    scenes += [random_scene(rng, int(rng.integers(1, 14))) for _ in range(150)]
    for i, objs in enumerate(scenes):
        row = describe(objs, rng)
        if row is None:
            continue
        tags[row["tag"]] += 1
        check_description(objs, row, decode(scene_tokens(objs)) if i % 5 == 0 else None)
    assert set(tags) == set(KIND_TAG.values()), tags
    assert sum(tags.values()) > 0.9 * len(scenes)


def test_describe_each_kind():
    rng = np.random.default_rng(7)
    for kind in KINDS:
        said = 0
        for _ in range(10):
            objs = realise(draw(kind, rng, CLASSES, LEX), rng)
            row = describe(objs, rng, kinds=(kind,))
            if row is not None:  # the scene may not support the kind (e.g. no large object)
                assert row["tag"] == KIND_TAG[kind]
                check_description(objs, row)
                said += 1
        assert said >= 5, kind


def test_describe_edge_cases():
    rng = np.random.default_rng(0)
    assert describe([], rng) is None
    # More of a class than the grammar has number words for: never said, and no crash.
    crowd = [Obj("circle" if r < 2 else "star", "red", "small", r, c) for r in range(4) for c in range(6)]
    crowd.append(Obj("cross", "blue", "small", 5, 5))
    for _ in range(30):
        row = describe(crowd, rng)
        assert row is not None
        check_description(crowd, row)
