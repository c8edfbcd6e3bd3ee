"""The image codec: image codes <-> pixels. This is the shapes world's stand-in for a UMM's image decoder.

Shapes are drawn as hard masks (no anti-aliasing) sampled at pixel centres, so every clean render uses only
palette colours and the background, and `encode(decode(t)) == t` exactly. A small object is a SMALL_BOX-pixel
shape centred in its cell; a large object is a LARGE_BOX-pixel shape centred in its 2x2 block, cut into the
four cell patches. The margins keep neighbouring objects from touching, so connected components are objects.

Letters: N images, T = NUM_TOKENS tokens, H = W = IMAGE_SIZE pixels.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from gvu.world.spec import (BACKGROUND, CELL, code_of, COLORS, EMPTY, GRID, IMAGE_SIZE, NUM_CODES, NUM_TOKENS, PALETTE,
                            PART_OFFSETS, SHAPES)

MARGIN = 2
SMALL_BOX = CELL - 2 * MARGIN  # 12
LARGE_BOX = 2 * CELL - 2 * MARGIN  # 28


def _polygon_mask(x: np.ndarray, y: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points (x, y)."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        (x1, y1), (x2, y2) = pts[i], pts[(i + 1) % n]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < x_at)
    return inside


def _regular(n: int, radius: float, phase: float) -> np.ndarray:
    a = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star_points() -> np.ndarray:
    outer = _regular(5, 1.0, -np.pi / 2)
    inner = _regular(5, 0.45, -np.pi / 2 + np.pi / 5)
    pts = np.empty((10, 2))
    pts[0::2], pts[1::2] = outer, inner
    return pts * np.array([1.0, 1.08]) + np.array([0.0, 0.1])  # fill the box vertically


def _shape_fn(shape: str):
    """Inside-test on coordinates in [-1, 1]^2, y growing downward."""
    if shape == "circle":
        return lambda x, y: x * x + y * y <= 1.0
    if shape == "square":
        return lambda x, y: (np.abs(x) <= 0.82) & (np.abs(y) <= 0.82)
    if shape == "triangle":
        return lambda x, y: (y <= 0.9) & (y >= -1.0 + 2 * np.abs(x) * 0.95)
    if shape == "diamond":
        return lambda x, y: np.abs(x) + np.abs(y) <= 1.0
    if shape == "star":
        pts = _star_points()
        return lambda x, y: _polygon_mask(x, y, pts)
    if shape == "cross":
        return lambda x, y: ((np.abs(x) <= 0.34) | (np.abs(y) <= 0.34)) & (np.abs(x) <= 0.95) & (np.abs(y) <= 0.95)
    if shape == "hexagon":
        pts = _regular(6, 1.0, 0.0)
        return lambda x, y: _polygon_mask(x, y, pts)
    if shape == "heart":
        def heart(x, y):
            X, Y = 1.15 * x, -1.2 * (y - 0.12)
            return (X * X + Y * Y - 1) ** 3 - X * X * Y ** 3 <= 0
        return heart
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


@lru_cache(maxsize=None)
def shape_mask(shape: str, box: int) -> np.ndarray:
    """Boolean [box, box] mask of a shape, sampled at pixel centres."""
    c = (np.arange(box) + 0.5) / box * 2 - 1
    y, x = np.meshgrid(c, c, indexing="ij")
    m = _shape_fn(shape)(x, y)
    m.setflags(write=False)
    return m


@lru_cache(maxsize=None)
def patch_table() -> np.ndarray:
    """uint8 [NUM_CODES, CELL, CELL, 3]: the pixels of every image code."""
    table = np.empty((NUM_CODES, CELL, CELL, 3), dtype=np.uint8)
    table[:] = BACKGROUND
    for shape in SHAPES:
        small = np.zeros((CELL, CELL), dtype=bool)
        small[MARGIN:MARGIN + SMALL_BOX, MARGIN:MARGIN + SMALL_BOX] = shape_mask(shape, SMALL_BOX)
        block = np.zeros((2 * CELL, 2 * CELL), dtype=bool)
        block[MARGIN:MARGIN + LARGE_BOX, MARGIN:MARGIN + LARGE_BOX] = shape_mask(shape, LARGE_BOX)
        for color in COLORS:
            table[code_of(shape, color, "small")][small] = PALETTE[color]
            for part, (dr, dc) in PART_OFFSETS.items():
                quarter = block[dr * CELL:(dr + 1) * CELL, dc * CELL:(dc + 1) * CELL]
                table[code_of(shape, color, part)][quarter] = PALETTE[color]
    table.setflags(write=False)
    return table


def decode(tokens_NT: np.ndarray) -> np.ndarray:
    """Image codes [..., T] -> uint8 pixels [..., H, W, 3]."""
    tokens = np.asarray(tokens_NT, dtype=np.int64)
    if tokens.shape[-1] != NUM_TOKENS:
        raise ValueError(f"expected {NUM_TOKENS} image tokens per image, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= NUM_CODES):
        raise ValueError(f"image codes must lie in 0..{NUM_CODES - 1}")
    lead = tokens.shape[:-1]
    cells = patch_table()[tokens.reshape(*lead, GRID, GRID)]  # [..., GRID, GRID, CELL, CELL, 3]
    nd = len(lead)
    order = tuple(range(nd)) + (nd, nd + 2, nd + 1, nd + 3, nd + 4)
    return np.ascontiguousarray(cells.transpose(order)).reshape(*lead, IMAGE_SIZE, IMAGE_SIZE, 3)


@lru_cache(maxsize=None)
def _patch_index() -> dict[bytes, int]:
    return {patch_table()[c].tobytes(): c for c in range(NUM_CODES)}


def encode(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels [..., H, W, 3] -> image codes [..., T]: exact on clean renders, nearest patch (L1) otherwise."""
    px = np.asarray(pixels)
    if px.shape[-3:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected images of shape [..., {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {px.shape}")
    lead = px.shape[:-3]
    nd = len(lead)
    cells = px.astype(np.uint8).reshape(*lead, GRID, CELL, GRID, CELL, 3)
    cells = cells.transpose(tuple(range(nd)) + (nd, nd + 2, nd + 1, nd + 3, nd + 4)).reshape(-1, CELL, CELL, 3)
    index = _patch_index()
    out = np.empty(len(cells), dtype=np.int64)
    table = None
    for i, cell in enumerate(cells):
        code = index.get(np.ascontiguousarray(cell).tobytes())
        if code is None:  # not a clean render: take the closest patch
            if table is None:
                table = patch_table().astype(np.int32).reshape(NUM_CODES, -1)
            code = int(np.abs(table - cell.astype(np.int32).reshape(1, -1)).sum(1).argmin())
        out[i] = code
    return out.reshape(*lead, NUM_TOKENS)


def blank_tokens() -> np.ndarray:
    return np.full(NUM_TOKENS, EMPTY, dtype=np.int64)
