"""The fixed vocabulary of the shapes world: shapes, colours, sizes, the grid and the image codes.

Everything else in `gvu.world` derives from these constants, so they are the one place to change the world.

Image codes. An image is a GRID x GRID array of cells, one token per cell (36 tokens). A cell is empty (code 0)
or holds one PART of an object: a small object fills one cell (part "small"); a large object spans a 2x2 block
and each of its four cells holds one quarter (parts tl, tr, bl, br). So code = 1 + ((shape * C + color) * P + part)
with C colours and P = 5 parts: 1 + 8 * 10 * 5 = 401 codes. A large object whose four cells do not agree
(another shape, colour or quarter) renders as pixels that no shape explains, and the detector sees nothing there.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "heart")
PLURALS: dict[str, str] = {s: ("crosses" if s == "cross" else s + "s") for s in SHAPES}

# GenEval's ten colour names; RGB values chosen far apart so snapping to the palette is never ambiguous.
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 225, 40),
    "green": (35, 155, 60),
    "blue": (35, 80, 215),
    "purple": (125, 45, 175),
    "pink": (245, 140, 195),
    "brown": (120, 70, 30),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
# A blue-grey that is not in the palette and is far from black and white.
BACKGROUND: tuple[int, int, int] = (140, 152, 165)

SIZES: tuple[str, ...] = ("small", "large")
PARTS: tuple[str, ...] = ("small", "tl", "tr", "bl", "br")
# (row, col) offset of each quarter inside a large object's 2x2 block.
PART_OFFSETS: dict[str, tuple[int, int]] = {"tl": (0, 0), "tr": (0, 1), "bl": (1, 0), "br": (1, 1)}

GRID = 6  # cells per side
CELL = 16  # pixels per cell side
IMAGE_SIZE = GRID * CELL  # 96
NUM_TOKENS = GRID * GRID  # image tokens per image
EMPTY = 0
NUM_CODES = 1 + len(SHAPES) * len(COLORS) * len(PARTS)  # 401

# Relations of GenEval's position tag and regions of GenEval++.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
REGIONS: tuple[str, ...] = ("left", "right", "above", "below")
SIZE_WORDS: tuple[str, ...] = ("larger", "smaller")


def code_of(shape: str, color: str, part: str) -> int:
    return 1 + (SHAPES.index(shape) * len(COLORS) + COLORS.index(color)) * len(PARTS) + PARTS.index(part)


def parse_code(code: int) -> tuple[str, str, str] | None:
    """(shape, color, part) of a code, or None for the empty cell."""
    if code == EMPTY:
        return None
    if not 0 < code < NUM_CODES:
        raise ValueError(f"image code {code} is outside 0..{NUM_CODES - 1}")
    k = code - 1
    part = k % len(PARTS)
    k //= len(PARTS)
    return SHAPES[k // len(COLORS)], COLORS[k % len(COLORS)], PARTS[part]
