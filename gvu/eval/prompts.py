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

from typing import Callable

import numpy as np

from gvu.eval.coco import build_geneval_coco, load_coco_classes
from gvu.world import spec
from gvu.world.grammar import coco_lexicon, Lexicon, render_prompt, SHAPES_LEXICON
from gvu.world.kinds import check_weights, draw, GENEVALPP_KINDS, KINDS, prompt_key

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


def test_keys(world: str) -> set[str]:
    """Keys of the default GenEval and GenEval++ test prompts of a world."""
    return {prompt_key(r) for r in build_geneval(world) + build_genevalpp(world)}


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
