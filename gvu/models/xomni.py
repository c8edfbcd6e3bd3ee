"""X-Omni, the model GvU trains, as a UnifiedModel (`xomni:PATH`).

What the adapter does about X-Omni's interface (from X-Omni's public inference code and the official GvU trainer):

- Image codes live BEYOND `lm_head`: code k is vocabulary id `config.vocab_size + k` (X-Omni embeds and scores
  them with separate multimodal layers), `config.image_vocab_size` codes (16,384).
- A generation mode: `set_generation_mode('image')` makes the forward fill only the code range of the logits,
  'text' only the text range (the rest is the dtype's lowest value). Sampling and the teacher-forced pass run in
  image mode; the reward (understanding) in text mode; the mode is restored after each call.
- The forward takes `num_logits_to_keep` and no other keyword arguments (handled by SharedVocabUMM._forward).
- Generation format (no chat template): "{prompt}<SOM>{rows} {cols}<IMAGE>" then rows x cols codes in raster
  order; guidance rows are "<SOM>{rows} {cols}<IMAGE>" alone. Default grid 36 x 36 (576 pixels at 16 pixels per
  code, the GvU setting).
- Understanding: the tokenizer's own chat template on one user turn, "<SOM>{rows} {cols}<IMAGE>" + codes + "<EOM>"
  + "\\n" + instruction, with the generation prompt; the reward scores the prompt's tokens right after it.
- Pixels: X-Omni's vision parts are not in the checkpoint's weights; the checkpoint's own `init_vision(FLUX_PATH)`
  builds the image tokenizer and the FLUX decoder pipeline on the model's device at that moment, and the pipeline
  is no nn.Module (a later `.to()` of the model leaves it where it is), so vision is set up after the model is on
  its device. `detokenize_image(texts, images, token_ids, (H, W))` takes one prompt, no earlier images and a list
  of codes, and returns one PIL image; it draws from torch's global RNG (seeded per image here). The reward
  re-encodes with `image_tokenizer.encode`, as the official trainer does. Departure, stated: the official reward
  re-encodes at the decoded image's own size; here pixels are resized to the generation grid (rows x
  `code_pixels`) first, so the judge reads as many codes as it drew. Without `flux` the model samples and judges
  its codes directly (no pixels; `decode` says what to pass). Before init_vision: hub ids become local snapshots
  (so neither init_vision nor diffusers 0.34 asks the hub), and flash-attn is checked where the checkpoint's vision
  code imports it; after: both parts are put on the model's device.
- Sampling: where the checkpoint ships a generation_config.json, its temperature / top_k / top_p replace the
  values a run leaves at transformers' own defaults, as they do in X-Omni's trainer (`sampling_defaults`).

The language model runs on gvu's own X-Omni code (gvu/models/xomni_lm.py, the checkpoint's weight names) by
default; `code=remote` runs the checkpoint's own modelling code instead, which needs transformers 4.51.3. Either
way one token goes through both modes at load, and a failure names what to install (docs/real-models.md).
`code=remote` and `flux` run the checkpoint's own Python, so both are refused unless the spec says
`trust_remote_code=1`; the tokenizer loads without the checkpoint's code wherever its files allow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from gvu.models.causal_lm import build_grid_layout, GridSharedVocabUMM, SequenceFormat
from gvu.models.emu3 import parse_grid
from gvu.models.forward import eval_mode
from gvu.models.hf import (base_model, disable_dropout, finish_loading, flag, load_options, load_pretrained,
                           load_tokenizer, needs_consent, PlainTokenizer, save_transformers_model)
from gvu.models.protocol import SamplingConfig
from gvu.models.xomni_lm import XOmniConfig, XOmniForCausalLM

XOMNI_TRANSFORMERS = "4.51.3"
# what X-Omni's own code needs (its requirements.txt), and flash-attn, which its image tokenizer imports at the top
# of modeling_vit.py and calls in every attention; built against the torch of the environment it runs in (X-Omni
# pins torch 2.6, so a prebuilt wheel for that torch does not load here)
REMOTE_PACKAGES = "'transformers==4.51.3' 'diffusers==0.34.0' timm einops torchvision"
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
SOM, EOM, IMAGE = "<SOM>", "<EOM>", "<IMAGE>"
DEFAULT_GRID = (36, 36)
PIXELS_PER_CODE = 16
_IMG, _INS = "\x00gvu-image\x00", "\x00gvu-instruction\x00"


def xomni_format(hf_tokenizer) -> SequenceFormat:
    """The sequence templates, the understanding one rendered by the tokenizer's own chat template."""
    if getattr(hf_tokenizer, "chat_template", None) is None:
        raise ValueError("the X-Omni tokenizer has no chat template; understanding prompts are built with it")
    text = hf_tokenizer.apply_chat_template([{"role": "user", "content": _IMG + "\n" + _INS}], tokenize=False,
                                            add_generation_prompt=True)
    if text.count(_IMG) != 1 or text.count(_INS) != 1:
        raise ValueError("the chat template did not render the user turn once; cannot place the image")
    return SequenceFormat(generation="{prompt}", image_prefix=SOM + "{rows} {cols}" + IMAGE, image_suffix=EOM,
                          understanding=text.replace(_IMG, "{image}").replace(_INS, "{instruction}"),
                          answer="{prompt}", answer_end=hf_tokenizer.eos_token or "", unconditional_prompt="")


class XOmniUMM(GridSharedVocabUMM):
    """`lm`: X-Omni's causal LM (gvu's X-Omni code or the checkpoint's own) or a PEFT wrapper of it;
    `hf_tokenizer`: its tokenizer."""

    lora_scope = "model"
    supports_fsdp2 = False  # the decoder and the image tokenizer are called outside the root forward

    def __init__(self, lm, hf_tokenizer, grid=DEFAULT_GRID, code_pixels: int = PIXELS_PER_CODE,
                 sampling_defaults: dict | None = None):
        xo = base_model(lm)
        if not hasattr(xo, "set_generation_mode"):
            raise ValueError("this model has no 'set_generation_mode': not X-Omni's modelling code (load it with "
                             "xomni:)")
        # with vision set up the reward decodes, then re-encodes, as the official trainer does; without, the
        # judge reads the drawn codes
        self.reads_pixels = has_vision(xo)
        cfg = xo.config
        self.grid = parse_grid(grid)
        self.code_pixels = int(code_pixels)
        for tok in (SOM, EOM, IMAGE):
            if len(hf_tokenizer.encode(tok, add_special_tokens=False)) != 1:
                raise ValueError(f"X-Omni token {tok!r} is not a single token of this tokenizer")
        fmt = xomni_format(hf_tokenizer)
        layout = build_grid_layout(hf_tokenizer, fmt, image_token_offset=int(cfg.vocab_size),
                                   num_codes=int(cfg.image_vocab_size), grid=self.grid, decoder=self._decode_codes,
                                   encoder=self._encode_pixels)
        super().__init__(lm, PlainTokenizer(hf_tokenizer), layout, answer_template=fmt.answer,
                         unconditional_prompt=fmt.unconditional_prompt)
        self.kind = "xomni"
        # the checkpoint's generation_config.json values that replace transformers' defaults (checkpoint_sampling)
        self.sampling_defaults = dict(sampling_defaults or {})

    def effective_sampling(self, sampling: SamplingConfig) -> SamplingConfig:
        """`sampling` with each value that equals transformers' default replaced by the checkpoint's, as
        transformers 4.51.3's generate does for X-Omni's trainer (generation/utils.py:1683-1702); the same in the
        sampler and the teacher-forced pass, so the two still describe one distribution."""
        return dataclasses.replace(sampling, **{k: v for k, v in self.sampling_defaults.items()
                                                if getattr(sampling, k) == HF_SAMPLING_DEFAULTS[k]})

    @contextlib.contextmanager
    def mode(self, mode: str):
        xo = base_model(self.lm)
        before = getattr(xo, "generation_mode", "text")
        xo.set_generation_mode(mode)
        try:
            yield
        finally:
            xo.set_generation_mode(before)

    def sample(self, prompts, group_size, sampling, generator):
        with self.mode("image"):
            return super().sample(prompts, group_size, self.effective_sampling(sampling), generator)

    def image_logprobs(self, prompts_N, image_tokens_NT, sampling):
        with self.mode("image"):
            return super().image_logprobs(prompts_N, image_tokens_NT, self.effective_sampling(sampling))

    def prompt_logprobs(self, images, prompts, instruction="Describe the image in detail."):
        with self.mode("text"):
            return super().prompt_logprobs(images, prompts, instruction)

    def caption(self, images, instruction="Describe the image in detail.", max_len: int = 32):
        with self.mode("text"):
            return super().caption(images, instruction, max_len)

    # ------------------------------------------------------------------------------------------------ pixels

    def _decode_codes(self, codes_NT: np.ndarray, prompts=None, seeds=None) -> np.ndarray:
        """X-Omni's decoder, one image at a time, conditioned on its prompt, seeded (torch's global RNG, which
        the decoder draws from; restored afterwards)."""
        xo = base_model(self.lm)
        if not has_vision(xo):
            raise ValueError("X-Omni's decoder is not set up, so there are no pixels; load with "
                             "xomni:PATH?flux=FLUX_PATH (a FLUX.1-dev folder), which calls the checkpoint's "
                             "init_vision")
        N = len(codes_NT)
        prompts = list(prompts) if prompts is not None else [""] * N
        seeds = list(seeds) if seeds is not None else list(range(N))
        out = []
        with torch.random.fork_rng(devices=_rng_devices(self.device)), torch.no_grad():
            for codes, prompt, seed in zip(np.asarray(codes_NT), prompts, seeds):
                torch.manual_seed(int(seed))
                # the checkpoint's signature: one prompt, no earlier images, the codes as a list of ints
                img = xo.detokenize_image([prompt], [], [int(c) for c in codes], self.grid)
                out.append(_to_uint8(img))
        return np.stack(out)

    def _encode_pixels(self, pixels_NHW3: np.ndarray) -> np.ndarray:
        """Resize to the generation grid, normalise to [-1, 1] (X-Omni's preprocessing), encode."""
        from PIL import Image

        xo = base_model(self.lm)
        if not has_vision(xo):
            raise ValueError("X-Omni's image tokenizer is not set up; load with xomni:PATH?flux=FLUX_PATH, or "
                             "score the reward on codes (reward_image_path: tokens)")
        rows, cols = self.grid
        size = (cols * self.code_pixels, rows * self.code_pixels)
        x = np.stack([np.asarray(Image.fromarray(p).resize(size, Image.BICUBIC)) if p.shape[1::-1] != size else p
                      for p in np.asarray(pixels_NHW3)]).astype(np.float32)
        tok = xo.image_tokenizer
        ref = next(iter(tok.parameters()), next(iter(tok.buffers()), None))
        x_N3HW = torch.as_tensor((x / 127.5 - 1.0).transpose(0, 3, 1, 2).copy(), device=self.device,
                                 dtype=ref.dtype if ref is not None and ref.is_floating_point() else torch.float32)
        with torch.no_grad():
            codes = tok.encode(x_N3HW)
        return codes.reshape(len(x), -1).cpu().numpy()

    def save_pretrained(self, directory, extra: dict | None = None) -> Path:
        def files(tmp: Path):
            self.tokenizer.hf.save_pretrained(tmp)
        return save_transformers_model(self, directory, extra, files)


def _to_uint8(img) -> np.ndarray:
    """A PIL image (what the checkpoint's decoder returns) or a uint8 HxWx3 array -> uint8 HxWx3."""
    arr = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"X-Omni's decoder returned {type(img).__name__} {arr.dtype} {arr.shape}; expected an RGB "
                         "image")
    return arr


def has_vision(xo) -> bool:
    """Whether the checkpoint's init_vision has run (it creates both parts; neither is in the weights)."""
    return getattr(xo, "image_tokenizer", None) is not None and getattr(xo, "decoder_pipe", None) is not None


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


def _load_lm(name: str, code: str, dtype, attn_implementation):
    """The causal LM: gvu's X-Omni code on the checkpoint's weights (every weight must be found), or the
    checkpoint's own code."""
    from transformers import AutoModelForCausalLM

    if code == "remote":
        return load_pretrained(AutoModelForCausalLM, name, "xomni", dtype, attn_implementation, check_floor=False,
                               trust_remote_code=True)
    config = load_pretrained(XOmniConfig, name, "xomni")
    lm, info = load_pretrained(XOmniForCausalLM, name, "xomni", dtype, attn_implementation, config=config,
                               output_loading_info=True)
    if info.get("missing_keys"):
        raise ValueError(f"xomni:{name}: the checkpoint lacks weights gvu's X-Omni code needs: "
                         f"{sorted(info['missing_keys'])[:8]} (not an X-Omni checkpoint?)")
    return lm


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


def _remedy(code: str) -> str:
    import transformers

    have = f"transformers {transformers.__version__} here"
    if code == "remote":
        return (f"X-Omni's own modelling code is written for transformers {XOMNI_TRANSFORMERS} ({have}): either "
                f"drop code=remote (gvu's own X-Omni code runs on this transformers) or use an environment with "
                f"pip install {REMOTE_PACKAGES} and {FLASH_ATTN_INSTALL} (X-Omni's image tokenizer imports it), "
                "gvu installed there with pip install --no-deps -e .")
    return (f"gvu's X-Omni code was checked on transformers 5.22.0 and 5.25.0 ({have}): pip install "
            "'transformers==5.25.0'")


def check_one_token(lm, name: str, code: str) -> None:
    """One token through both generation modes before anything else runs, so a version mismatch is reported
    with what to install instead of as a traceback from the first sampling step."""
    xo = base_model(lm)
    V, C = int(xo.config.vocab_size), int(xo.config.image_vocab_size)
    ids = torch.zeros((1, 1), dtype=torch.long, device=next(xo.parameters()).device)
    before = getattr(xo, "generation_mode", "text")
    try:
        with torch.no_grad(), eval_mode(xo):
            for mode, lo, hi in (("text", 0, V), ("image", V, V + C)):
                xo.set_generation_mode(mode)
                logits = xo(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
                if logits.shape[:2] != (1, 1) or logits.shape[-1] < hi or not torch.isfinite(logits[..., lo:hi]).all():
                    raise ValueError(f"{mode} mode gave logits of shape {tuple(logits.shape)}, or non-finite ones "
                                     f"in the {mode} range [{lo}, {hi})")
    except Exception as err:  # noqa: BLE001 - whatever breaks, the remedy is the same: the versions
        raise ValueError(f"xomni:{name}: one token through X-Omni's {code} code failed ({type(err).__name__}: "
                         f"{err}); {_remedy(code)} (docs/real-models.md)") from err
    finally:
        xo.set_generation_mode(before)


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


def load_xomni(name: str, device=None, dtype="auto", gradient_checkpointing=False, grid=None, flux: str = "",
               code_pixels=PIXELS_PER_CODE, attn_implementation: str | None = None, code: str = "gvu",
               vision_source: str = "", trust_remote_code=False) -> XOmniUMM:
    """X-Omni (X-Omni/X-Omni-En or a local copy): gvu's X-Omni code on its weights (`code=gvu`, the default) or
    the checkpoint's own modelling code (`code=remote`, transformers 4.51.3). `vision_source`: the published
    checkpoint whose vision code and files init_vision reads (default `name`; a saved run records it).
    `trust_remote_code`: the user's consent to run the checkpoint's code (never recorded in a saved run)."""
    if code not in ("gvu", "remote"):
        raise ValueError(f"xomni: code={code!r}; 'gvu' (gvu's X-Omni code, the default) or 'remote' (the "
                         "checkpoint's own modelling code, transformers 4.51.3)")
    check_consent(name, code, flux, vision_source, flag(trust_remote_code))
    tok = load_tokenizer(name, "xomni", flag(trust_remote_code), check_floor=False)
    try:
        lm = _load_lm(name, code, dtype, attn_implementation)
    except ValueError:  # already says what is wrong (a missing file or weight, a missing package)
        raise
    except Exception as err:  # noqa: BLE001 - X-Omni's own code under 5.x breaks in loading already (re.error)
        raise ValueError(f"xomni:{name}: could not load the model with {code} code ({type(err).__name__}: {err}); "
                         f"{_remedy(code)}") from err
    lm = finish_loading(lm, device, flag(gradient_checkpointing))
    check_one_token(lm, name, code)
    if flux:  # after the move: init_vision builds its parts on the model's device of the moment
        set_up_vision(lm, local_snapshot(vision_source or name, "vision_source"),
                      local_snapshot(flux, "flux", FLUX_FILES))
    take, other = checkpoint_sampling(name)
    say_sampling(name, take, other)
    umm = XOmniUMM(lm, tok, grid=parse_grid(grid) if grid else DEFAULT_GRID, code_pixels=int(code_pixels),
                   sampling_defaults=take)
    umm.source = str(name)
    umm.options = load_options(dtype, attn_implementation, grid="x".join(map(str, umm.grid)), flux=flux,
                               code_pixels=umm.code_pixels if umm.code_pixels != PIXELS_PER_CODE else None,
                               code=code if code != "gvu" else None,
                               vision_source=(vision_source or name) if flux else None)
    return umm
