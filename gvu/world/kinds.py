"""The kinds of prompt the worlds draw (GenEval's six, GenEval++'s seven, and one more for training sets) and how
one prompt's metadata row of a kind is drawn, given a world's classes and lexicon. Prompt sets are built from these
in gvu.eval.prompts; descriptions (gvu.world.describe) and pretraining draw from them too."""

from __future__ import annotations

import copy
import json

import numpy as np

from gvu.world import spec
from gvu.world.grammar import Lexicon, render_prompt

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


def tag_weights(kind_weights: dict[str, float]) -> dict[str, float]:
    """A mix of kinds as a mix of the tags their rows carry (two kinds can share one: color_attr and
    color_attr_pp), each tag weighing the sum of its kinds'."""
    out: dict[str, float] = {}
    for kind, w in kind_weights.items():
        out[KIND_TAG[kind]] = out.get(KIND_TAG[kind], 0.0) + float(w)
    return out


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
    """Identity of a prompt's metadata ignoring object order: what 'the same prompt' means inside one benchmark
    (GenEval++'s draw keeps distinct ones). Two wordings of one scene have different keys; `scene_key` is the
    identity that keeps test scenes out of training sets."""
    inc = row["include"]

    def item(it: dict) -> str:
        d = {k: v for k, v in it.items() if k != "position"}
        if "position" in it:
            d["position"] = [it["position"][0], json.dumps(inc[it["position"][1]], sort_keys=True)]
        return json.dumps(d, sort_keys=True)

    return json.dumps([row["tag"], sorted(item(it) for it in inc),
                       sorted(json.dumps(e, sort_keys=True) for e in row.get("exclude", []))])


def check_weights(weights: dict, name: str = "prompt weights") -> None:
    """A training mix is valid when it names known kinds only, with numbers >= 0 and at least one > 0."""
    unknown = sorted(set(weights) - set(TRAIN_KINDS))
    if unknown:
        raise ValueError(f"{name}: unknown kind(s) {unknown}; known: {', '.join(TRAIN_KINDS)}")
    numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights.values())
    if not numbers or not all(w >= 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"{name} must be >= 0 with at least one > 0, got {weights}")


# A relation read in one direction: "B right of A" is "A left of B", "B below A" is "A above B".
_ONE_DIRECTION = {"left of": ("left of", False), "right of": ("left of", True),
                  "above": ("above", False), "below": ("above", True)}


def scene_key(row: dict) -> str:
    """Identity of the scene a prompt describes, whatever its wording, object order or tag: the objects (each with
    its count, colour, size and region) and each relation read in one direction. So "a hexagon below a cross" is
    the scene of "a cross above a hexagon", and "one square and one cross" (multi_object_count_attr) the scene of
    "a cross and a square" (two_object). `exclude` is left out: it follows from the tag (counting's "exactly")."""
    inc = row["include"]

    def obj(it: dict) -> str:
        return json.dumps({k: v for k, v in it.items() if k != "position"}, sort_keys=True)

    relations = []
    for it in inc:
        if "position" in it:
            rel, other = it["position"][0], it["position"][1]
            if rel not in _ONE_DIRECTION:
                raise ValueError(f"unknown relation {rel!r} in {row.get('prompt', row)!r}; known: "
                                 f"{', '.join(_ONE_DIRECTION)}")
            canon, flip = _ONE_DIRECTION[rel]
            a, b = obj(it), obj(inc[other])
            relations.append(json.dumps([b, canon, a] if flip else [a, canon, b]))
    return json.dumps([sorted(obj(it) for it in inc), sorted(relations)])


def swap_colours(row: dict, rng: np.random.Generator | None = None) -> dict | None:
    """The binding negative of a row: the colours of two of its objects swapped ("a red circle and a blue square"
    -> "a blue circle and a red square"), its prompt rendered again; the pair drawn by `rng` where there are
    several (the first pair without one). None where no two objects carry different colours, or where the swap
    describes the same scene ("a red square and a blue square"). The same words in another order: only a reader
    that binds each colour to its shape can tell the two apart."""
    inc = row["include"]
    pairs = [(a, b) for a in range(len(inc)) for b in range(a + 1, len(inc))
             if "color" in inc[a] and "color" in inc[b] and inc[a]["color"] != inc[b]["color"]]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))] if rng is not None else pairs[0]
    neg = copy.deepcopy(row)
    neg["include"][a]["color"], neg["include"][b]["color"] = inc[b]["color"], inc[a]["color"]
    if scene_key(neg) == scene_key(row):
        return None
    neg["prompt"] = render_prompt(neg)
    return neg
