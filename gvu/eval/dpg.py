"""DPG-Bench (ELLA's dense prompt graph benchmark, `dpg_bench/` of TencentQQGYLab/ELLA): its prompt files, its
question file, its image layout and its scoring rules.

Files. The 1,065 prompts ship in `gvu/eval/data/dpg/prompts/` as published (`<item_id>.txt`, Apache-2.0, LICENSE
beside them). The question file `dpg_bench.csv` does not ship (no copy could be had); `read_questions` reads the
user's copy and refuses one that lacks a column, naming it. Its columns: item_id, text, keywords, proposition_id,
dependency (the parent proposition ids, comma-separated, 0 for none), category_broad, category_detailed, tuple
("attribute - color (cabbage, green)") and question_natural_language.

Layout. One PNG per prompt, `<item_id>.png`, a 2x2 grid of four samples (top-left, top-right, bottom-left,
bottom-right), each `resolution` pixels square: what its `compute_dpg_bench.py --resolution R --pic-num 4` crops.

Rules (`score_item`, `summarise`, `score_folder`), as `compute_dpg_bench.py` (commit 3c228f1) computes them: a VQA
model answers every question of a prompt on every crop; a question scores 1 when the answer is exactly "yes"; a
question with a parent scored 0 is set to 0 (one pass in the file's order, so a zeroed parent zeroes the children
that come after it); a crop's score is the mean over its questions, an image's the mean over its crops, the
benchmark's the mean over images (the script prints x100). The categories come from the tuple, not from the
category columns: the detailed one is the tuple before its "(", the L1 one its first word. Three quirks, kept in
`OFFICIAL` and documented:

- the loader skips the file's first data row (its loop over the rows starts with `if i == 0: continue`), so the
  first prompt loses its first question, and an image of it whose questions name that one as a parent fails (a
  parent that is not there: the script catches the error, prints the file name and leaves the image out);
- the category scores use the answers before the parent rule, the overall score after it;
- the category scores read the last crop only (the answers of the earlier crops are overwritten before they are
  counted): with `--pic-num 4`, the bottom-right sample.

`SHAPES` (DPG-shapes, gvu.eval.dpg_shapes) keeps the rules and drops the file quirks: every row read, the
categories from every sample, still before the parent rule, so its categories mean what the paper's table means.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from gvu.eval.layout import load_image
from gvu.eval.metadata import atomic_write_bytes, atomic_write_text, MetadataError
from gvu.world.dense import Question

CSV_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
               "tuple", "question_natural_language")
L1_CATEGORIES = ("entity", "attribute", "relation", "global", "other")
PROMPTS_DIR = Path(__file__).resolve().parent / "data" / "dpg" / "prompts"
PUBLISHED_PROMPTS = 1065
PROMPTS_SHA256 = "a56a07afb10eeffdf86b3f33e26467cfd9497eda84905839af7d13a09d940eff"
"""prompts_checksum of the published prompt files (ELLA commit 3c228f1dc6c4d3cad0a47493816151a419f14db3)."""
YES = "yes"


@dataclass(frozen=True)
class Rules:
    skip_first_row: bool
    """Drop the question file's first data row, as the official loader does."""
    category_crops: str
    """Which crops' answers the category scores count: 'last' (the official script) or 'all'."""


OFFICIAL = Rules(skip_first_row=True, category_crops="last")
SHAPES = Rules(skip_first_row=False, category_crops="all")


class MissingParent(KeyError):
    """A question names a parent the prompt does not have (the official script leaves such an image out)."""


@dataclass(frozen=True)
class Item:
    text: str
    questions: tuple[Question, ...]


# ------------------------------------------------------------------------------------------- the question file

def read_questions(path: str | os.PathLike, rules: Rules = SHAPES) -> dict[str, Item]:
    """DPG-Bench's question file, by item id in file order; a missing column, a proposition id or a dependency that
    is not a whole number is refused with the file and line. Rows of one item are grouped while consecutive: a
    later run of the same id replaces the earlier one, as the official loader does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such question file (DPG-Bench's dpg_bench/dpg_bench.csv)")
    with open(path, encoding="utf-8-sig", newline="") as fp:  # a BOM, if any, is not part of a name
        reader = csv.DictReader(fp)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MetadataError(f"the question file has no column {', '.join(repr(c) for c in missing)} (its header: "
                                f"{', '.join(reader.fieldnames or [])})", path, 1,
                                f"DPG-Bench's dpg_bench.csv has the columns {', '.join(CSV_COLUMNS)}")
        items: dict[str, tuple[str, dict[int, Question]]] = {}
        previous = None
        for k, row in enumerate(reader):
            if k == 0 and rules.skip_first_row:
                continue
            q = _question(row, path, reader.line_num)
            if row["item_id"] != previous:
                items[row["item_id"]] = (row["text"], {})
            items[row["item_id"]][1][q.qid] = q  # by id: a repeated id keeps its place and takes the later row
            previous = row["item_id"]
    if not items:
        raise MetadataError("the question file has no questions", path, None, "give DPG-Bench's dpg_bench.csv")
    return {i: Item(text, tuple(qs.values())) for i, (text, qs) in items.items()}


def _question(row: dict, path: Path, line: int) -> Question:
    try:
        qid = int(row["proposition_id"])
        parents = tuple(int(d.strip()) for d in row["dependency"].split(","))
    except (ValueError, AttributeError):
        raise MetadataError(f"proposition_id {row['proposition_id']!r} and dependency {row['dependency']!r} must be "
                            "whole numbers (dependency: comma-separated, 0 for none)", path, line,
                            "keep DPG-Bench's question file as published") from None
    return Question(qid, row["tuple"], tuple(p for p in parents if p != 0), row["question_natural_language"])


def write_questions(path: str | os.PathLike, items: dict[str, Item]) -> None:
    """A question file in DPG-Bench's columns (keywords left empty: its scoring never reads them)."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for item_id, item in items.items():
        for q in item.questions:
            broad, _, detail = q.category.partition("-")
            w.writerow([item_id, item.text, "", q.qid, ",".join(map(str, q.parents)) or "0", broad.strip(),
                        detail.strip(), q.proposition, q.text])
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------- the rules

def parent_rule(qs: tuple[Question, ...] | list[Question], raw: dict[int, float]) -> dict[int, float]:
    """The scores after DPG's parent rule: in the questions' order, one whose parent is already 0 is set to 0."""
    scores = dict(raw)
    for q in qs:
        for p in q.parents:
            if p not in scores:
                raise MissingParent(f"question {q.qid} ({q.proposition}) depends on question {p}, which this prompt "
                                    "does not have")
            if scores[p] == 0:
                scores[q.qid] = 0.0
                break
    return scores


def score_item(qs: tuple[Question, ...] | list[Question], crops: list[dict[int, bool]], rules: Rules = SHAPES
               ) -> tuple[float, dict[str, list[float]]]:
    """One prompt's score from its crops' (samples') raw answers, and the raw answers each category counts."""
    scores, by_category = [], defaultdict(list)
    for k, answers in enumerate(crops):
        raw = {q.qid: float(answers[q.qid]) for q in qs}
        after = parent_rule(qs, raw)
        scores.append(sum(after.values()) / len(after))
        if rules.category_crops == "all" or k == len(crops) - 1:
            for q in qs:
                by_category[q.category].append(raw[q.qid])
    return sum(scores) / len(scores), by_category


def summarise(item_scores: list[float], by_category: dict[str, list[float]]) -> dict:
    """The benchmark: the mean over prompts, the L1 categories (pooled over their questions) and the detailed ones;
    fractions (DPG-Bench prints them x100). A category no question asks is None."""
    l1: dict[str, list[float]] = defaultdict(list)
    for cat, values in by_category.items():
        l1[cat.split("-")[0].strip()].extend(values)
    return {"overall": float(np.mean(item_scores)) if item_scores else None,
            "categories": {c: float(np.mean(l1[c])) if l1.get(c) else None for c in (*L1_CATEGORIES, *sorted(l1))},
            "detailed": {c: float(np.mean(v)) for c, v in sorted(by_category.items())},
            "answers": {c: len(l1[c]) for c in (*L1_CATEGORIES, *sorted(l1)) if l1.get(c)}}


# ------------------------------------------------------------------------------------- the prompts and layout

def published_prompts() -> dict[str, bytes]:
    """DPG-Bench's prompt files as published, by item id (the file name without .txt), in sorted order."""
    return {p.stem: p.read_bytes() for p in sorted(PROMPTS_DIR.glob("*.txt"), key=lambda p: p.stem)}


def prompts_checksum(prompts: dict[str, bytes]) -> str:
    """sha256 over every (item id, bytes) in item-id order: one number for the whole set of prompt files."""
    h = hashlib.sha256()
    for item_id in sorted(prompts):
        h.update(item_id.encode() + b"\0" + prompts[item_id] + b"\0")
    return h.hexdigest()


def write_prompt_files(folder: str | os.PathLike, prompts: dict[str, bytes | str]) -> None:
    """`<item_id>.txt` per prompt, bytes as given (DPG-Bench's own files end without a newline)."""
    for item_id, text in prompts.items():
        atomic_write_bytes(Path(folder) / f"{item_id}.txt", text.encode() if isinstance(text, str) else text)


def read_prompt_folder(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """(item id, prompt) of every `<item_id>.txt` in a DPG-Bench prompt folder, sorted by item id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such prompt folder (gvu prompts dpg --out DIR writes DIR/prompts)")
    files = sorted(folder.glob("*.txt"), key=lambda p: p.stem)
    if not files:
        raise ValueError(f"{folder} holds no prompt files (<item_id>.txt); gvu prompts dpg --out DIR writes them to "
                         "DIR/prompts")
    out = []
    for p in files:
        text = p.read_text(encoding="utf-8").strip()
        if "." in p.stem or not text:
            raise ValueError(f"{p}: " + ("an item id must hold no '.' (DPG-Bench's scorer cuts the image name at the "
                                         "first one)" if text else "the prompt is empty"))
        out.append((p.stem, " ".join(text.split())))
    return out


def grid_2x2(images: np.ndarray) -> np.ndarray:
    """Four uint8 [R, R, 3] samples as DPG-Bench's [2R, 2R, 3] grid, in the order its scorer crops them."""
    if len(images) != 4 or images[0].shape[0] != images[0].shape[1]:
        raise ValueError(f"DPG-Bench's layout takes four square samples per prompt, got {len(images)} of shape "
                         f"{tuple(images[0].shape)}")
    return np.concatenate([np.concatenate(list(images[:2]), axis=1), np.concatenate(list(images[2:]), axis=1)], axis=0)


def crops(image: np.ndarray, resolution: int, pic_num: int = 4) -> list[np.ndarray]:
    """The first `pic_num` of the grid's four `resolution`-pixel crops, in the scorer's order."""
    corners = [(0, 0), (resolution, 0), (0, resolution), (resolution, resolution)]  # (x, y)
    return [image[y:y + resolution, x:x + resolution] for x, y in corners[:pic_num]]


def score_folder(image_dir: str | os.PathLike, csv_path: str | os.PathLike,
                 answer: Callable[[np.ndarray, tuple[Question, ...]], list[str]], resolution: int, pic_num: int = 4,
                 rules: Rules = OFFICIAL) -> dict:
    """DPG-Bench's score of a folder of `<item_id>.png` grids with any answerer: `answer(crop, questions)` gives the
    answer text to each of a prompt's questions on one crop (a VQA model asks them one by one, the exact judge reads
    them together), "yes" scores 1. Returns `summarise`'s fields plus `images` (scored) and `failed` (file: why), the
    files the official script leaves out (no questions for it, a missing parent, not an image)."""
    items = read_questions(csv_path, rules)
    scores, by_category, failed = [], defaultdict(list), {}
    for name in sorted(os.listdir(image_dir)):
        item = items.get(name.split(".")[0])
        try:
            if item is None:
                raise KeyError(f"no questions for item {name.split('.')[0]!r}")
            image = load_image(Path(image_dir) / name)
            crop_answers = [{q.qid: a == YES for q, a in zip(item.questions, answer(c, item.questions), strict=True)}
                            for c in crops(image, resolution, pic_num)]
            score, cats = score_item(item.questions, crop_answers, rules)
        except (KeyError, ValueError) as err:
            failed[name] = str(err.args[0]) if err.args else repr(err)
            continue
        scores.append(score)
        for cat, values in cats.items():
            by_category[cat].extend(values)
    return {**summarise(scores, by_category), "images": len(scores), "failed": failed}


def copy_question_file(csv_path: str | os.PathLike, out: str | os.PathLike, item_ids: set[str]) -> dict[str, Item]:
    """Check the user's copy of DPG-Bench's question file (its columns, its numbers, items that have a prompt) and
    copy it byte for byte to `out`."""
    items = read_questions(csv_path)
    unknown = sorted(set(items) - item_ids)
    if unknown:
        raise MetadataError(f"{len(unknown)} item ids have no prompt file (first: {', '.join(unknown[:3])})",
                            csv_path, None, "give DPG-Bench's own dpg_bench.csv, whose items are its 1,065 prompts")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(csv_path, out)
    return items
