import copy
import json
import pickle
from pathlib import Path

import pytest

from gvu.eval.coco import GENEVAL_COLORS, load_coco_classes
from gvu.eval.metadata import (MetadataError, atomic_write_text, read_metadata, validate_row, write_metadata,
                                write_prompts)

DATA = Path(__file__).resolve().parents[1] / "gvu" / "eval" / "data"
GENEVAL = DATA / "geneval" / "evaluation_metadata.jsonl"
GENEVALPP = DATA / "genevalpp" / "Geneval++.jsonl"

POSITION_ROW = {"tag": "position",
                "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}],
                "prompt": "a photo of a cat left of a dog"}


def _reason(row, **kw) -> str:
    with pytest.raises(MetadataError) as info:
        validate_row(row, **kw)
    return info.value.reason


def _with(path: list, value, base=POSITION_ROW) -> dict:
    """A deep copy of `base` with the item at `path` set to `value` (value None deletes the key)."""
    row = copy.deepcopy(base)
    target = row
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return row


def test_official_files_parse_with_vocabularies():
    classes, colors = set(load_coco_classes()), set(GENEVAL_COLORS)
    geneval = read_metadata(GENEVAL, classes=classes, colors=colors)
    assert len(geneval) == 553
    pp = read_metadata(GENEVALPP, classes=classes, colors=colors)
    assert len(pp) == 280
    fields = {k for row in pp for item in row["include"] for k in item}
    assert {"color", "region", "size"} <= fields


@pytest.mark.parametrize("path,value,expected", [
    (["colour"], "red", "unknown key 'colour' in row"),
    (["include", 0, "colour"], "red", "unknown key 'colour' in include[0]"),
    (["include", 1, "position"], ["left of", 1], "include[1].position index 1 must point to an earlier item"),
    (["include", 0, "position"], ["above", 0], "include[0].position index 0 must point to an earlier item"),
    (["include", 1, "position"], ["near", 0], "unknown relation 'near' in include[1].position"),
    (["include", 1, "position"], ["left of"], "include[1].position must be [relation, index], got ['left of']"),
    (["include", 0, "count"], 0, "include[0].count must be an integer >= 1, got 0"),
    (["include", 0, "count"], True, "include[0].count must be an integer >= 1, got True"),
    (["include", 0, "count"], None, "include[0] has no 'count'"),
    (["include", 0, "class"], None, "include[0] has no 'class'"),
    (["include", 0, "region"], "middle", "unknown region 'middle' in include[0]"),
    (["include", 0, "size"], "big", "unknown size 'big' in include[0]"),
    (["include"], [], "include must be a non-empty list"),
    (["exclude"], [{"class": "dog", "count": 2, "color": "red"}], "unknown key 'color' in exclude[0]"),
    (["prompt"], "two\nlines", "prompt contains a line break"),
    (["tag"], None, "row has no 'tag'"),
])
def test_precise_reasons(path, value, expected):
    assert _reason(_with(path, value)) == expected


def test_vocabularies():
    row = _with(["include", 0, "color"], "grey")
    reason = _reason(row, colors=set(GENEVAL_COLORS))
    assert reason == "unknown color 'grey' in include[0]"
    validate_row(row)  # no vocabulary given: any colour word
    assert _reason(POSITION_ROW, classes={"dog"}) == "unknown class 'cat' in include[1]"


def test_tuple_position_is_accepted_and_written_as_list(tmp_path):
    # The official generator builds ("left of", 0); it must serialise like the JSON list.
    row = _with(["include", 1, "position"], ("left of", 0))
    validate_row(row)
    write_metadata(tmp_path / "m.jsonl", [row])
    assert read_metadata(tmp_path / "m.jsonl") == [POSITION_ROW]


def test_error_message_and_pickle(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(POSITION_ROW) + "\n\n" + json.dumps(_with(["include", 0, "colour"], "red")) + "\n")
    with pytest.raises(MetadataError) as info:
        read_metadata(path)
    err = info.value
    assert (err.path, err.line) == (str(path), 3)  # blank lines still count as lines
    assert str(err).startswith(f"{path}:3: unknown key 'colour' in include[0] (allowed keys: class, count")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)


def test_malformed_json_and_empty_file(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(POSITION_ROW) + "\n{\"tag\": \n")
    with pytest.raises(MetadataError, match=r"m\.jsonl:2: malformed JSON"):
        read_metadata(path)
    path.write_text("\n  \n")
    with pytest.raises(MetadataError, match="file has no rows"):
        read_metadata(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(MetadataError, match="row must be a JSON object"):
        read_metadata(path)


def test_write_is_all_or_nothing(tmp_path):
    path = tmp_path / "m.jsonl"
    write_metadata(path, [POSITION_ROW])
    before = path.read_bytes()
    with pytest.raises(MetadataError) as info:
        write_metadata(path, [POSITION_ROW, POSITION_ROW, {"tag": "x"}])
    assert info.value.line == 3
    assert path.read_bytes() == before  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]  # no temp file left behind
    with pytest.raises(MetadataError, match="no rows to write"):
        write_metadata(path, [])


def test_round_trip_is_byte_identical(tmp_path):
    for src in (GENEVAL, GENEVALPP):
        rows = read_metadata(src)
        write_metadata(tmp_path / src.name, rows)
        assert (tmp_path / src.name).read_bytes() == src.read_bytes()


def test_write_prompts(tmp_path):
    rows = read_metadata(GENEVAL)
    write_prompts(tmp_path / "p.txt", rows)
    assert (tmp_path / "p.txt").read_bytes() == (DATA / "geneval" / "generation_prompts.txt").read_bytes()


def test_atomic_write_text(tmp_path):
    target = tmp_path / "sub" / "f.txt"  # parent folders are created
    atomic_write_text(target, "a\nb\n")
    assert target.read_bytes() == b"a\nb\n"
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert target.stat().st_mode == plain.stat().st_mode  # umask honoured, not tempfile's private 0600
    atomic_write_text(target, "c\n")
    assert target.read_text() == "c\n"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]
