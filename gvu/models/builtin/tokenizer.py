"""The built-in model's tokenizer: one id per word of the prompt grammar, plus special tokens and image codes.

A word-level vocabulary is enough because the shapes world's text is closed: every prompt the grammar writes and
the understanding instruction. Unknown words are an error rather than an <unk> id, so a prompt outside the
grammar is caught before it silently trains on a placeholder. Left out: subwords, case (text is lower-cased, as
the grammar's `words_of` does) and any punctuation other than ',' and '.'.

Id layout: special tokens, then words, then the image codes as one contiguous range starting at
`image_token_offset` (image code c has id image_token_offset + c), which is what SharedVocabUMM needs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from gvu.models.protocol import DEFAULT_INSTRUCTION
from gvu.world import grammar, spec

# <boi> opens an image the model writes (generation), <see> an image it reads (understanding): the two branches
# see one vocabulary of codes, and the opener tells the model (and its 2-D reader, gvu.models.builtin.grid) which it is.
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<inst>", "<ans>", "<see>")
FILE_NAME = "tokenizer.json"

# The grammar's words_of plus '.', and any other visible character as its own token so it is reported, not dropped.
_TOKEN_RE = re.compile(r"[a-z]+|[,.]|\S")


def split_words(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


def default_words() -> list[str]:
    words = dict.fromkeys(grammar.vocabulary())
    words.update(dict.fromkeys(split_words(DEFAULT_INSTRUCTION)))
    return list(words)


class WordTokenizer:
    def __init__(self, words: list[str] | None = None, num_codes: int = spec.NUM_CODES):
        words = list(default_words() if words is None else words)
        if len(set(words)) != len(words):
            raise ValueError("the word list has duplicates")
        if clash := set(words) & set(SPECIAL_TOKENS):
            raise ValueError(f"words {sorted(clash)} clash with special tokens")
        self.words = words
        self.num_codes = int(num_codes)
        self._id = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(words))}
        self.word_offset = len(SPECIAL_TOKENS)
        self.image_token_offset = len(SPECIAL_TOKENS) + len(words)
        self.vocab_size = self.image_token_offset + self.num_codes
        (self.pad_id, self.bos_id, self.eos_id, self.boi_id, self.eoi_id, self.inst_id,
         self.ans_id, self.see_id) = (self._id[t] for t in SPECIAL_TOKENS)

    @property
    def word_ids(self) -> range:
        return range(self.word_offset, self.image_token_offset)

    def encode(self, text: str) -> list[int]:
        ids = []
        for w in split_words(text):
            i = self._id.get(w)
            if i is None or w in SPECIAL_TOKENS:
                raise ValueError(f"word {w!r} is not in the model's vocabulary (in {text!r}); the built-in model "
                                 "only knows the prompt grammar's words, see gvu.world.grammar.vocabulary()")
            ids.append(i)
        return ids

    def decode(self, ids, skip_special: bool = True) -> str:
        out: list[str] = []
        for i in (int(i) for i in ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary (size {self.vocab_size})")
            if i >= self.image_token_offset:
                if not skip_special:
                    out.append(f"<img{i - self.image_token_offset}>")
            elif i < self.word_offset:
                if not skip_special:
                    out.append(SPECIAL_TOKENS[i])
            else:
                w = self.words[i - self.word_offset]
                if w in (",", ".") and out:
                    out[-1] += w
                else:
                    out.append(w)
        return " ".join(out)

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"type": "gvu.WordTokenizer", "version": 2, "special_tokens": list(SPECIAL_TOKENS),
                "words": self.words, "num_codes": self.num_codes}
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "WordTokenizer":
        path = Path(directory) / FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: no gvu tokenizer saved in {directory}")
        data = json.loads(path.read_text())
        if data.get("type") != "gvu.WordTokenizer" or tuple(data.get("special_tokens", ())) != SPECIAL_TOKENS:
            raise ValueError(f"{path} is not a gvu WordTokenizer file (or has other special tokens)")
        return cls(data["words"], data["num_codes"])

    def __eq__(self, other) -> bool:
        return isinstance(other, WordTokenizer) and (self.words, self.num_codes) == (other.words, other.num_codes)

    def __repr__(self) -> str:
        return f"WordTokenizer({len(self.words)} words, {self.num_codes} image codes, vocab_size={self.vocab_size})"
