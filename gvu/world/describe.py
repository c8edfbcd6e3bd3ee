"""True descriptions of a scene, in the prompt grammar: what the understanding branch is taught to say.

`describe(objs, rng)` picks one of the thirteen prompt kinds that the scene can support and fills it with the
scene's facts, about all of its classes (a full description) or a few (a partial one). Every description is
checked by the judge in strict mode before it is returned, so "true" means what the evaluator means.
"""

from __future__ import annotations

import numpy as np

from gvu.world.grammar import GrammarError, render_prompt, SHAPES_LEXICON
from gvu.world.judge import evaluate, in_region, relative_position
from gvu.world.kinds import KIND_TAG, KINDS
from gvu.world.scene import Obj, scene_detections



def _facts(objs: list[Obj]):
    dets = scene_detections(objs)
    by_cls = dets.objects
    single = [c for c, ds in by_cls.items() if len(ds) == 1]
    return dets, by_cls, single


def _regions_of(ds) -> list[str]:
    return [r for r in ("left", "right", "above", "below") if all(in_region(d, r) for d in ds)]


def _candidates(kind: str, objs: list[Obj], rng: np.random.Generator) -> list[dict] | None:
    dets, by_cls, single = _facts(objs)
    classes = list(by_cls)
    rng.shuffle(classes)
    single = [c for c in classes if c in single]

    def take(pool: list[str], lo: int, hi: int) -> list[str] | None:
        if len(pool) < lo:
            return None
        k = int(rng.integers(lo, min(hi, len(pool)) + 1))
        return pool[:k]

    if kind == "single_object":
        cs = take(single, 1, 1)
        return cs and [{"class": cs[0], "count": 1}]
    if kind == "colors":
        cs = take(single, 1, 1)
        return cs and [{"class": cs[0], "count": 1, "color": by_cls[cs[0]][0].color}]
    if kind in ("counting", "counting_pp"):
        lo, hi = (2, 4) if kind == "counting" else (4, 9)
        pool = [c for c in classes if lo <= len(by_cls[c]) <= hi]
        return pool and [{"class": pool[0], "count": len(by_cls[pool[0]])}]
    if kind == "two_object":
        cs = take(single, 2, 2)
        return cs and [{"class": c, "count": 1} for c in cs]
    if kind in ("color_attr", "color_attr_pp"):
        cs = take(single, 2, 2) if kind == "color_attr" else take(single, 3, 4)
        return cs and [{"class": c, "count": 1, "color": by_cls[c][0].color} for c in cs]
    if kind == "position":
        return _position_pair(single, by_cls)
    if kind == "multi_object_count_attr":
        cs = take(classes, 2, 3)
        return cs and [{"class": c, "count": len(by_cls[c])} for c in cs]
    if kind == "color_count_attr":
        pool = [c for c in classes if len({d.color for d in by_cls[c]}) == 1]
        cs = take(pool, 2, 2)
        return cs and [{"class": c, "count": len(by_cls[c]), "color": by_cls[c][0].color} for c in cs]
    if kind == "spatial_count_attr":
        pool = [c for c in classes if _regions_of(by_cls[c])]
        cs = take(pool, 2, 2)
        return cs and [{"class": c, "count": len(by_cls[c]),
                        "region": str(rng.choice(_regions_of(by_cls[c])))} for c in cs]
    if kind == "color_spatial_attr":
        pool = [c for c in single if _regions_of(by_cls[c])]
        cs = take(pool, 2, 2)
        return cs and [{"class": c, "count": 1, "color": by_cls[c][0].color,
                        "region": str(rng.choice(_regions_of(by_cls[c])))} for c in cs]
    if kind == "size_spatial_attr":
        return _size_pair(single, by_cls, rng)
    raise ValueError(f"unknown prompt kind {kind!r}")


def _position_pair(single: list[str], by_cls: dict) -> list[dict] | None:
    """Two single objects in exactly one clear relative position (still true with GenEval's wider threshold)."""
    for i, a in enumerate(single):
        for b in single[i + 1:]:
            rels = relative_position(by_cls[a][0], by_cls[b][0])
            if len(rels) == 1 and rels <= relative_position(by_cls[a][0], by_cls[b][0], threshold=0.2):
                rel = next(iter(rels))
                return [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]
    return None


def _size_pair(single: list[str], by_cls: dict, rng: np.random.Generator) -> list[dict] | None:
    """A large and a small single object, each in a region it lies in."""
    large = [c for c in single if by_cls[c][0].size == "large" and _regions_of(by_cls[c])]
    small = [c for c in single if by_cls[c][0].size == "small" and _regions_of(by_cls[c])]
    if not large or not small:
        return None
    return [{"class": c, "count": 1, "size": size, "region": str(rng.choice(_regions_of(by_cls[c])))}
            for c, size in ((large[0], "larger"), (small[0], "smaller"))]


def weighted_order(kinds: tuple[str, ...], rng: np.random.Generator,
                   weights: dict[str, float] | None = None) -> list[str]:
    """The kinds in a random order where a kind of weight w comes first with probability w / sum (a weighted
    draw without replacement); no weights: uniformly shuffled, as `rng.shuffle` does."""
    order = list(kinds)
    if not weights:
        rng.shuffle(order)
        return order
    w = np.array([float(weights.get(k, 0.0)) for k in order])
    keys = np.where(w > 0, np.log(np.maximum(w, 1e-300)) - np.log(-np.log(rng.random(len(order)))), -np.inf)
    return [order[i] for i in np.argsort(-keys, kind="stable") if np.isfinite(keys[i])]


def describe(objs: list[Obj], rng: np.random.Generator, kinds: tuple[str, ...] = KINDS,
             weights: dict[str, float] | None = None) -> dict | None:
    """A random true description (a metadata row with its prompt) of a scene, or None if none of the kinds fit.
    `weights` (kind -> relative weight, missing kinds never used) sets how often each kind is tried first: the
    pretraining mix of what the understanding branch is taught to say."""
    if not objs:
        return None
    order = weighted_order(kinds, rng, weights)
    dets = scene_detections(objs)
    for kind in order:
        include = _candidates(kind, objs, rng)
        if not include:
            continue
        row = {"tag": KIND_TAG[kind], "include": include}
        if row["tag"] == "counting":
            row["exclude"] = [{"class": include[0]["class"], "count": include[0]["count"] + 1}]
        try:
            row["prompt"] = render_prompt(row, SHAPES_LEXICON)
        except GrammarError:  # a count with no number word (10 or more of a class): not sayable
            continue
        if evaluate(dets, row, "strict").correct:
            return row
    return None



