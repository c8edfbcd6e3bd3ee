"""Prompt-set builders: GenEval (exact for COCO), GenEval++-style, the validation set, and training sets that hold
no test or validation scene.

Each builder works for two worlds: `coco` (GenEval's 80 class names and its English quirks) and `shapes` (the
eight shapes and correct English). GenEval-shapes reuses GenEval's own draw order over the eight shapes, so it
inherits GenEval's task mix and duplicate rule; with only eight classes some tasks have few distinct prompts
(eight single objects, 24 counting prompts), which is the world's size, not a bug.

GenEval++ publishes its prompt file but no generator; `build_genevalpp` draws prompts of its seven tags with
the same structure as the published file (3-4 coloured objects, counts 4-7, opposite regions, counts 1-3, a
larger and a smaller object), `n` distinct prompts per tag where the world has that many.

Held out by scene, not by string (gvu.world.kinds.scene_key): "a hexagon below a cross" is the test scene "a cross
above a hexagon", so it is in no training set. The validation set (`build_val`) draws GenEval's and GenEval++'s
kinds from scenes in neither test set; training sets exclude both (docs/protocol.md).
"""

from __future__ import annotations

import copy
import functools
from typing import Callable

import numpy as np

from gvu.eval.coco import build_geneval_coco, load_coco_classes
from gvu.world import spec
from gvu.world.grammar import coco_lexicon, Lexicon, render_prompt, SHAPES_LEXICON
from gvu.world.kinds import check_weights, draw, GENEVAL_KINDS, GENEVALPP_KINDS, KINDS, prompt_key, scene_key

WORLDS = ("shapes", "coco")
def world_classes(world: str) -> list[str]:
    if world == "shapes":
        return list(spec.SHAPES)
    if world == "coco":
        return load_coco_classes()
    raise ValueError(f"unknown world {world!r}; use one of {WORLDS}")


def world_lexicon(world: str) -> Lexicon:
    return SHAPES_LEXICON if world == "shapes" else coco_lexicon(world_classes(world))


def spread(rows: list, limit: int | None) -> list:
    """`limit` rows spread evenly over the list, or all of them. Every tag keeps its share, and at least one row
    while `limit` is at least the number of tags (even spacing over the whole list skips small tags: 8 of
    GenEval-shapes' 319 rows missed `counting`, so its per-tag table and overall lost a tag)."""
    if not limit or limit >= len(rows):
        return rows
    by_tag: dict = {}
    for i, r in enumerate(rows):
        by_tag.setdefault(r.get("tag") if isinstance(r, dict) else None, []).append(i)
    if limit < len(by_tag):
        return [rows[int(i)] for i in np.linspace(0, len(rows) - 1, limit).round()]
    share = {t: limit * len(idx) / len(rows) for t, idx in by_tag.items()}
    take = {t: max(1, int(s)) for t, s in share.items()}
    while sum(take.values()) > limit:  # the minimum of one pushed the total over: trim the most over-served
        t = max((t for t in take if take[t] > 1), key=lambda t: take[t] - share[t])
        take[t] -= 1
    while sum(take.values()) < limit:  # largest remainders first
        t = max((t for t in take if take[t] < len(by_tag[t])), key=lambda t: share[t] - take[t])
        take[t] += 1
    keep = sorted(by_tag[t][int(j)] for t, idx in by_tag.items()
                  for j in np.linspace(0, len(idx) - 1, take[t]).round())
    return [rows[i] for i in keep]


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


@functools.lru_cache(maxsize=None)
def benchmark_scenes(world: str) -> frozenset[str]:
    """Scene keys of the default GenEval and GenEval++ test prompts of a world."""
    return frozenset(scene_key(r) for r in build_geneval(world) + build_genevalpp(world))


VAL_PROMPT_SEED = 7
"""Seeds the validation set's draw (the test sets use 43 and 0)."""
VAL_EVAL_SEED = 4321
"""The validation benchmark's evaluation seed: not the test benchmarks' 1234, so no choice is read from the draws
the test numbers use."""
VAL_BENCHMARKS = {"val_geneval": GENEVAL_KINDS, "val_genevalpp": GENEVALPP_KINDS}
"""The validation benchmarks: GenEval's kinds and GenEval++'s, each scored as its test benchmark is."""


def build_val(world: str = "shapes", kinds: tuple[str, ...] = KINDS, seed: int = VAL_PROMPT_SEED,
              n: int = 40) -> list[dict]:
    """The validation set: up to `n` prompts of each kind in `kinds`, each a distinct scene that no test prompt
    describes, in kind order.

    Where a kind has few scenes outside the test sets (the world is small), it takes at most half of those found,
    so training keeps the other half; a kind whose every scene is a test scene (shapes world: single objects,
    counting) has no validation prompts. The draw is fixed by `seed` and made over all kinds at once, so a subset
    of kinds is the same rows as in the whole set.
    """
    by_kind = _val_by_kind(world, seed, n)
    return [copy.deepcopy(r) for kind in kinds for r in by_kind[kind]]  # the cache's rows stay as drawn


@functools.lru_cache(maxsize=None)
def _val_by_kind(world: str, seed: int, n: int, tries: int = 4000) -> dict[str, tuple[dict, ...]]:
    classes, lex = world_classes(world), world_lexicon(world)
    held = benchmark_scenes(world)
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[dict, ...]] = {}
    for kind in KINDS:
        found: dict[str, dict] = {}
        for _ in range(tries):  # a kind with fewer than 2n free scenes is drawn out: about all of them are found
            if len(found) >= 2 * n:
                break
            row = draw(kind, rng, classes, lex)
            key = scene_key(row)
            if key not in held and key not in found:
                found[key] = row
        out[kind] = tuple(list(found.values())[:min(n, len(found) // 2)])
    return out


@functools.lru_cache(maxsize=None)
def held_out_scenes(world: str) -> frozenset[str]:
    """Scenes no training set may describe: the test sets' and the validation set's."""
    return benchmark_scenes(world) | {scene_key(r) for r in build_val(world)}


def build_train(world: str = "shapes", seed: int = 0, n: int = 50_000, weights: dict[str, float] | None = None,
                exclude_scenes: set[str] | frozenset[str] | None = None, progress: Callable[[int], None] | None = None) -> list[dict]:
    """A weighted mix of prompt kinds (`weights`: kind -> relative weight; default: the thirteen test kinds
    equally), with no prompt whose scene is a test or validation scene, in any wording (`held_out_scenes`).

    Kinds whose every scene is held out (in the shapes world: single objects, two plain objects, counting) run
    dry and are dropped from the mix; prompts may repeat, since the world is finite.
    """
    classes, lex = world_classes(world), world_lexicon(world)
    weights = dict(weights or {k: 1.0 for k in KINDS})
    check_weights(weights)
    exclude_scenes = held_out_scenes(world) if exclude_scenes is None else exclude_scenes
    rng = np.random.default_rng(seed)
    misses = {k: 0 for k in weights}
    rows: list[dict] = []
    while len(rows) < n:
        live = [k for k, w in weights.items() if w > 0 and misses[k] < 500]
        if not live:
            raise ValueError("every prompt kind in the mix is covered by the test and validation sets")
        p = np.array([weights[k] for k in live], dtype=float)
        kind = live[rng.choice(len(live), p=p / p.sum())]
        row = draw(kind, rng, classes, lex)
        if scene_key(row) in exclude_scenes:
            misses[kind] += 1
            continue
        misses[kind] = 0
        rows.append(row)
        if progress is not None:
            progress(len(rows))
    return rows


SETS = ("geneval", "genevalpp", "val", "train")


def build_set(name: str, world: str = "shapes", seed: int | None = None, n: int | None = None) -> list[dict]:
    """`gvu prompts NAME`: a set by name with its defaults (seed 43 and 100 per task for GenEval, GenEval's own; 0
    and 40 per tag for GenEval++; VAL_PROMPT_SEED and 40 per kind for validation; 0 and 50,000 rows for training)."""
    if name == "geneval":
        return build_geneval(world, seed=43 if seed is None else seed, n=n or 100)
    if name == "genevalpp":
        return build_genevalpp(world, seed=0 if seed is None else seed, n=n or 40)
    if name == "val":
        return build_val(world, seed=VAL_PROMPT_SEED if seed is None else seed, n=n or 40)
    if name == "train":
        return build_train(world, seed=0 if seed is None else seed, n=n or 50_000)
    raise ValueError(f"unknown prompt set {name!r}; use one of {', '.join(SETS)}")
