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

The language model runs on gvu's own X-Omni code (gvu/models/adapters/xomni_lm.py, the checkpoint's weight names) by
default; `code=remote` runs the checkpoint's own modelling code instead, which needs transformers 4.51.3. Either
way one token goes through both modes at load, and a failure names what to install (docs/real-models.md).
`code=remote` and `flux` run the checkpoint's own Python, so both are refused unless the spec says
`trust_remote_code=1`; the tokenizer loads without the checkpoint's code wherever its files allow.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import torch

from gvu.models.adapters.causal_lm import build_grid_layout, GridSharedVocabUMM, SequenceFormat
from gvu.models.adapters.emu3 import parse_grid
from gvu.models.adapters.xomni_files import (check_consent, checkpoint_sampling, FLASH_ATTN_INSTALL,  # noqa: F401
                                             FLUX_FILES, has_vision, HF_SAMPLING_DEFAULTS, local_snapshot,
                                             say_sampling, set_up_vision, XOMNI_TRANSFORMERS)
from gvu.models.adapters.xomni_lm import XOmniConfig, XOmniForCausalLM
from gvu.models.forward import eval_mode
from gvu.models.hf import (base_model, finish_loading, flag, load_options, load_pretrained, load_tokenizer,
                           PlainTokenizer, save_transformers_model)
from gvu.models.protocol import SamplingConfig

# what X-Omni's own code needs (its requirements.txt); with flash-attn (gvu.models.adapters.xomni_files)
REMOTE_PACKAGES = "'transformers==4.51.3' 'diffusers==0.34.0' timm einops torchvision"
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
