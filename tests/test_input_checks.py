"""Inputs checked before compute (gvu.eval.check, gvu.argcheck): one validator for every command that reads
prompt metadata, each error with file and line; command-line values refused with a message naming the flag;
file errors naming the file. In-process through gvu.cli.main on a two-step tiny base."""

import json
import os
import time
from pathlib import Path

import pytest

from gvu.eval.check import check_rows, read_checked
from gvu.eval.metadata import MetadataError, write_metadata
from gvu.eval.prompts import build_geneval, build_genevalpp, build_train
from gvu.cli import main
from gvu.models.builtin.tokenizer import WordTokenizer

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
GOOD = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
        "prompt": "a photo of a red circle"}


def gvu(capsys, *args) -> tuple[int, str]:
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    out = capsys.readouterr()
    return rc, out.err + out.out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base"
    assert main(["pretrain", "--size", "tiny", "--steps", "2", "--num-scenes", "50", "--batch-size", "8",
                 "--threads", "1", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """5,000 valid training rows with an unknown word on line 5,000, after a blank line 3 (lines, not rows)."""
    rows = build_train("shapes", seed=0, n=4999)
    rows[-1] = {**rows[-1], "prompt": rows[-1]["prompt"] + " sparkly"}
    lines = [json.dumps(r) for r in rows]
    path = tmp_path_factory.mktemp("meta") / "big.jsonl"
    path.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")
    return path


def test_every_built_in_prompt_set_passes_the_validator():
    tok = WordTokenizer()
    for rows in (build_geneval("shapes"), build_genevalpp("shapes"), build_train("shapes", seed=1, n=3000)):
        check_rows(rows, "built-in", tokenizer=tok)


@pytest.mark.parametrize("row, message", [
    ({**GOOD, "tag": "bogus_tag"}, "unknown tag 'bogus_tag'"),
    ({**GOOD, "prompt": "a photo of a blue circle"}, "does not say what include asks for"),
    ({**GOOD, "include": [{"class": "circle", "count": 1000}], "tag": "counting",
      "prompt": "a photo of circles"}, "asks for 1000 objects"),
    ({**GOOD, "include": [{"class": "circle", "count": 1, "color": "teal"}]}, "unknown color 'teal'"),
    ({**GOOD, "include": [{"class": "unicorn", "count": 1}], "tag": "single_object"}, "unknown class 'unicorn'"),
    ({"tag": "color_spatial_attr", "include": [{"class": "circle", "count": 20, "region": "left"}],
      "prompt": "a photo of many circles on the left"}, "do not fit in the left half"),
])
def test_world_rows_are_refused_with_file_and_line(tmp_path, row, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(MetadataError) as err:
        read_checked(path)
    assert message in str(err.value) and str(err.value).startswith(f"{path}:3:")


@pytest.mark.parametrize("command", ["generate", "eval"])  # as `gvu train` already did (tests/test_trainer.py)
def test_an_unknown_word_on_line_5000_is_found_before_any_image(base, big, tmp_path, capsys, command):
    args = {"generate": ["generate", "--model", base, "--metadata", big, "--outdir", tmp_path / "o"],
            "eval": ["eval", "--model", base, "--benchmark", big, "--out", tmp_path / "o"]}
    t = time.perf_counter()
    rc, text = gvu(capsys, *args[command])
    assert rc == 2 and f"{big}:5000:" in text and "sparkly" in text, text
    assert time.perf_counter() - t < 30
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.png"))


def test_every_command_reading_metadata_refuses_an_unknown_tag(base, tmp_path, capsys):
    meta = tmp_path / "tag.jsonl"
    meta.write_text(json.dumps({**GOOD, "tag": "bogus_tag"}) + "\n")
    for args in (["world", "render", "--metadata", meta, "--outdir", tmp_path / "r"],
                 ["generate", "--model", base, "--metadata", meta, "--outdir", tmp_path / "g"]):
        rc, text = gvu(capsys, *args)
        assert rc == 2 and f"{meta}:1: unknown tag 'bogus_tag'" in text, (args, text)
    write_metadata(tmp_path / "ok.jsonl", [GOOD])
    assert gvu(capsys, "world", "render", "--metadata", tmp_path / "ok.jsonl", "--outdir", tmp_path / "gt",
               "--per-prompt", 1)[0] == 0
    folder_meta = tmp_path / "gt" / "00000" / "metadata.jsonl"
    folder_meta.write_text(json.dumps({**GOOD, "tag": "bogus_tag"}) + "\n")
    for args in (["judge", tmp_path / "gt"], ["score", tmp_path / "gt", "--model", base]):
        rc, text = gvu(capsys, *args)
        assert rc == 2 and f"{folder_meta}:1: unknown tag" in text, (args, text)


@pytest.mark.parametrize("args, flag", [
    (["generate", "--model", "m", "--metadata", "m", "--outdir", "o", "--per-prompt", "0"], "--per-prompt"),
    (["generate", "--model", "m", "--metadata", "m", "--outdir", "o", "--batch", "0"], "--batch"),
    (["generate", "--model", "m", "--metadata", "m", "--outdir", "o", "--temperature", "nan"], "--temperature"),
    (["eval", "--model", "m", "--per-prompt", "0"], "--per-prompt"),
    (["world", "render", "--metadata", "m", "--outdir", "o", "--per-prompt", "0"], "--per-prompt"),
    (["score", "d", "--model", "m", "--seed", "-1"], "--seed"),
    (["pretrain", "--out", "o", "--threads", "-1"], "--threads"),
    (["pretrain", "--out", "o", "--learning-rate", "inf"], "--learning-rate"),
    (["demo", "--per-prompt", "0"], "--per-prompt"),
])
def test_command_line_values_are_refused_naming_the_flag(capsys, args, flag):
    rc, text = gvu(capsys, *args)
    assert rc == 2 and f"argument {flag}:" in text and "Traceback" not in text


def test_train_values_name_the_key(tmp_path, capsys):
    for extra, key in ((["learning_rate=.inf"], "learning_rate must be a finite number"),
                       (["threads=-1"], "threads must be >= 0"),
                       (["epsilon_high=0.1"], "epsilon_high (0.1) must be >= epsilon (0.2)")):
        rc, text = gvu(capsys, "train", "--config", TINY, f"output_dir={tmp_path / 'o'}", *extra)
        assert rc == 2 and key in text, text
    rc, text = gvu(capsys, "pretrain", "--out", tmp_path / "p", "threads=-1")
    assert rc == 2 and "threads must be an integer >= 0" in text


def test_a_truncated_png_and_an_unwritable_folder_name_the_file(base, tmp_path, capsys):
    write_metadata(tmp_path / "ok.jsonl", [GOOD])
    assert gvu(capsys, "world", "render", "--metadata", tmp_path / "ok.jsonl", "--outdir", tmp_path / "gt",
               "--per-prompt", 1)[0] == 0
    png = tmp_path / "gt" / "00000" / "samples" / "0000.png"
    png.write_bytes(png.read_bytes()[:100])
    rc, text = gvu(capsys, "judge", tmp_path / "gt")
    assert rc == 2 and f"{png}: cannot read the image" in text and "Traceback" not in text
    if os.geteuid() == 0:  # root writes through permission bits: a folder on a file system that refuses it
        ro = Path("/sys/gvu-test")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        ro = tmp_path / "ro" / "out"
    rc, text = gvu(capsys, "generate", "--model", base, "--metadata", tmp_path / "ok.jsonl", "--outdir", ro)
    assert rc == 2 and str(ro) in text and "writable" in text and "Traceback" not in text
