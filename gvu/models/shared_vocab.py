"""UnifiedModel for any decoder-only causal LM whose vocabulary holds the image codes as one contiguous id range
(the built-in model; X-Omni and Emu3 adapters reuse it with their own layout and tokenizer).

The sampler is our own KV-cached loop rather than transformers' `generate`: generate's defaults (top_k=50 among
them) change the distribution, and we need the exact log-probs of what was drawn. Prompts of different lengths
are LEFT-padded, with position ids = cumsum(mask) - 1 so a token's position never depends on its batch
neighbours; the teacher-forced pass builds the same positions, which is why the two paths agree to float
rounding. With guidance the conditional and unconditional rows ride in one batch of 2N.

Images written as rows with fixed row-end tokens (Emu3's end-of-line): those positions allow exactly one token, so
under the per-position vocabulary mask they have probability 1; the sampler feeds them without drawing and neither
path reports a log-prob for them (log 1 = 0, no gradient). At code positions both paths softmax over the code
range only, then filter_logits: the same renormalisation, so `exp(logp - old_logp) == 1` at step 0. With
`logits_chunk` the teacher-forced pass computes the code columns of the output head only, a chunk of positions at
a time (vocabularies of 100k+ ids).

Left out: micro-batching (callers pass batches that fit), stopping early on <eoi> (every image has exactly T
tokens).

Letters: P prompts, G group size, N rows, S sequence length, T image tokens, C image codes, V vocabulary,
L target (prompt) tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from gvu.models.forward import (cache_kwarg, cache_of, checkpointing, eval_mode, ForwardView, logits_kwarg, pad_batch,
                                positions, span_logprobs, takes_kwargs)
from gvu.models.hf import base_model
from gvu.models.protocol import check_sample_args, checked_codes, DEFAULT_INSTRUCTION, Rollout, SamplingConfig
from gvu.models.sampling import draw, guided_logprobs


class TextTokenizer(Protocol):
    """What SharedVocabUMM needs from a tokenizer: plain text <-> ids, without adding special tokens."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...


@dataclass(frozen=True)
class SharedVocabLayout:
    """Where the image codes live in the vocabulary and how the two branches' sequences are laid out.

    generation:    gen_prefix + prompt + gen_suffix + image ids (T) + gen_end
    unconditional: the same with the empty prompt (classifier-free guidance)
    understanding: und_prefix + image ids (T) + und_after_image + instruction + und_before_answer + answer
                   + und_suffix
    """

    image_token_offset: int
    num_codes: int
    num_image_tokens: int
    pad_id: int
    eos_id: int
    gen_prefix: tuple[int, ...]
    gen_suffix: tuple[int, ...]
    gen_end: tuple[int, ...]
    und_prefix: tuple[int, ...]
    und_after_image: tuple[int, ...]
    und_before_answer: tuple[int, ...]
    und_suffix: tuple[int, ...]
    caption_ids: tuple[int, ...]
    """The ids greedy captioning may write (the text words and eos)."""
    decoder: Callable[[np.ndarray], np.ndarray] = field(compare=False)
    """Image codes [..., T] -> uint8 pixels [..., H, W, 3]."""
    encoder: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False)
    """uint8 pixels -> image codes, for models that can re-encode (reward via pixels)."""
    row_width: int = 0
    row_end: tuple[int, ...] = ()
    """Ids written after every row of `row_width` codes, the last row included (Emu3's end-of-line); empty for a
    flat sequence of codes. Those positions allow one token only: fed without drawing, no log-prob."""

    def __post_init__(self):
        if self.row_end and (self.row_width < 1 or self.num_image_tokens % self.row_width):
            raise ValueError(f"{self.num_image_tokens} image tokens do not fill rows of {self.row_width}")

    def image_ids(self, codes) -> list[int]:
        ids = [self.image_token_offset + int(c) for c in codes]
        if not self.row_end:
            return ids
        out = []
        for r in range(0, len(ids), self.row_width):
            out += ids[r:r + self.row_width] + list(self.row_end)
        return out

    def code_positions(self, T: int) -> torch.Tensor:
        """Index of each code inside `image_ids`: t + (rows before it) x len(row_end)."""
        t = torch.arange(T)
        return t + (t // self.row_width) * len(self.row_end) if self.row_end else t

    def generation_prefix(self, prompt_ids: list[int]) -> list[int]:
        return [*self.gen_prefix, *prompt_ids, *self.gen_suffix]

    def generation_sequence(self, prompt_ids: list[int], codes) -> list[int]:
        """The whole generation sequence (for pretraining); the image ids are the targets."""
        return [*self.generation_prefix(prompt_ids), *self.image_ids(codes), *self.gen_end]

    def understanding_prefix(self, codes, instruction_ids: list[int]) -> list[int]:
        return [*self.und_prefix, *self.image_ids(codes), *self.und_after_image, *instruction_ids,
                *self.und_before_answer]

    def understanding_sequence(self, codes, instruction_ids: list[int],
                               answer_ids: list[int]) -> tuple[list[int], tuple[int, int]]:
        """The whole understanding sequence and the [start, end) span of the answer ids (suffix excluded)."""
        prefix = self.understanding_prefix(codes, instruction_ids)
        return [*prefix, *answer_ids, *self.und_suffix], (len(prefix), len(prefix) + len(answer_ids))


class SharedVocabUMM:
    """UnifiedModel over a causal LM with image codes in its vocabulary. `lm` may be swapped for a PEFT wrapper
    of itself (assign to `.lm` or `.module`)."""

    kind = "shared-vocab"
    world: str | None = None  # "shapes" for the built-in model; None for models of natural images
    lora_scope = "model"  # module path of the language model (LoRA targets stay inside it)
    reads_pixels = False  # the understanding branch reads these image codes, not pixels
    supports_fsdp2 = True  # every pass goes through the root module's forward, which FSDP2's hooks need

    def __init__(self, lm: torch.nn.Module, tokenizer: TextTokenizer, layout: SharedVocabLayout):
        self.lm = lm
        self.tokenizer = tokenizer
        self.layout = layout
        self._cache_arg = cache_kwarg(lm)
        self._logits_arg = logits_kwarg(lm)
        self.uncond_ids: list[int] = []  # the prompt of the guidance rows (empty: unconditional)
        self.logits_chunk = 0  # > 0: image_logprobs computes code logits this many positions at a time
        self.share_prefix = True  # image_logprobs runs each distinct prompt prefix once (_block_logits)

    def _forward(self, **kw):
        """The model's forward with `logits_to_keep` passed under the name the model takes (or dropped)."""
        keep = kw.pop("logits_to_keep", None)
        if keep is not None and self._logits_arg is not None:
            kw[self._logits_arg] = keep
        out = self.lm(**kw)
        if keep and self._logits_arg is None:  # a model that always returns every position's logits
            out.logits = out.logits[:, -keep:]
        return out

    @property
    def module(self) -> torch.nn.Module:
        return self.lm

    @module.setter
    def module(self, lm: torch.nn.Module):
        self.lm = lm

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    # ------------------------------------------------------------------------------------------- generation

    def _encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        memo: dict[str, list[int]] = {}
        for p in prompts:
            if p not in memo:
                memo[p] = list(self.tokenizer.encode(p))
        return [memo[p] for p in prompts]

    def _generation_prefixes(self, prompt_ids: list[list[int]], guided: bool) -> list[list[int]]:
        seqs = [self.layout.generation_prefix(ids) for ids in prompt_ids]
        if guided:
            seqs += [self.layout.generation_prefix(self.uncond_ids)] * len(prompt_ids)
        return seqs

    def _code_logits(self, logits_BV: torch.Tensor) -> torch.Tensor:
        """Everything outside the image-code range is masked by slicing it away (softmax over the codes only)."""
        off = self.layout.image_token_offset
        return logits_BV[..., off:off + self.layout.num_codes]

    _step_logprobs = staticmethod(guided_logprobs)

    @torch.no_grad()
    def sample(self, prompts: list[str], group_size: int, sampling: SamplingConfig,
               generator) -> Rollout:
        check_sample_args(prompts, group_size)
        lay = self.layout
        P, G, T = len(prompts), group_size, lay.num_image_tokens
        N, guided, device = P * G, sampling.uses_guidance, self.device
        prompt_ids = [ids for ids in self._encode_prompts(list(prompts)) for _ in range(G)]
        ids_BS, mask_BS = pad_batch(self._generation_prefixes(prompt_ids, guided), lay.pad_id, "left", device)
        B, S = ids_BS.shape
        pos_BK = positions(mask_BS)
        row_end_BR = torch.tensor(lay.row_end, dtype=torch.long, device=device).expand(B, -1)
        L = S + T + (T // lay.row_width * len(lay.row_end) if lay.row_end else 0)  # every position fed
        mask_BL = torch.cat([mask_BS, mask_BS.new_ones((B, L - S))], dim=1)
        cache = self._static_cache(L)
        codes_NT = torch.empty((N, T), dtype=torch.long, device=device)
        logp_NT = torch.empty((N, T), dtype=torch.float32, device=device)
        with eval_mode(self.lm):
            out = self._forward(input_ids=ids_BS, attention_mask=mask_BS, position_ids=pos_BK, use_cache=True,
                          logits_to_keep=1, cache_position=torch.arange(S, device=device),
                          **({} if cache is None else {self._cache_arg: cache}))
            seen = S
            for t in range(T):
                logp_NC = self._step_logprobs(self._code_logits(out.logits[:, -1]), N, sampling)
                codes_N = draw(logp_NC.exp(), generator, G).to(device)
                codes_NT[:, t] = codes_N
                logp_NT[:, t] = logp_NC.gather(1, codes_N[:, None])[:, 0]
                if t + 1 == T:
                    break
                step_BK = (codes_N + lay.image_token_offset).repeat(2 if guided else 1)[:, None]
                if lay.row_end and (t + 1) % lay.row_width == 0:  # forced: the only token the mask allows
                    step_BK = torch.cat([step_BK, row_end_BR], dim=1)
                K = step_BK.shape[1]
                pos_BK = pos_BK[:, -1:] + torch.arange(1, K + 1, device=device)
                out = self._forward(input_ids=step_BK, attention_mask=mask_BL[:, :seen + K], position_ids=pos_BK,
                              use_cache=True, logits_to_keep=1,
                              cache_position=torch.arange(seen, seen + K, device=device),
                              **{self._cache_arg: cache_of(out)})
                seen += K
        return Rollout(image_tokens_NT=codes_NT, logp_NT=logp_NT,
                       prompt_index_N=torch.arange(P, device=device).repeat_interleave(G), prompts=list(prompts))

    def _static_cache(self, length: int):
        """A preallocated KV cache of `length` positions for this model (None where transformers has none for
        it: the model then grows its own dynamic cache)."""
        try:
            from transformers import StaticCache
        except ImportError:
            return None
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        config = getattr(base, "config", None)
        if config is None:
            return None
        try:  # a speed choice only: any model transformers cannot give a static cache keeps its dynamic one
            return StaticCache(config=config, max_cache_len=length)
        except (TypeError, ValueError, AttributeError, KeyError, NotImplementedError):
            return None

    def image_logprobs(self, prompts_N: list[str], image_tokens_NT: torch.Tensor,
                       sampling: SamplingConfig) -> torch.Tensor:
        """One teacher-forced forward over [prefix, image block up to the last code], with grad; logits are read
        at the code positions only (row ends are forced, see the module docstring)."""
        lay = self.layout
        N, T = image_tokens_NT.shape
        device, guided = self.device, sampling.uses_guidance
        codes_NT = checked_codes(prompts_N, image_tokens_NT, lay.num_image_tokens, lay.num_codes, self.device)
        prefixes = self._generation_prefixes(self._encode_prompts(list(prompts_N)), guided)
        block_NI = codes_NT + lay.image_token_offset
        if lay.row_end:
            ends = torch.tensor(lay.row_end, dtype=torch.long, device=device)
            block_NI = torch.cat([block_NI.view(N, -1, lay.row_width),
                                  ends.expand(N, T // lay.row_width, -1)], dim=2).reshape(N, -1)
        pos_T = lay.code_positions(T).to(device)
        block_BI = block_NI[:, :int(pos_T[-1])].repeat(2 if guided else 1, 1)  # nothing follows the last code
        if self.logits_chunk:
            return self._chunked_logprobs(*self._whole_sequences(prefixes, block_BI), pos_T, block_BI.shape[1] + 1,
                                          codes_NT, sampling)
        logits_BTC = self._code_logits(self._block_logits(prefixes, block_BI)[:, pos_T])  # logit k predicts token k
        C = logits_BTC.shape[-1]
        logp_QC = self._step_logprobs(logits_BTC.reshape(-1, C), N * T, sampling)
        return logp_QC.gather(1, codes_NT.reshape(-1, 1)).reshape(N, T)

    def _block_logits(self, prefixes: list[list[int]], block_BI: torch.Tensor) -> torch.Tensor:
        """Logits [B, I + 1, V] at the last position of each row's prefix and at each of its I block tokens, for
        the sequences prefixes[b] + block_BI[b]. With `share_prefix`, each distinct prefix runs once (a group's
        images share their prompt, the guidance rows one empty prompt), its KV cache is indexed out to its rows
        (gradients flow back through the index) and the blocks run on it: the same logits to float rounding, the
        prefix's share of the work divided by the group size. Always two forwards, even where every prefix is
        distinct, so that sharded processes (FSDP2 gathers weights per forward) run as many as each other.
        Otherwise one forward over the whole sequences."""
        lay, device, I = self.layout, self.device, block_BI.shape[1]
        distinct: dict[tuple, int] = {}
        inv = [distinct.setdefault(tuple(p), len(distinct)) for p in prefixes]
        if self.share_prefix and not (torch.is_grad_enabled() and checkpointing(self.lm)):  # no cache then
            pre_US, pmask_US = pad_batch([list(p) for p in distinct], lay.pad_id, "left", device)
            out = self._forward(input_ids=pre_US, attention_mask=pmask_US, position_ids=positions(pmask_US),
                                use_cache=True, logits_to_keep=1)
            inv_B, cache, S = torch.tensor(inv, device=device), cache_of(out), pre_US.shape[1]
            if hasattr(cache, "batch_select_indices"):  # else (a legacy cache): the whole sequences, below
                cache.batch_select_indices(inv_B)
                getattr(base_model(self.lm), "select_decode_rows", lambda idx: None)(inv_B)  # a model's own state
                mask_BL = torch.cat([pmask_US[inv_B], torch.ones_like(block_BI)], dim=1)
                blk = self._forward(input_ids=block_BI, attention_mask=mask_BL, position_ids=positions(mask_BL)[:, S:],
                                    use_cache=True, logits_to_keep=I, **{self._cache_arg: cache},
                                    cache_position=torch.arange(S, S + I, device=device))
                return torch.cat([out.logits[:, -1:][inv_B], blk.logits[:, -I:]], dim=1)
        ids_BS, mask_BS = self._whole_sequences(prefixes, block_BI)
        return self._forward(input_ids=ids_BS, attention_mask=mask_BS, position_ids=positions(mask_BS),
                             use_cache=False, logits_to_keep=I + 1).logits

    def _whole_sequences(self, prefixes: list[list[int]], block_BI: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) [B, S + I] of the left-padded prefixes followed by their blocks."""
        prefix_BS, pmask_BS = pad_batch(prefixes, self.layout.pad_id, "left", self.device)
        return torch.cat([prefix_BS, block_BI], dim=1), torch.cat([pmask_BS, torch.ones_like(block_BI)], dim=1)

    def _chunked_logprobs(self, ids_BS, mask_BS, pos_T, keep: int, codes_NT, sampling) -> torch.Tensor:
        """image_logprobs for large vocabularies: the decoder's hidden states once, then the code rows of the
        output head only (C of V columns), `logits_chunk` positions at a time, each chunk recomputed in the
        backward pass rather than stored, so no [B, T, V] (or [B, T, C]) logits tensor is ever held."""
        from torch.utils.checkpoint import checkpoint

        N, T = codes_NT.shape
        base = base_model(self.lm)
        hidden_BSD = base.model(input_ids=ids_BS, attention_mask=mask_BS, position_ids=positions(mask_BS),
                                use_cache=False).last_hidden_state
        h_BTD = hidden_BSD[:, -keep:][:, pos_T]
        head = base.get_output_embeddings()
        off, C = self.layout.image_token_offset, self.layout.num_codes
        w_CD = head.weight[off:off + C]
        b_C = head.bias[off:off + C] if getattr(head, "bias", None) is not None else None

        def chunk(h_BtD, codes_Nt):
            logits_BtC = torch.nn.functional.linear(h_BtD, w_CD, b_C)
            t = codes_Nt.shape[1]
            logp_QC = self._step_logprobs(logits_BtC.reshape(-1, C), N * t, sampling)
            return logp_QC.gather(1, codes_Nt.reshape(-1, 1)).reshape(N, t)

        step = self.logits_chunk
        return torch.cat([checkpoint(chunk, h_BTD[:, s:s + step], codes_NT[:, s:s + step], use_reentrant=False)
                          for s in range(0, T, step)], dim=1)

    # ------------------------------------------------------------------------------------------ understanding

    def _as_codes(self, images) -> torch.Tensor:
        """Image codes [N, T] from codes or uint8 pixels [N, H, W, 3] (encoded first)."""
        if isinstance(images, torch.Tensor) and images.dtype != torch.uint8 and images.dim() == 2:
            return images.long()
        arr = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if arr.ndim == 4 and arr.dtype == np.uint8:
            return self.encode(arr)
        if arr.ndim == 2 and np.issubdtype(arr.dtype, np.integer):
            return torch.as_tensor(arr, dtype=torch.long)
        raise ValueError(f"images must be image codes [N, {self.layout.num_image_tokens}] or uint8 pixels "
                         f"[N, H, W, 3]; got {arr.dtype} {arr.shape}")

    def _answer_ids(self, prompts: list[str]) -> list[list[int]]:
        """The ids scored by prompt_logprobs: the prompt itself here; adapters may wrap it in a template."""
        return self._encode_prompts(prompts)

    def prompt_logprobs(self, images, prompts: list[str],
                        instruction: str = DEFAULT_INSTRUCTION) -> tuple[torch.Tensor, torch.Tensor]:
        codes_NT = self._as_codes(images)
        if len(prompts) != codes_NT.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {codes_NT.shape[0]} images")
        inst_ids = self.tokenizer.encode(instruction)
        seqs, spans = [], []
        for codes_T, ids in zip(codes_NT.tolist(), self._answer_ids(list(prompts))):
            seq, span = self.layout.understanding_sequence(codes_T, inst_ids, ids)
            seqs.append(seq)
            spans.append(span)
        return span_logprobs(ForwardView(self), seqs, spans, self.layout.pad_id)

    @torch.no_grad()
    def caption(self, images, instruction: str = DEFAULT_INSTRUCTION, max_len: int = 32) -> list[str]:
        """Greedy description of each image, written only with `layout.caption_ids`, up to eos or max_len."""
        codes_NT = self._as_codes(images)
        inst_ids = self.tokenizer.encode(instruction)
        seqs = [self.layout.understanding_prefix(c, inst_ids) for c in codes_NT.tolist()]
        ids_NS, mask_NS = pad_batch(seqs, self.layout.pad_id, "left", self.device)
        pos_NS = positions(mask_NS)
        allowed_K = torch.tensor(self.layout.caption_ids, device=self.device)
        N = len(seqs)
        done_N = torch.zeros(N, dtype=torch.bool, device=self.device)
        words: list[list[int]] = [[] for _ in range(N)]
        with eval_mode(self.lm):
            out = self._forward(input_ids=ids_NS, attention_mask=mask_NS, position_ids=pos_NS, use_cache=True,
                          logits_to_keep=1)
            for _ in range(max_len):
                next_N = allowed_K[out.logits[:, -1, allowed_K].argmax(-1)]
                for i in (~done_N & (next_N != self.layout.eos_id)).nonzero()[:, 0].tolist():
                    words[i].append(int(next_N[i]))
                done_N |= next_N == self.layout.eos_id
                if done_N.all():
                    break
                mask_NS = torch.cat([mask_NS, mask_NS.new_ones((N, 1))], dim=1)
                pos_NS = pos_NS[:, -1:] + 1
                out = self._forward(input_ids=next_N[:, None], attention_mask=mask_NS, position_ids=pos_NS,
                              use_cache=True, **{self._cache_arg: cache_of(out)})
        return [self.tokenizer.decode(w) for w in words]

    # ------------------------------------------------------------------------------------------------ pixels

    def decode(self, image_tokens_NT, prompts: list[str] | None = None, seeds: list[int] | None = None) -> np.ndarray:
        """The layout's decoder; one that takes `prompts` and `seeds` keywords gets them."""
        if isinstance(image_tokens_NT, torch.Tensor):
            image_tokens_NT = image_tokens_NT.detach().cpu().numpy()
        codes = np.asarray(image_tokens_NT)
        if takes_kwargs(self.layout.decoder, "prompts", "seeds"):
            return self.layout.decoder(codes, prompts=prompts, seeds=seeds)
        return self.layout.decoder(codes)

    def encode(self, pixels_NHW3) -> torch.Tensor:
        if self.layout.encoder is None:
            raise NotImplementedError("this model has no image encoder; score the reward on image tokens")
        if isinstance(pixels_NHW3, torch.Tensor):
            pixels_NHW3 = pixels_NHW3.cpu().numpy()
        return torch.as_tensor(self.layout.encoder(np.asarray(pixels_NHW3)), dtype=torch.long)
