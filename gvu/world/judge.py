"""GenEval's rules, applied to the pixel detector's output, plus GenEval++'s region and size rules.

`geneval` mode follows GenEval's evaluate(): an include asks for AT LEAST `count` objects of its class and
checks colour and position on the first `count` of them; exact counts come only through `exclude`. `strict`
mode asks for exactly `count` of every included class (summed over includes of the same class) and checks
colour, position, region and size on all of them. A bare plural ("a photo of circles", count None, which the
grammar parses and models may caption) asks for at least two, in both modes.

Every failure is recorded with a `kind` (count, color, position, region, size, exclude) next to GenEval's
human-readable reason, so tests and reports can tell why an image failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gvu.world.detect import detect, Detection, Detections
from gvu.world.spec import COLORS, IMAGE_SIZE

POSITION_THRESHOLD = 0.1  # GenEval's value
BARE_PLURAL_MIN = 2  # what "circles" with no number asks for
MODES = ("geneval", "strict")


@dataclass
class Verdict:
    correct: bool
    failures: list[tuple[str, str]] = field(default_factory=list)  # (kind, reason)

    @property
    def reason(self) -> str:
        return "\n".join(r for _, r in self.failures)

    @property
    def kinds(self) -> set[str]:
        return {k for k, _ in self.failures}


def relative_position(a: Detection, b: Detection, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Position of A relative to B as GenEval computes it: centre offset, shrunk by the box sizes."""
    boxes = np.array([a.box, b.box], dtype=float).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def in_region(d: Detection, region: str, size: int = IMAGE_SIZE) -> bool:
    """GenEval++'s region: the object's centre lies in the named half of the image (y grows downward)."""
    cx, cy = d.center
    half = size / 2
    return {"left": cx < half, "right": cx > half, "above": cy < half, "below": cy > half}[region]


def evaluate(dets: Detections, row: dict, mode: str = "geneval") -> Verdict:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    strict = mode == "strict"
    objects = dets.objects
    v = Verdict(True)

    def fail(kind: str, reason: str):
        v.correct = False
        v.failures.append((kind, reason))

    counts = [BARE_PLURAL_MIN if req["count"] is None else req["count"] for req in row["include"]]
    open_ended = {req["class"] for req in row["include"] if req["count"] is None}  # a minimum, not an exact count
    expected_total: dict[str, int] = {}
    for req, count in zip(row["include"], counts):
        expected_total[req["class"]] = expected_total.get(req["class"], 0) + count

    groups: list[list[Detection] | None] = []
    for req, count in zip(row["include"], counts):
        cls = req["class"]
        have = objects.get(cls, [])
        matched = True
        total, at_least = expected_total[cls], cls in open_ended
        if strict and (len(have) < total if at_least else len(have) != total):
            matched = False
            fail("count", f"expected {cls}{'>=' if at_least else '=='}{total}, found {len(have)}")
        elif len(have) < count:
            matched = False
            fail("count", f"expected {cls}>={count}, found {len(have)}")
        found = have if strict else have[:count]
        if matched and "color" in req:
            colors = [d.color for d in found]
            if colors.count(req["color"]) < count:
                matched = False
                fail("color", f"expected {req['color']} {cls}>={count}, found {colors.count(req['color'])} "
                              f"{req['color']}; and " + ", ".join(f"{colors.count(c)} {c}" for c in COLORS
                                                                 if c in colors))
        if matched and "position" in req:
            rel, target = req["position"]
            if groups[target] is None:
                matched = False
                fail("position", f"no target for {cls} to be {rel}")
            elif (reason := _position_failure(found, groups[target], cls, rel)) is not None:
                matched = False
                fail("position", reason)
        if matched and "region" in req:
            outside = [d for d in found if not in_region(d, req["region"])]
            if outside:
                matched = False
                fail("region", f"expected {cls} in the {req['region']} half, found {len(outside)} outside it")
        groups.append(found if matched else None)

    _check_sizes(row, groups, fail)
    for req in row.get("exclude", []):
        cls = req["class"]
        if len(objects.get(cls, [])) >= req["count"]:
            fail("exclude", f"expected {cls}<{req['count']}, found {len(objects[cls])}")
    return v


def _position_failure(found: list[Detection], targets: list[Detection], cls: str, rel: str) -> str | None:
    """Why the first of `found` that is not `rel` of every target fails, or None when all are."""
    for obj in found:
        bad = next((relative_position(obj, t) for t in targets if rel not in relative_position(obj, t)), None)
        if bad is not None:
            return f"expected {cls} {rel} target, found {' and '.join(sorted(bad)) or 'no relation to'} target"
    return None


def _check_sizes(row: dict, groups: list, fail) -> None:
    """GenEval++'s size: every object of a "larger" include is larger (by area) than every "smaller" one."""
    larger = [g for req, g in zip(row["include"], groups) if req.get("size") == "larger" and g]
    smaller = [g for req, g in zip(row["include"], groups) if req.get("size") == "smaller" and g]
    for gl in larger:
        for gs in smaller:
            if min(d.area for d in gl) <= max(d.area for d in gs):
                fail("size", f"expected {gl[0].cls} larger than {gs[0].cls}, found areas "
                             f"{min(d.area for d in gl)} <= {max(d.area for d in gs)}")


FLIPPED = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATION_OUTCOMES = ("as asked", "reversed", "other axis", "no relation", "missing")


def relation_outcome(dets: Detections, row: dict) -> tuple[str, str] | None:
    """How a prompt's one relation ("A left of B") came out on the image: (relation, outcome). The outcome reads the
    first detection of each class, as GenEval's check does: 'as asked', 'reversed' (the flipped relation holds),
    'other axis' (e.g. A above B when asked left of), 'no relation' (too close to call) or 'missing' (A or B not
    found). It tells a painter that cannot place from one that places on the wrong side. None when the prompt has
    no relation or more than one."""
    placed = [req for req in row.get("include", []) if "position" in req]
    if len(placed) != 1:
        return None
    rel, target = placed[0]["position"]
    a = dets.objects.get(placed[0]["class"], [])
    b = dets.objects.get(row["include"][target]["class"], [])
    if not a or not b:
        return rel, "missing"
    found = relative_position(a[0], b[0])
    if rel in found:
        return rel, "as asked"
    if FLIPPED[rel] in found:
        return rel, "reversed"
    return rel, "other axis" if found else "no relation"


COLOUR_OUTCOMES = ("as asked", "swapped", "one colour for both", "one right", "neither", "missing")


def colour_outcome(dets: Detections, row: dict) -> str | None:
    """How a two-object colour binding ("a red cross and a blue star") came out, reading the first detection of each
    class as GenEval's check does: 'as asked', 'swapped' (each object has the other's colour), 'one colour for both'
    (both drawn in one of the asked colours), 'one right', 'neither' or 'missing' (an object not found). None unless
    the prompt names exactly two objects of different classes, one of each, each with a colour."""
    inc = row.get("include", [])
    if len(inc) != 2 or any("color" not in q or q.get("count") != 1 for q in inc) or inc[0]["class"] == inc[1]["class"]:
        return None
    found = [dets.objects.get(q["class"], []) for q in inc]
    if not all(found):
        return "missing"
    got, want = [f[0].color for f in found], [q["color"] for q in inc]
    if got == want:
        return "as asked"
    if got == want[::-1]:
        return "swapped"
    if got[0] == got[1] and got[0] in want:
        return "one colour for both"
    return "one right" if got[0] == want[0] or got[1] == want[1] else "neither"


def judge_image(pixels: np.ndarray, row: dict, mode: str = "geneval") -> tuple[Verdict, Detections]:
    dets = detect(pixels)
    return evaluate(dets, row, mode), dets
