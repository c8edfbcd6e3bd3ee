"""X-Omni, the model GvU trains, as a UnifiedModel through its own modelling code (`xomni:PATH`).

What the adapter does about X-Omni's interface (from X-Omni's public inference code and the official GvU trainer):

- Image codes live BEYOND `lm_head`: code k is vocabulary id `config.vocab_size + k` (X-Omni embeds and scores
  them with separate multimodal layers), `config.image_vocab_size` codes (16,384).
- A generation mode: `set_generation_mode('image')` makes the forward fill only the code range of the logits,
  'text' only the text range (the rest is bf16's lowest value). Sampling and the teacher-forced pass run in image
  mode; the reward (understanding) in text mode; the mode is restored after each call.
- The forward takes `num_logits_to_keep` and no other keyword arguments (handled by SharedVocabUMM._forward).
- Generation format (no chat template): "{prompt}<SOM>{rows} {cols}<IMAGE>" then rows x cols codes in raster
  order; guidance rows are "<SOM>{rows} {cols}<IMAGE>" alone. Default grid 36 x 36 (576 pixels at 16 pixels per
  code, the GvU setting).
- Understanding: the tokenizer's own chat template on one user turn, "<SOM>{rows} {cols}<IMAGE>" + codes + "<EOM>"
  + "\\n" + instruction, with the generation prompt; the reward scores the prompt's tokens right after it.
- Pixels: the decoder is X-Omni's diffusion decoder (`detokenize_image`, set up by `init_vision(FLUX_PATH)`),
  conditioned on the prompt and drawing with a seed, so `decode` takes both; the reward decodes then re-encodes
  with X-Omni's image tokenizer (`image_tokenizer.encode`), as the official trainer does. Departure, stated: the
  official reward re-encodes at the decoded image's own size; here pixels are resized to the generation grid
  (rows x 16, cols x 16; `code_pixels` for another patch size) first, so the judge reads as many codes as it drew.

X-Omni's modelling code pins transformers 4.51.3 (older than gvu's floor, gvu.models.hf.TRANSFORMERS_FLOOR); on
another version the adapter warns, and a load that fails names the pin (XOMNI_TRANSFORMERS; docs/real-models.md).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from gvu.models.causal_lm import build_grid_layout, GridSharedVocabUMM, SequenceFormat
from gvu.models.emu3 import parse_grid
from gvu.models.hf import (base_model, finish_loading, flag, load_options, load_pretrained, PlainTokenizer,
                           save_transformers_model)

XOMNI_TRANSFORMERS = "4.51.3"
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
    """`lm`: X-Omni's causal LM (remote code) or a PEFT wrapper of it; `hf_tokenizer`: its tokenizer."""

    lora_scope = "model"
    reads_pixels = True  # the reward decodes, then re-encodes, as the official trainer does
    supports_fsdp2 = False  # the decoder and the image tokenizer are called outside the root forward

    def __init__(self, lm, hf_tokenizer, grid=DEFAULT_GRID, code_pixels: int = PIXELS_PER_CODE):
        xo = base_model(lm)
        for name in ("set_generation_mode", "image_tokenizer"):
            if not hasattr(xo, name):
                raise ValueError(f"this model has no {name!r}: not X-Omni's modelling code (load it with xomni:)")
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
            return super().sample(prompts, group_size, sampling, generator)

    def image_logprobs(self, prompts_N, image_tokens_NT, sampling):
        with self.mode("image"):
            return super().image_logprobs(prompts_N, image_tokens_NT, sampling)

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
        if not hasattr(xo, "detokenize_image") or getattr(xo, "decoder_pipe", True) is None:
            raise ValueError("X-Omni's decoder is not set up; load with xomni:PATH?flux=FLUX_PATH (a FLUX.1-dev "
                             "folder), which calls the model's init_vision")
        N = len(codes_NT)
        prompts = list(prompts) if prompts is not None else [""] * N
        seeds = list(seeds) if seeds is not None else list(range(N))
        out = []
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for codes, prompt, seed in zip(np.asarray(codes_NT), prompts, seeds):
                torch.manual_seed(int(seed))
                ids = torch.as_tensor(codes, dtype=torch.long)[None]
                img = xo.detokenize_image([prompt], None, ids, self.grid)
                out.append(_to_uint8(img[0] if isinstance(img, (list, tuple)) else img))
        return np.stack(out)

    def _encode_pixels(self, pixels_NHW3: np.ndarray) -> np.ndarray:
        """Resize to the generation grid, normalise to [-1, 1] (X-Omni's preprocessing), encode."""
        from PIL import Image

        rows, cols = self.grid
        size = (cols * self.code_pixels, rows * self.code_pixels)
        x = np.stack([np.asarray(Image.fromarray(p).resize(size, Image.BICUBIC)) if p.shape[1::-1] != size else p
                      for p in np.asarray(pixels_NHW3)]).astype(np.float32)
        tok = base_model(self.lm).image_tokenizer
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
    """A PIL image, a uint8 HxWx3 array, or a float CHW/HWC tensor in [0, 1] -> uint8 HxWx3."""
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
        if img.ndim == 3 and img.shape[0] == 3:
            img = img.transpose(1, 2, 0)
        img = (img.clip(0, 1) * 255).round() if img.max() <= 1.0 else img
    arr = np.asarray(img)
    return arr.astype(np.uint8) if arr.dtype != np.uint8 else arr


def check_transformers_pin(folder: str) -> None:
    """Warn when the installed transformers is not the one X-Omni's modelling code was written for."""
    import transformers

    want = XOMNI_TRANSFORMERS
    cfg = Path(folder) / "config.json"
    if cfg.is_file():
        want = json.loads(cfg.read_text()).get("transformers_version", want)
    if transformers.__version__.split(".")[:2] != want.split(".")[:2]:
        warnings.warn(f"X-Omni's modelling code was written for transformers {want}; this is "
                      f"{transformers.__version__}. If loading or a forward fails, install it in this environment: "
                      f"pip install 'transformers=={want}' (docs/real-models.md)", stacklevel=3)


def load_xomni(name: str, device=None, dtype="auto", gradient_checkpointing=False, grid=None, flux: str = "",
               code_pixels=PIXELS_PER_CODE, attn_implementation: str | None = None) -> XOmniUMM:
    """X-Omni (X-Omni/X-Omni-En or a local copy) through its own modelling code (trust_remote_code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_transformers_pin(name)
    try:
        tok = load_pretrained(AutoTokenizer, name, "xomni", check_floor=False, trust_remote_code=True)
        lm = load_pretrained(AutoModelForCausalLM, name, "xomni", dtype, attn_implementation, check_floor=False,
                             trust_remote_code=True)
    except (ValueError, TypeError, AttributeError, ImportError) as err:
        raise ValueError(f"xomni:{name}: could not load the model with its own code ({type(err).__name__}: {err}); "
                         f"X-Omni's code is written for transformers {XOMNI_TRANSFORMERS}: pip install "
                         f"'transformers=={XOMNI_TRANSFORMERS}'") from err
    if flux:
        base_model(lm).init_vision(flux)
    for p in base_model(lm).image_tokenizer.parameters():  # frozen, as in X-Omni
        p.requires_grad_(False)
    lm = finish_loading(lm, device, flag(gradient_checkpointing))
    umm = XOmniUMM(lm, tok, grid=parse_grid(grid) if grid else DEFAULT_GRID, code_pixels=int(code_pixels))
    umm.source = str(name)
    umm.options = load_options(dtype, attn_implementation, grid="x".join(map(str, umm.grid)), flux=flux,
                               code_pixels=umm.code_pixels if umm.code_pixels != PIXELS_PER_CODE else None)
    return umm

