"""The prompt grammar, both directions: GenEval-format metadata -> prompt text, and text -> metadata.

One grammar covers GenEval's six tags and GenEval++'s seven. A prompt is "a photo of" followed by either a
relation clause (position: "A to the left of B") or a list of noun phrases joined GenEval's way ("A and B",
"A, B, and C"). A noun phrase is [determiner] [size] [colour] noun [region]. The determiner is an article
("a"/"an") for single objects, a number word for counts, and nothing for a bare plural (a count left out, as
the sensitivity study needs). GenEval++'s count tags say "one star" where the others say "a star", which is
how the text keeps the tag recoverable.

A `Lexicon` holds the language-dependent parts. `SHAPES_LEXICON` speaks correct English ("an orange heart",
"two crosses", "to the left of"); `coco_lexicon()` keeps GenEval's COCO quirks (article by first letter,
"es" after a final s, "left of"). Parsing also reads GenEval's own relation phrases ("left of", "right of",
"above", "below") with either lexicon, so a prompt written GenEval's way ("a photo of a circle right of a star")
says the same row as the lexicon's ("... to the right of ..."); rendering always writes the lexicon's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gvu.world import spec

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
REGION_PHRASES = {"left": "on the left", "right": "on the right", "above": "at the top", "below": "at the bottom"}
COUNTED_TAGS = ("spatial_count_attr", "color_count_attr", "multi_object_count_attr")
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVALPP_TAGS = ("color_attr", "counting", "spatial_count_attr", "color_spatial_attr", "color_count_attr",
                  "multi_object_count_attr", "size_spatial_attr")
PREFIX = "a photo of"


class GrammarError(ValueError):
    """Text the grammar cannot produce, or metadata it cannot say."""


@dataclass(frozen=True)
class Lexicon:
    classes: tuple[str, ...]
    plurals: dict[str, str]
    relation_phrases: dict[str, str]
    vowel_sound: bool = True  # True: "an" before a vowel sound; False: GenEval's first-letter rule
    colors: tuple[str, ...] = spec.COLORS
    _by_words: dict = field(default_factory=dict, compare=False, repr=False)

    def article(self, next_word: str) -> str:
        return "an" if next_word[0] in "aeiou" else "a"

    def noun(self, cls: str, count: int | None) -> str:
        return cls if count == 1 else self.plurals[cls]


SHAPES_LEXICON = Lexicon(
    classes=spec.SHAPES, plurals=dict(spec.PLURALS),
    relation_phrases={"left of": "to the left of", "right of": "to the right of", "above": "above",
                      "below": "below"},
)


def coco_lexicon(classes: tuple[str, ...] | list[str]) -> Lexicon:
    classes = tuple(classes)
    plurals = {c: c + ("es" if c.endswith("s") else "s") for c in classes}
    return Lexicon(classes=classes, plurals=plurals, vowel_sound=False,
                   relation_phrases={r: r for r in spec.RELATIONS})


# ---------------------------------------------------------------------------------------------------- render

def noun_phrase(item: dict, lex: Lexicon, counted: bool) -> str:
    count = item.get("count")
    words = []
    if item.get("size"):
        words.append(item["size"])
    if item.get("color"):
        words.append(item["color"])
    words.append(lex.noun(item["class"], count))
    if count is None:
        det = None
    elif count == 1 and not counted:
        det = lex.article(words[0])
    else:
        if not 0 < count < len(NUMBER_WORDS):
            raise GrammarError(f"count {count} has no number word (1..{len(NUMBER_WORDS) - 1})")
        det = NUMBER_WORDS[count]
    text = " ".join(([det] if det else []) + words)
    if item.get("region"):
        text += " " + REGION_PHRASES[item["region"]]
    return text


def join_list(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return f"{parts[0]} and {parts[1]}"
    return ", ".join(parts[:-1]) + ", and " + parts[-1]


def render_prompt(row: dict, lex: Lexicon = SHAPES_LEXICON) -> str:
    """The prompt text of a metadata row (its `prompt` field is ignored)."""
    include = row["include"]
    counted = row.get("tag") in COUNTED_TAGS
    positioned = [i for i, it in enumerate(include) if it.get("position")]
    if positioned:
        if len(include) != 2 or positioned != [1] or include[1]["position"][1] != 0:
            raise GrammarError("a position prompt has exactly two items, the second placed relative to the first")
        rel = include[1]["position"][0]
        return (f"{PREFIX} {noun_phrase(include[1], lex, counted)} {lex.relation_phrases[rel]} "
                f"{noun_phrase(include[0], lex, counted)}")
    return f"{PREFIX} {join_list([noun_phrase(it, lex, counted) for it in include])}"


# ----------------------------------------------------------------------------------------------------- parse

_TOKEN_RE = re.compile(r"[a-z]+|,")


def words_of(text: str) -> list[str]:
    """Lower-cased words and commas; the grammar's unit of text."""
    return _TOKEN_RE.findall(text.lower())


class _Parser:
    def __init__(self, text: str, lex: Lexicon):
        self.w = words_of(text)
        self.i = 0
        self.lex = lex
        nouns = {}
        for c in lex.classes:
            nouns[tuple(c.split())] = (c, 1)
            nouns.setdefault(tuple(lex.plurals[c].split()), (c, 2))
        self.nouns = sorted(nouns.items(), key=lambda kv: -len(kv[0]))  # longest match first
        # The lexicon's phrase and GenEval's own ("a dog right of a teddy bear"): both say the same relation.
        phrases = {(tuple(p.split()), r) for r, p in lex.relation_phrases.items()}
        phrases |= {(tuple(r.split()), r) for r in spec.RELATIONS}
        self.relations = sorted(phrases, key=lambda kv: (-len(kv[0]), kv[0]))
        self.regions = [(tuple(p.split()), r) for r, p in REGION_PHRASES.items()]

    def fail(self, what: str):
        got = " ".join(self.w[self.i:self.i + 3]) or "the end"
        raise GrammarError(f"expected {what} at word {self.i + 1} (found {got!r})")

    def peek(self, seq: tuple[str, ...]) -> bool:
        return tuple(self.w[self.i:self.i + len(seq)]) == seq

    def take(self, seq: tuple[str, ...]) -> bool:
        if self.peek(seq):
            self.i += len(seq)
            return True
        return False

    def noun_phrase(self) -> tuple[dict, str]:
        item: dict = {}
        style = "bare"
        if self.take(("a",)) or self.take(("an",)):
            style, count = "article", 1
        elif self.i < len(self.w) and self.w[self.i] in NUMBER_WORDS[1:]:
            count = NUMBER_WORDS.index(self.w[self.i])
            style = "number"
            self.i += 1
        else:
            count = None
        size = next((s for s in spec.SIZE_WORDS if self.take((s,))), None)
        # A colour word is a colour only when an object name follows: COCO has a class "orange" ("an orange").
        color = next((c for c in self.lex.colors if self.peek((c,)) and any(
            tuple(self.w[self.i + 1:self.i + 1 + len(seq)]) == seq for seq, _ in self.nouns)), None)
        if color:
            self.i += 1
        for seq, (cls, number) in self.nouns:
            if self.take(seq):
                break
        else:
            self.fail("an object name")
        if count is None and number == 1:
            self.fail("a determiner before a singular noun")
        if count is not None and (count == 1) != (number == 1) and self.lex.plurals[cls] != cls:
            self.fail(f"{'a singular' if count == 1 else 'a plural'} noun after the count {count}")
        item["class"] = cls
        item["count"] = count
        if color:
            item["color"] = color
        if size:
            item["size"] = size
        for seq, region in self.regions:
            if self.take(seq):
                item["region"] = region
                break
        return item, style

    def parse(self) -> dict:
        if not self.take(tuple(PREFIX.split())):
            self.fail(f"{PREFIX!r}")
        first, style = self.noun_phrase()
        for seq, rel in self.relations:
            if self.take(seq):
                second, style2 = self.noun_phrase()
                self.end()
                first["position"] = [rel, 0]
                return {"tag": "position", "include": [second, first], "_styles": {style, style2}}
        items, styles = [first], {style}
        while self.i < len(self.w):
            if self.take((",",)):
                if self.take(("and",)):
                    item, s = self.noun_phrase()
                    items.append(item); styles.add(s)
                    break
            elif self.take(("and",)):
                item, s = self.noun_phrase()
                items.append(item); styles.add(s)
                break
            else:
                self.fail("',' or 'and'")
            item, s = self.noun_phrase()
            items.append(item); styles.add(s)
        self.end()
        if len(items) == 2 and any(self.w[k] == "," for k in range(len(self.w))):
            raise GrammarError("two items are joined by 'and' alone")
        return {"tag": _infer_tag(items, styles), "include": items, "_styles": styles}

    def end(self):
        if self.i != len(self.w):
            self.fail("the end of the prompt")


def _infer_tag(items: list[dict], styles: set[str]) -> str:
    if any("size" in it for it in items):
        return "size_spatial_attr"
    if len(items) == 1:
        it = items[0]
        if it["count"] is not None and it["count"] > 1:
            return "counting"
        return "colors" if "color" in it else "single_object"
    has_color = any("color" in it for it in items)
    if "number" in styles:
        if any("region" in it for it in items):
            return "spatial_count_attr"
        return "color_count_attr" if has_color else "multi_object_count_attr"
    if any("region" in it for it in items):
        return "color_spatial_attr"
    return "color_attr" if has_color else "two_object"


def parse_prompt(text: str, lex: Lexicon = SHAPES_LEXICON) -> dict:
    """The metadata row a prompt text says (tag, include, exclude for counting, prompt)."""
    out = _Parser(text, lex).parse()
    out.pop("_styles")
    row = {"tag": out["tag"], "include": out["include"]}
    if row["tag"] == "counting":
        it = row["include"][0]
        row["exclude"] = [{"class": it["class"], "count": it["count"] + 1}]
    row["prompt"] = text
    return row


def vocabulary(lex: Lexicon = SHAPES_LEXICON) -> list[str]:
    """Every word the grammar can write with this lexicon, in a fixed order."""
    words = PREFIX.split() + ["a", "an", "and", ","] + list(NUMBER_WORDS[1:]) + list(spec.SIZE_WORDS)
    words += list(lex.colors)
    for c in lex.classes:
        words += c.split() + lex.plurals[c].split()
    for p in list(lex.relation_phrases.values()) + list(REGION_PHRASES.values()):
        words += p.split()
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)
