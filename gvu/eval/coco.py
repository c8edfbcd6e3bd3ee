"""GenEval's official prompt set, regenerated: `build_geneval_coco(seed=43, n=100)` written with
`write_metadata` / `write_prompts` is byte-identical to GenEval's `evaluation_metadata.jsonl` and
`generation_prompts.txt` (553 rows; checked in tests/test_coco_prompts.py).

Byte identity pins down details the paper does not state, all reproduced here on purpose:
- one numpy Generator is drawn from in a fixed order: all single_object draws, then two_object, counting, colors,
  position, color_attr (each task's n samples before the next task's);
- the English is naive: "an" if the next word starts with a vowel letter ("an orange", "an umbrella"),
  plurals add "es" after a final "s" and "s" otherwise, so the official file says "benchs", "knifes",
  "sandwichs", "sheeps", "toothbrushs" and "persons";
- position prompts name the moving object first ("a dog right of a teddy bear") but the metadata lists the
  anchor first, with the moving object's `position` pointing back to index 0;
- colour tasks never colour "person": the class index is drawn from the 79 others by shifting a draw in
  [1, 79] by the index of "person" modulo 80 ("person" is index 0, so in practice the draw is used as is);
- duplicates (same tag, objects and prompt) are dropped keeping the first, which is why two_object has 99 rows,
  counting 80 and colors 94 rather than 100.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

# GenEval's ten colour words, in the order the generator indexes them.
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
GENEVAL_RELATIONS = ("left of", "right of", "above", "below")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_UNCOLORED = "person"  # GenEval avoids "[COLOR] person" prompts


def load_coco_classes() -> list[str]:
    """GenEval's 80 COCO class names (its spelling, e.g. "hair drier"), in file order."""
    text = resources.files("gvu.eval").joinpath("data/geneval/object_names.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def with_article(phrase: str) -> str:
    """GenEval's article rule: looks only at the first letter of the next word ("an orange", "a hair drier")."""
    return f"an {phrase}" if phrase[0] in "aeiou" else f"a {phrase}"


def make_plural(name: str) -> str:
    """GenEval's plural rule: "es" after a final "s" ("buses", "skises"), else "s" ("benchs", "sheeps")."""
    return f"{name}es" if name.endswith("s") else f"{name}s"


def _colorable_indices(rng: np.random.Generator, classes: list[str], size: int | None) -> np.ndarray | int:
    """Draw class indices for colour tasks, skipping "person" exactly as GenEval does.

    GenEval draws from [1, C-1] and rotates by the index of "person", so the rotation never lands on it (and
    keeps the RNG stream identical). A class list without "person" draws from all classes instead.
    """
    n_cls = len(classes)
    if _UNCOLORED not in classes:
        return rng.choice(n_cls, size=size, replace=False) if size else rng.choice(n_cls)
    drawn = (rng.choice(n_cls - 1, size=size, replace=False) if size else rng.choice(n_cls - 1)) + 1
    return (drawn + classes.index(_UNCOLORED)) % n_cls


def _single_object(rng: np.random.Generator, classes: list[str]) -> list[dict]:
    # One draw of a full permutation: every class exactly once, in random order.
    order = rng.choice(len(classes), size=len(classes), replace=False)
    return [{"tag": "single_object", "include": [{"class": classes[i], "count": 1}],
             "prompt": f"a photo of {with_article(classes[i])}"} for i in order]


def _two_object(rng: np.random.Generator, classes: list[str]) -> dict:
    a, b = rng.choice(len(classes), size=2, replace=False)
    return {"tag": "two_object",
            "include": [{"class": classes[a], "count": 1}, {"class": classes[b], "count": 1}],
            "prompt": f"a photo of {with_article(classes[a])} and {with_article(classes[b])}"}


def _counting(rng: np.random.Generator, classes: list[str], max_count: int = 4) -> dict:
    idx = rng.choice(len(classes))
    num = int(rng.integers(2, max_count, endpoint=True))
    # The exclude rule "count+1 of the same class" means "no more than num".
    return {"tag": "counting",
            "include": [{"class": classes[idx], "count": num}],
            "exclude": [{"class": classes[idx], "count": num + 1}],
            "prompt": f"a photo of {NUMBER_WORDS[num]} {make_plural(classes[idx])}"}


def _colors(rng: np.random.Generator, classes: list[str]) -> dict:
    idx = _colorable_indices(rng, classes, None)
    color = GENEVAL_COLORS[rng.choice(len(GENEVAL_COLORS))]
    return {"tag": "colors",
            "include": [{"class": classes[idx], "count": 1, "color": color}],
            "prompt": f"a photo of {with_article(color)} {classes[idx]}"}


def _position(rng: np.random.Generator, classes: list[str]) -> dict:
    a, b = rng.choice(len(classes), size=2, replace=False)
    rel = GENEVAL_RELATIONS[rng.choice(len(GENEVAL_RELATIONS))]
    # "A rel B": B is the anchor and comes first in the metadata; A's position refers back to it.
    return {"tag": "position",
            "include": [{"class": classes[b], "count": 1},
                        {"class": classes[a], "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {with_article(classes[a])} {rel} {with_article(classes[b])}"}


def _color_attr(rng: np.random.Generator, classes: list[str]) -> dict:
    a, b = _colorable_indices(rng, classes, 2)
    ca, cb = (GENEVAL_COLORS[i] for i in rng.choice(len(GENEVAL_COLORS), size=2, replace=False))
    return {"tag": "color_attr",
            "include": [{"class": classes[a], "count": 1, "color": ca},
                        {"class": classes[b], "count": 1, "color": cb}],
            "prompt": f"a photo of {with_article(ca)} {classes[a]} and {with_article(cb)} {classes[b]}"}


def build_geneval_coco(seed: int = 43, n: int = 100, classes: list[str] | None = None) -> list[dict]:
    """GenEval's evaluation rows: all classes once (single_object), then n draws per other task, deduplicated.

    With the defaults this is GenEval's official 553-row set. `classes` swaps the vocabulary (e.g. for a
    training set on other nouns) with the same templates and English quirks.
    """
    classes = load_coco_classes() if classes is None else list(classes)
    if len(set(classes)) != len(classes):
        raise ValueError("classes must be distinct; duplicate names would make duplicate prompts")
    # color_attr draws two distinct non-person classes.
    need = 3 if _UNCOLORED in classes else 2
    if len(classes) < need:
        raise ValueError(f"need at least {need} classes (two distinct colourable ones), got {len(classes)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")

    rng = np.random.default_rng(seed)
    rows = _single_object(rng, classes)
    for task in (_two_object, _counting, _colors, _position, _color_attr):
        rows.extend(task(rng, classes) for _ in range(n))

    # GenEval deduplicates on the whole row (it compares YAML dumps, which sort keys); key order is fixed per
    # tag here, so comparing the JSON text is the same test.
    seen: set[str] = set()
    unique = []
    for row in rows:
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique
