"""Model specs on the command line -> a model of the interface.

Accepted forms (SPEC_FORMS): a folder written by `gvu pretrain` or `gvu train` (the built-in model, or a trained
transformers model: its gvu.json says which kind and, for a LoRA adapter, which base model), or KIND:NAME for a
transformers model, with load options after '?':

    janus:deepseek-community/Janus-Pro-1B?dtype=bfloat16&gradient_checkpointing=1
    emu3:BAAI/Emu3-Gen-hf?grid=32x32
    causal-lm:/models/x-omni-like
    xomni:X-Omni/X-Omni-En?dtype=bfloat16&flux=/models/FLUX.1-dev

Options: dtype (auto, bfloat16, float16, float32), device (cpu, cuda, cuda:1; default: cuda when available),
gradient_checkpointing (0/1), attn_implementation (eager, sdpa, flash_attention_2), and per kind: janus
use_chat_template (0/1); emu3 grid (ROWSxCOLS), negative_prompt, logits_chunk (code positions per chunk of
the teacher-forced pass; 0 off; emu3 1024); causal-lm logits_chunk; xomni grid (ROWSxCOLS), flux (a FLUX.1-dev
folder for X-Omni's decoder), code_pixels (pixels per code side, 16), code (gvu: gvu's X-Omni code, the default;
remote: the checkpoint's own, transformers 4.51.3), vision_source (the checkpoint whose vision code and files
init_vision reads; default the model itself; a saved run records its base); xomni and causal-lm
trust_remote_code (1: the user lets the checkpoint's own Python run, which xomni's code=remote and flux and a
causal-lm adapter file's trust_remote_code need; refused without it, naming what would run). A folder takes that
one option too, `DIR?trust_remote_code=1`: consent is never read from a folder's gvu.json.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl

from gvu.models.adapters.causal_lm import load_causal_lm
from gvu.models.adapters.emu3 import load_emu3
from gvu.models.adapters.janus import load_janus
from gvu.models.adapters.xomni import load_xomni
from gvu.models.builtin.model import load_builtin
from gvu.models.hf import flag

SPEC_FORMS = (
    "DIR (a folder written by `gvu pretrain` or `gvu train`)",
    "janus:PATH_OR_NAME (a transformers Janus / Janus-Pro checkpoint, e.g. janus:deepseek-community/Janus-Pro-1B)",
    "emu3:PATH_OR_NAME (a transformers Emu3 checkpoint, e.g. emu3:BAAI/Emu3-Gen-hf)",
    "causal-lm:PATH (a causal LM folder with a gvu_causal_lm.yaml adapter file)",
    "xomni:PATH_OR_NAME (an X-Omni checkpoint, e.g. xomni:X-Omni/X-Omni-En)",
    "any KIND:... form may end in ?key=value&... load options (dtype, device, gradient_checkpointing, "
    "attn_implementation)",
    "xomni: and causal-lm: (and a DIR of them) take trust_remote_code=1: consent to run the checkpoint's own code",
)
COMMON_OPTIONS = ("dtype", "device", "gradient_checkpointing", "attn_implementation")
KIND_OPTIONS = {"janus": ("use_chat_template",), "emu3": ("grid", "negative_prompt", "logits_chunk"),
                "causal-lm": ("logits_chunk", "trust_remote_code"),
                "xomni": ("grid", "flux", "code_pixels", "code", "vision_source", "trust_remote_code")}
FOLDER_OPTIONS = ("trust_remote_code",)
"""What a folder spec may carry after '?': its kind and load options come from its gvu.json, but consent to run
a checkpoint's code must come from the user."""
_KIND = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):(?!//)(.*)$")


def _accepted() -> str:
    return "accepted forms: " + "; ".join(SPEC_FORMS)


def _loader(kind: str):
    if kind == "janus":
        return load_janus
    if kind == "emu3":
        return load_emu3
    if kind == "xomni":
        return load_xomni
    return load_causal_lm


def parse_spec(spec: str) -> tuple[str | None, str, dict]:
    """(kind or None for a plain folder, path or name, options)."""
    m = _KIND.match(spec)
    if m is None or Path(spec).exists():
        return None, *folder_spec(spec)
    kind, rest = m.group(1).lower(), m.group(2)
    if kind not in KIND_OPTIONS:
        raise ValueError(f"model {spec!r}: unknown model kind {kind!r}; {_accepted()}")
    name, _, query = rest.partition("?")
    if not name:
        raise ValueError(f"model {spec!r}: nothing after '{kind}:'; {_accepted()}")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    allowed = COMMON_OPTIONS + KIND_OPTIONS[kind]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"model {spec!r}: unknown option(s) {unknown} for {kind}; known: {', '.join(allowed)}")
    return kind, name, options


def folder_spec(spec: str) -> tuple[str, dict]:
    """A folder spec's path and options ('runs/x?trust_remote_code=1' -> ('runs/x', {...})); a spec that names an
    existing path as it is, or has no '?', comes back whole."""
    path, sep, query = spec.rpartition("?")
    if not sep or Path(spec).exists() or not Path(path).exists():
        return spec, {}
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(FOLDER_OPTIONS))
    if unknown or not options:
        raise ValueError(f"model {spec!r}: unknown option(s) {unknown or [query]} for a model folder; known: "
                         f"{', '.join(FOLDER_OPTIONS)} (the rest comes from the folder's gvu.json)")
    return path, options


def load_saved(path: Path, device: str | None = None, trust_remote_code=False):
    """A folder with a gvu.json: the built-in model, or a trained transformers model (full weights or LoRA).
    `trust_remote_code`: the user's consent (a gvu.json holding one is not asked: a folder cannot consent)."""
    info = json.loads((path / "gvu.json").read_text())
    kind = info.get("kind")
    if kind == "builtin":
        return load_builtin(path, device=device)
    if kind not in KIND_OPTIONS:
        raise ValueError(f"{path}/gvu.json names model kind {kind!r}; {_accepted()}")
    options = {k: v for k, v in dict(info.get("options", {})).items() if k != "trust_remote_code"}
    if flag(trust_remote_code) and "trust_remote_code" in KIND_OPTIONS[kind]:
        options["trust_remote_code"] = "1"
    if device is not None:
        options["device"] = device
    if info.get("weights") == "full":
        return _loader(kind)(str(path), **options)
    if info.get("weights") != "lora" or not info.get("base"):
        raise ValueError(f"{path}/gvu.json: expected weights 'full', or 'lora' with the base model, got "
                         f"{info.get('weights')!r} (base {info.get('base')!r})")
    from peft import PeftModel

    model = _loader(kind)(info["base"], **options)
    # merged, so the result is a plain model again (a later LoRA run or evaluation needs nothing special)
    model.lm = PeftModel.from_pretrained(model.lm, str(path)).merge_and_unload()
    if hasattr(model.lm, "peft_config"):  # older peft leaves it on the merged model, which would save as LoRA
        del model.lm.peft_config
    return model


def load_model(spec: str | os.PathLike, device: str | None = None):
    spec = os.fspath(spec)
    kind, name, options = parse_spec(spec)
    if kind is not None:
        if device is not None:
            options.setdefault("device", device)
        return _loader(kind)(name, **options)
    path, trust = Path(name), options.get("trust_remote_code", False)
    if path.is_dir() and (path / "gvu.json").is_file():
        return load_saved(path, device=device, trust_remote_code=trust)
    if path.is_dir() and (path / "final" / "gvu.json").is_file():  # a `gvu train` output folder
        return load_saved(path / "final", device=device, trust_remote_code=trust)
    why = "does not exist" if not path.exists() else "holds no gvu model" if path.is_dir() else "is not a folder"
    raise ValueError(f"model {spec!r} {why}; {_accepted()}")
