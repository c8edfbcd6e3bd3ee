"""GenEval-format metadata: validate, read and write `evaluation_metadata.jsonl` and `generation_prompts.txt`.

A row is `{"tag", "include", ["exclude"], "prompt"}`; an include item is `{"class", "count", ["color"],
["position"], ["region"], ["size"]}` (GenEval's fields plus GenEval++'s `region` and `size`); an exclude item
is `{"class", "count"}`. Unknown keys are errors: a misspelt `colour` would otherwise be silently ignored by
the evaluator and turn a colour test into a plain detection test.

Files are written the way GenEval's official generator writes them (`json.dumps(row)` with default separators,
keys in insertion order, one row per line), so a written file can be diffed against the official one.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

POSITION_RELATIONS = ("left of", "right of", "above", "below")  # GenEval: relative to an earlier object
REGIONS = ("left", "right", "above", "below")  # GenEval++: half of the image the object must lie in
SIZES = ("larger", "smaller")  # GenEval++: relative area of the two objects

ROW_KEYS = ("tag", "include", "exclude", "prompt")
INCLUDE_KEYS = ("class", "count", "color", "position", "region", "size")
EXCLUDE_KEYS = ("class", "count")

_DEFAULT_HINT = "see the row format in gvu/eval/metadata.py"


class MetadataError(ValueError):
    """A metadata row or file that GenEval's evaluator would misread.

    `validate_row` raises it without a location; readers and writers fill `path` and `line` (1-based) with
    `at()`. All four fields are positional so the exception pickles (multiprocessing, pytest-xdist).
    """

    def __init__(self, reason: str, path: str | os.PathLike | None = None, line: int | None = None,
                 hint: str = _DEFAULT_HINT):
        super().__init__(reason, path, line, hint)
        self.reason = reason
        self.path = None if path is None else str(path)
        self.line = line
        self.hint = hint

    def at(self, path: str | os.PathLike | None, line: int | None) -> MetadataError:
        return MetadataError(self.reason, path, line, self.hint)

    def __str__(self) -> str:
        where = self.path if self.path is not None else "<row>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.reason} ({self.hint})"


def _known(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))


def _check_keys(obj: Mapping, allowed: tuple[str, ...], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise MetadataError(f"unknown key {key!r} in {where}", hint=f"allowed keys: {', '.join(allowed)}")


def _check_class(item: Mapping, where: str, classes: set[str] | None) -> None:
    if "class" not in item:
        raise MetadataError(f"{where} has no 'class'", hint="every object needs a class name")
    name = item["class"]
    if not isinstance(name, str) or not name:
        raise MetadataError(f"{where}.class must be a non-empty string, got {name!r}", hint="use a class name")
    if classes is not None and name not in classes:
        raise MetadataError(f"unknown class {name!r} in {where}", hint=f"known: {_known(classes)}")


def _check_count(item: Mapping, where: str) -> None:
    if "count" not in item:
        raise MetadataError(f"{where} has no 'count'", hint="give the number of objects, 1 for a single one")
    count = item["count"]
    # bool is an int subclass; `true` in JSON is a typo, not a count.
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise MetadataError(f"{where}.count must be an integer >= 1, got {count!r}",
                            hint="exclude rules use count+1 ('at most count'), never 0")


def _check_choice(item: Mapping, key: str, allowed: tuple[str, ...] | set[str], where: str) -> None:
    value = item[key]
    if not isinstance(value, str) or value not in allowed:
        raise MetadataError(f"unknown {key} {value!r} in {where}", hint=f"known: {_known(allowed)}")


def _check_object(item: Any, where: str, keys: tuple[str, ...], classes: set[str] | None) -> None:
    """What include and exclude items share: an object of known keys, a known class and a valid count."""
    if not isinstance(item, Mapping):
        raise MetadataError(f"{where} must be an object, got {type(item).__name__}", hint="use {\"class\", \"count\"}")
    _check_keys(item, keys, where)
    _check_class(item, where, classes)
    _check_count(item, where)


def _check_include(item: Any, i: int, classes: set[str] | None, colors: set[str] | None) -> None:
    where = f"include[{i}]"
    _check_object(item, where, INCLUDE_KEYS, classes)
    if "color" in item:
        color = item["color"]
        if not isinstance(color, str) or not color:
            raise MetadataError(f"{where}.color must be a non-empty string, got {color!r}", hint="use a color name")
        if colors is not None and color not in colors:
            raise MetadataError(f"unknown color {color!r} in {where}", hint=f"known: {_known(colors)}")
    if "position" in item:
        # The official generator builds a tuple; JSON gives a list. Both mean [relation, index].
        pos = item["position"]
        if not isinstance(pos, (list, tuple)) or len(pos) != 2:
            raise MetadataError(f"{where}.position must be [relation, index], got {pos!r}",
                                hint='e.g. ["left of", 0]')
        relation, ref = pos
        if relation not in POSITION_RELATIONS:
            raise MetadataError(f"unknown relation {relation!r} in {where}.position",
                                hint=f"known: {', '.join(POSITION_RELATIONS)}")
        # Only earlier items: GenEval checks objects in order and looks the anchor up among those already
        # matched, so a forward or self reference can never be satisfied.
        if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < i:
            raise MetadataError(f"{where}.position index {ref!r} must point to an earlier item",
                                hint=f"use an index in 0..{i - 1}" if i else "put the anchor object first")
    if "region" in item:
        _check_choice(item, "region", REGIONS, where)
    if "size" in item:
        _check_choice(item, "size", SIZES, where)


def _check_exclude(item: Any, i: int, classes: set[str] | None) -> None:
    _check_object(item, f"exclude[{i}]", EXCLUDE_KEYS, classes)


def validate_row(row: Any, *, classes: set[str] | None = None, colors: set[str] | None = None) -> None:
    """Raise MetadataError (without path/line) if `row` is not a valid GenEval/GenEval++ row.

    `classes` / `colors`, when given, restrict the vocabulary (e.g. the 80 COCO names or the shapes world).
    """
    if not isinstance(row, Mapping):
        raise MetadataError(f"row must be a JSON object, got {type(row).__name__}", hint="one object per line")
    _check_keys(row, ROW_KEYS, "row")
    for key in ("tag", "include", "prompt"):
        if key not in row:
            raise MetadataError(f"row has no {key!r}", hint="a row needs tag, include and prompt")
    if not isinstance(row["tag"], str) or not row["tag"]:
        raise MetadataError(f"tag must be a non-empty string, got {row['tag']!r}", hint="e.g. 'two_object'")
    prompt = row["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise MetadataError(f"prompt must be a non-empty string, got {prompt!r}", hint="give the generation prompt")
    if "\n" in prompt or "\r" in prompt:
        raise MetadataError("prompt contains a line break",
                            hint="generation_prompts.txt holds one prompt per line; use spaces")
    include = row["include"]
    if not isinstance(include, list) or not include:
        raise MetadataError("include must be a non-empty list", hint="list at least one object the image must show")
    for i, item in enumerate(include):
        _check_include(item, i, classes, colors)
    if "exclude" in row:
        exclude = row["exclude"]
        if not isinstance(exclude, list):
            raise MetadataError(f"exclude must be a list, got {type(exclude).__name__}", hint="or leave it out")
        for i, item in enumerate(exclude):
            _check_exclude(item, i, classes)


def read_metadata(path: str | os.PathLike, *, classes: set[str] | None = None,
                  colors: set[str] | None = None) -> list[dict]:
    """Read and validate a GenEval metadata JSONL file; blank lines are skipped, an empty file is an error."""
    rows = []
    with open(path, encoding="utf-8") as fp:
        for line_no, line in enumerate(fp, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise MetadataError(f"malformed JSON: {err.msg} at column {err.colno}", path, line_no,
                                    "each line must be one complete JSON object") from None
            try:
                validate_row(row, classes=classes, colors=colors)
            except MetadataError as err:
                raise err.at(path, line_no) from None
            rows.append(row)
    if not rows:
        raise MetadataError("file has no rows", path, None, "write at least one JSON object per line")
    return rows


def _validate_all(path: str | os.PathLike, rows: list, classes: set[str] | None, colors: set[str] | None) -> None:
    if not rows:
        raise MetadataError("no rows to write", path, None, "pass at least one row")
    for i, row in enumerate(rows):
        try:
            validate_row(row, classes=classes, colors=colors)
        except MetadataError as err:
            raise err.at(path, i + 1) from None  # the line the row would have been written at


def write_metadata(path: str | os.PathLike, rows: Iterable[Mapping], *, classes: set[str] | None = None,
                   colors: set[str] | None = None) -> None:
    """Validate every row, then write them atomically in GenEval's exact serialisation."""
    rows = list(rows)
    _validate_all(path, rows, classes, colors)
    # Defaults on purpose (", " / ": " separators, ASCII escapes, no sorting): that is what the official
    # generator's `print(json.dumps(sample))` produces, so our files diff cleanly against theirs.
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_prompts(path: str | os.PathLike, rows: Iterable[Mapping]) -> None:
    """Write `generation_prompts.txt` (one prompt per line, same order as the metadata) atomically."""
    rows = list(rows)
    _validate_all(path, rows, None, None)
    atomic_write_text(path, "".join(row["prompt"] + "\n" for row in rows))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a half-written one.

    The temp file lives in the target's folder because os.replace is only atomic within one filesystem.
    Parent folders are created, as the official generator does with os.makedirs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain exclusive open rather than tempfile.mkstemp: mkstemp makes the file 0600, and os.replace would
    # carry that onto the result; open() honours the umask like any other written file.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fp = open(tmp, "xb")  # outside the try: if this fails there is nothing of ours to clean up
    try:
        with fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text, newlines written as given ("\\n" stays "\\n" on every OS)."""
    atomic_write_bytes(path, text.encode("utf-8"))
