"""The built-in unified model of the shapes world: a small Llama-style decoder over one vocabulary of special
tokens, grammar words and image codes, driven through SharedVocabUMM.

A stock transformers `LlamaForCausalLM` (rather than a hand-written transformer) brings PEFT, save_pretrained,
KV caches and accelerate for free, and exercises the same code path a real UMM adapter uses. Presets only fix
the architecture; what makes a "regular" or a "weak" base is the pretraining mix, decided elsewhere.

Saved folders hold config.json + model.safetensors (save_pretrained), tokenizer.json and gvu.json, written into a
temporary sibling folder and renamed into place, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from gvu.models.builtin.grid import GRID_KEY, GridLlamaForCausalLM, ordinal_init
from gvu.models.builtin.tokenizer import WordTokenizer
from gvu.models.hf import replace_dir
from gvu.models.shared_vocab import SharedVocabLayout, SharedVocabUMM
from gvu.world import render, spec

# Sequences are at most ~70 tokens (36 image tokens + prompt + instruction), so 128 positions leave headroom.
PRESETS: dict[str, dict] = {
    # Tests: a forward on 64 rows in milliseconds.
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    # The demo model: ~0.9M parameters, pretrains on both directions in minutes on two CPU cores.
    # Measured on 2 CPU threads, batch 64: sampling 0.44 s (0.68 s with guidance), teacher-forced forward +
    # backward 0.35 s, so a few thousand pretraining steps fit in about ten minutes.
    "default": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4),
    # ~3.0M parameters, about 2.5x slower to train than default; for longer pretraining budgets.
    "large": dict(hidden_size=192, intermediate_size=576, num_hidden_layers=6, num_attention_heads=4),
}
MAX_POSITIONS = 128
GVU_FILE = "gvu.json"
FORMAT = 2
"""Checkpoint format. 2: the `<see>` opener for understanding images and the optional 2-D reader (grid)."""
REBUILD = "gvu pretrain --preset regular|weak --out DIR"
REQUIRED_FILES = (GVU_FILE, "config.json", "model.safetensors", "tokenizer.json")


def builtin_layout(tok: WordTokenizer) -> SharedVocabLayout:
    return SharedVocabLayout(
        image_token_offset=tok.image_token_offset, num_codes=tok.num_codes, num_image_tokens=spec.NUM_TOKENS,
        pad_id=tok.pad_id, eos_id=tok.eos_id,
        gen_prefix=(tok.bos_id,), gen_suffix=(tok.boi_id,), gen_end=(tok.eoi_id,),
        und_prefix=(tok.bos_id, tok.see_id), und_after_image=(tok.eoi_id, tok.inst_id),
        und_before_answer=(tok.ans_id,), und_suffix=(tok.eos_id,),
        caption_ids=(*tok.word_ids, tok.eos_id),
        decoder=render.decode, encoder=render.encode,
    )


class BuiltinUMM(SharedVocabUMM):
    """SharedVocabUMM with the built-in layout, plus the preset it was built from."""

    kind = "builtin"
    world = "shapes"

    def __init__(self, lm: torch.nn.Module, tokenizer: WordTokenizer, size: str):
        super().__init__(lm, tokenizer, builtin_layout(tokenizer))
        self.size = size

    @property
    def grid(self) -> bool:
        """Whether understanding reads images through the 2-D row+column embedding (gvu.models.builtin.grid)."""
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return hasattr(base, "row_embed")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.lm.parameters())

    def save_pretrained(self, directory, extra: dict | None = None) -> Path:
        """Full weights (LoRA adapters merged into a copy first, so this model keeps its adapters)."""
        lm = self.lm
        if hasattr(lm, "get_base_model"):
            import copy

            lm = copy.deepcopy(lm).merge_and_unload()
        return save_builtin(BuiltinUMM(lm, self.tokenizer, self.size), directory, extra)


def llama_config(size: str, tok: WordTokenizer, grid: bool = True, bidirectional: bool = False,
                 relative: bool = False, rope2d: bool = False, paint: bool = False):
    from transformers import LlamaConfig  # lazy: keeps `import gvu.models.builtin.model` cheap

    if size not in PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[size]
    if grid:
        p = {**p, GRID_KEY: dict(rows=spec.GRID, cols=spec.GRID, image_token_offset=tok.image_token_offset,
                                 num_codes=tok.num_codes, open_id=tok.see_id,
                                 bidirectional=bidirectional, relative=relative, rope2d=rope2d,
                                 **({"paint": True, "boi_id": tok.boi_id} if paint else {}))}
    return LlamaConfig(
        vocab_size=tok.vocab_size, max_position_embeddings=MAX_POSITIONS,
        num_key_value_heads=p["num_attention_heads"], tie_word_embeddings=True,
        attention_dropout=0.0, attention_bias=False, mlp_bias=False, rms_norm_eps=1e-5, rope_theta=10000.0,
        pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, **p,
    )


@torch.no_grad()
def align_embeddings(lm: torch.nn.Module, tok: WordTokenizer) -> None:
    """Start words and image codes from shared factors: the embedding of code (shape, colour, part) is
    shape_f + colour_f + part_f, the word "star" is shape_f[star] ("stars" adds a plural factor) and "red" is
    colour_f[red]. With tied input/output embeddings this makes the image-code readout factorised from the
    first step, and text and image start in one space, as in real UMMs whose image tokenizers are trained for
    semantic alignment. Only the initial values change; every weight trains as usual."""
    E = lm.get_input_embeddings().weight
    std = lm.config.initializer_range
    d = E.shape[1]
    shape_f, color_f, part_f = (torch.randn(n, d) * std for n in (len(spec.SHAPES), len(spec.COLORS), len(spec.PARTS)))
    plural_f = torch.randn(d) * std
    for code in range(1, spec.NUM_CODES):
        s, c, p = spec.parse_code(code)
        E[tok.image_token_offset + code] = (shape_f[spec.SHAPES.index(s)] + color_f[spec.COLORS.index(c)]
                                            + part_f[spec.PARTS.index(p)])
    words = {w: i for i, w in enumerate(tok.words)}
    for k, s in enumerate(spec.SHAPES):
        if s in words:
            E[tok.word_offset + words[s]] = shape_f[k]
        if spec.PLURALS[s] in words:
            E[tok.word_offset + words[spec.PLURALS[s]]] = shape_f[k] + plural_f
    for k, c in enumerate(spec.COLORS):
        if c in words:
            E[tok.word_offset + words[c]] = color_f[k]


def _model_class(grid: bool):
    if grid:
        return GridLlamaForCausalLM
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM


def build_builtin(size: str = "default", seed: int = 0, tokenizer: WordTokenizer | None = None,
                  aligned: bool = True, grid: bool = True, bidirectional: bool = False,
                  relative: bool = False, rope2d: bool = False, paint: bool = False) -> BuiltinUMM:
    """A randomly initialised built-in model (`aligned`: shared word/code factors, see align_embeddings; `grid`:
    understanding reads images with a 2-D row+column embedding, see gvu.models.builtin.grid; False is the flat raster;
    `bidirectional`: with the grid, the tokens of an understanding image also attend to each other both ways;
    `paint`: the image a generation sequence writes gets the grid's row and column embedding and 2-D rotary too).
    The global torch RNG is left as it was."""
    tok = tokenizer or WordTokenizer()
    if bidirectional and not grid:
        raise ValueError("bidirectional image attention is part of the 2-D reader: it needs grid=True")
    if relative and not grid:
        raise ValueError("relative image attention is part of the 2-D reader: it needs grid=True")
    if rope2d and not grid:
        raise ValueError("2-D rotary positions are part of the 2-D reader: they need grid=True")
    if paint and not grid:
        raise ValueError("a 2-D painter (paint) uses the grid's row and column tables: it needs grid=True")
    config = llama_config(size, tok, grid, bidirectional, relative, rope2d, paint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = _model_class(grid)(config)
        if aligned:
            align_embeddings(lm, tok)
        if grid:
            ordinal_init(lm, {w: tok.word_offset + i for i, w in enumerate(tok.words)} if aligned else None)
    return BuiltinUMM(lm.eval(), tok, size)


def is_model_dir(path: str | os.PathLike) -> bool:
    return all((Path(path) / f).is_file() for f in REQUIRED_FILES)


def save_builtin(model: BuiltinUMM, directory: str | os.PathLike, extra: dict | None = None,
                 weights_dtype: str = "float32") -> Path:
    """Write the model to `directory` atomically (replacing a gvu model already there). `extra` goes into
    gvu.json (e.g. how it was pretrained). `weights_dtype='float16'` stores the weights at half the size (the
    config keeps float32, so they load as float32) and rounds the model's own weights to match."""
    if weights_dtype not in ("float32", "float16"):
        raise ValueError(f"weights_dtype must be 'float32' or 'float16', got {weights_dtype!r}")
    target = Path(directory).resolve()
    if hasattr(model.lm, "get_base_model"):
        raise ValueError("the model holds PEFT adapters; merge them first (model.lm = model.lm.merge_and_unload()) "
                         "or save the adapters with the RL checkpoint code")
    if target.exists() and any(target.iterdir()) and not is_model_dir(target):
        raise FileExistsError(f"{target} exists and is not a gvu model directory; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        if weights_dtype == "float16":
            with torch.no_grad():
                for p in model.lm.parameters():
                    p.copy_(p.half().float())
        model.lm.save_pretrained(tmp)
        if weights_dtype == "float16":
            half_weights(tmp)
        model.tokenizer.save(tmp)
        info = {"kind": "builtin", "format": FORMAT, "grid": model.grid, "size": model.size,
                "preset": PRESETS.get(model.size), "num_parameters": sum(p.numel() for p in model.lm.parameters()), **(extra or {})}
        (tmp / GVU_FILE).write_text(json.dumps(info, indent=1) + "\n")
        if not is_model_dir(tmp):
            raise RuntimeError(f"saving wrote {sorted(os.listdir(tmp))}, expected {list(REQUIRED_FILES)}")
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def half_weights(directory: Path) -> None:
    """Rewrite every float32 tensor of the folder's safetensors files as float16 (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for f in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            meta = h.metadata()
            tensors = {k: h.get_tensor(k) for k in h.keys()}
        save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}, str(f), metadata=meta)


def load_builtin(directory: str | os.PathLike, device: str | torch.device | None = None) -> BuiltinUMM:
    path = Path(directory)
    if not is_model_dir(path):
        missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
        raise FileNotFoundError(f"{path} is not a gvu model directory: expected {', '.join(REQUIRED_FILES)} "
                                f"(missing {', '.join(missing)})")
    info = json.loads((path / GVU_FILE).read_text())
    if info.get("kind") != "builtin":
        raise ValueError(f"{path} holds a gvu model of kind {info.get('kind')!r}, not 'builtin'")
    if info.get("format") != FORMAT:
        raise ValueError(f"{path} is a built-in model of checkpoint format {info.get('format')}; this version of gvu "
                         f"reads format {FORMAT} (a `<see>` token opens the images the model reads, and the 2-D "
                         f"reader). Rebuild the base with `{REBUILD}` (the demo rebuilds its cached bases itself)")
    tok = WordTokenizer.load(path)
    lm = _model_class(bool(info.get("grid"))).from_pretrained(path, local_files_only=True)
    if lm.config.vocab_size != tok.vocab_size:
        raise ValueError(f"{path}: model vocabulary ({lm.config.vocab_size}) and tokenizer ({tok.vocab_size}) "
                         "disagree")
    if device is not None:
        lm = lm.to(device)
    return BuiltinUMM(lm.eval(), tok, info.get("size", "custom"))
