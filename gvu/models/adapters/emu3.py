"""Emu3 (`transformers.Emu3ForConditionalGeneration`) as a UnifiedModel: a shared-vocabulary model, so it is a
GridSharedVocabUMM with Emu3's layout.

An Emu3 image inside a sequence is
    <|image start|> "{rows}*{cols}" <|image token|> row_1 <|extra_200|> ... row_R <|extra_200|> <|extra_201|> <|image end|>
with each row `cols` visual tokens and <|extra_200|> the end-of-line (EOL), <|extra_201|> the end-of-frame (EOF).
This is what Emu3's processor writes for understanding and what its documented `prefix_allowed_tokens_fn`
forces in generation: visual tokens inside a row, EOL at a row end, then EOF, EOI. We sample with that mask in our
own KV-cached loop (codes: a softmax over the visual-token range only; EOL: forced, probability 1) and the
teacher-forced pass applies the same mask (see gvu.models.adapters.causal_lm). Rollouts hold the rows x cols codes only.

The reward reads the generated tokens directly (the understanding sequence embeds the same visual tokens, which is
exactly what Emu3Model does with `pixel_values`: VQ-encode, map to visual token ids, add EOLs), or, with
`reward_image_path: pixels`, VQ-decodes and re-encodes first.

The understanding prompt is the official Emu3 processor's chat format, "{bos}You are a helpful assistant. USER:
{image}{instruction}. ASSISTANT:" (note the full stop the template adds after the instruction), and the reward
scores " {prompt}" after it; tests/test_chat_formats.py checks it token for token against that processor's
construction. Generation is "{bos}{prompt}" + the image prefix, as there.

Which checkpoint: GvU needs ONE checkpoint that both draws and judges. BAAI's Emu3-Gen is a generation fine-tune
whose understanding is weak and Emu3-Chat an understanding fine-tune that draws poorly; Emu3-Stage1 (the
pretrained model) does both and is the one to start from. Images are square grids unless `grid` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gvu.models.adapters.causal_lm import build_grid_layout, GridSharedVocabUMM, SequenceFormat
from gvu.models.hf import (base_model, finish_loading, flag, load_options, load_pretrained, PlainTokenizer,
                           save_transformers_model, tiny_byte_tokenizer)

EOL, EOF = "<|extra_200|>", "<|extra_201|>"
BOI, EOI, WRAPPER, IMAGE = "<|image start|>", "<|image end|>", "<|image token|>", "<image>"
# Emu3's processor default for generation: 518400 pixels at 1:1, 8 pixels per token -> 90 x 90 tokens
DEFAULT_GRID = (90, 90)
# Emu3's vocabulary holds ~184k ids: full logits of one 90x90 image are 8,190 x 184,622 floats (~6 GB). The
# teacher-forced pass computes the 32,768 code columns only, 1,024 positions at a time (gvu.models.adapters.causal_lm).
DEFAULT_LOGITS_CHUNK = 1024


def emu3_format(system: str = "You are a helpful assistant.", negative_prompt: str = "") -> SequenceFormat:
    return SequenceFormat(
        generation="{bos}{prompt}", image_prefix=BOI + "{rows}*{cols}" + WRAPPER, row_end=EOL,
        image_suffix=EOF + EOI, understanding="{bos}" + (system + " " if system else "") + "USER: {image}{instruction}"
        ". ASSISTANT:", answer=" {prompt}", answer_end="{eos}", unconditional_prompt=negative_prompt)


def parse_grid(grid) -> tuple[int, int]:
    """'32x32', '32', (32, 32) -> (rows, cols)."""
    if isinstance(grid, str):
        parts = grid.lower().replace("*", "x").split("x")
        grid = (parts[0], parts[-1])
    rows, cols = (int(g) for g in grid)
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {grid!r}")
    return rows, cols


class Emu3UMM(GridSharedVocabUMM):
    """`lm`: an Emu3ForConditionalGeneration (or a PEFT wrapper of it); `hf_tokenizer`: its tokenizer."""

    lora_scope = "model.text_model"
    supports_fsdp2 = False  # decode/encode call the VQ submodule directly, outside the root's FSDP2 hooks

    def __init__(self, lm, hf_tokenizer, grid=DEFAULT_GRID, fmt: SequenceFormat | None = None,
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)):
        fmt = fmt or emu3_format()
        emu = base_model(lm)
        mapping = emu.model.vocabulary_mapping
        img2bpe = mapping.img2bpe
        C = len(img2bpe)
        offset = img2bpe[0]
        if [img2bpe[c] for c in range(C)] != list(range(offset, offset + C)):
            raise ValueError("Emu3 visual tokens are not one contiguous id range in this vocabulary; GridSharedVocabUMM"
                             " needs code c at id offset + c")
        vq = emu.model.vqmodel
        if C != vq.config.codebook_size:
            raise ValueError(f"{C} visual tokens in the vocabulary but the VQ codebook has {vq.config.codebook_size}")
        for text in (BOI, EOI, WRAPPER, EOF, EOL):
            if len(hf_tokenizer.encode(text, add_special_tokens=False)) != 1:
                raise ValueError(f"Emu3 token {text!r} is not a single token of this tokenizer")
        if hf_tokenizer.convert_tokens_to_ids(EOL) != mapping.eol_token_id:
            raise ValueError(f"the tokenizer's {EOL} and the model's end-of-line id disagree")
        self.grid = parse_grid(grid)
        self.image_mean = np.asarray(image_mean, dtype=np.float32)
        self.image_std = np.asarray(image_std, dtype=np.float32)
        layout = build_grid_layout(hf_tokenizer, fmt, image_token_offset=offset, num_codes=C, grid=self.grid,
                                   decoder=self._decode_codes, encoder=self._encode_pixels)
        super().__init__(lm, PlainTokenizer(hf_tokenizer), layout, answer_template=fmt.answer,
                         unconditional_prompt=fmt.unconditional_prompt)
        self.kind = "emu3"

    @property
    def vqmodel(self):
        return base_model(self.lm).model.vqmodel

    @torch.no_grad()
    def _decode_codes(self, codes_NT: np.ndarray) -> np.ndarray:
        vq = self.vqmodel
        rows, cols = self.grid
        codes = torch.as_tensor(np.asarray(codes_NT), dtype=torch.long, device=vq.device)
        x_N3HW = vq.decode(codes.view(-1, rows, cols)).float().cpu().numpy()
        x = x_N3HW.transpose(0, 2, 3, 1) * self.image_std + self.image_mean  # undo the processor's normalisation
        return (x * 255.0).clip(0, 255).astype(np.uint8)  # as the image processor's postprocess: scale, clip, cast

    @torch.no_grad()
    def _encode_pixels(self, pixels_NHW3: np.ndarray) -> np.ndarray:
        vq = self.vqmodel
        N, H, W, _ = pixels_NHW3.shape
        x = (pixels_NHW3.astype(np.float32) / 255.0 - self.image_mean) / self.image_std
        x_N3HW = torch.as_tensor(x.transpose(0, 3, 1, 2).copy(), device=vq.device, dtype=vq.dtype)
        sizes = torch.tensor([[H, W]] * N, device=vq.device)
        tokens = vq.encode(x_N3HW, sizes, return_dict=True).image_tokens
        codes = torch.stack([t.reshape(-1) for t in tokens]).cpu().numpy()
        if codes.shape[1] != self.layout.num_image_tokens:
            raise ValueError(f"{H}x{W} pixels encode to {codes.shape[1]} codes, not {self.layout.num_image_tokens} "
                             f"(grid {self.grid}); pass images of the decoded size")
        return codes

    def save_pretrained(self, directory, extra: dict | None = None) -> Path:
        def files(tmp: Path):
            self.tokenizer.hf.save_pretrained(tmp)
            try:  # keep the processor's normalisation next to the weights when there was one
                from transformers import AutoImageProcessor

                AutoImageProcessor.from_pretrained(self.source).save_pretrained(tmp)
            except Exception:
                pass
        return save_transformers_model(self, directory, extra, files)


def load_emu3(name: str, device=None, dtype="auto", gradient_checkpointing=False, grid=None,
              negative_prompt: str = "", attn_implementation: str | None = None,
              logits_chunk=DEFAULT_LOGITS_CHUNK) -> Emu3UMM:
    """An Emu3 checkpoint from a local folder or the hub. `grid`: 'ROWSxCOLS' tokens per image (default: Emu3's
    processor default, 90x90)."""
    try:
        from transformers import AutoTokenizer, Emu3ForConditionalGeneration
    except ImportError as err:
        raise ImportError(f"Emu3 needs transformers >= 5.22 (pip install -U 'transformers>=5.22'): {err}")
    lm = load_pretrained(Emu3ForConditionalGeneration, name, "emu3", dtype, attn_implementation)
    tok = load_pretrained(AutoTokenizer, name, "emu3")
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    try:
        from transformers import AutoImageProcessor

        ip = AutoImageProcessor.from_pretrained(name)
        mean, std = tuple(ip.image_mean), tuple(ip.image_std)
    except Exception:  # no processor saved: Emu3's VQ works on [-1, 1], i.e. mean = std = 0.5
        pass
    for p in lm.model.vqmodel.parameters():  # the VQ is frozen in Emu3
        p.requires_grad_(False)
    lm = finish_loading(lm, device, flag(gradient_checkpointing))
    umm = Emu3UMM(lm, tok, grid=parse_grid(grid) if grid else DEFAULT_GRID,
                  fmt=emu3_format(negative_prompt=negative_prompt), image_mean=mean, image_std=std)
    umm.source = str(name)
    umm.logits_chunk = int(logits_chunk)
    umm.options = load_options(dtype, attn_implementation, grid="x".join(map(str, umm.grid)),
                               logits_chunk=umm.logits_chunk, negative_prompt=negative_prompt)
    return umm


# ------------------------------------------------------------------------------------------ tiny random model

def tiny_emu3_parts(seed: int = 0, num_codes: int = 64, sharpen: float = 4.0):
    """(model, tokenizer) of a tiny random Emu3: byte-level tokenizer + Emu3's special tokens + `num_codes` visual
    tokens, a 2-layer text model, and a VQ with 2x spatial downsampling (a 4x4 grid decodes to 8x8 pixels). The
    weights outside the VQ are scaled by `sharpen` so the distributions are far from uniform (see tiny Janus)."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    specials = ["<|endoftext|>", "<|extra_203|>", "<|extra_204|>", BOI, EOI, WRAPPER, EOF, EOL, IMAGE]
    visual = [f"<|visual token {i:06d}|>" for i in range(num_codes)]
    tok = tiny_byte_tokenizer(specials + visual, bos="<|extra_203|>", eos="<|extra_204|>", pad="<|endoftext|>")
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, attention_dropout=0.0)
    vq = dict(codebook_size=num_codes, embed_dim=4, latent_channels=4, base_channels=32, channel_multiplier=[1, 1],
              num_res_blocks=1, attn_resolutions=[], temporal_downsample_factor=2, hidden_size=32,
              num_attention_heads=1)
    config = Emu3Config(text_config=text, vq_config=vq, vocabulary_map=tok.get_vocab())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = Emu3ForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.dim() >= 2 and "vqmodel" not in name:
                p.mul_(sharpen)
        lm.lm_head.weight.mul_(sharpen)
    return lm.eval(), tok


def build_tiny_emu3(seed: int = 0, grid=(4, 4)) -> Emu3UMM:
    lm, tok = tiny_emu3_parts(seed)
    return Emu3UMM(finish_loading(lm, "cpu", False), tok, grid=grid)
