"""Shared-vocabulary transformers models (`causal-lm:PATH`): any causal LM whose vocabulary holds the image codes
as one contiguous id range, declared by a small adapter file in the model folder (X-Omni-style models, or a
custom UMM). Emu3 (gvu.models.adapters.emu3) is the same machinery with Emu3's own layout.

An image is a grid of `rows x cols` codes. Some models write fixed tokens inside the image (Emu3: an end-of-line
token after every row, then end-of-frame and end-of-image). Those positions allow exactly one token, so under the
per-position vocabulary mask (codes inside a row, the row-end token at a row end) they have probability 1: the
sampler feeds them without drawing and neither path reports a log-prob for them (log 1 = 0, no gradient). At code
positions both the sampler and the teacher-forced pass softmax over the code range only (`_code_logits`), then
`filter_logits`; that is the same renormalisation, so `exp(logp - old_logp) == 1` at step 0.

The sampling loop and the teacher-forced pass are SharedVocabUMM's (gvu.models.shared_vocab): one loop for every
shared-vocabulary model. The transformers plumbing is in gvu.models.hf.

Letters: P prompts, G group size, N rows, B batch rows (2N with guidance), S sequence length, T image codes,
C codes, K tokens fed in one cached step.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from gvu.models.hf import (finish_loading, flag, import_callable, load_options, load_pretrained, load_tokenizer,
                           needs_consent, PlainTokenizer, save_transformers_model)
from gvu.models.shared_vocab import SharedVocabLayout, SharedVocabUMM

ADAPTER_FILES = ("gvu_causal_lm.yaml", "gvu_causal_lm.yml", "gvu_causal_lm.json")


# ------------------------------------------------------------------------------------------ the model

class GridSharedVocabUMM(SharedVocabUMM):
    """SharedVocabUMM built from templates: a template for the answer the reward scores (chat models put a space
    after "ASSISTANT:"), a configurable unconditional prompt for guidance (a negative prompt, or empty), and
    saving with its adapter file."""

    def __init__(self, lm, tokenizer, layout: SharedVocabLayout, answer_template: str = "{prompt}",
                 unconditional_prompt: str = ""):
        super().__init__(lm, tokenizer, layout)
        self.answer_template = answer_template
        self.uncond_ids = list(tokenizer.encode(unconditional_prompt)) if unconditional_prompt else []
        self.kind, self.source, self.options = "causal-lm", None, {}

    def _answer_ids(self, prompts: list[str]) -> list[list[int]]:
        return [list(self.tokenizer.encode(self.answer_template.format(prompt=p))) for p in prompts]

    def save_pretrained(self, directory, extra: dict | None = None) -> Path:
        src = Path(self.source) if self.source else None

        def files(tmp: Path):
            import yaml

            self.tokenizer.hf.save_pretrained(tmp)
            adapter_file = find_adapter_file(src) if src is not None and src.is_dir() else None
            if adapter_file is None:
                raise ValueError("this model was not loaded from an adapter folder, so there is no adapter file to "
                                 "save with the full weights; train with use_lora or write the file by hand")
            data = yaml.safe_load(adapter_file.read_text()) or {}
            data.pop("model", None)  # the weights now live in this folder
            (tmp / ADAPTER_FILES[0]).write_text(yaml.safe_dump(data, sort_keys=False))
            for f in src.glob("*.py"):  # a decoder module kept next to the weights
                shutil.copy2(f, tmp / f.name)
        return save_transformers_model(self, directory, extra, files)


# ------------------------------------------------------------------------------------------ templates -> layout

@dataclass(frozen=True)
class SequenceFormat:
    """How prompts, images and instructions become token sequences, as text templates. Each piece is tokenized
    on its own without special tokens; {bos} and {eos} stand for the tokenizer's tokens, {rows} and {cols} for
    the grid. Generation: generation(prompt) + image_prefix + codes; understanding: understanding with {image} =
    image_prefix + codes (with row_end after each row) + image_suffix, then answer(prompt) + answer_end."""

    generation: str = "{bos}{prompt}"
    """Must contain {prompt}; the image follows."""
    image_prefix: str = ""
    """Tokens before the first code (begin-of-image, size tokens)."""
    row_end: str = ""
    """Tokens after every row of codes (Emu3: '<|extra_200|>'); empty for a flat sequence."""
    image_suffix: str = ""
    """Tokens after the image (end-of-image)."""
    understanding: str = "{bos}{image}{instruction}"
    """Must contain {image} then {instruction}; the scored answer follows."""
    answer: str = "{prompt}"
    """The text the reward scores (e.g. ' {prompt}' after 'ASSISTANT:')."""
    answer_end: str = "{eos}"
    """After the answer (only for building training sequences)."""
    unconditional_prompt: str = ""
    """Replaces the prompt in the guidance rows (a negative prompt, or empty)."""


def _split(template: str, name: str, where: str) -> tuple[str, str]:
    key = "{" + name + "}"
    if template.count(key) != 1:
        raise ValueError(f"{where} template {template!r} must contain {key} exactly once")
    a, b = template.split(key)
    return a, b


def build_grid_layout(hf_tokenizer, fmt: SequenceFormat, *, image_token_offset: int, num_codes: int,
                      grid: tuple[int, int], decoder, encoder=None, pad_id: int | None = None) -> SharedVocabLayout:
    rows, cols = (int(x) for x in grid)
    subs = {"bos": hf_tokenizer.bos_token or "", "eos": hf_tokenizer.eos_token or "", "rows": rows, "cols": cols}
    for key, tok in (("bos", hf_tokenizer.bos_token), ("eos", hf_tokenizer.eos_token)):
        if tok is None and any("{" + key + "}" in t for t in dataclasses.astuple(fmt)):
            raise ValueError(f"a template uses {{{key}}} but the tokenizer has no {key} token")

    def ids(text: str) -> tuple[int, ...]:
        for k, v in subs.items():
            text = text.replace("{" + k + "}", str(v))
        return tuple(hf_tokenizer.encode(text, add_special_tokens=False)) if text else ()

    gen_a, gen_b = _split(fmt.generation, "prompt", "generation")
    und_a, rest = _split(fmt.understanding, "image", "understanding")
    und_b, und_c = _split(rest, "instruction", "understanding (after {image})")
    _split(fmt.answer, "prompt", "answer")
    eos = hf_tokenizer.eos_token_id
    pad = pad_id if pad_id is not None else hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set pad_token in the adapter file")
    vocab = len(hf_tokenizer)
    return SharedVocabLayout(
        image_token_offset=int(image_token_offset), num_codes=int(num_codes), num_image_tokens=rows * cols,
        pad_id=int(pad), eos_id=int(eos if eos is not None else pad),
        gen_prefix=ids(gen_a), gen_suffix=ids(gen_b + fmt.image_prefix), gen_end=ids(fmt.image_suffix),
        und_prefix=ids(und_a + fmt.image_prefix), und_after_image=ids(fmt.image_suffix + und_b),
        und_before_answer=ids(und_c), und_suffix=ids(fmt.answer_end),
        caption_ids=tuple(i for i in range(vocab) if not image_token_offset <= i < image_token_offset + num_codes),
        decoder=decoder, encoder=encoder, row_width=cols, row_end=ids(fmt.row_end))


# ------------------------------------------------------------------------------------------ the adapter file

@dataclass(frozen=True)
class CausalLMAdapter:
    """The adapter file (gvu_causal_lm.yaml or .json in the model folder): where the codes live, the grid, the
    sequence templates (SequenceFormat's keys, at the top level of the file) and the pixel decoder."""

    image_token_offset: int
    """Vocabulary id of image code 0; codes 0..num_codes-1 are ids image_token_offset + code."""
    num_codes: int
    """Size of the image codebook."""
    grid: tuple[int, int]
    """[rows, cols] of codes per image; T = rows * cols."""
    decoder: str
    """'module:function' turning codes [N, T] (numpy int) into uint8 pixels [N, H, W, 3]; a module file in the
    model folder is found first."""
    encoder: str = ""
    """Optional 'module:function' pixels -> codes, for the reward via pixels."""
    model: str = ""
    """Weights to load (folder or hub name); empty: the folder holding this file."""
    trust_remote_code: bool = False
    """The model needs its own modelling code (passed to from_pretrained); the file alone does not let it run: the
    spec must say trust_remote_code=1 too."""
    pad_token: str = ""
    """Padding token text; empty: the tokenizer's pad token, else its eos token."""
    format: SequenceFormat = field(default_factory=SequenceFormat)


def read_adapter_file(path: Path) -> CausalLMAdapter:
    import yaml

    data = yaml.safe_load(path.read_text()) or {}  # YAML reads JSON too
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of adapter keys")
    own = {f.name for f in dataclasses.fields(CausalLMAdapter)} - {"format"}
    fmt_keys = {f.name for f in dataclasses.fields(SequenceFormat)}
    unknown = sorted(set(data) - own - fmt_keys)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known keys: {', '.join(sorted(own | fmt_keys))}")
    missing = [k for k in ("image_token_offset", "num_codes", "grid", "decoder") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing} (see docs/real-models.md)")
    grid = data["grid"]
    if not (isinstance(grid, (list, tuple)) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
        raise ValueError(f"{path}: grid must be [rows, cols] of positive integers, got {grid!r}")
    fmt = SequenceFormat(**{k: str(v) for k, v in data.items() if k in fmt_keys})
    return CausalLMAdapter(**{k: v for k, v in data.items() if k in own and k != "grid"}, grid=tuple(grid),
                           format=fmt)


def find_adapter_file(folder: Path) -> Path | None:
    return next((folder / n for n in ADAPTER_FILES if (folder / n).is_file()), None)


def load_causal_lm(path: str | os.PathLike, device=None, dtype="auto", gradient_checkpointing=False,
                   attn_implementation: str | None = None, logits_chunk=0,
                   trust_remote_code=False) -> GridSharedVocabUMM:
    """A GridSharedVocabUMM from a folder holding an adapter file (and usually the weights). `trust_remote_code`:
    the user's consent to run the model's own modelling code, which the adapter file's key asks for."""
    from transformers import AutoModelForCausalLM

    folder = Path(path)
    adapter_file = find_adapter_file(folder) if folder.is_dir() else None
    if adapter_file is None:
        why = "is not a folder" if not folder.is_dir() else f"holds no adapter file ({' or '.join(ADAPTER_FILES)})"
        raise FileNotFoundError(f"causal-lm:{path}: {folder} {why}; the folder must declare where the image codes "
                                "live (see docs/real-models.md)")
    ad = read_adapter_file(adapter_file)
    src = ad.model or str(folder)
    if ad.trust_remote_code and not flag(trust_remote_code):  # a file in the folder cannot consent for the user
        raise needs_consent(f"causal-lm:{path}", f"{adapter_file} says trust_remote_code: true, so loading {src} "
                            "would run its own modelling code (the files its config.json's auto_map names)")
    tok = load_tokenizer(src, "causal-lm", ad.trust_remote_code)
    lm = load_pretrained(AutoModelForCausalLM, src, "causal-lm", dtype, attn_implementation,
                         trust_remote_code=ad.trust_remote_code)
    vocab = lm.get_output_embeddings().weight.shape[0]
    if ad.image_token_offset + ad.num_codes > vocab:
        raise ValueError(f"{adapter_file}: codes {ad.image_token_offset}..{ad.image_token_offset + ad.num_codes - 1}"
                         f" lie beyond the model's vocabulary ({vocab})")
    pad_id = tok.convert_tokens_to_ids(ad.pad_token) if ad.pad_token else None
    layout = build_grid_layout(tok, ad.format, image_token_offset=ad.image_token_offset, num_codes=ad.num_codes,
                               grid=ad.grid, decoder=import_callable(ad.decoder, folder),
                               encoder=import_callable(ad.encoder, folder) if ad.encoder else None, pad_id=pad_id)
    umm = GridSharedVocabUMM(finish_loading(lm, device, flag(gradient_checkpointing)), PlainTokenizer(tok), layout,
                             answer_template=ad.format.answer, unconditional_prompt=ad.format.unconditional_prompt)
    umm.source = str(folder)
    umm.logits_chunk = int(logits_chunk)
    umm.options = load_options(dtype, attn_implementation, logits_chunk=umm.logits_chunk or None)
    return umm
