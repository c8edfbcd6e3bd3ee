"""Scenes: objects on the grid, their image codes, and a sampler that realises any metadata row.

The sampler draws sizes, colours and places at random under the row's constraints and keeps a draw only
when the pixel judge accepts it in both modes AND every stated relation holds with margin: a position
relation must be the only relation between the two objects and must survive twice GenEval's box-size
shrink, so no stated fact sits on a decision boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from functools import lru_cache

from gvu.world.detect import Detection, Detections
from gvu.world.judge import evaluate, relative_position
from gvu.world.render import LARGE_BOX, MARGIN, shape_mask, SMALL_BOX
from gvu.world.spec import CELL, code_of, COLORS, EMPTY, GRID, NUM_TOKENS, PART_OFFSETS, SHAPES

MAX_TRIES = 400


class UnsatisfiableError(ValueError):
    """A metadata row that no scene of this world can satisfy."""


@dataclass(frozen=True)
class Obj:
    cls: str
    color: str
    size: str  # "small" | "large"
    row: int  # top-left cell
    col: int

    @property
    def span(self) -> int:
        return 2 if self.size == "large" else 1

    def cells(self) -> list[tuple[int, int]]:
        return [(self.row + r, self.col + c) for r in range(self.span) for c in range(self.span)]


def scene_tokens(objs: list[Obj] | tuple[Obj, ...]) -> np.ndarray:
    grid = np.full((GRID, GRID), EMPTY, dtype=np.int64)
    for o in objs:
        if o.size == "small":
            cells = {(o.row, o.col): "small"}
        else:
            cells = {(o.row + dr, o.col + dc): part for part, (dr, dc) in PART_OFFSETS.items()}
        for (r, c), part in cells.items():
            if grid[r, c] != EMPTY:
                raise ValueError(f"objects overlap at cell ({r}, {c})")
            grid[r, c] = code_of(o.cls, o.color, part)
    return grid.reshape(NUM_TOKENS)


QUARTER_CODES = np.array([code_of(s, c, p) for s in SHAPES for c in COLORS for p in PART_OFFSETS])
"""Every quarter of a large object: shape, then colour, then part (tl, tr, bl, br)."""


def wrap_cells(r: int) -> list[tuple[int, int]]:
    """The cells of a large object started in the last column of row r and laid out in raster order, so that it
    wraps across the row edge: top-left, top-right, bottom-left, bottom-right."""
    last = GRID - 1
    return [(r, last), (r + 1, 0), (r + 1, last), (r + 2, 0)]


def wrapped_rows(codes_T: np.ndarray) -> list[int]:
    """Rows r where a quarter of a large object sits in the last column and another in the first column of row r+1:
    the footprint of wrap_cells, consecutive in the sequence, two halves of nothing on the image (a painter's
    half-drawn shape)."""
    grid = np.asarray(codes_T).reshape(GRID, GRID)
    quarter = np.isin(grid, QUARTER_CODES)
    return [r for r in range(GRID - 1) if quarter[r, GRID - 1] and quarter[r + 1, 0]]


@lru_cache(maxsize=None)
def _footprint(cls: str, size: str) -> tuple[int, int, int, int, int]:
    """Box (x1, y1, x2, y2) relative to the object's top-left cell, and area, of a clean render."""
    box = SMALL_BOX if size == "small" else LARGE_BOX
    m = shape_mask(cls, box)
    rows, cols = m.any(1).nonzero()[0], m.any(0).nonzero()[0]
    return (MARGIN + cols[0], MARGIN + rows[0], MARGIN + cols[-1] + 1, MARGIN + rows[-1] + 1, int(m.sum()))


def scene_detections(objs: list[Obj] | tuple[Obj, ...]) -> Detections:
    """What the pixel detector finds in the clean render of a scene, computed without rendering.

    The sampler calls this in its rejection loop; tests check it against `detect(decode(...))`.
    """
    objects: dict[str, list[Detection]] = {}
    for o in objs:
        x1, y1, x2, y2, area = _footprint(o.cls, o.size)
        ox, oy = o.col * CELL, o.row * CELL
        objects.setdefault(o.cls, []).append(Detection(o.cls, o.color, o.size, (ox + x1, oy + y1, ox + x2, oy + y2), area))
    for ds in objects.values():
        ds.sort(key=lambda d: (d.box[1], d.box[0]))
    return Detections(objects, 0)


def _region_ok(row: int, col: int, span: int, region: str | None) -> bool:
    if region is None:
        return True
    # Centre in cell units; the midline is GRID / 2. Every grid placement is at least half a cell away
    # from it unless it straddles it, which is excluded here.
    cy, cx = row + span / 2, col + span / 2
    return {"left": cx < GRID / 2, "right": cx > GRID / 2, "above": cy < GRID / 2, "below": cy > GRID / 2}[region]


def _precheck(row: dict) -> list[dict]:
    """Expand the include list into one spec per object; raise for rows that cannot be met."""
    totals: dict[str, int] = {}
    specs = []
    for idx, req in enumerate(row["include"]):
        if req["class"] not in SHAPES:
            raise UnsatisfiableError(f"unknown class {req['class']!r}: the shapes world has {', '.join(SHAPES)}")
        if req.get("color") is not None and req["color"] not in COLORS:
            raise UnsatisfiableError(f"unknown colour {req['color']!r}")
        totals[req["class"]] = totals.get(req["class"], 0) + req["count"]
        for _ in range(req["count"]):
            specs.append({"item": idx, **req})
    for ex in row.get("exclude", []):
        if totals.get(ex["class"], 0) >= ex["count"]:
            raise UnsatisfiableError(f"the row asks for {totals[ex['class']]} {ex['class']} but excludes "
                                     f"{ex['count']} or more")
    if len(specs) > NUM_TOKENS:
        raise UnsatisfiableError(f"{len(specs)} objects do not fit on a {GRID}x{GRID} grid")
    for region in ("left", "right", "above", "below"):
        n = sum(1 for s in specs if s.get("region") == region)
        if n > NUM_TOKENS // 2:
            raise UnsatisfiableError(f"{n} objects do not fit in the {region} half")
    return specs


def _margin_ok(row: dict, groups: list[list[Detection]]) -> bool:
    for idx, req in enumerate(row["include"]):
        if "position" not in req:
            continue
        rel, target = req["position"]
        for a in groups[idx]:
            for b in groups[target]:
                if relative_position(a, b) != {rel} or rel not in relative_position(a, b, threshold=0.2):
                    return False
    return True


def realise(row: dict, rng: np.random.Generator, p_large: float = 0.35) -> list[Obj]:
    """A random scene that satisfies the row in both judge modes, with margin on every relation."""
    specs = _precheck(row)
    n = len(specs)
    p = p_large if n <= 4 else (p_large / 3 if n <= 7 else 0.0)
    for _ in range(MAX_TRIES):
        occupied = np.zeros((GRID, GRID), dtype=bool)
        placed: list[tuple[int, Obj]] = []
        sizes = []
        for s in specs:
            if s.get("size") == "larger":
                sizes.append("large")
            elif s.get("size") == "smaller":
                sizes.append("small")
            else:
                sizes.append("large" if rng.random() < p else "small")
        colors = [s.get("color") or COLORS[rng.integers(len(COLORS))] for s in specs]
        order = sorted(range(n), key=lambda i: (sizes[i] != "large", rng.random()))
        ok = True
        for i in order:
            span = 2 if sizes[i] == "large" else 1
            spots = [(r, c) for r in range(GRID - span + 1) for c in range(GRID - span + 1)
                     if not occupied[r:r + span, c:c + span].any() and _region_ok(r, c, span, specs[i].get("region"))]
            if not spots:
                ok = False
                break
            r, c = spots[rng.integers(len(spots))]
            occupied[r:r + span, c:c + span] = True
            placed.append((i, Obj(specs[i]["class"], colors[i], sizes[i], r, c)))
        if not ok:
            continue
        objs = [o for _, o in sorted(placed)]
        dets = scene_detections(objs)
        if not (evaluate(dets, row, "strict").correct and evaluate(dets, row, "geneval").correct):
            continue
        groups = _groups(row, objs, dets)
        if _margin_ok(row, groups):
            return objs
    raise UnsatisfiableError(f"no scene satisfies {row.get('prompt', row)!r} after {MAX_TRIES} tries "
                             "(too many objects for the regions or relations asked?)")


def _groups(row: dict, objs: list[Obj], dets) -> list[list[Detection]]:
    """The detections that realise each include item (objects were placed in include order)."""
    by_cell = {(d.box[1] // CELL, d.box[0] // CELL): d for d in dets.all()}
    groups: list[list[Detection]] = [[] for _ in row["include"]]
    specs = [idx for idx, req in enumerate(row["include"]) for _ in range(req["count"])]
    for idx, o in zip(specs, objs):
        groups[idx].append(by_cell[(o.row, o.col)])
    return groups
