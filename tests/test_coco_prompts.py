from collections import Counter
from pathlib import Path

import pytest

from gvu.eval.coco import (GENEVAL_COLORS, build_geneval_coco, load_coco_classes, make_plural,
                            with_article)
from gvu.eval.metadata import read_metadata, validate_row, write_metadata, write_prompts

OFFICIAL = Path(__file__).resolve().parents[1] / "gvu" / "eval" / "data" / "geneval"


def test_byte_identical_to_official(tmp_path):
    rows = build_geneval_coco(seed=43, n=100)
    write_metadata(tmp_path / "evaluation_metadata.jsonl", rows)
    write_prompts(tmp_path / "generation_prompts.txt", rows)
    for name in ("evaluation_metadata.jsonl", "generation_prompts.txt"):
        assert (tmp_path / name).read_bytes() == (OFFICIAL / name).read_bytes(), name
    assert Counter(r["tag"] for r in rows) == {"single_object": 80, "two_object": 99, "counting": 80,
                                               "colors": 94, "position": 100, "color_attr": 100}


def test_defaults_are_the_official_set():
    assert build_geneval_coco() == read_metadata(OFFICIAL / "evaluation_metadata.jsonl")


def test_other_seed_differs_but_is_valid():
    classes = load_coco_classes()
    rows = build_geneval_coco(seed=7)
    assert rows != build_geneval_coco(seed=43)
    assert rows == build_geneval_coco(seed=7)  # deterministic
    for row in rows:
        validate_row(row, classes=set(classes), colors=set(GENEVAL_COLORS))
    assert len({(r["tag"], r["prompt"]) for r in rows}) == len(rows)
    assert sorted(r["include"][0]["class"] for r in rows if r["tag"] == "single_object") == sorted(classes)
    assert not any(item.get("color") and item["class"] == "person" for r in rows for item in r["include"])


def test_custom_classes():
    shapes = ["circle", "square", "triangle", "star", "octagon"]
    rows = build_geneval_coco(seed=0, n=5, classes=shapes)
    assert {r["include"][0]["class"] for r in rows} <= set(shapes)
    assert "a photo of an octagon" in [r["prompt"] for r in rows]
    with pytest.raises(ValueError, match="distinct"):
        build_geneval_coco(classes=["circle", "circle", "star"])
    with pytest.raises(ValueError, match="at least 3"):
        build_geneval_coco(classes=["person", "circle"])


def test_english_quirks():
    assert with_article("orange") == "an orange"
    assert with_article("hair drier") == "a hair drier"
    assert make_plural("bus") == "buses"
    assert make_plural("sandwich") == "sandwichs"  # GenEval's naive rule, kept for byte identity
