"""GenEval's own wording of position prompts ("a photo of a dog right of a teddy bear", its official metadata)
in the shapes world: the grammar reads "a circle right of a star" as it reads "a circle to the right of a star",
so a prompt file written GenEval's way goes through every command that checks prompt metadata (`world render`,
`judge`, `generate`, `score`, `eval`, `train`); a prompt that really contradicts its include is still refused,
and rendering keeps the grammar's own phrasing. The commands run as subprocesses on an untrained tiny model
(about 30 s together on one thread)."""

import json
import re
from pathlib import Path

import pytest

from gvu.eval.layout import read_layout
from gvu.eval.metadata import read_metadata, write_metadata
from gvu.models.builtin.model import build_builtin, save_builtin
from gvu.world import spec
from gvu.world.grammar import parse_prompt, render_prompt

from test_cli import DATA, gvu, ROOT

GENEVAL_POSITION = re.compile(r"a photo of an? (.+) (left of|right of|above|below) an? (.+)")
PAIRS = [("circle", "star"), ("heart", "square"), ("triangle", "hexagon"), ("diamond", "cross")]


def geneval_rows() -> list[dict]:
    """One shapes-world position row per relation, its prompt worded as GenEval's metadata words it."""
    rows = []
    for rel, (placed, anchor) in zip(spec.RELATIONS, PAIRS):
        rows.append({"tag": "position", "include": [{"class": anchor, "count": 1},
                                                    {"class": placed, "count": 1, "position": [rel, 0]}],
                     "prompt": f"a photo of a {placed} {rel} a {anchor}"})
    return rows


def test_the_rows_are_worded_as_genevals_own_metadata():
    """The wording above is GenEval's: every position row of its official file says 'B rel A' this way."""
    official = [r for r in read_metadata(DATA / "evaluation_metadata.jsonl") if r["tag"] == "position"]
    assert len(official) == 100
    for row in official:
        placed, rel, anchor = GENEVAL_POSITION.fullmatch(row["prompt"]).groups()
        assert (placed, rel, anchor) == (row["include"][1]["class"], row["include"][1]["position"][0],
                                         row["include"][0]["class"])
    assert {r["include"][1]["position"][0] for r in official} == set(spec.RELATIONS)


@pytest.mark.parametrize("row", geneval_rows(), ids=lambda r: r["include"][1]["position"][0])
def test_geneval_phrasing_parses_to_the_same_row(row):
    parsed = parse_prompt(row["prompt"])
    assert (parsed["tag"], parsed["include"]) == ("position", row["include"])
    canonical = render_prompt(row)  # rendering keeps the grammar's phrasing ("above" is the same in both)
    assert parse_prompt(canonical)["include"] == row["include"]
    rel = row["include"][1]["position"][0]
    assert (canonical == row["prompt"]) == (rel in ("above", "below"))
    assert (f" to the {rel} " in canonical) == (rel in ("left of", "right of"))


def test_a_geneval_phrased_file_goes_through_every_command(tmp_path):
    rows = geneval_rows()
    meta = tmp_path / "geneval_phrased.jsonl"
    write_metadata(meta, rows)
    model = tmp_path / "tiny"
    save_builtin(build_builtin("tiny", seed=0), model)

    gvu("world", "render", "--metadata", meta, "--outdir", tmp_path / "gt", "--per-prompt", 1)
    assert [s.row["prompt"] for s in read_layout(tmp_path / "gt")] == [r["prompt"] for r in rows]
    judged = gvu("judge", tmp_path / "gt", "--strict")
    assert "1.000" in judged.stdout.split("overall")[1].split("\n")[0]  # the exact judge reads them right

    gvu("generate", "--model", model, "--metadata", meta, "--outdir", tmp_path / "gen", "--per-prompt", 1)
    assert len(read_layout(tmp_path / "gen")) == len(rows)
    gvu("score", tmp_path / "gt", "--model", model, "--out", tmp_path / "scores.jsonl")
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == len(rows)
    gvu("eval", "--model", model, "--benchmark", meta, "--per-prompt", 1, "--out", tmp_path / "ev")
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["file"]["tags"].keys() == {"position"}
    gvu("train", "--config", ROOT / "configs" / "tiny.yaml", f"model={model}", f"prompts={meta}",
        f"output_dir={tmp_path / 'run'}", "max_steps=1", "eval_steps=0", "save_steps=0", "threads=1")
    assert (tmp_path / "run" / "final").is_dir()


@pytest.mark.parametrize("prompt", ["a photo of a circle left of a star",   # the opposite relation
                                    "a photo of a star right of a circle",   # the objects swapped
                                    "a photo of a circle above a star"])
def test_a_real_contradiction_is_still_refused(tmp_path, prompt):
    row = {"tag": "position", "include": [{"class": "star", "count": 1},
                                          {"class": "circle", "count": 1, "position": ["right of", 0]}],
           "prompt": prompt}
    meta = tmp_path / "contradiction.jsonl"
    write_metadata(meta, [geneval_rows()[0], row])
    p = gvu("world", "render", "--metadata", meta, "--outdir", tmp_path / "gt", check=False)
    assert p.returncode == 2 and f"{meta}:2:" in p.stderr and "does not say what include asks for" in p.stderr
    assert not Path(tmp_path / "gt").exists()
