"""Dense prompts of the shapes world (DPG-shapes): a paragraph about three to six shapes, and its question graph.

DPG-Bench (ELLA) asks about long, dense prompts: each prompt comes with yes/no questions, each with a category (the
first word of its tuple) and the questions it depends on; a question whose parent is answered "no" scores 0. This
module draws such prompts from the shapes world, writes their questions in DPG-Bench's tuple form, and answers
every question exactly from the pixel detector's output, so the benchmark needs no VQA model.

A dense row is a GenEval-format metadata row with tag "dpg": one include item per shape (the shapes of a row are
distinct, so a shape names its group), each with a count and optionally a colour, a size ("larger": drawn large,
"smaller": drawn small; a prompt that gives sizes names at least one of each), a region (GenEval++'s half of the
image) and a relation to an earlier item (GenEval's position). `render_dense` writes the prompt from the row: the
shapes in one or two sentences, then one sentence per relation, in the grammar's words only, at most
MAX_PROMPT_TOKENS tokens ("a photo of two red circles on the left, a larger blue star, and a smaller green heart.
the red circles to the left of the blue star.").

DPG-Bench's five categories, as the shapes world asks them (`questions`):

- entity - whole (star): a star is drawn (at least one).
- other - count (star, ==2): exactly that many, asked where the prompt says a number (two or more), as DSG asks
  counts only for stated integers.
- attribute - color (star, red), attribute - size (star, larger): every star is red, every star is drawn large.
- relation - spatial (star, circle, left of): every star is to the left of every circle (GenEval's rule);
  relation - spatial (star, image, left): every star lies in the left half of the image (GenEval++'s region),
  a relation to the frame as DSG's spatial tuples relate an entity to a place.
- global - (nothing else): the image holds no shape the prompt does not name and no half-drawn shape: the picture
  as a whole is the one described.

Every question about a shape depends on its entity question; a relation depends on both shapes' entities.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from gvu.world.detect import Detection, Detections
from gvu.world.grammar import join_list, noun_phrase, NUMBER_WORDS, REGION_PHRASES, SHAPES_LEXICON
from gvu.world.judge import in_region, POSITION_THRESHOLD, relative_position
from gvu.world.scene import _footprint, Obj, scene_detections, UnsatisfiableError
from gvu.world.spec import CELL, COLORS, GRID, PLURALS, REGIONS, SHAPES

DPG_TAG = "dpg"
MAX_PROMPT_TOKENS = 80
"""The built-in model reads a prompt after 48 other tokens (its two openers, 36 image tokens, two more, the 6-token
instruction and the answer marker) and ends it with <eos>: 80 keeps understanding within the shipped bases' 128
positions (generation needs 39 besides the prompt)."""
GROUPS = (3, 6)  # shapes per prompt, inclusive
COUNT_WEIGHTS = {1: 0.55, 2: 0.3, 3: 0.15}
MAX_OBJECTS = 10
MAX_LARGE = 3  # large objects per scene (4 cells each)
P_COLOR, P_SIZES, P_REGION, P_LARGE = 0.85, 0.5, 0.5, 0.15
RELATIONS_PER_PROMPT = (1, 4)  # inclusive; fewer where the scene holds fewer clear relations
MAX_TRIES = 400
SIZE_DRAWN = {"larger": "large", "smaller": "small"}
_TOKEN_RE = re.compile(r"[a-z]+|[,.]|\S")  # the built-in tokenizer's split (gvu.models.builtin.tokenizer)
_TUPLE_RE = re.compile(r"^\s*([a-z]+)\s*-\s*([a-z]*)\s*\((.*)\)\s*$")


@dataclass(frozen=True)
class Question:
    """One row of DPG-Bench's question file: its proposition id, tuple, parents (DPG's `dependency`, 0 for none,
    left out here) and natural-language question."""

    qid: int
    proposition: str
    parents: tuple[int, ...]
    text: str

    @property
    def category(self) -> str:
        """DPG-Bench's detailed (L2) category: the tuple before its '(' ("attribute - color")."""
        return self.proposition.split("(")[0].strip()

    @property
    def l1(self) -> str:
        """DPG-Bench's L1 category: the tuple's first word (entity, attribute, relation, global, other)."""
        return self.category.split("-")[0].strip()


def prompt_tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


# ------------------------------------------------------------------------------------------ the question graph

def _noun(it: dict) -> str:
    return PLURALS[it["class"]] if it["count"] > 1 else it["class"]


def questions(row: dict) -> list[Question]:
    """The question graph of a dense row: per shape its entity, count, colour, size and region questions, then the
    relations, then the global one; ids from 1 in that order (every parent before its children)."""
    inc, out = row["include"], []

    def add(proposition: str, parents: tuple[int, ...], text: str) -> int:
        out.append(Question(len(out) + 1, proposition, parents, text))
        return len(out)

    entity = {}
    for i, it in enumerate(inc):
        cls, n, the, be = it["class"], it["count"], f"the {_noun(it)}", "Are" if it["count"] > 1 else "Is"
        there = f"Are there {_noun(it)}?" if n > 1 else f"Is there {SHAPES_LEXICON.article(cls)} {cls}?"
        entity[i] = e = add(f"entity - whole ({cls})", (), there)
        if n > 1:
            add(f"other - count ({cls}, =={n})", (e,), f"Are there exactly {NUMBER_WORDS[n]} {_noun(it)}?")
        if "color" in it:
            add(f"attribute - color ({cls}, {it['color']})", (e,), f"{be} {the} {it['color']}?")
        if "size" in it:
            add(f"attribute - size ({cls}, {it['size']})", (e,), f"{be} {the} drawn {SIZE_DRAWN[it['size']]}?")
        if "region" in it:
            add(f"relation - spatial ({cls}, image, {it['region']})", (e,),
                f"{be} {the} {REGION_PHRASES[it['region']]} of the image?")
    for i, it in enumerate(inc):
        if "position" in it:
            rel, j = it["position"]
            phrase = SHAPES_LEXICON.relation_phrases[rel]
            add(f"relation - spatial ({it['class']}, {inc[j]['class']}, {rel})", (entity[i], entity[j]),
                f"{'Are' if it['count'] > 1 else 'Is'} the {_noun(it)} {phrase} the {_noun(inc[j])}?")
    add("global - (nothing else)", (), "Does the image show only the shapes named, with no other shape and no "
        "half-drawn one?")
    return out


def parse_proposition(proposition: str) -> tuple[str, str, list[str]]:
    """(L1 word, detailed word, arguments) of a tuple: 'relation - spatial (star, circle, left of)' ->
    ('relation', 'spatial', ['star', 'circle', 'left of'])."""
    m = _TUPLE_RE.match(proposition)
    if m is None:
        raise ValueError(f"{proposition!r} is not a DPG tuple ('category - detail (arguments)')")
    return m.group(1), m.group(2), [a.strip() for a in m.group(3).split(",")]


def answer(dets: Detections, qs: list[Question]) -> dict[int, bool]:
    """The exact answer to every question of one prompt on one image (the detector's output). Raises ValueError
    for a tuple the shapes world does not ask."""
    named = {parse_proposition(q.proposition)[2][0] for q in qs if q.category == "entity - whole"}
    return {q.qid: _answer(dets, *parse_proposition(q.proposition), named) for q in qs}


def _answer(dets: Detections, l1: str, kind: str, args: list[str], named: set[str]) -> bool:
    objects = dets.objects
    if (l1, kind) == ("global", ""):
        return dets.malformed == 0 and set(objects) <= named
    found = objects.get(args[0], [])
    if (l1, kind) == ("entity", "whole"):
        return bool(found)
    if (l1, kind) == ("other", "count"):
        return len(found) == int(args[1].lstrip("="))
    if (l1, kind) == ("attribute", "color"):
        return bool(found) and all(d.color == args[1] for d in found)
    if (l1, kind) == ("attribute", "size"):
        return bool(found) and all(d.size == SIZE_DRAWN[args[1]] for d in found)
    if (l1, kind) == ("relation", "spatial") and args[1] == "image":
        return bool(found) and all(in_region(d, args[2]) for d in found)
    if (l1, kind) == ("relation", "spatial"):
        targets = objects.get(args[1], [])
        return bool(found and targets) and all(args[2] in relative_position(a, b) for a in found for b in targets)
    raise ValueError(f"the shapes world does not ask {l1} - {kind} ({', '.join(args)})")


# ----------------------------------------------------------------------------------------------- the prompt

def render_dense(row: dict) -> str:
    """The prompt of a dense row: its shapes (one sentence, or two for more than three), then its relations."""
    inc = row["include"]
    nps = [noun_phrase(it, SHAPES_LEXICON, counted=False) for it in inc]
    cut = len(nps) if len(nps) <= 3 else (len(nps) + 1) // 2
    sentences = [f"a photo of {join_list(nps[:cut])}."] + ([f"{join_list(nps[cut:])}."] if nps[cut:] else [])

    def ref(it: dict) -> str:
        return " ".join(w for w in ("the", it.get("color"), _noun(it)) if w)

    for it in inc:
        if "position" in it:
            rel, j = it["position"]
            sentences.append(f"{ref(it)} {SHAPES_LEXICON.relation_phrases[rel]} {ref(inc[j])}.")
    return " ".join(sentences)


def check_dense(row: dict) -> None:
    """A dense row the question graph can ask about: distinct shapes, counts with number words, a prompt that says
    what the row asks (render_dense's words)."""
    classes = [it["class"] for it in row["include"]]
    if len(set(classes)) != len(classes):
        raise ValueError(f"a dense row names each shape once (one group per shape), got {classes}")
    if any(not 1 <= it["count"] < len(NUMBER_WORDS) for it in row["include"]):
        raise ValueError(f"a dense row's counts are 1..{len(NUMBER_WORDS) - 1}")
    if prompt_tokens(row["prompt"]) != prompt_tokens(render_dense(row)):
        raise ValueError(f"the prompt {row['prompt']!r} does not say what include asks for (the dense grammar says "
                         f"{render_dense(row)!r})")


# ---------------------------------------------------------------------------------------- scenes and drawing

@lru_cache(maxsize=None)
def _detection(o: Obj) -> Detection:
    """What the detector finds for one object of a clean render (scene.scene_detections, for one object)."""
    x1, y1, x2, y2, area = _footprint(o.cls, o.size)
    ox, oy = o.col * CELL, o.row * CELL
    return Detection(o.cls, o.color, o.size, (ox + x1, oy + y1, ox + x2, oy + y2), area)


@lru_cache(maxsize=None)
def _relations(box_a: tuple, box_b: tuple, threshold: float) -> frozenset[str]:
    """GenEval's relative position of two boxes, remembered: the sampler asks it of every free spot."""
    return frozenset(relative_position(Detection("", "", "", box_a, 0), Detection("", "", "", box_b, 0), threshold))


def _clear(a: Detection, b: Detection, rel: str) -> bool:
    """`a rel b` and nothing else, still true at twice GenEval's box shrink: the sampler's margin (scene.realise)."""
    return _relations(a.box, b.box, POSITION_THRESHOLD) == {rel} and rel in _relations(a.box, b.box, 0.2)


def _place(items: list[dict], rng: np.random.Generator, p_large: float = P_LARGE) -> list[list[Obj]] | None:
    """One random placement of every item's objects in include order, each on a free spot that keeps its region
    and its relation (with margin) to the objects of its target, already placed; None at a dead end."""
    occupied: set[tuple[int, int]] = set()
    groups: list[list[Obj]] = []
    for it in items:
        group = []
        for _ in range(it["count"]):
            size = SIZE_DRAWN.get(it.get("size")) or ("large" if rng.random() < p_large else "small")
            color = it.get("color") or COLORS[rng.integers(len(COLORS))]
            spots = [o for o in _spots(it["class"], size, color) if occupied.isdisjoint(o.cells())
                     and ("region" not in it or in_region(_detection(o), it["region"]))
                     and ("position" not in it or all(_clear(_detection(o), _detection(b), it["position"][0])
                                                      for b in groups[it["position"][1]]))]
            if not spots:
                return None
            o = spots[rng.integers(len(spots))]
            occupied.update(o.cells())
            group.append(o)
        groups.append(group)
    return groups


@lru_cache(maxsize=None)
def _spots(cls: str, size: str, color: str) -> tuple[Obj, ...]:
    """Every place on the grid for an object of that shape, size and colour."""
    span = 2 if size == "large" else 1
    return tuple(Obj(cls, color, size, r, c) for r in range(GRID - span + 1) for c in range(GRID - span + 1))


def realise_dense(row: dict, rng: np.random.Generator) -> list[Obj]:
    """A random scene of exactly the row's objects that answers every question of its graph "yes"."""
    check_dense(row)
    qs = questions(row)
    for _ in range(MAX_TRIES):
        groups = _place(row["include"], rng)
        if groups is not None:
            objs = [o for g in groups for o in g]
            if all(answer(scene_detections(objs), qs).values()):
                return objs
    raise UnsatisfiableError(f"no scene satisfies the dense prompt {row['prompt']!r} after {MAX_TRIES} tries")


def draw_dense(rng: np.random.Generator) -> dict:
    """One random dense row: a random scene of three to six shapes, described with facts it holds."""
    for _ in range(MAX_TRIES):
        row = _describe(*_random_scene(rng), rng)
        if row is not None:
            return row
    raise RuntimeError("no dense prompt could be drawn")  # not reached: almost every scene has a clear relation


def _random_scene(rng: np.random.Generator) -> tuple[list[dict], list[list[Obj]] | None]:
    k = int(rng.integers(GROUPS[0], GROUPS[1], endpoint=True))
    classes = [SHAPES[i] for i in rng.choice(len(SHAPES), k, replace=False)]
    colors = [COLORS[i] for i in rng.choice(len(COLORS), k, replace=False)]
    counts = [int(c) for c in rng.choice(list(COUNT_WEIGHTS), size=k, p=list(COUNT_WEIGHTS.values()))]
    while sum(counts) > MAX_OBJECTS:
        counts[int(np.argmax(counts))] -= 1
    items = [{"class": c, "count": n, "color": col} for c, n, col in zip(classes, counts, colors)]
    if rng.random() < P_SIZES:  # one or two larger shapes, one or two smaller ones
        order = [int(i) for i in rng.permutation(k)]
        n_large = 1 + int(rng.random() < 0.3)
        larger, smaller = order[:n_large], order[n_large:n_large + 1 + int(rng.random() < 0.5)]
        if sum(counts[i] for i in larger) <= MAX_LARGE:
            for i in larger:
                items[i]["size"] = "larger"
            for i in smaller:
                items[i]["size"] = "smaller"
    return items, _place(items, rng)


def _describe(items: list[dict], groups: list[list[Obj]] | None, rng: np.random.Generator) -> dict | None:
    """A dense row that says true things about the scene: every shape with its count; colours, sizes, regions and
    relations (at least one) where they hold; trimmed to MAX_PROMPT_TOKENS. None when the scene has no clear
    relation or no description fits."""
    if groups is None:
        return None
    dets = [[_detection(o) for o in g] for g in groups]
    said = [{"class": it["class"], "count": it["count"]} for it in items]
    for it, s, ds in zip(items, said, dets):
        if rng.random() < P_COLOR:
            s["color"] = it["color"]
        if "size" in it:
            s["size"] = it["size"]
        regions = [r for r in REGIONS if all(in_region(d, r) for d in ds)]
        if regions and rng.random() < P_REGION:
            s["region"] = regions[rng.integers(len(regions))]
    relations = _pick_relations(dets, rng)
    if not relations:
        return None
    while True:
        row = _assemble(said, relations)
        if len(prompt_tokens(row["prompt"])) <= MAX_PROMPT_TOKENS:
            return row
        if not _trim(said, relations, rng):
            return None


def _pick_relations(dets: list[list[Detection]], rng: np.random.Generator) -> list[tuple[int, str, int]]:
    """Up to RELATIONS_PER_PROMPT clear relations (i rel j: every object of i is `rel` of every object of j), each
    shape the subject of at most one and no cycle, so that each is a GenEval position to an earlier item."""
    candidates = [(i, rel, j) for i in range(len(dets)) for j in range(len(dets)) if i != j
                  for rel in ("left of", "right of", "above", "below")
                  if all(_clear(a, b, rel) for a in dets[i] for b in dets[j])]
    rng.shuffle(candidates)
    want = int(rng.integers(RELATIONS_PER_PROMPT[0], RELATIONS_PER_PROMPT[1], endpoint=True))
    target: dict[int, int] = {}
    picked = []
    for i, rel, j in candidates:
        if len(picked) == want:
            break
        k, loop = j, False
        while k in target:  # following j's chain back to i would close a cycle
            k = target[k]
            loop = loop or k == i
        if i in target or loop or j == i or {i, j} in [{a, b} for a, _, b in picked]:
            continue
        target[i] = j
        picked.append((i, rel, j))
    return picked


def _assemble(said: list[dict], relations: list[tuple[int, str, int]]) -> dict:
    """The row: items ordered so that every relation's target comes before its subject."""
    target = {i: (rel, j) for i, rel, j in relations}
    order: list[int] = []

    def visit(i: int) -> None:
        if i not in order:
            if i in target:
                visit(target[i][1])
            order.append(i)

    for i in range(len(said)):
        visit(i)
    include = []
    for i in order:
        it = dict(said[i])
        if i in target:
            it["position"] = [target[i][0], order.index(target[i][1])]
        include.append(it)
    row = {"tag": DPG_TAG, "include": include}
    row["prompt"] = render_dense(row)
    return row


def _trim(said: list[dict], relations: list, rng: np.random.Generator) -> bool:
    """Say one thing less (a region, then a relation beyond the first, then the sizes, then a colour); False when
    nothing is left to drop."""
    have = [s for s in said if "region" in s]
    if have:
        del have[rng.integers(len(have))]["region"]
        return True
    if len(relations) > 1:
        relations.pop(int(rng.integers(len(relations))))
        return True
    if any("size" in s for s in said):
        for s in said:
            s.pop("size", None)
        return True
    have = [s for s in said if "color" in s]
    if have:
        del have[rng.integers(len(have))]["color"]
        return True
    return False
