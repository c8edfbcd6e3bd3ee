"""One validation pass over prompt metadata before any compute, shared by every command that reads it
(`gvu train`, `generate`, `eval`, `score`, `judge`, `world render`).

`gvu.eval.metadata.read_metadata` checks the GenEval row format. On top of it, each row is checked for:

- a tag the evaluator knows (GenEval's six and GenEval++'s seven); an unknown tag would be scored as its own
  silent column of the summary;
- the shapes world (where the command works in it): classes and colours of the world, counts that fit its grid
  and halves, and a prompt that says what its `include` asks for, wherever the grammar can say that row;
- the model's vocabulary (where a tokenizer is given): the built-in model cannot read a word it never saw.

Every error names the file and its line (blank lines counted, as an editor shows them), and all of it runs
before the first image is drawn: a bad word on line 5,000 is found in seconds, not after hours of sampling.
"""

from __future__ import annotations

import json
import os

from gvu.eval.metadata import MetadataError, read_metadata, validate_row
from gvu.world import spec
from gvu.world.dense import check_dense, DPG_TAG
from gvu.world.grammar import GENEVAL_TAGS, GENEVALPP_TAGS, GrammarError, parse_prompt, render_prompt, words_of
from gvu.world.scene import _precheck, UnsatisfiableError

KNOWN_TAGS = tuple(dict.fromkeys(GENEVAL_TAGS + GENEVALPP_TAGS + (DPG_TAG,)))


def _check_tag(row: dict) -> None:
    if row["tag"] not in KNOWN_TAGS:
        raise MetadataError(f"unknown tag {row['tag']!r}", hint=f"known tags: {', '.join(KNOWN_TAGS)}")


def _check_fits(row: dict) -> None:
    """Counts the world can draw: checked on the totals first, so `count: 10**9` fails at once."""
    total = sum(it["count"] for it in row["include"])
    if total > spec.NUM_TOKENS:
        raise MetadataError(f"the row asks for {total} objects; a {spec.GRID}x{spec.GRID} image holds at most "
                            f"{spec.NUM_TOKENS}", hint="lower the counts")
    try:
        _precheck(row)
    except UnsatisfiableError as err:
        raise MetadataError(str(err), hint="no image of the shapes world can satisfy this row") from None


def _canon(include: list[dict]) -> list[str]:
    out = []
    for it in include:
        it = dict(it)
        if "position" in it:
            it["position"] = list(it["position"])
        out.append(json.dumps(it, sort_keys=True))
    return sorted(out)


def _check_agrees(row: dict) -> None:
    """The prompt says what `include` asks for, where the grammar can say this row (else nothing to compare); a dense
    row (DPG-shapes) as the dense grammar writes it, about distinct shapes (gvu.world.dense.check_dense)."""
    if row["tag"] == DPG_TAG:
        try:
            return check_dense(row)
        except ValueError as err:
            raise MetadataError(str(err), hint="write dense rows with gvu prompts dpg --world shapes") from None
    try:
        said = render_prompt(row)
    except (GrammarError, KeyError):
        return
    if words_of(said) == words_of(row["prompt"]):
        return
    try:
        parsed = parse_prompt(row["prompt"])["include"]
    except GrammarError:
        parsed = None
    if parsed is None or _canon(parsed) != _canon(row["include"]):
        raise MetadataError(f"the prompt {row['prompt']!r} does not say what include asks for (the grammar "
                            f"says {said!r})", hint="fix the prompt or the include so they agree")


def check_row(row: dict, *, world: bool = True, tokenizer=None) -> None:
    """Raise MetadataError (without a location) for a row that read_metadata accepted but a command cannot use."""
    _check_tag(row)
    if world:
        validate_row(row, classes=set(spec.SHAPES), colors=set(spec.COLORS))
        _check_fits(row)
    if tokenizer is not None:  # before the prompt against include: an unknown word is the plainer message
        try:
            tokenizer.encode(row["prompt"])
        except ValueError as err:
            raise MetadataError(str(err), hint="the model can only read prompts in its vocabulary") from None
    if world:
        _check_agrees(row)


def file_lines(path: str | os.PathLike) -> list[int]:
    """The 1-based line numbers of a metadata file's rows (read_metadata skips blank lines)."""
    with open(path, encoding="utf-8") as fp:
        return [i for i, text in enumerate(fp, start=1) if text.strip()]


def check_rows(rows: list[dict], where: str | os.PathLike, lines: list[int] | None = None, *, world: bool = True,
               tokenizer=None) -> list[dict]:
    """Check every row; the first error names `where` and the row's line (`lines[k]`, default k + 1)."""
    for k, row in enumerate(rows):
        try:
            check_row(row, world=world, tokenizer=tokenizer)
        except MetadataError as err:
            raise err.at(where, lines[k] if lines is not None else k + 1) from None
    return rows


def read_checked(path: str | os.PathLike, *, world: bool = True, tokenizer=None) -> list[dict]:
    """read_metadata, then every check above, all before the caller computes anything."""
    rows = read_metadata(path)
    return check_rows(rows, path, file_lines(path), world=world, tokenizer=tokenizer)


def check_layout_rows(samples, *, world: bool = True, tokenizer=None) -> None:
    """The rows of a GenEval-layout folder (LayoutSample list), each named by its prompt folder's metadata file."""
    seen = set()
    for s in samples:
        if s.index in seen:
            continue
        seen.add(s.index)
        check_rows([s.row], s.path.parent.parent / "metadata.jsonl", [1], world=world, tokenizer=tokenizer)
