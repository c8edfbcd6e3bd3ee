"""X-Omni's checkpoint files and vision parts, for the adapter (gvu.models.adapters.xomni): consent before any of the
checkpoint's own Python runs, hub ids resolved to local snapshots, flash-attn checked where the vision code imports
it, the vision parts set up and put on the model's device, and the sampling defaults its generation_config.json
gives (docs/real-models.md)."""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import torch

from gvu.models.adapters.xomni_lm import XOmniForCausalLM
from gvu.models.hf import base_model, disable_dropout, needs_consent

XOMNI_TRANSFORMERS = "4.51.3"
# flash-attn: X-Omni's image tokenizer imports it at the top of modeling_vit.py and calls it in every attention;
# built against the torch of the environment it runs in (X-Omni pins torch 2.6, so a prebuilt wheel for that torch
# does not load here)
VISION_PACKAGES = "'diffusers==0.34.0' timm einops torchvision"
FLASH_ATTN_INSTALL = "pip install flash-attn --no-build-isolation"
# a diffusers pipeline folder is model_index.json and one subfolder per component; FLUX.1-dev's hub repository also
# holds a single-file copy of its weights at the top, which the pipeline does not read
FLUX_FILES = ["model_index.json", "*/*"]
# transformers 4.51.3's GenerationConfig defaults (generation/configuration_utils.py:424-426) of the sampling keys
# gvu's sampler implements, and of those it does not (428-447)
HF_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
HF_OTHER_DEFAULTS = {"typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "repetition_penalty": 1.0,
                     "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None,
                     "sequence_bias": None, "renormalize_logits": False}


def vision_install() -> str:
    """The install line for X-Omni's vision parts, flash-attn included."""
    return (f"pip install {VISION_PACKAGES}, then {FLASH_ATTN_INSTALL} (compiled against the torch installed here, "
            f"{torch.__version__}, with CUDA's nvcc; docs/real-models.md)")


_FLASH_ATTN_IMPORT = re.compile(r"^\s*(from|import)\s+flash_attn\b", re.M)


def check_flash_attn(folder: str, device: torch.device) -> None:
    """X-Omni's image tokenizer (the checkpoint's modeling_vit.py) imports flash_attn at the top of the file and
    calls flash_attn_func in every attention, a CUDA kernel: refused before anything is built, with what to do,
    where the checkpoint's code imports it and flash-attn does not import here or the model is not on a GPU."""
    files = sorted(f.name for f in Path(folder).glob("*.py")
                   if _FLASH_ATTN_IMPORT.search(f.read_text(errors="replace")))
    if not files:
        return
    try:
        importlib.import_module("flash_attn")
    except ImportError as err:  # missing, or built for another torch (an undefined symbol)
        raise ValueError(f"xomni:{folder}: X-Omni's image tokenizer ({', '.join(files)}) imports flash_attn, which "
                         f"does not import here ({err}): {vision_install()}") from err
    if torch.device(device).type != "cuda":
        raise ValueError(f"xomni:{folder}: X-Omni's image tokenizer ({', '.join(files)}) runs flash-attn in every "
                         f"attention, a CUDA kernel, and the model is on {device}: load with flux on a GPU "
                         "(device=cuda)")


def local_snapshot(name: str, what: str, allow_patterns=None) -> str:
    """`name` as a local folder: itself when it is one, else the hub repository's snapshot (huggingface_hub's
    snapshot_download, which fetches only what its cache lacks). Given a hub id, X-Omni's init_vision would ask the
    hub itself, through its own hf_hub_download calls and through diffusers 0.34, whose hub code was written for
    huggingface_hub 0.x (its legacy `proxies=` and `local_dir_use_symlinks=` are dropped with a warning by the
    huggingface_hub transformers 5 requires; the rest of that path was not run here: docs/real-models.md). Given
    folders, init_vision and diffusers only read files, and the flash-attn check can read the checkpoint's code."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if Path(name).expanduser().exists():
        raise ValueError(f"xomni: {what}={name!r} is a file; give a folder or a hub id")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=name, allow_patterns=allow_patterns)
    except Exception as err:  # noqa: BLE001 - not a repository, no network, gated: the same advice
        raise ValueError(f"xomni: {what}={name!r} is no local folder and its hub snapshot could not be had "
                         f"({type(err).__name__}: {err}); download it and pass the folder") from err


def _move_vision(xo) -> None:
    """Both vision parts onto the model's device, whatever the checkpoint's init_vision did: the FLUX pipeline is
    no nn.Module, so it does not move with the model, and diffusers builds it on the CPU."""
    device = next(xo.parameters()).device
    xo.image_tokenizer.to(device)
    xo.decoder_pipe.to(device)


def set_up_vision(lm, name: str, flux: str) -> None:
    """The checkpoint's init_vision, then both parts on the model's device (its FLUX pipeline is no nn.Module);
    the image tokenizer frozen and without dropout, as in X-Omni. `name`: a local folder of the published
    checkpoint, whose modelling files and vision files (read from the model's name_or_path) init_vision uses;
    `flux`: a local FLUX.1-dev folder (both made so by local_snapshot)."""
    xo = base_model(lm)
    check_flash_attn(name, next(xo.parameters()).device)
    if isinstance(xo, XOmniForCausalLM) and xo.checkpoint_code is None:  # imported only now: it needs diffusers
        xo.checkpoint_code = _checkpoint_class(name, xo.config)
    xo.name_or_path = name  # a full-weights save holds no vision files; they stay in the published checkpoint
    try:
        xo.init_vision(flux)
    except ImportError as err:
        raise ValueError(f"xomni:{name}: X-Omni's vision parts could not be set up ({err}): "
                         f"{vision_install()}") from err
    if not has_vision(xo):
        raise ValueError(f"xomni:{name}: init_vision({flux!r}) set up no image_tokenizer and decoder_pipe")
    _move_vision(xo)
    for p in xo.image_tokenizer.parameters():
        p.requires_grad_(False)
    disable_dropout(xo.image_tokenizer)


def checkpoint_sampling(name: str) -> tuple[dict, dict]:
    """The checkpoint's generation_config.json values that X-Omni's trainer samples with: its GenerationConfig
    (grpo_trainer.py:285-294) sets no top_k and leaves temperature and top_p at transformers' defaults, and
    transformers 4.51.3 replaces every value left at its default by the checkpoint's own where the file was
    written by transformers >= 4.50 (generation/utils.py:1683-1702). Returns (the values gvu's sampler takes:
    temperature, top_k, top_p; the values it does not implement, a departure); both empty without such a file."""
    from transformers.utils import cached_file

    path = cached_file(name, "generation_config.json", _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)
    if path is None:
        return {}, {}
    cfg = json.loads(Path(path).read_text())
    # a file without a version is read as written by the running transformers, 4.51.3 for X-Omni's trainer
    written = tuple(int(x) for x in re.findall(r"\d+", str(cfg.get("transformers_version", XOMNI_TRANSFORMERS)))[:2])
    if written < (4, 50):  # older files lend only their token ids (generation/utils.py:1703-1711)
        return {}, {}
    take = {k: cfg[k] for k, d in HF_SAMPLING_DEFAULTS.items() if cfg.get(k) is not None and cfg[k] != d}
    other = {k: cfg[k] for k, d in HF_OTHER_DEFAULTS.items() if k in cfg and cfg[k] != d}
    return take, other


def say_sampling(name: str, take: dict, other: dict) -> None:
    """One line on stderr naming the checkpoint's sampling values and what gvu does with them."""
    if take:
        print(f"xomni:{name}: generation_config.json sets {_kv(take)}; where a run leaves temperature / top_k / "
              f"top_p at transformers' defaults ({_kv(HF_SAMPLING_DEFAULTS)}), gvu samples with these, as X-Omni's "
              "trainer does", file=sys.stderr)
    if other:
        print(f"xomni:{name}: generation_config.json also sets {_kv(other)}, which X-Omni's trainer applies and "
              "gvu's sampler does not implement: this run departs from the paper's sampling there", file=sys.stderr)


def _kv(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def check_consent(name: str, code: str, flux: str, vision_source: str, trust: bool) -> None:
    """code=remote and flux= run the checkpoint's own Python (the modelling files its config.json's auto_map names,
    and what they import): refused before anything loads unless the user consented (trust_remote_code=1)."""
    if trust:
        return
    if code == "remote":
        raise needs_consent(f"xomni:{name}", f"code=remote runs the checkpoint's own modelling code "
                            f"({_code_files(name)})")
    if flux:
        source = vision_source or name
        raise needs_consent(f"xomni:{name}", f"flux= sets up X-Omni's vision parts with the checkpoint's own code "
                            f"(init_vision and detokenize_image in {source}: {_code_files(source)})")


def _code_files(source: str) -> str:
    """The modelling file config.json's auto_map names, where the folder is at hand."""
    try:
        ref = json.loads((Path(source) / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]
        return f"{ref.split('--')[-1].rsplit('.', 1)[0]}.py and what it imports"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "the modelling files its config.json's auto_map names"


def has_vision(xo) -> bool:
    """Whether the checkpoint's init_vision has run (it creates both parts; neither is in the weights)."""
    return getattr(xo, "image_tokenizer", None) is not None and getattr(xo, "decoder_pipe", None) is not None


def _checkpoint_class(name: str, config):
    """The checkpoint's own XOmniForCausalLM class, whose vision methods gvu calls as they are; a missing package
    becomes an error that names what to install."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    ref = (getattr(config, "auto_map", None) or {}).get("AutoModelForCausalLM")
    if ref is None:
        raise ValueError(f"xomni:{name}: config.json has no auto_map entry for AutoModelForCausalLM, so the "
                         "checkpoint's own vision code (init_vision, detokenize_image) cannot be found")
    import transformers.utils

    # diffusers 0.34.0, X-Omni's pin, imports this constant, which transformers 5 removed; later diffusers import
    # without it but changed the FLUX block signature X-Omni's decoder calls (docs/real-models.md)
    if not hasattr(transformers.utils, "FLAX_WEIGHTS_NAME"):
        transformers.utils.FLAX_WEIGHTS_NAME = "flax_model.msgpack"
    try:
        return get_class_from_dynamic_module(ref, name)
    except ImportError as err:
        raise ValueError(f"xomni:{name}: X-Omni's own code could not be imported ({err}); its vision parts need: "
                         f"{vision_install()}") from err
