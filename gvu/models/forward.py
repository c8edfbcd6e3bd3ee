"""One batched forward over token sequences, as every adapter builds it: padding (left for generation, right for
scoring) with position ids that count real tokens only, eval mode for a pass, the keyword names a model's forward
takes for its KV cache and its kept logits, and the span log-prob pass the reward uses.

Letters: N rows, S sequence length, L target (span) tokens, K kept logits, V vocabulary.
"""

from __future__ import annotations

import contextlib
import inspect

import torch


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


def checkpointing(module: torch.nn.Module) -> bool:
    """Whether gradient checkpointing is on in any of the module's layers (transformers then turns the KV cache
    off in training and recomputes activations in the backward pass)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in module.modules())


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def cache_kwarg(lm: torch.nn.Module) -> str:
    """transformers >= 5.x names the KV cache argument `cache` (past_key_values is deprecated); older: the latter."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # PEFT wrappers take **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def takes_kwargs(fn, *names: str) -> bool:
    """Whether `fn` accepts all these keyword arguments."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return all(n in params for n in names) or any(p.kind is p.VAR_KEYWORD for p in params.values())


def logits_kwarg(lm: torch.nn.Module) -> str | None:
    """How the model's forward is told to compute only the last logits: `logits_to_keep` (transformers >= 4.50),
    `num_logits_to_keep` (older, and remote code written for it, such as X-Omni's), or not at all (None)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    params = inspect.signature(base.forward).parameters
    return next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)


class ForwardView:
    """A model's forward seen through SharedVocabUMM._forward (for functions that take a module, such as
    span_logprobs): parameters() and call."""

    def __init__(self, umm):
        self.umm = umm

    def parameters(self):
        return self.umm.lm.parameters()

    def __call__(self, **kw):
        return self.umm._forward(**kw)


def cache_of(out):
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
