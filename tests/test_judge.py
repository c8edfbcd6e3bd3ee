"""The pixel judge: ground truth scores 100%, targeted corruptions fail for the right reason, GenEval's rules.

Everything in (a) and (b) is measured through PIXELS: scene -> image codes -> `decode` -> `judge_image`.
Run with `pytest -s` to see the measured rates.
"""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from gvu.eval.prompts import build_geneval, build_genevalpp, build_train, world_classes, world_lexicon
from gvu.world.kinds import GENEVALPP_KINDS, TRAIN_KINDS, draw
from gvu.world.detect import Detection, Detections, detect
from gvu.world.judge import evaluate, in_region, judge_image, relative_position
from gvu.world.render import decode
from gvu.world.scene import Obj, realise, scene_tokens
from gvu.world.spec import CELL, COLORS, GRID, PART_OFFSETS, SHAPES, code_of

CLASSES, LEX = world_classes("shapes"), world_lexicon("shapes")
MODES = ("geneval", "strict")
DRAWS_PER_KIND = 60
TRAIN_ROWS = 700
CASES_PER_CORRUPTION = 150  # applicable cases tried per corruption type (fewer only if the pool runs out)


def _kind_of(row: dict) -> str:
    """The prompt kind of a row whose builder did not say (GenEval++ kinds reuse two GenEval tag names)."""
    if row["tag"] == "color_attr":
        return "color_attr" if len(row["include"]) == 2 else "color_attr_pp"
    if row["tag"] == "counting":
        if "color" in row["include"][0]:
            return "color_counting"
        return "counting_pp" if row["include"][0]["count"] > 4 else "counting"
    return row["tag"]


@pytest.fixture(scope="module")
def pool() -> list[tuple[str, dict, list[Obj]]]:
    """(kind, row, ground-truth scene) for the shapes world's test sets, training sets and draws of every kind."""
    rows = [(r["tag"], r) for r in build_geneval("shapes")]
    pp_kind = {k.removesuffix("_pp"): k for k in GENEVALPP_KINDS}
    rows += [(pp_kind[r["tag"]], r) for r in build_genevalpp("shapes")]
    rows += [(_kind_of(r), r) for r in build_train("shapes", seed=3, n=TRAIN_ROWS)]
    rows += [(_kind_of(r), r) for r in build_train("shapes", seed=4, n=TRAIN_ROWS // 7,
                                                     weights={"color_counting": 1.0, "position": 1.0})]
    rng = np.random.default_rng(0)
    rows += [(kind, draw(kind, rng, CLASSES, LEX)) for kind in TRAIN_KINDS for _ in range(DRAWS_PER_KIND)]
    scene_rng = np.random.default_rng(1)
    return [(kind, row, realise(row, scene_rng)) for kind, row in rows]


def render(objs: list[Obj]) -> np.ndarray:
    return decode(scene_tokens(objs))


# ------------------------------------------------------------------------------------------- (a) ground truth

def test_ground_truth_scores_100_percent(pool):
    assert len(pool) >= 2000
    kinds = Counter(kind for kind, _, _ in pool)
    assert set(kinds) == set(TRAIN_KINDS), kinds
    wrong = {m: [] for m in MODES}
    for kind, row, objs in pool:
        pixels = render(objs)
        for mode in MODES:
            v, dets = judge_image(pixels, row, mode)
            assert dets.malformed == 0
            if not v.correct:
                wrong[mode].append((row["prompt"], v.reason))
    n = len(pool)
    tags = Counter(row["tag"] for _, row, _ in pool)
    print(f"\nground truth: {n} prompts, {len({r['prompt'] for _, r, _ in pool})} distinct, "
          f"{len(kinds)} kinds, {len(tags)} tags")
    print("  per kind: " + ", ".join(f"{k}={kinds[k]}" for k in TRAIN_KINDS))
    for mode in MODES:
        print(f"  {mode}: {n - len(wrong[mode])}/{n} correct = {(n - len(wrong[mode])) / n:.4f}")
    assert wrong == {m: [] for m in MODES}


# ------------------------------------------------------------------------------------------- (b) corruptions
# Each helper takes (row, objs, rng) and returns the corrupted scene (objects, or image codes for part breaking)
# and what to expect, or None when the corruption does not apply to this scene.

def _item_of(row: dict) -> list[int]:
    """Index of the include item each object realises (realise places objects in include order)."""
    return [idx for idx, req in enumerate(row["include"]) for _ in range(req["count"])]


def _occupied(objs: list[Obj]) -> np.ndarray:
    occ = np.zeros((GRID, GRID), dtype=bool)
    for o in objs:
        occ[o.row:o.row + o.span, o.col:o.col + o.span] = True
    return occ


def _free_spots(objs: list[Obj], span: int, ok=lambda r, c: True) -> list[tuple[int, int]]:
    occ = _occupied(objs)
    return [(r, c) for r in range(GRID - span + 1) for c in range(GRID - span + 1)
            if not occ[r:r + span, c:c + span].any() and ok(r, c)]


def _in_half(r: int, c: int, span: int, region: str) -> bool:
    """The block's centre lies strictly inside the named half of the grid."""
    cy, cx = r + span / 2, c + span / 2
    return {"left": cx < GRID / 2, "right": cx > GRID / 2, "above": cy < GRID / 2, "below": cy > GRID / 2}[region]


OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
FLIP = {"left of": "col", "right of": "col", "above": "row", "below": "row"}


def recolour(row, objs, rng):
    ks = [k for k, idx in enumerate(_item_of(row)) if "color" in row["include"][idx]]
    if not ks:
        return None
    k = ks[rng.integers(len(ks))]
    new = [c for c in COLORS if c != objs[k].color]
    objs = list(objs)
    objs[k] = replace(objs[k], color=new[rng.integers(len(new))])
    return objs, {"geneval": "color", "strict": "color"}


def delete(row, objs, rng):
    objs = list(objs)
    objs.pop(int(rng.integers(len(objs))))
    return objs, {"geneval": "count", "strict": "count"}


def add_counted(row, objs, rng):
    if row["tag"] != "counting":
        return None
    spots = _free_spots(objs, 1)
    if not spots:
        return None
    r, c = spots[rng.integers(len(spots))]
    extra = Obj(row["include"][0]["class"], COLORS[rng.integers(len(COLORS))], "small", r, c)
    return list(objs) + [extra], {"geneval": "exclude", "strict": "count"}


def swap_position(row, objs, rng):
    """Mirror the scene across the axis of the stated relation, so the relation becomes its opposite."""
    rel = next((req["position"][0] for req in row["include"] if "position" in req), None)
    if rel is None:
        return None
    if FLIP[rel] == "col":
        objs = [replace(o, col=GRID - o.span - o.col) for o in objs]
    else:
        objs = [replace(o, row=GRID - o.span - o.row) for o in objs]
    return objs, {"geneval": "position", "strict": "position"}


def break_parts(row, objs, rng):
    """Swap one quarter of a large object for another shape's or another colour's quarter, at the code level."""
    ks = [k for k, o in enumerate(objs) if o.size == "large"]
    if not ks:
        return None
    o = objs[ks[rng.integers(len(ks))]]
    part = list(PART_OFFSETS)[rng.integers(4)]
    if rng.random() < 0.5:
        others = [s for s in SHAPES if s != o.cls]
        code = code_of(others[rng.integers(len(others))], o.color, part)
    else:
        others = [c for c in COLORS if c != o.color]
        code = code_of(o.cls, others[rng.integers(len(others))], part)
    dr, dc = PART_OFFSETS[part]
    tokens = scene_tokens(objs).reshape(GRID, GRID)
    tokens[o.row + dr, o.col + dc] = code
    return tokens.reshape(-1), {"geneval": "count", "strict": "count", "broken": o}


def move_out_of_region(row, objs, rng):
    ks = [k for k, idx in enumerate(_item_of(row)) if "region" in row["include"][idx]]
    if not ks:
        return None
    k = ks[rng.integers(len(ks))]
    o = objs[k]
    wrong = OPPOSITE[row["include"][_item_of(row)[k]]["region"]]
    rest = objs[:k] + objs[k + 1:]
    spots = _free_spots(rest, o.span, lambda r, c: _in_half(r, c, o.span, wrong))
    if not spots:
        return None
    r, c = spots[rng.integers(len(spots))]
    return rest[:k] + [replace(o, row=r, col=c)] + rest[k:], {"geneval": "region", "strict": "region"}


def swap_sizes(row, objs, rng):
    """Shrink the larger object in place (its top-left cell keeps its half) and grow the smaller one."""
    items = _item_of(row)
    sizes = [row["include"][idx].get("size") for idx in items]
    if "larger" not in sizes or "smaller" not in sizes:
        return None
    kl, ks = sizes.index("larger"), sizes.index("smaller")
    objs = list(objs)
    objs[kl] = replace(objs[kl], size="small")
    region = row["include"][items[ks]].get("region")
    rest = [o for k, o in enumerate(objs) if k != ks]
    spots = _free_spots(rest, 2, lambda r, c: region is None or _in_half(r, c, 2, region))
    if not spots:
        return None
    r, c = spots[rng.integers(len(spots))]
    objs[ks] = replace(objs[ks], size="large", row=r, col=c)
    return objs, {"geneval": "size", "strict": "size"}


def test_every_one_quarter_swap_is_malformed():
    """Exhaustive over shapes, quarters and replacements: a large object with one foreign quarter is nothing."""
    tokens, cases = [], []
    for shape in SHAPES:
        base = scene_tokens([Obj(shape, "red", "large", 2, 2)]).reshape(GRID, GRID)
        for part, (dr, dc) in PART_OFFSETS.items():
            for code in [code_of(s, "red", part) for s in SHAPES if s != shape] + [code_of(shape, "blue", part)]:
                t = base.copy()
                t[2 + dr, 2 + dc] = code
                tokens.append(t.reshape(-1))
                cases.append((shape, part, code))
    found = []
    for pixels, case in zip(decode(np.stack(tokens)), cases):
        dets = detect(pixels)
        if dets.objects or dets.malformed < 1:
            found.append((case, {k: len(v) for k, v in dets.objects.items()}, dets.malformed))
    print(f"\none-quarter swaps detected as objects: {len(found)}/{len(cases)}")
    assert found == []


CORRUPTIONS = {"recolour": recolour, "delete": delete, "add_counted": add_counted, "swap_position": swap_position,
               "break_parts": break_parts, "move_out_of_region": move_out_of_region, "swap_sizes": swap_sizes}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_are_caught_for_the_right_reason(pool, name):
    corrupt = CORRUPTIONS[name]
    rng = np.random.default_rng(list(CORRUPTIONS).index(name))
    order = rng.permutation(len(pool))
    cases, skipped, misses = 0, 0, []
    for i in order:
        if cases == CASES_PER_CORRUPTION:
            break
        _, row, objs = pool[i]
        out = corrupt(row, objs, rng)
        if out is None:
            skipped += 1
            continue
        scene, expect = out
        pixels = decode(scene) if isinstance(scene, np.ndarray) else render(scene)
        cases += 1
        for mode in MODES:
            v, dets = judge_image(pixels, row, mode)
            ok = not v.correct and expect[mode] in v.kinds
            if "broken" in expect:  # the broken object is not detected as anything, and the leftovers are malformed
                o = expect["broken"]
                ok = ok and dets.malformed >= 1 and not any(
                    d.size == "large" and (d.box[1] // CELL, d.box[0] // CELL) == (o.row, o.col) for d in dets.all())
            if not ok:
                misses.append((mode, row["prompt"], sorted(v.kinds), v.reason, dets.malformed))
    total = cases * len(MODES)
    rate = 1 - len(misses) / total if total else 0.0
    print(f"\n{name}: {total - len(misses)}/{total} verdicts caught with the right kind = {rate:.4f} "
          f"({cases} corrupted scenes x {len(MODES)} modes, {skipped} scenes skipped as not applicable)")
    for m in misses[:5]:
        print("  missed:", m)
    assert cases >= 100, f"only {cases} applicable scenes for {name}"
    assert rate >= 0.99, misses[:10]


# ---------------------------------------------------------------------------------------- (c) GenEval's rules

def det(cls: str, box, color: str = "red", size: str = "small") -> Detection:
    x1, y1, x2, y2 = box
    return Detection(cls, color, size, tuple(box), (x2 - x1) * (y2 - y1))


def test_relative_position_hand_computed():
    # Side by side: offset (-14, 0), shrink 0.1 * (10 + 10) = 2 -> revised (-12, 0) / 14 = (-0.857, 0).
    a, b = det("star", (0, 0, 10, 10)), det("circle", (14, 0, 24, 10))
    assert relative_position(a, b) == {"left of"}
    assert relative_position(b, a) == {"right of"}
    # Diagonal: centres (15, 19) and (25, 25), offset (-10, -6), |offset| = 11.66.
    # Raw: (-0.857, -0.514) -> left of AND above; shrunk by 2 per axis: (-8, -4) / 11.66 = (-0.686, -0.343)
    # -> left of only. The box-size shrink changes the answer.
    a, b = det("star", (10, 14, 20, 24)), det("circle", (20, 20, 30, 30))
    assert relative_position(a, b, threshold=0.0) == {"left of", "above"}
    assert relative_position(a, b) == {"left of"}
    assert relative_position(b, a) == {"right of"}
    # Same centres, bigger boxes (30 x 30): shrink 6 per axis -> (-4, 0) / 11.66 = -0.343: no relation at all.
    a, b = det("star", (0, 4, 30, 34)), det("circle", (10, 10, 40, 40))
    assert relative_position(a, b) == set()
    # Offset swallowed entirely by the shrink: the empty set, not a division by ~0.
    a, b = det("star", (0, 0, 20, 20)), det("circle", (1, 0, 21, 20))
    assert relative_position(a, b) == set()
    # Vertical, y grows downward: A centre (5, 5) over B centre (5, 25): offset (0, -20), shrink 2 -> -0.9.
    a, b = det("star", (0, 0, 10, 10)), det("circle", (0, 20, 10, 30))
    assert relative_position(a, b) == {"above"} and relative_position(b, a) == {"below"}
    # Threshold is GenEval's 0.1: offset 14 with 20 + 20 of box sizes -> 14 - 4 = 10 -> 10 / 14 = 0.714 (left of);
    # at threshold 0.2 -> 14 - 8 = 6 -> 0.43 (nothing).
    a, b = det("star", (0, 0, 20, 20)), det("circle", (14, 0, 34, 20))
    assert relative_position(a, b) == {"left of"}
    assert relative_position(a, b, threshold=0.2) == set()


def _dets(*ds: Detection) -> Detections:
    objects: dict = {}
    for d in ds:
        objects.setdefault(d.cls, []).append(d)
    return Detections(objects, 0)


def test_geneval_colour_checks_only_the_first_count_objects():
    row = {"tag": "colors", "include": [{"class": "star", "count": 1, "color": "red"}]}
    red_first = _dets(det("star", (0, 0, 12, 12), "red"), det("star", (0, 40, 12, 52), "blue"))
    blue_first = _dets(det("star", (0, 0, 12, 12), "blue"), det("star", (0, 40, 12, 52), "red"))
    assert evaluate(red_first, row, "geneval").correct  # the extra blue star is never looked at
    v = evaluate(blue_first, row, "geneval")
    assert not v.correct and v.kinds == {"color"}  # the first star is blue; the red one after it does not count
    for dets in (red_first, blue_first):  # strict: exactly one star
        v = evaluate(dets, row, "strict")
        assert not v.correct and v.kinds == {"count"}

    row2 = {"tag": "color_count_attr", "include": [{"class": "star", "count": 2, "color": "red"}]}
    def stars(*cols):  # one star per colour, top to bottom
        return _dets(*(det("star", (0, 20 * i, 12, 20 * i + 12), c) for i, c in enumerate(cols)))

    assert evaluate(stars("red", "red", "blue"), row2, "geneval").correct
    assert evaluate(stars("red", "blue", "red"), row2, "geneval").kinds == {"color"}
    assert evaluate(stars("red", "red", "blue"), row2, "strict").kinds == {"count"}
    assert evaluate(stars("red", "red"), row2, "strict").correct
    assert evaluate(stars("red", "blue"), row2, "strict").kinds == {"color"}
    assert evaluate(stars("red"), row2, "geneval").kinds == {"count"}


def test_bare_plural_asks_for_at_least_two():
    # "a photo of red stars": the grammar parses it with count None (models caption this way); the judge reads
    # it as two or more, in both modes, instead of failing on the missing number.
    from gvu.world.grammar import SHAPES_LEXICON, parse_prompt

    row = parse_prompt("a photo of red stars", SHAPES_LEXICON)
    assert row["include"][0]["count"] is None

    def stars(*cols):
        return _dets(*(det("star", (0, 20 * i, 12, 20 * i + 12), c) for i, c in enumerate(cols)))

    for mode in ("geneval", "strict"):
        assert evaluate(stars("red"), row, mode).kinds == {"count"}
        assert evaluate(stars("red", "red"), row, mode).correct
        assert evaluate(stars("red", "red", "red"), row, mode).correct
        assert evaluate(stars("blue", "blue"), row, mode).kinds == {"color"}
    assert evaluate(stars(), row, "strict").kinds == {"count"}


def test_first_count_rule_through_pixels():
    # Reading order (top, then left) stands in for GenEval's confidence order.
    row = {"tag": "colors", "include": [{"class": "heart", "count": 1, "color": "green"}]}
    green_on_top = [Obj("heart", "green", "small", 0, 3), Obj("heart", "pink", "large", 3, 0)]
    pink_on_top = [Obj("heart", "pink", "small", 0, 3), Obj("heart", "green", "large", 3, 0)]
    assert judge_image(render(green_on_top), row, "geneval")[0].correct
    assert judge_image(render(pink_on_top), row, "geneval")[0].kinds == {"color"}
    assert judge_image(render(green_on_top), row, "strict")[0].kinds == {"count"}


def test_strict_checks_every_object_geneval_only_the_first():
    # "a star to the left of a circle" with a second star right of the circle.
    row = {"tag": "position", "include": [{"class": "circle", "count": 1},
                                          {"class": "star", "count": 1, "position": ["left of", 0]}]}
    good_first = [Obj("circle", "red", "small", 2, 3), Obj("star", "red", "small", 1, 0),
                  Obj("star", "blue", "small", 4, 5)]
    v = judge_image(render(good_first), row, "geneval")[0]
    assert v.correct
    v = judge_image(render(good_first), row, "strict")[0]
    assert not v.correct and "count" in v.kinds
    # Exclude counts every detection of the class in both modes.
    row = {"tag": "counting", "include": [{"class": "star", "count": 2}], "exclude": [{"class": "star", "count": 3}]}
    three = [Obj("star", "red", "small", 0, 0), Obj("star", "red", "small", 0, 2), Obj("star", "red", "small", 0, 4)]
    assert judge_image(render(three), row, "geneval")[0].kinds == {"exclude"}
    assert judge_image(render(three), row, "strict")[0].kinds == {"count", "exclude"}
    assert judge_image(render(three[:2]), row, "strict")[0].correct


def test_region_and_size_rules():
    left, right = det("star", (4, 40, 16, 52)), det("star", (80, 40, 92, 52))
    assert in_region(left, "left") and not in_region(left, "right")
    assert in_region(right, "right") and not in_region(right, "left")
    centred = det("star", (42, 42, 54, 54))  # centre exactly on the midline (48, 48): in neither half
    assert not any(in_region(centred, r) for r in ("left", "right", "above", "below"))
    row = {"tag": "size_spatial_attr", "include": [{"class": "star", "count": 1, "size": "larger"},
                                                   {"class": "circle", "count": 1, "size": "smaller"}]}
    big, small = det("star", (0, 0, 28, 28), size="large"), det("circle", (40, 40, 52, 52))
    assert evaluate(_dets(big, small), row, "strict").correct
    v = evaluate(_dets(det("star", (0, 0, 12, 12)), det("circle", (40, 40, 68, 68))), row, "strict")
    assert v.kinds == {"size"}
    with pytest.raises(ValueError, match="unknown mode"):
        evaluate(_dets(big), row, "lenient")


def test_relation_outcome_tells_a_reversed_relation_from_an_unplaced_one():
    """The outcome of "a cross left of a star" on hand-built scenes: as asked, reversed, on the other axis, missing;
    the summary gives each relation's shares (fails if the outcome ignored the side or the axis)."""
    from gvu.eval.judging import judge_pixels, summarise
    from gvu.world.judge import relation_outcome

    row = {"tag": "position", "prompt": "a photo of a cross left of a star",
           "include": [{"class": "star", "count": 1}, {"class": "cross", "count": 1, "position": ["left of", 0]}]}
    scenes = {"as asked": [Obj("cross", "red", "small", 2, 0), Obj("star", "blue", "small", 2, 4)],
              "reversed": [Obj("cross", "red", "small", 2, 4), Obj("star", "blue", "small", 2, 0)],
              "other axis": [Obj("cross", "red", "small", 0, 2), Obj("star", "blue", "small", 4, 2)],
              "missing": [Obj("star", "blue", "small", 2, 4)]}
    results = []
    for outcome, objs in scenes.items():
        px = decode(scene_tokens(objs)[None])[0]
        assert relation_outcome(detect(px), row) == ("left of", outcome)
        results.append(judge_pixels(px, row))
    assert [r["correct"] for r in results] == [True, False, False, False]
    s = summarise(results)["relations"]["left of"]
    assert s["images"] == 4 and s["as asked"] == s["reversed"] == s["other axis"] == s["missing"] == 0.25
    assert relation_outcome(detect(px), {**row, "include": row["include"][:1]}) is None  # no relation asked


def test_colour_outcome_tells_a_swap_from_one_colour_for_both():
    """"a red cross and a blue star" on hand-built scenes: each outcome, and the summary's shares (fails if the
    outcome ignored which object wears which colour)."""
    from gvu.eval.judging import judge_pixels, summarise
    from gvu.world.judge import colour_outcome

    row = {"tag": "color_attr", "prompt": "a photo of a red cross and a blue star",
           "include": [{"class": "cross", "count": 1, "color": "red"}, {"class": "star", "count": 1, "color": "blue"}]}
    scenes = {"as asked": ("red", "blue"), "swapped": ("blue", "red"), "one colour for both": ("blue", "blue"),
              "one right": ("red", "green"), "neither": ("green", "yellow"), "missing": ("red", None)}
    results = []
    for outcome, (a, b) in scenes.items():
        objs = [Obj("cross", a, "small", 0, 0)] + ([Obj("star", b, "small", 4, 4)] if b else [])
        px = decode(scene_tokens(objs)[None])[0]
        assert colour_outcome(detect(px), row) == outcome
        results.append(judge_pixels(px, row))
    assert [r["correct"] for r in results] == [True] + [False] * 5
    s = summarise(results)["colour_pairs"]
    assert s["images"] == 6 and all(s[o] == pytest.approx(1 / 6) for o in scenes)
    assert colour_outcome(detect(px), {**row, "include": [row["include"][0]]}) is None  # one object: no binding
