"""The pretraining data of the built-in UMM: the scene pool (scenes with the prompt that produced them), debris
(lone quarters, and large objects wrapped across the row edge), the two-object relation examples, and the hard
negatives of a description (gvu.models.builtin.pretrain draws its batches from them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gvu.eval.prompts import world_classes, world_lexicon
from gvu.eval.understanding import negatives
from gvu.world.judge import evaluate
from gvu.world.kinds import draw, swap_colours
from gvu.world.scene import QUARTER_CODES, realise, scene_detections, scene_tokens, wrap_cells
from gvu.world.spec import code_of, COLORS, EMPTY, GRID, SHAPES


@dataclass
class ScenePool:
    """Scenes with the prompt that produced them: tokens [M, T] plus rows."""

    tokens: np.ndarray
    rows: list[dict]
    objs: list


def build_pool(n: int, seed: int, kinds: tuple[str, ...], progress: bool = True) -> ScenePool:
    from tqdm import tqdm

    rng = np.random.default_rng([seed, 1])
    classes, lex = world_classes("shapes"), world_lexicon("shapes")
    rows, objs, toks = [], [], []
    for _ in tqdm(range(n), desc="scenes", unit="scene", disable=not progress, leave=False):
        row = draw(kinds[rng.integers(len(kinds))], rng, classes, lex)
        o = realise(row, rng)
        rows.append(row)
        objs.append(o)
        toks.append(scene_tokens(o))
    return ScenePool(np.stack(toks), rows, objs)


def _busy(grid: np.ndarray) -> np.ndarray:
    """Per cell, how many of it and its eight neighbours hold a code."""
    padded = np.pad(grid != EMPTY, 1)
    return sum(padded[1 + dr:1 + dr + GRID, 1 + dc:1 + dc + GRID] for dr in (-1, 0, 1) for dc in (-1, 0, 1))


def add_debris(codes_T: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Put up to n lone quarter codes in empty cells whose eight neighbours are empty (so no debris touches an
    object or other debris and merges with it)."""
    grid = codes_T.reshape(GRID, GRID).copy()
    for _ in range(n):
        free = np.argwhere(_busy(grid) == 0)
        if len(free) == 0:
            break
        r, c = free[rng.integers(len(free))]
        grid[r, c] = QUARTER_CODES[rng.integers(len(QUARTER_CODES))]
    return grid.reshape(-1)


def add_wrapped(codes_T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Put one large object across the row edge (gvu.world.scene.wrap_cells), as a painter that lays quarters out in
    raster order draws it when it starts a large object in the last column. Consecutive in the sequence like a real
    large object, yet no object on the image: the judge must not count it. Only where those cells and their
    neighbours are empty; else unchanged."""
    grid = codes_T.reshape(GRID, GRID).copy()
    busy = _busy(grid)
    rows = [r for r in range(GRID - 2) if not any(busy[cell] for cell in wrap_cells(r))]
    if not rows:
        return codes_T
    r = rows[int(rng.integers(len(rows)))]
    shape, color = SHAPES[int(rng.integers(len(SHAPES)))], COLORS[int(rng.integers(len(COLORS)))]
    for cell, part in zip(wrap_cells(r), ("tl", "tr", "bl", "br")):
        grid[cell] = code_of(shape, color, part)
    return grid.reshape(-1)


def relation_example(rng: np.random.Generator) -> tuple[np.ndarray, list, dict]:
    """A fresh two-object scene that a position prompt realises, with that prompt as its description ("a photo
    of a cross to the right of a heart"): the relation phase's example. Two objects and one relation word to
    read, so the only way to the right word is where the objects are (docs/bases.md measured the pool's
    relation-bearing descriptions of many-object scenes instead: the sign unlearned after 1,000 steps)."""
    row = draw("position", rng, world_classes("shapes"), world_lexicon("shapes"))
    objs = realise(row, rng)
    return np.asarray(scene_tokens(objs)), objs, row


def ranked_negatives(row: dict, objs: list, rng: np.random.Generator, negative_prob: float,
                     binding_prob: float) -> list[dict]:
    """The false descriptions an understanding example is ranked against: with `negative_prob`, one of its hard
    negatives (one fact changed, gvu.eval.understanding.negatives); with `binding_prob`, its binding negative (two
    colours swapped), where that is false on the scene. Draws from `rng` only for a share above 0."""
    out = []
    if negative_prob and rng.random() < negative_prob:
        negs = list(negatives(row, objs, rng).values())
        if negs:
            out.append(negs[int(rng.integers(len(negs)))])
    if binding_prob and rng.random() < binding_prob:
        neg = swap_colours(row, rng)
        if neg is not None and not evaluate(scene_detections(objs), neg, "strict").correct:
            out.append(neg)
    return out
