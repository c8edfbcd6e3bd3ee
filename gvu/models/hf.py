"""The transformers plumbing every adapter shares (Janus, Emu3, X-Omni, causal-lm): a tokenizer view that never
adds special tokens, dtype and device options, dropout off, gradient checkpointing, one checkpoint loader, saving a
trained model (LoRA adapter or full weights) with the gvu.json that gvu.models.load reads back, and a byte-level
tokenizer for tiny test models."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

GVU_FILE = "gvu.json"
TRANSFORMERS_FLOOR = (5, 22)
"""The oldest transformers the whole test suite passes on (checked on 5.22 and 5.23; before 5.22 Janus's
processor, the PIL image processors, the VQ models' encode and Emu3's pixel path differ)."""
DTYPES = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}



class PlainTokenizer:
    """A transformers tokenizer seen as SharedVocabUMM's TextTokenizer: `encode` never adds special tokens (the
    sequence layouts place BOS and friends themselves). `hf` is the tokenizer itself."""

    def __init__(self, hf):
        self.hf = hf

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)


def base_model(lm: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers are injected in place, so they stay active)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def resolve_dtype(dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype is None:
        return dtype or "auto"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def dtype_kwargs(dtype) -> dict:
    """from_pretrained's dtype argument: `dtype` on transformers >= 4.56, `torch_dtype` before (older versions
    reject `dtype`)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def dtype_name(dtype) -> str:
    """What to write in gvu.json so resolve_dtype reads it back ('bfloat16', not 'torch.bfloat16')."""
    return str(dtype or "auto").removeprefix("torch.")


def resolve_device(device) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def disable_dropout(model: torch.nn.Module):
    """GRPO's ratio compares the update pass with the sampler, so nothing random may sit between them (TRL's
    disable_dropout does the same). Attention dropout in transformers is a float attribute, not a module."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def finish_loading(model: torch.nn.Module, device, gradient_checkpointing: bool) -> torch.nn.Module:
    """Dropout off, on the device, and either eval mode or (with gradient checkpointing) train mode: transformers
    only checkpoints in train mode, and with dropout off train mode changes nothing else. The samplers and the
    reward switch to eval mode themselves."""
    disable_dropout(model)
    model.to(resolve_device(device))
    if gradient_checkpointing:
        # non-reentrant: gradients reach LoRA weights even though the (frozen) embeddings need no grad.
        # transformers >= 5.x renames it activation checkpointing; older versions only have the first name.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.train()
    else:
        model.eval()
    return model


def flag(value) -> bool:
    """Spec options arrive as strings: '1', 'true', 'yes' are true."""
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")


def save_transformers_model(umm, directory: str | os.PathLike, extra: dict | None = None,
                            save_files: Callable[[Path], None] | None = None) -> Path:
    """Write a trained transformers-adapter model atomically: the LoRA adapter only (PEFT save_pretrained) when
    `umm.lm` holds one, else the full weights plus `save_files(folder)` (tokenizer, processor, adapter file).
    gvu.json records the kind, the base model and its load options so load_model can rebuild it."""
    target = Path(directory).resolve()
    if target.exists() and any(target.iterdir()) and not (target / GVU_FILE).is_file():
        raise FileExistsError(f"{target} exists and is not a gvu model directory; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        lora = hasattr(umm.lm, "peft_config")
        umm.lm.save_pretrained(tmp)
        if not lora and save_files is not None:
            save_files(tmp)
        info = {"kind": umm.kind, "format": 1, "weights": "lora" if lora else "full", "base": umm.source,
                "options": {k: v for k, v in umm.options.items() if k not in ("device", "gradient_checkpointing")},
                **(extra or {})}
        (tmp / GVU_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place. A non-empty folder cannot be renamed over, so the old one is moved
    aside first; only the instant between the two renames has no folder at `target`."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / "model")
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def import_callable(spec: str, search_dir: str | os.PathLike | None = None) -> Callable:
    """'module:function' -> the function. A module file `module.py` inside `search_dir` (the model folder) is
    found first, so a decoder can ship next to the weights."""
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise ValueError(f"expected 'module:function', got {spec!r}")
    local = Path(search_dir) / (mod_name.replace(".", "/") + ".py") if search_dir else None
    if local is not None and local.is_file():
        unique = f"gvu_adapter_{abs(hash(str(local.resolve())))}_{mod_name.replace('.', '_')}"
        mod = sys.modules.get(unique)
        if mod is None:
            loader = importlib.util.spec_from_file_location(unique, local)
            mod = importlib.util.module_from_spec(loader)
            sys.modules[unique] = mod
            loader.loader.exec_module(mod)
    else:
        mod = importlib.import_module(mod_name)
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{spec!r}: {mod_name} has no callable {fn_name!r}")
    return fn


def check_transformers(kind: str) -> None:
    """A clear error on a transformers older than the floor, before any checkpoint is read."""
    import transformers

    have = tuple(int(x) for x in transformers.__version__.split(".")[:2])
    if have < TRANSFORMERS_FLOOR:
        floor = ".".join(map(str, TRANSFORMERS_FLOOR))
        raise ImportError(f"{kind}: gvu's transformers adapters need transformers >= {floor}, this is "
                          f"{transformers.__version__}; upgrade with: pip install -U 'transformers>={floor}'")


def load_pretrained(cls, name: str, kind: str, dtype=None, attn_implementation: str | None = None,
                    check_floor: bool = True, **kwargs):
    """`cls.from_pretrained(name)` (a model, tokenizer or processor class) with gvu's dtype and attention options
    (models only: pass `dtype`); a checkpoint that cannot be read becomes a ValueError naming the spec. A folder
    without config.json is refused first, and a transformers older than the floor before that (`check_floor`
    False: a model whose own code pins its version, X-Omni)."""
    if check_floor:
        check_transformers(kind)
    path = Path(name)
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{kind}:{name}: the folder holds no config.json (not a transformers checkpoint)")
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if dtype is not None:
        extra.update(dtype_kwargs(resolve_dtype(dtype)))
    try:
        return cls.from_pretrained(name, **extra, **kwargs)
    except OSError as err:
        raise ValueError(f"{kind}:{name}: could not load the checkpoint ({err})") from err


CONSENT = "trust_remote_code=1"
"""The model-spec option by which the user lets a checkpoint's own Python run (docs/real-models.md). Never read from
a saved folder's gvu.json: consent is the user's, on the command line or in the config they pass."""


def needs_consent(spec: str, what: str) -> ValueError:
    """The refusal of a load that would run a checkpoint's own code the user did not ask for: what would run, and
    the option that asks for it."""
    return ValueError(f"{spec}: {what}; gvu runs a checkpoint's own code only when asked: add {CONSENT} to the "
                      "model spec if you trust where that code comes from (docs/real-models.md)")


def load_tokenizer(name: str, kind: str, trust_remote_code: bool = False, check_floor: bool = True):
    """AutoTokenizer without the checkpoint's code wherever its files allow it (a tokenizer class transformers
    has); the checkpoint's own tokenizer code only where the files need it, and then only with the user's consent
    (`trust_remote_code`), else a refusal naming the option before any of it runs."""
    from transformers import AutoTokenizer

    try:
        return load_pretrained(AutoTokenizer, name, kind, check_floor=check_floor, trust_remote_code=False)
    except ValueError as err:
        if "trust_remote_code" not in str(err):  # not transformers' refusal of a tokenizer that needs its code
            raise
        if not trust_remote_code:
            raise needs_consent(f"{kind}:{name}", "its tokenizer is the checkpoint's own Python code (a class "
                                "tokenizer_config.json's auto_map names), which loading it would run") from None
    return load_pretrained(AutoTokenizer, name, kind, check_floor=check_floor, trust_remote_code=True)


def load_options(dtype, attn_implementation: str | None = None, **more) -> dict:
    """The load options a saved model's gvu.json records (strings, as a spec's ?key=value would give them)."""
    return {"dtype": dtype_name(dtype), **({"attn_implementation": attn_implementation} if attn_implementation
                                          else {}), **{k: str(v) for k, v in more.items() if v not in (None, "")}}


def tiny_byte_tokenizer(special_tokens: list[str], bos: str | None = None, eos: str | None = None,
                        pad: str | None = None, chat_template: str | None = None):
    """A byte-level BPE tokenizer with no merges (one token per byte, ids 0..255) plus `special_tokens` at ids
    256, 257, ... in order, for tiny random models in tests and demos (real tokenizers are byte-level BPE too).
    Adds `bos` at the start when encoding with special tokens, like Llama-family tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(list(special_tokens))
    if bos is not None:
        bos_id = tk.token_to_id(bos)
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                          special_tokens=[(bos, bos_id)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad)
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf
