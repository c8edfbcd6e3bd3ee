"""GRPO as pure functions, reading like the paper (docs/design.md, "The method"). Each returns (value, stats).

Letters: P prompts, G generations per prompt, N = P * G rows, T image tokens per row.

Loss aggregation (TRL's `loss_type` names), over per-token losses l_{n,t} and a mask m_{n,t}:
- grpo:    mean_n( sum_t l m / sum_t m )           (each image weighs the same)
- bnpo:    sum_{n,t} l m / sum_{n,t} m              (each token weighs the same, within the minibatch)
- dr_grpo: sum_{n,t} l m / (N * T_max)              (Dr. GRPO: a constant normaliser, no length bias)
- dapo:    sum_{n,t} l m / tokens_in_whole_batch    (each token weighs the same across minibatches)
Every image here has exactly T tokens and no mask holes, so grpo == bnpo == dr_grpo per minibatch, and dapo
equals them times minibatch/batch size; they differ only for models with variable-length images.
"""

from __future__ import annotations

from typing import Callable

import torch

SCALE_REWARDS = ("group", "batch", "none")


def group_advantages(reward_N: torch.Tensor, G: int, scale_rewards: str = "group",
                     eps: float = 1e-4) -> tuple[torch.Tensor, dict]:
    """A_i = (r_i - mean_G(r)) / (std_G(r) + eps) for `group`; the batch std for `batch`; no scaling for `none`.

    A group whose rewards are all equal carries no signal: its advantages are exactly 0 (r - mean = 0),
    and it is counted in `frac_reward_zero_std`.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if reward_N.numel() % G:
        raise ValueError(f"{reward_N.numel()} rewards do not split into groups of {G}")
    r_PG = reward_N.float().view(-1, G)
    mean_P = r_PG.mean(1, keepdim=True)
    std_P = r_PG.std(1, keepdim=True) if G > 1 else torch.zeros_like(mean_P)
    adv_PG = r_PG - mean_P
    zero_std_P = std_P[:, 0] < 1e-8
    adv_PG[zero_std_P] = 0.0  # exact zeros, not rounding noise
    if scale_rewards == "group":
        adv_PG = adv_PG / (std_P + eps)
    elif scale_rewards == "batch":
        adv_PG = adv_PG / (reward_N.float().std() + eps)
    stats = {"reward": reward_N.float().mean().item(), "reward_std": std_P.mean().item(),
             "frac_reward_zero_std": zero_std_P.float().mean().item()}
    return adv_PG.reshape(-1), stats


def k3_kl(logp_NT: torch.Tensor, ref_logp_NT: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp_NT - logp_NT
    return torch.exp(d) - d - 1


def clipped_surrogate(logp_NT: torch.Tensor, old_logp_NT: torch.Tensor, adv_N: torch.Tensor,
                      epsilon: float, epsilon_high: float) -> tuple[torch.Tensor, dict]:
    """Per-token -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), and the fraction of tokens clipped."""
    rho = torch.exp(logp_NT - old_logp_NT)
    A = adv_N[:, None]
    unclipped = rho * A
    clipped = torch.clamp(rho, 1 - epsilon, 1 + epsilon_high) * A
    loss_NT = -torch.minimum(unclipped, clipped)
    # Clipping acts (its gradient is cut) only where the clipped term is the smaller one.
    low = (rho < 1 - epsilon) & (A < 0)
    high = (rho > 1 + epsilon_high) & (A > 0)
    stats = {"clip_ratio/low_mean": low.float().mean().item(), "clip_ratio/high_mean": high.float().mean().item(),
             "clip_ratio/region_mean": (low | high).float().mean().item(),
             "ratio_mean": rho.detach().mean().item(), "ratio_max_abs_dev": (rho.detach() - 1).abs().max().item()}
    return loss_NT, stats


def _grpo(l, m, total):
    return ((l * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()


def _bnpo(l, m, total):
    return (l * m).sum() / m.sum().clamp(min=1)


def _dr_grpo(l, m, total):
    return (l * m).sum() / (l.shape[0] * l.shape[1])


def _dapo(l, m, total):
    return (l * m).sum() / max(total, 1)


LOSS_AGGREGATIONS: dict[str, Callable] = {"grpo": _grpo, "bnpo": _bnpo, "dr_grpo": _dr_grpo, "dapo": _dapo}


def grpo_loss(logp_NT: torch.Tensor, old_logp_NT: torch.Tensor, adv_N: torch.Tensor,
              ref_logp_NT: torch.Tensor | None = None, *, beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "grpo", mask_NT: torch.Tensor | None = None,
              tokens_in_batch: int | None = None) -> tuple[torch.Tensor, dict]:
    """The GRPO objective to minimise: clipped surrogate + beta * k3 KL, aggregated by `loss_type`."""
    if loss_type not in LOSS_AGGREGATIONS:
        raise ValueError(f"loss_type must be one of {sorted(LOSS_AGGREGATIONS)}, got {loss_type!r}")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    mask = torch.ones_like(logp_NT) if mask_NT is None else mask_NT.to(logp_NT.dtype)
    # A token the update pass's own filter excludes (top-k/top-p/min-p after a weight change inside the rollout, or
    # bf16 rounding moving a code across the min-p floor) has policy log-prob -inf: neither its ratio nor its KL is
    # defined, and -inf - (-inf) would put NaN into every gradient. Such tokens leave the loss (mask 0, counted in
    # `excluded_token_frac`) with finite placeholders, whose gradient torch.where cuts; the objective over the
    # other tokens is unchanged. (TRL and the official code compute the update on unfiltered logits instead, which
    # is a different distribution from the one sampled here.)
    valid_NT = torch.isfinite(logp_NT.detach()) & torch.isfinite(old_logp_NT)
    excluded = 1.0 - valid_NT.float().mean().item()
    if excluded:
        logp_NT = torch.where(valid_NT, logp_NT, torch.zeros_like(logp_NT))
        old_logp_NT = torch.where(valid_NT, old_logp_NT, torch.zeros_like(old_logp_NT))
        mask = mask * valid_NT.to(mask.dtype)
    per_token, stats = clipped_surrogate(logp_NT, old_logp_NT, adv_N, epsilon, epsilon_high)
    stats["excluded_token_frac"] = excluded
    if beta != 0.0:
        if ref_logp_NT is None:
            raise ValueError("beta != 0 needs the reference log-probs")
        # With top-k/top-p/min-p the reference's own filter can exclude a code the policy drew (ref = -inf); such
        # tokens carry no KL estimate, so they get none (not inf/NaN).
        finite = torch.isfinite(ref_logp_NT) & valid_NT
        ref_logp_NT = torch.where(finite, ref_logp_NT, logp_NT.detach())
        stats["kl_undefined_frac"] = 1.0 - finite.float().mean().item()
        kl = k3_kl(logp_NT, ref_logp_NT)
        per_token = per_token + beta * kl
        stats["kl"] = ((kl * mask).sum() / mask.sum().clamp(min=1)).item()
    total = int(mask.sum().item()) if tokens_in_batch is None else tokens_in_batch
    loss = LOSS_AGGREGATIONS[loss_type](per_token, mask, total)
    stats["loss"] = loss.item()
    return loss, stats
