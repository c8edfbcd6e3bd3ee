"""The sampling distribution as pure functions, shared by the KV-cached sampler and the teacher-forced pass.

Both paths call `filter_logits` on the same logits, so they agree to float rounding: every mask below (top-k,
top-p, min-p) is a deterministic function of the logits, and teacher forcing reproduces it. The one way they can
disagree is a code sitting exactly on a mask boundary, where the ~1e-6 difference between a cached and an
uncached forward flips it; that needs a tie to within float rounding and is left unhandled.

Letters: N rows, V entries of the restricted vocabulary (the image codes).
"""

from __future__ import annotations

import math

import torch

from gvu.models.protocol import SamplingConfig


def cfg_combine(cond_NV: torch.Tensor, uncond_NV: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits. Any per-row constant in either input only shifts the result by a
    per-row constant, so this equals guidance on log-probs after the softmax."""
    return uncond_NV + scale * (cond_NV - uncond_NV)


def _top_k(logits_NV: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits_NV.shape[-1]:
        return logits_NV
    kth_N1 = torch.topk(logits_NV, k, dim=-1).values[..., -1:]
    return logits_NV.masked_fill(logits_NV < kth_N1, -math.inf)  # ties with the k-th all stay


def _top_p(logits_NV: torch.Tensor, p: float) -> torch.Tensor:
    if p >= 1.0:
        return logits_NV
    sorted_NV, order_NV = torch.sort(logits_NV, dim=-1, descending=True, stable=True)
    probs_NV = torch.softmax(sorted_NV, dim=-1)
    mass_before_NV = torch.cumsum(probs_NV, dim=-1) - probs_NV
    drop_sorted_NV = mass_before_NV >= p  # the most likely code always stays (mass before it is 0)
    drop_NV = torch.zeros_like(drop_sorted_NV).scatter(-1, order_NV, drop_sorted_NV)
    return logits_NV.masked_fill(drop_NV, -math.inf)


def _min_p(logits_NV: torch.Tensor, min_p: float) -> torch.Tensor:
    if min_p <= 0.0:
        return logits_NV
    # p >= min_p * p_max  <=>  logit >= max_logit + log(min_p); log space so tiny probabilities cannot underflow
    floor_N1 = logits_NV.max(dim=-1, keepdim=True).values + math.log(min_p)
    return logits_NV.masked_fill(logits_NV < floor_N1, -math.inf)


def filter_logits(logits_NV: torch.Tensor, sampling: SamplingConfig,
                  uncond_logits_NV: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probs [N, V] of the final renormalised distribution: guidance -> temperature -> top-k -> top-p ->
    min-p. Masked entries are -inf. Computed in float32 whatever the model's dtype. `uncond_logits_NV` is needed
    exactly when `sampling.guidance != 1`."""
    logits_NV = logits_NV.float()
    if sampling.uses_guidance:
        if uncond_logits_NV is None:
            raise ValueError(f"guidance={sampling.guidance} needs the unconditional logits; pass uncond_logits_NV "
                             "or set guidance=1.0")
        logits_NV = cfg_combine(logits_NV, uncond_logits_NV.float(), sampling.guidance)
    if sampling.temperature != 1.0:
        logits_NV = logits_NV / sampling.temperature
    logits_NV = _top_k(logits_NV, sampling.top_k)
    logits_NV = _top_p(logits_NV, sampling.top_p)
    logits_NV = _min_p(logits_NV, sampling.min_p)
    return torch.log_softmax(logits_NV, dim=-1)


def guided_logprobs(logits_BC: torch.Tensor, N: int, sampling: SamplingConfig) -> torch.Tensor:
    """Filtered log-probs of N rows from a batch whose rows N: are the unconditional half when guidance is on."""
    if sampling.uses_guidance:
        return filter_logits(logits_BC[:N], sampling, logits_BC[N:])
    return filter_logits(logits_BC, sampling)


def draw(probs_NC: torch.Tensor, generator, group_size: int) -> torch.Tensor:
    """One code per row from its probabilities [N, C], as a long tensor on probs_NC's device.

    `generator` is a torch.Generator for the whole batch, or a sequence of generators, one per prompt, each
    drawing the `group_size` consecutive rows of its prompt. With one generator per prompt a prompt's images
    depend only on its own generator, not on which other prompts share the batch: that is what lets a step's
    prompts be split across processes and give the very images one process would."""
    if isinstance(generator, torch.Generator):
        return torch.multinomial(probs_NC.to(generator.device), 1, generator=generator)[:, 0].to(probs_NC.device)
    gens = list(generator)
    if len(gens) * group_size != probs_NC.shape[0]:
        raise ValueError(f"{len(gens)} generators x group_size {group_size} != {probs_NC.shape[0]} rows; pass one "
                         "generator per prompt")
    return torch.cat([torch.multinomial(probs_NC[i * group_size:(i + 1) * group_size].to(g.device), 1,
                                        generator=g)[:, 0].to(probs_NC.device) for i, g in enumerate(gens)])


def prompt_generators(seed: int, keys, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per key (e.g. a prompt's position in the training data), seeded from (seed, key) alone."""
    import numpy as np

    return [torch.Generator(device=device).manual_seed(int(np.random.SeedSequence([seed, int(k)]).generate_state(1,
            np.uint64)[0] >> 1)) for k in keys]
