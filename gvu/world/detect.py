"""The pixel detector: palette snapping, connected components, shape classification.

It reads pixels only, like GenEval's detector, so it judges any image of the world, not just token grids.
A component is classified by comparing its mask with every shape's template at both sizes (same bounding
box, intersection over union). Clean renders match a template exactly; a component that matches none well
(the four quarters of a large object that disagree, an orphan quarter) is counted as `malformed` and detected
as nothing. Objects are listed in reading order of their boxes (top, then left): GenEval lists detections by
confidence, and checks only the first `count` of them for colour; with exact pixels every confidence is
equal, so reading order is the tie-break.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from gvu.world.render import LARGE_BOX, shape_mask, SMALL_BOX
from gvu.world.spec import BACKGROUND, COLORS, PALETTE, SHAPES

# Clean renders give IoU 1; the closest pair of distinct templates (small circle vs small hexagon) is far
# below this. A large object whose quarters come from different shapes can come close: the best fit of any
# mix is 0.985 (a heart with a diamond's bottom-right quarter), so 0.9 let 30% of one-quarter swaps through
# as whole objects (tests/test_judge.py checks every one-quarter swap).
MIN_IOU = 0.99
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detection:
    cls: str
    color: str
    size: str  # "small" | "large"
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, x2/y2 exclusive
    area: int

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    def to_json(self) -> dict:
        d = asdict(self)
        d["box"] = list(self.box)
        return d


@dataclass
class Detections:
    objects: dict[str, list[Detection]]  # class -> detections in reading order
    malformed: int  # components that no shape explains

    def all(self) -> list[Detection]:
        return sorted((d for ds in self.objects.values() for d in ds), key=lambda d: (d.box[1], d.box[0]))


_COLORS_RGB = np.array([PALETTE[c] for c in COLORS] + [BACKGROUND], dtype=np.int32)  # background last


def snap(pixels: np.ndarray) -> np.ndarray:
    """[H, W, 3] pixels -> [H, W] palette index (len(COLORS) = background), nearest colour in RGB."""
    px = pixels.astype(np.int32)
    # Snap each distinct colour once: a render has a handful of them, a real image a few thousand at most.
    packed = (px[..., 0] << 16) | (px[..., 1] << 8) | px[..., 2]
    uniq, inverse = np.unique(packed.ravel(), return_inverse=True)
    rgb = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], axis=1)
    nearest = ((rgb[:, None, :] - _COLORS_RGB[None]) ** 2).sum(-1).argmin(-1)
    return nearest[inverse].reshape(packed.shape)


@lru_cache(maxsize=None)
def _templates() -> dict[tuple[int, int], list[tuple[str, str, np.ndarray]]]:
    """Templates cropped to their bounding boxes, grouped by box shape (h, w)."""
    out: dict[tuple[int, int], list] = {}
    for size, box in (("small", SMALL_BOX), ("large", LARGE_BOX)):
        for shape in SHAPES:
            m = shape_mask(shape, box)
            rows, cols = np.where(m)
            crop = m[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            out.setdefault(crop.shape, []).append((shape, size, crop))
    return out


def classify(mask: np.ndarray) -> tuple[str, str, float] | None:
    """(shape, size, iou) of the best template for a cropped component mask, or None if none fits."""
    best = None
    for dh in (-1, 0, 1):  # a pixel of slack in box size for images that are not clean renders
        for dw in (-1, 0, 1):
            for shape, size, tmpl in _templates().get((mask.shape[0] + dh, mask.shape[1] + dw), []):
                h, w = min(mask.shape[0], tmpl.shape[0]), min(mask.shape[1], tmpl.shape[1])
                a, b = mask[:h, :w], tmpl[:h, :w]
                union = mask.sum() + tmpl.sum() - (a & b).sum()
                iou = (a & b).sum() / union
                if best is None or iou > best[2]:
                    best = (shape, size, float(iou))
    if best is None or best[2] < MIN_IOU:
        return None
    return best


def detect(pixels: np.ndarray) -> Detections:
    """Detect every object in one uint8 [H, W, 3] image."""
    labels = snap(np.asarray(pixels))
    objects: dict[str, list[Detection]] = {}
    malformed = 0
    for ci, color in enumerate(COLORS):
        comp, n = ndimage.label(labels == ci, structure=_EIGHT)
        if n == 0:
            continue
        for k, sl in enumerate(ndimage.find_objects(comp), start=1):
            mask = comp[sl] == k
            found = classify(mask)
            if found is None:
                malformed += 1
                continue
            shape, size, _ = found
            ys, xs = sl
            objects.setdefault(shape, []).append(
                Detection(shape, color, size, (xs.start, ys.start, xs.stop, ys.stop), int(mask.sum())))
    for ds in objects.values():
        ds.sort(key=lambda d: (d.box[1], d.box[0]))
    return Detections(objects, malformed)
