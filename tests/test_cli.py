"""The `gvu` command line through subprocesses, exactly as the README shows the commands: prompt files, ground
truth rendering and judging, errors in inputs (exit 2, file and line, no traceback), pretraining and evaluation
on a metadata file. Torch-free commands take about a second; the pretrain + eval pair about ten."""

import json
import os
import subprocess
import sys
from pathlib import Path


from gvu.eval.layout import load_image, read_layout
from gvu.eval.metadata import read_metadata, write_metadata
from gvu.eval.prompts import build_geneval
from gvu.world.kinds import scene_key
from gvu.eval.prompts import held_out_scenes
from gvu.models.load import SPEC_FORMS
from gvu.world.render import blank_tokens, decode

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "gvu" / "eval" / "data" / "geneval"
_EXE = Path(sys.executable).parent / "gvu"
GVU = [str(_EXE)] if _EXE.is_file() else [sys.executable, "-m", "gvu.cli"]
# one torch thread: the shared CPU is busy, and spinning OpenMP threads there are ten times slower
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def gvu(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([*GVU, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"gvu {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


# ------------------------------------------------------------------------------------------------ prompts

def test_prompts_geneval_coco_is_byte_identical_to_genevals_files(tmp_path):
    p = gvu("prompts", "geneval", "--world", "coco", "--seed", 43, "-n", 100, "--out", tmp_path / "D")
    assert "553 prompts" in p.stdout
    for name in ("evaluation_metadata.jsonl", "generation_prompts.txt"):
        assert (tmp_path / "D" / name).read_bytes() == (DATA / name).read_bytes(), name


def test_prompts_genevalpp_and_train_write_valid_files(tmp_path):
    gvu("prompts", "genevalpp", "--out", tmp_path / "pp")
    gvu("prompts", "train", "-n", 500, "--out", tmp_path / "tr")
    keys = held_out_scenes("shapes")
    for d, tags in (("pp", 7), ("tr", None)):
        rows = read_metadata(tmp_path / d / "evaluation_metadata.jsonl")  # validates every row
        lines = (tmp_path / d / "generation_prompts.txt").read_text().splitlines()
        assert lines == [r["prompt"] for r in rows]
        if tags:
            assert len({r["tag"] for r in rows}) == tags and len(rows) > 200
    train = read_metadata(tmp_path / "tr" / "evaluation_metadata.jsonl")
    assert len(train) == 500
    assert not {scene_key(r) for r in train} & keys  # no test or validation scene leaks into training
    # the seed is honoured: same seed, same file; another seed, another file
    gvu("prompts", "train", "-n", 500, "--seed", 0, "--out", tmp_path / "tr0")
    gvu("prompts", "train", "-n", 500, "--seed", 1, "--out", tmp_path / "tr1")
    same = (tmp_path / "tr0" / "evaluation_metadata.jsonl").read_bytes()
    assert same == (tmp_path / "tr" / "evaluation_metadata.jsonl").read_bytes()
    assert same != (tmp_path / "tr1" / "evaluation_metadata.jsonl").read_bytes()


# ------------------------------------------------------------------------------------------------ render, judge

def test_render_then_judge_strict_is_exact(tmp_path):
    rows = build_geneval("shapes")[::40]  # 8 prompts spread over the six tags
    meta = tmp_path / "meta.jsonl"
    write_metadata(meta, rows)
    gvu("world", "render", "--metadata", meta, "--outdir", tmp_path / "gt", "--per-prompt", 2, "--seed", 1)
    p = gvu("judge", tmp_path / "gt", "--strict", "--out", tmp_path / "results.jsonl")
    results = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2 * len(rows) and all(r["correct"] for r in results)
    assert "overall" in p.stdout and "1.000" in p.stdout.split("overall")[1].split("\n")[0]
    assert [s.row for s in read_layout(tmp_path / "gt")][::2] == rows

    # the judge can say no: blank one image and that image alone fails
    bad = tmp_path / "gt" / "00003" / "samples" / "0001.png"
    from PIL import Image

    Image.fromarray(decode(blank_tokens()[None])[0]).save(bad)
    p = gvu("judge", tmp_path / "gt", "--strict", "--out", tmp_path / "results2.jsonl")
    results = [json.loads(x) for x in (tmp_path / "results2.jsonl").read_text().splitlines()]
    assert [Path(r["filename"]) for r in results if not r["correct"]] == [bad]
    assert "1.000" not in p.stdout.split("overall")[1].split("\n")[0]


# ------------------------------------------------------------------------------------------------ bad inputs

def test_malformed_metadata_line_exits_2_with_file_and_line(tmp_path):
    good = json.dumps(build_geneval("shapes")[0])
    meta = tmp_path / "bad.jsonl"
    meta.write_text(good + "\n" + good[:-5] + "\n" + good + "\n")  # line 2 is cut short
    p = gvu("world", "render", "--metadata", meta, "--outdir", tmp_path / "out", check=False)
    assert p.returncode == 2, p.stderr
    assert f"{meta}:2:" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()  # reported before any work

    # an unknown key is a bad input too, on its own line
    row = dict(build_geneval("shapes")[0], colour="red")
    meta.write_text(good + "\n" + good + "\n" + json.dumps(row) + "\n")
    p = gvu("world", "render", "--metadata", meta, "--outdir", tmp_path / "out", check=False)
    assert p.returncode == 2 and f"{meta}:3:" in p.stderr and "colour" in p.stderr


def test_eval_with_a_bad_model_spec_exits_2_listing_accepted_forms(tmp_path):
    p = gvu("eval", "--model", "NOT_A_MODEL", cwd=tmp_path, check=False)
    assert p.returncode == 2
    assert "NOT_A_MODEL" in p.stderr and "accepted forms" in p.stderr
    assert all(form in p.stderr for form in SPEC_FORMS)
    assert "Traceback" not in p.stderr


# ------------------------------------------------------------------------------------------------ pretrain, eval

def test_pretrain_then_eval_a_metadata_file(tmp_path):
    model = tmp_path / "D"
    p = gvu("pretrain", "--size", "tiny", "--steps", 20, "--num-scenes", 100, "--out", model, "--threads", 1,
            "--batch-size", 16, "relation_fraction=0.25", "describe_weights={position: 2, colors: 1}")
    assert "tiny" in p.stdout and (model / "pretrain_log.jsonl").is_file()
    recorded = json.loads((model / "gvu.json").read_text())["pretrain"]
    assert recorded["steps"] == 20 and recorded["relation_fraction"] == 0.25 and recorded["grid"] is True
    assert recorded["describe_weights"] == {"position": 2, "colors": 1}
    bad = gvu("pretrain", "--out", tmp_path / "X", "relation_fractio=0.3", check=False)
    assert bad.returncode == 2 and "relation_fractio" in bad.stderr and "relation_fraction" in bad.stderr

    rows = build_geneval("shapes")[::80]  # 4 prompts
    meta = tmp_path / "FILE.jsonl"
    write_metadata(meta, rows)
    out = tmp_path / "E"
    p = gvu("eval", "--model", model, "--benchmark", meta, "--per-prompt", 2, "--out", out)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"file"}
    assert 0.0 <= summary["file"]["overall"] <= 1.0 and set(summary["file"]["tags"]) == {r["tag"] for r in rows}
    samples = read_layout(out / "file")
    assert [s.row for s in samples] == [r for r in rows for _ in range(2)]
    assert all(load_image(s.path).shape == (96, 96, 3) for s in samples)
    assert len((out / "file" / "results.jsonl").read_text().splitlines()) == 8
    assert "overall" in p.stdout and str(out / "summary.json") in p.stdout
    # the folder holds one evaluation: a second into it is refused, or replaces the first with --overwrite
    write_metadata(meta, rows[:1])
    again = gvu("eval", "--model", model, "--benchmark", meta, "--per-prompt", 2, "--out", out, check=False)
    assert again.returncode == 2 and "earlier evaluation" in again.stderr and "--overwrite" in again.stderr
    assert len(read_layout(out / "file")) == 8  # untouched
    gvu("eval", "--model", model, "--benchmark", meta, "--per-prompt", 2, "--out", out, "--overwrite")
    assert [s.row for s in read_layout(out / "file")] == [rows[0]] * 2  # no prompt folder of the first is left
    assert len((out / "file" / "results.jsonl").read_text().splitlines()) == 2
    assert set(json.loads((out / "summary.json").read_text())["file"]["tags"]) == {rows[0]["tag"]}


def test_generate_writes_a_valid_layout(tmp_path):
    """`gvu generate` on a tiny model: GenEval's layout, readable by our reader and judged by `gvu judge`."""
    from gvu.eval.layout import read_layout
    from gvu.eval.metadata import write_metadata
    from gvu.models.builtin.model import build_builtin, save_builtin

    save_builtin(build_builtin("tiny", seed=0), tmp_path / "m")
    rows = [{"tag": "single_object", "include": [{"class": "star", "count": 1}], "prompt": "a photo of a star"},
            {"tag": "counting", "include": [{"class": "heart", "count": 2}],
             "exclude": [{"class": "heart", "count": 3}], "prompt": "a photo of two hearts"}]
    write_metadata(tmp_path / "meta.jsonl", rows)
    r = subprocess.run([sys.executable, "-m", "gvu.cli", "generate", "--model", str(tmp_path / "m"), "--metadata",
                        str(tmp_path / "meta.jsonl"), "--outdir", str(tmp_path / "out"), "--per-prompt", "3"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    samples = read_layout(tmp_path / "out")
    assert [(s.index, s.sample_index) for s in samples] == [(i, k) for i in range(2) for k in range(3)]
    assert [s.row for s in samples[::3]] == rows
