"""Prompt-set builders: GenEval (exact for COCO), GenEval++-style, and training sets without test overlap.

Each builder works for two worlds: `coco` (GenEval's 80 class names and its English quirks) and `shapes` (the
eight shapes and correct English). GenEval-shapes reuses GenEval's own draw order over the eight shapes, so it
inherits GenEval's task mix and duplicate rule; with only eight classes some tasks have few distinct prompts
(eight single objects, 24 counting prompts), which is the world's size, not a bug.

GenEval++ publishes its prompt file but no generator; `build_genevalpp` draws prompts of its seven tags with
the same structure as the published file (3-4 coloured objects, counts 4-7, opposite regions, counts 1-3, a
larger and a smaller object), `n` distinct prompts per tag where the world has that many.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from gvu.bench.coco import build_geneval_coco, load_coco_classes
from gvu.world import spec
from gvu.world.grammar import SHAPES_LEXICON, Lexicon, coco_lexicon, render_prompt

WORLDS = ("shapes", "coco")
# The thirteen kinds of prompt: GenEval's six, then GenEval++'s seven. Two GenEval++ kinds share a tag name
# with GenEval's (counting, color_attr) and differ in their numbers, so kinds are named apart here.
GENEVAL_KINDS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVALPP_KINDS = ("color_attr_pp", "counting_pp", "spatial_count_attr", "color_spatial_attr",
                   "color_count_attr", "multi_object_count_attr", "size_spatial_attr")
KINDS = GENEVAL_KINDS + GENEVALPP_KINDS
# Kinds only the training set draws. GenEval's counting prompts (2-4 of one shape) and GenEval++'s (4-7) are all
# test prompts in the shapes world, so without these a training set holds no prompt that counts one shape;
# "a photo of four red circles" (2-7 of one coloured shape) is in neither test set. Its tag is the one the grammar
# reads back from the text: counting (exactly that many, GenEval's exclude rule).
TRAIN_KINDS = KINDS + ("color_counting",)
KIND_TAG = {k: k.removesuffix("_pp") for k in KINDS} | {"color_counting": "counting"}
_OPPOSITE = (("left", "right"), ("above", "below"))


def world_classes(world: str) -> list[str]:
    if world == "shapes":
        return list(spec.SHAPES)
    if world == "coco":
        return load_coco_classes()
    raise ValueError(f"unknown world {world!r}; use one of {WORLDS}")


def world_lexicon(world: str) -> Lexicon:
    return SHAPES_LEXICON if world == "shapes" else coco_lexicon(world_classes(world))


def _row(kind: str, include: list[dict], lex: Lexicon) -> dict:
    row: dict = {"tag": KIND_TAG[kind], "include": include}
    if row["tag"] == "counting":
        row["exclude"] = [{"class": include[0]["class"], "count": include[0]["count"] + 1}]
    row["prompt"] = render_prompt(row, lex)
    return row


def draw(kind: str, rng: np.random.Generator, classes: list[str], lex: Lexicon) -> dict:
    """One random metadata row of a kind."""
    def pick(k: int) -> list[str]:
        return [classes[i] for i in rng.choice(len(classes), k, replace=False)]

    def colors(k: int) -> list[str]:
        return [spec.COLORS[i] for i in rng.choice(len(spec.COLORS), k, replace=False)]

    def regions() -> tuple[str, str]:
        a, b = _OPPOSITE[rng.integers(2)]
        return (a, b) if rng.random() < 0.5 else (b, a)

    def counts(k: int) -> list[int]:
        return [int(c) for c in rng.integers(1, 3, size=k, endpoint=True)]

    if kind == "single_object":
        inc = [{"class": pick(1)[0], "count": 1}]
    elif kind == "two_object":
        inc = [{"class": c, "count": 1} for c in pick(2)]
    elif kind in ("counting", "counting_pp"):
        lo, hi = (2, 4) if kind == "counting" else (4, 7)
        inc = [{"class": pick(1)[0], "count": int(rng.integers(lo, hi, endpoint=True))}]
    elif kind == "color_counting":
        inc = [{"class": pick(1)[0], "count": int(rng.integers(2, 7, endpoint=True)), "color": colors(1)[0]}]
    elif kind == "colors":
        inc = [{"class": pick(1)[0], "count": 1, "color": colors(1)[0]}]
    elif kind == "position":
        a, b = pick(2)
        rel = spec.RELATIONS[rng.integers(4)]
        inc = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]
    elif kind in ("color_attr", "color_attr_pp"):
        k = 2 if kind == "color_attr" else int(rng.integers(3, 4, endpoint=True))
        inc = [{"class": c, "count": 1, "color": col} for c, col in zip(pick(k), colors(k))]
    elif kind == "spatial_count_attr":
        inc = [{"class": c, "count": n, "region": r} for c, n, r in zip(pick(2), counts(2), regions())]
    elif kind == "color_spatial_attr":
        inc = [{"class": c, "count": 1, "color": col, "region": r}
               for c, col, r in zip(pick(2), colors(2), regions())]
    elif kind == "color_count_attr":
        inc = [{"class": c, "count": n, "color": col} for c, n, col in zip(pick(2), counts(2), colors(2))]
    elif kind == "multi_object_count_attr":
        k = int(rng.integers(2, 3, endpoint=True))
        inc = [{"class": c, "count": n} for c, n in zip(pick(k), counts(k))]
    elif kind == "size_spatial_attr":
        inc = [{"class": c, "count": 1, "size": s, "region": r}
               for c, s, r in zip(pick(2), ("larger", "smaller"), regions())]
    else:
        raise ValueError(f"unknown prompt kind {kind!r}; known: {', '.join(TRAIN_KINDS)}")
    return _row(kind, inc, lex)


def prompt_key(row: dict) -> str:
    """Identity of a prompt ignoring object order: what 'the same prompt' means for test overlap."""
    inc = row["include"]

    def item(it: dict) -> str:
        d = {k: v for k, v in it.items() if k != "position"}
        if "position" in it:
            d["position"] = [it["position"][0], json.dumps(inc[it["position"][1]], sort_keys=True)]
        return json.dumps(d, sort_keys=True)

    return json.dumps([row["tag"], sorted(item(it) for it in inc),
                       sorted(json.dumps(e, sort_keys=True) for e in row.get("exclude", []))])


def build_geneval(world: str = "shapes", seed: int = 43, n: int = 100) -> list[dict]:
    rows = build_geneval_coco(seed=seed, n=n, classes=world_classes(world))
    if world == "shapes":  # same draws, correct English
        for r in rows:
            r["prompt"] = render_prompt(r, SHAPES_LEXICON)
    return rows


def build_genevalpp(world: str = "shapes", seed: int = 0, n: int = 40, max_tries: int = 2000) -> list[dict]:
    classes, lex = world_classes(world), world_lexicon(world)
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for kind in GENEVALPP_KINDS:
        seen: set[str] = set()
        for _ in range(max_tries):  # the world may have fewer than n distinct prompts of a kind
            if len(seen) == n:
                break
            row = draw(kind, rng, classes, lex)
            if prompt_key(row) not in seen:
                seen.add(prompt_key(row))
                rows.append(row)
    return rows


def test_keys(world: str) -> set[str]:
    """Keys of the default GenEval and GenEval++ test prompts of a world."""
    return {prompt_key(r) for r in build_geneval(world) + build_genevalpp(world)}


def check_weights(weights: dict, name: str = "prompt weights") -> None:
    """A training mix is valid when it names known kinds only, with numbers >= 0 and at least one > 0."""
    unknown = sorted(set(weights) - set(TRAIN_KINDS))
    if unknown:
        raise ValueError(f"{name}: unknown kind(s) {unknown}; known: {', '.join(TRAIN_KINDS)}")
    numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights.values())
    if not numbers or not all(w >= 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"{name} must be >= 0 with at least one > 0, got {weights}")


def build_train(world: str = "shapes", seed: int = 0, n: int = 50_000, weights: dict[str, float] | None = None,
                exclude_keys: set[str] | None = None, progress: Callable[[int], None] | None = None) -> list[dict]:
    """A weighted mix of prompt kinds (`weights`: kind -> relative weight; default: the thirteen test kinds
    equally), with no prompt that matches a test prompt (ignoring object order).

    Kinds whose every prompt is a test prompt (in the shapes world: single objects, two objects, counting)
    run dry and are dropped from the mix; prompts may repeat, since the world is finite.
    """
    classes, lex = world_classes(world), world_lexicon(world)
    weights = dict(weights or {k: 1.0 for k in KINDS})
    check_weights(weights)
    exclude_keys = test_keys(world) if exclude_keys is None else exclude_keys
    rng = np.random.default_rng(seed)
    misses = {k: 0 for k in weights}
    rows: list[dict] = []
    while len(rows) < n:
        live = [k for k, w in weights.items() if w > 0 and misses[k] < 500]
        if not live:
            raise ValueError("every prompt kind in the mix is covered by the test sets")
        p = np.array([weights[k] for k in live], dtype=float)
        kind = live[rng.choice(len(live), p=p / p.sum())]
        row = draw(kind, rng, classes, lex)
        if prompt_key(row) in exclude_keys:
            misses[kind] += 1
            continue
        misses[kind] = 0
        rows.append(row)
        if progress is not None:
            progress(len(rows))
    return rows
