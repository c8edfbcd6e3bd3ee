"""UnifiedModel for any decoder-only causal LM whose vocabulary holds the image codes as one contiguous id range
(the built-in model; X-Omni and Emu3 adapters reuse it with their own layout and tokenizer).

The sampler is our own KV-cached loop rather than transformers' `generate`: generate's defaults (top_k=50 among
them) change the distribution, and we need the exact log-probs of what was drawn. Prompts of different lengths
are LEFT-padded, with position ids = cumsum(mask) - 1 so a token's position never depends on its batch
neighbours; the teacher-forced pass builds the same positions, which is why the two paths agree to float
rounding. With guidance the conditional and unconditional rows ride in one batch of 2N.

Left out: micro-batching (callers pass batches that fit), stopping early on <eoi> (every image has exactly T
tokens). Chunked logits for large vocabularies: GridSharedVocabUMM's `logits_chunk` (gvu.models.causal_lm).

Letters: P prompts, G group size, N rows, S sequence length, T image tokens, C image codes, V vocabulary,
L target (prompt) tokens.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from gvu.models.protocol import Rollout, SamplingConfig, check_sample_args, checked_codes
from gvu.models.sampling import draw, guided_logprobs
from gvu.models.tokenizer import DEFAULT_INSTRUCTION


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

    def image_ids(self, codes) -> list[int]:
        return [self.image_token_offset + int(c) for c in codes]

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


def pad_batch(seqs: list[list[int]], pad_id: int, side: str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids_NS, mask_NS) with pads on the given side ("left" or "right")."""
    S = max(len(s) for s in seqs)
    ids_NS = torch.full((len(seqs), S), pad_id, dtype=torch.long)
    mask_NS = torch.zeros((len(seqs), S), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(S - len(s), S) if side == "left" else slice(0, len(s))
        ids_NS[i, sl] = torch.tensor(s, dtype=torch.long)
        mask_NS[i, sl] = 1
    return ids_NS.to(device), mask_NS.to(device)


def positions(mask_NS: torch.Tensor) -> torch.Tensor:
    """Position ids that count real tokens only, so padding never shifts a token's rotary position."""
    return (mask_NS.cumsum(-1) - 1).clamp(min=0)


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _cache_kwarg(lm: torch.nn.Module) -> str:
    """transformers >= 5.x names the KV cache argument `cache` (past_key_values is deprecated); older: the latter."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # PEFT wrappers take **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _takes(fn, *names: str) -> bool:
    """Whether `fn` accepts all these keyword arguments."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return all(n in params for n in names) or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _logits_kwarg(lm: torch.nn.Module) -> str | None:
    """How the model's forward is told to compute only the last logits: `logits_to_keep` (transformers >= 4.50),
    `num_logits_to_keep` (older, and remote code written for it, such as X-Omni's), or not at all (None)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    params = inspect.signature(base.forward).parameters
    return next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)


class _Forward:
    """A model's forward seen through SharedVocabUMM._forward (for functions that take a module, such as
    span_logprobs): parameters() and call."""

    def __init__(self, umm):
        self.umm = umm

    def parameters(self):
        return self.umm.lm.parameters()

    def __call__(self, **kw):
        return self.umm._forward(**kw)


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def span_logprobs(lm: torch.nn.Module, seqs: list[list[int]], spans: list[tuple[int, int]],
                  pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log p(seq[j] | seq[:j]) over the full vocabulary for j in each row's [start, end) span, in
    ONE right-padded forward (causal attention keeps pads from touching real tokens). Returns (logp_NL, mask_NL)
    with L the longest span, left-aligned, and 0.0 where the mask is False. Grad flows if enabled."""
    device = next(lm.parameters()).device
    ids_NS, mask_NS = pad_batch(seqs, pad_id, "right", device)
    S = ids_NS.shape[1]
    start_N = torch.tensor([a for a, _ in spans], device=device)
    len_N = torch.tensor([b - a for a, b in spans], device=device)
    if (start_N < 1).any():
        raise ValueError("a target span must start after the first token (nothing predicts token 0)")
    L = max(int(len_N.max()), 1)
    keep = S - int(start_N.min()) + 1  # logits only from the earliest predicting position on
    out = lm(input_ids=ids_NS, attention_mask=mask_NS, use_cache=False, logits_to_keep=keep)
    logits_NKV = out.logits
    j_L = torch.arange(L, device=device)
    mask_NL = j_L[None] < len_N[:, None]
    tgt_pos_NL = (start_N[:, None] + j_L[None]).clamp(max=S - 1)
    pred_pos_NL = tgt_pos_NL - 1 - (S - keep)  # index into the kept logits
    logits_NLV = logits_NKV.gather(1, pred_pos_NL[..., None].expand(-1, -1, logits_NKV.shape[-1]))
    logp_NLV = torch.log_softmax(logits_NLV.float(), dim=-1)
    logp_NL = logp_NLV.gather(-1, ids_NS.gather(1, tgt_pos_NL)[..., None])[..., 0]
    return logp_NL.masked_fill(~mask_NL, 0.0), mask_NL


class SharedVocabUMM:
    """UnifiedModel over a causal LM with image codes in its vocabulary. `lm` may be swapped for a PEFT wrapper
    of itself (assign to `.lm` or `.module`)."""

    lora_scope = "model"  # module path of the language model (LoRA targets stay inside it)
    supports_fsdp2 = True  # every pass goes through the root module's forward, which FSDP2's hooks need

    def __init__(self, lm: torch.nn.Module, tokenizer: TextTokenizer, layout: SharedVocabLayout):
        self.lm = lm
        self.tokenizer = tokenizer
        self.layout = layout
        self._cache_arg = _cache_kwarg(lm)
        self._logits_arg = _logits_kwarg(lm)

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
            seqs += [self.layout.generation_prefix([])] * len(prompt_ids)
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
        P, G, T = len(prompts), group_size, self.layout.num_image_tokens
        N, guided, device = P * G, sampling.uses_guidance, self.device
        prompt_ids = [ids for ids in self._encode_prompts(list(prompts)) for _ in range(G)]
        ids_BS, mask_BS = pad_batch(self._generation_prefixes(prompt_ids, guided), self.layout.pad_id, "left",
                                    device)
        pos_BS = positions(mask_BS)
        B, S = ids_BS.shape
        # The whole mask and a preallocated KV cache up front: each step slices them instead of concatenating
        # (a growing cache copies itself at every step).
        mask_BL = torch.cat([mask_BS, mask_BS.new_ones((B, T))], dim=1)
        cache = self._static_cache(S + T)
        codes_NT = torch.empty((N, T), dtype=torch.long, device=device)
        logp_NT = torch.empty((N, T), dtype=torch.float32, device=device)
        with eval_mode(self.lm):
            out = self._forward(input_ids=ids_BS, attention_mask=mask_BS, position_ids=pos_BS, use_cache=True,
                          logits_to_keep=1, cache_position=torch.arange(S, device=device),
                          **({} if cache is None else {self._cache_arg: cache}))
            for t in range(T):
                logp_NC = self._step_logprobs(self._code_logits(out.logits[:, -1]), N, sampling)
                codes_N = draw(logp_NC.exp(), generator, G).to(device)
                codes_NT[:, t] = codes_N
                logp_NT[:, t] = logp_NC.gather(1, codes_N[:, None])[:, 0]
                if t + 1 == T:
                    break
                next_B = codes_N + self.layout.image_token_offset
                if guided:
                    next_B = next_B.repeat(2)
                pos_BS = pos_BS[:, -1:] + 1  # only the new token's position from here on
                out = self._forward(input_ids=next_B[:, None], attention_mask=mask_BL[:, :S + t + 1], position_ids=pos_BS,
                              use_cache=True, cache_position=torch.tensor([S + t], device=device),
                              **{self._cache_arg: _cache_of(out)})
        prompt_index_N = torch.arange(P, device=device).repeat_interleave(G)
        return Rollout(image_tokens_NT=codes_NT, logp_NT=logp_NT, prompt_index_N=prompt_index_N,
                       prompts=list(prompts))

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
        """One teacher-forced forward over [prefix, image codes[:-1]] (+ unconditional rows), with grad. Does
        not touch train/eval mode: any dropout active in the model would break agreement with the sampler."""
        N, T = image_tokens_NT.shape
        device, guided = self.device, sampling.uses_guidance
        codes_NT = checked_codes(prompts_N, image_tokens_NT, self.layout.num_image_tokens, self.layout.num_codes, self.device)
        prefix_BS, pmask_BS = pad_batch(self._generation_prefixes(self._encode_prompts(list(prompts_N)), guided),
                                        self.layout.pad_id, "left", device)
        img_BT = (codes_NT[:, :-1] + self.layout.image_token_offset).repeat(2 if guided else 1, 1)
        ids_BS = torch.cat([prefix_BS, img_BT], dim=1)
        mask_BS = torch.cat([pmask_BS, torch.ones_like(img_BT)], dim=1)
        out = self._forward(input_ids=ids_BS, attention_mask=mask_BS, position_ids=positions(mask_BS), use_cache=False,
                      logits_to_keep=T)
        logits_BTC = self._code_logits(out.logits)
        C = logits_BTC.shape[-1]
        logp_QC = self._step_logprobs(logits_BTC.reshape(-1, C), N * T, sampling)
        return logp_QC.gather(1, codes_NT.reshape(-1, 1)).reshape(N, T)

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
        return span_logprobs(_Forward(self), seqs, spans, self.layout.pad_id)

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
                              use_cache=True, **{self._cache_arg: _cache_of(out)})
        return [self.tokenizer.decode(w) for w in words]

    # ------------------------------------------------------------------------------------------------ pixels

    def decode(self, image_tokens_NT, prompts: list[str] | None = None, seeds: list[int] | None = None) -> np.ndarray:
        """The layout's decoder; one that takes `prompts` and `seeds` keywords gets them."""
        if isinstance(image_tokens_NT, torch.Tensor):
            image_tokens_NT = image_tokens_NT.detach().cpu().numpy()
        codes = np.asarray(image_tokens_NT)
        if _takes(self.layout.decoder, "prompts", "seeds"):
            return self.layout.decoder(codes, prompts=prompts, seeds=seeds)
        return self.layout.decoder(codes)

    def encode(self, pixels_NHW3) -> torch.Tensor:
        if self.layout.encoder is None:
            raise NotImplementedError("this model has no image encoder; score the reward on image tokens")
        if isinstance(pixels_NHW3, torch.Tensor):
            pixels_NHW3 = pixels_NHW3.cpu().numpy()
        return torch.as_tensor(self.layout.encoder(np.asarray(pixels_NHW3)), dtype=torch.long)
