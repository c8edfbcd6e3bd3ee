import json

import numpy as np
import pytest

from gvu.eval.layout import LayoutSample, iter_layout, load_image, read_layout, write_prompt_dir
from gvu.eval.metadata import MetadataError

ROWS = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
    {"tag": "position",
     "include": [{"class": "star", "count": 1}, {"class": "square", "count": 1, "position": ["above", 0]}],
     "prompt": "a photo of a square above a star"},
]


def _images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8) for _ in range(n)]


def test_round_trip(tmp_path):
    written = {0: _images(3, 0), 1: _images(2, 1)}
    for index, row in enumerate(ROWS):
        folder = write_prompt_dir(tmp_path, index, row, written[index])
        assert folder == tmp_path / f"{index:05d}"
    (tmp_path / "results.jsonl").write_text("{}\n")  # GenEval writes nothing else here, but users might

    samples = read_layout(tmp_path)
    assert [(s.index, s.sample_index) for s in samples] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert samples[3] == LayoutSample(1, 0, tmp_path / "00001" / "samples" / "0000.png", ROWS[1])
    for s in samples:
        np.testing.assert_array_equal(load_image(s.path), written[s.index][s.sample_index])
    # Exactly GenEval's files: one JSON line of metadata, zero-padded names.
    assert (tmp_path / "00001" / "metadata.jsonl").read_text() == json.dumps(ROWS[1]) + "\n"


def test_rewrite_removes_stale_samples(tmp_path):
    write_prompt_dir(tmp_path, 0, ROWS[0], _images(4, 0))
    batch = np.stack(_images(2, 1))  # a decoder's [N, H, W, 3] batch works too
    write_prompt_dir(tmp_path, 0, ROWS[0], batch)
    assert [s.sample_index for s in read_layout(tmp_path)] == [0, 1]


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        write_prompt_dir(tmp_path, 0, ROWS[0], [np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        write_prompt_dir(tmp_path, 0, ROWS[0], [np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="no images"):
        write_prompt_dir(tmp_path, 0, ROWS[0], [])
    with pytest.raises(MetadataError, match=r"00000/metadata\.jsonl:1: unknown key 'colour'"):
        write_prompt_dir(tmp_path, 0, {**ROWS[0], "colour": "red"}, _images(1, 0))
    assert not any(tmp_path.iterdir())  # nothing written on bad input


def test_missing_or_empty_outdir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such GenEval output folder"):
        iter_layout(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MetadataError, match="no prompt folders"):
        iter_layout(tmp_path)


@pytest.mark.parametrize("breakage,match", [
    (lambda d: (d / "metadata.jsonl").unlink(), "has no metadata.jsonl"),
    (lambda d: (d / "metadata.jsonl").write_text('{"tag": "x", \n'), r"metadata\.jsonl:1: malformed JSON"),
    (lambda d: (d / "metadata.jsonl").write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[0]) + "\n"),
     "expected one metadata row, found 2"),
    (lambda d: [p.unlink() for p in (d / "samples").iterdir()], "no samples"),
    (lambda d: (d / "samples" / "00.png").write_bytes((d / "samples" / "0000.png").read_bytes()), "same number"),
])
def test_broken_prompt_folder(tmp_path, breakage, match):
    write_prompt_dir(tmp_path, 0, ROWS[0], _images(1, 0))
    write_prompt_dir(tmp_path, 1, ROWS[1], _images(2, 1))
    breakage(tmp_path / "00001")
    it = iter_layout(tmp_path)
    assert next(it).index == 0  # the good folder streams before the broken one is reached
    with pytest.raises(MetadataError, match=match) as info:
        list(it)
    assert "00001" in str(info.value)
