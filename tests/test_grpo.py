"""GRPO math (gvu.rl.grpo) against numbers computed by hand.

Letters: N rows, T tokens per row.
"""

import math

import pytest
import torch

from gvu.rl.grpo import LOSS_AGGREGATIONS, clipped_surrogate, group_advantages, grpo_loss, k3_kl

EPS = 1e-4  # group_advantages' default


def logp_for_ratios(rho_NT, old_NT=None):
    """(logp, old_logp) with exp(logp - old) == rho."""
    rho_NT = torch.as_tensor(rho_NT, dtype=torch.float64)
    old_NT = torch.full_like(rho_NT, -2.0) if old_NT is None else old_NT
    return old_NT + torch.log(rho_NT), old_NT


# ------------------------------------------------------------------------------------------------ advantages

def test_group_advantages_group_scaling():
    # groups [1, 2] and [3, 4]: means 1.5 and 3.5, unbiased std sqrt(0.5) in both
    adv, stats = group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), G=2, scale_rewards="group")
    a = 0.5 / (math.sqrt(0.5) + EPS)
    assert adv.tolist() == pytest.approx([-a, a, -a, a], rel=1e-6)
    assert stats["reward"] == pytest.approx(2.5)
    assert stats["reward_std"] == pytest.approx(math.sqrt(0.5), rel=1e-6)
    assert stats["frac_reward_zero_std"] == 0.0


def test_group_advantages_batch_scaling():
    adv, _ = group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), G=2, scale_rewards="batch")
    batch_std = math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3)  # unbiased std of 1..4 = sqrt(5/3)
    a = 0.5 / (batch_std + EPS)
    assert adv.tolist() == pytest.approx([-a, a, -a, a], rel=1e-6)


def test_group_advantages_no_scaling():
    adv, _ = group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), G=2, scale_rewards="none")
    assert adv.tolist() == pytest.approx([-0.5, 0.5, -0.5, 0.5], rel=1e-6)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_with_equal_rewards_has_exactly_zero_advantage(scale):
    # 0.1 + 0.2 style values whose mean is not exactly representable: the zeros must still be exact
    r = torch.tensor([1.0, 2.0, 0.3, 0.3, 0.1, 0.1])
    adv, stats = group_advantages(r, G=2, scale_rewards=scale)
    assert adv[2:].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert adv[0] < 0 < adv[1]
    assert stats["frac_reward_zero_std"] == pytest.approx(2 / 3)
    assert stats["reward_std"] == pytest.approx(math.sqrt(0.5) / 3, rel=1e-6)


def test_group_advantages_half_zero_std():
    adv, stats = group_advantages(torch.tensor([1.0, 2.0, 3.0, 3.0]), G=2)
    assert adv[2:].tolist() == [0.0, 0.0]
    assert stats["frac_reward_zero_std"] == 0.5
    assert stats["reward_std"] == pytest.approx(math.sqrt(0.5) / 2, rel=1e-6)


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="groups of 2"):
        group_advantages(torch.tensor([1.0, 2.0, 3.0]), G=2)
    with pytest.raises(ValueError, match="scale_rewards must be one of"):
        group_advantages(torch.tensor([1.0, 2.0]), G=2, scale_rewards="std")


# ------------------------------------------------------------------------------------------------ KL

def test_k3_kl_by_hand():
    # pi = 0.5, pi_ref = 0.25: r = pi_ref / pi = 0.5, k3 = r - log r - 1
    kl = k3_kl(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert kl.item() == pytest.approx(0.5 - math.log(0.5) - 1, rel=1e-6)
    # pi = 0.2, pi_ref = 0.6: r = 3
    kl = k3_kl(torch.tensor([math.log(0.2)]), torch.tensor([math.log(0.6)]))
    assert kl.item() == pytest.approx(3 - math.log(3) - 1, rel=1e-5)


def test_k3_kl_is_non_negative_and_zero_only_at_equality():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(64, 16, generator=g, dtype=torch.float64) * 8
    ref = -torch.rand(64, 16, generator=g, dtype=torch.float64) * 8
    assert (k3_kl(logp, ref) >= 0).all()
    assert (k3_kl(logp, ref)[logp != ref] > 0).all()
    assert k3_kl(logp, logp).abs().max().item() == 0.0


# ------------------------------------------------------------------------------------------------ clipping

RHOS = [0.5, 0.9, 1.0, 1.1, 1.5]


def test_clipped_surrogate_inside_and_outside_the_clip_range():
    logp, old = logp_for_ratios([RHOS, RHOS])
    loss, stats = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0], dtype=torch.float64), 0.2, 0.2)
    # A = +1: -min(rho, clip(rho, 0.8, 1.2)); only rho = 1.5 is clipped (to 1.2); rho = 0.5 stays (min picks it)
    assert loss[0].tolist() == pytest.approx([-0.5, -0.9, -1.0, -1.1, -1.2])
    # A = -1: -min(-rho, -clip) = max(rho, clip); only rho = 0.5 is clipped (to 0.8); rho = 1.5 stays
    assert loss[1].tolist() == pytest.approx([0.8, 0.9, 1.0, 1.1, 1.5])
    assert stats["clip_ratio/low_mean"] == pytest.approx(1 / 10)   # rho 0.5 with A < 0
    assert stats["clip_ratio/high_mean"] == pytest.approx(1 / 10)  # rho 1.5 with A > 0
    assert stats["clip_ratio/region_mean"] == pytest.approx(2 / 10)
    assert stats["ratio_max_abs_dev"] == pytest.approx(0.5)
    assert stats["ratio_mean"] == pytest.approx(sum(RHOS) / 5)


def test_clip_stats_count_only_tokens_whose_gradient_is_cut():
    logp, old = logp_for_ratios([RHOS, RHOS])
    logp.requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, stats = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    loss.sum().backward()
    # d(-rho A)/dlogp = -rho A where unclipped, 0 where clipped
    rho = torch.tensor([RHOS, RHOS], dtype=torch.float64)
    want = -rho * adv[:, None]
    want[0, 4] = 0.0
    want[1, 0] = 0.0
    assert torch.allclose(logp.grad, want)
    cut = (logp.grad == 0).float().mean().item()
    assert stats["clip_ratio/region_mean"] == pytest.approx(cut)


def test_clip_ratio_within_range_is_exactly_minus_rho_a():
    g = torch.Generator().manual_seed(1)
    rho = 0.85 + 0.3 * torch.rand(6, 7, generator=g, dtype=torch.float64)  # all inside [0.8, 1.2]
    logp, old = logp_for_ratios(rho)
    adv = torch.randn(6, generator=g, dtype=torch.float64)
    loss, stats = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    assert torch.allclose(loss, -rho * adv[:, None])
    assert stats["clip_ratio/region_mean"] == 0.0


def test_epsilon_high_is_asymmetric():
    # DAPO's clip-higher: eps_low 0.2, eps_high 0.28
    logp, old = logp_for_ratios([[0.75, 1.25, 1.3], [0.75, 1.25, 1.3]])
    loss, stats = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0], dtype=torch.float64), 0.2, 0.28)
    assert loss[0].tolist() == pytest.approx([-0.75, -1.25, -1.28])  # only 1.3 > 1.28 is clipped
    assert loss[1].tolist() == pytest.approx([0.8, 1.25, 1.3])  # only 0.75 < 0.8 is clipped
    assert stats["clip_ratio/high_mean"] == pytest.approx(1 / 6)
    assert stats["clip_ratio/low_mean"] == pytest.approx(1 / 6)
    # the same ratios with a symmetric 0.2 clip 1.25 as well
    _, sym = clipped_surrogate(logp, old, torch.tensor([1.0, -1.0], dtype=torch.float64), 0.2, 0.2)
    assert sym["clip_ratio/high_mean"] == pytest.approx(2 / 6)


def test_grpo_loss_epsilon_high_defaults_to_epsilon():
    logp, old = logp_for_ratios([[1.25, 1.3]])
    adv = torch.tensor([1.0], dtype=torch.float64)
    _, none = grpo_loss(logp, old, adv, epsilon=0.2, epsilon_high=None)
    _, same = grpo_loss(logp, old, adv, epsilon=0.2, epsilon_high=0.2)
    assert none["clip_ratio/high_mean"] == same["clip_ratio/high_mean"] == 1.0


# ------------------------------------------------------------------------------------------------ aggregation

L_NT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
M_NT = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)  # holes


@pytest.mark.parametrize("loss_type,want", [
    ("grpo", ((1 + 2) / 2 + 4 / 1) / 2),   # mean over rows of each row's masked mean
    ("bnpo", (1 + 2 + 4) / 3),             # masked tokens weigh the same
    ("dr_grpo", (1 + 2 + 4) / (2 * 3)),    # constant N * T_max
    ("dapo", (1 + 2 + 4) / 10),            # tokens in the whole batch (10 here)
])
def test_aggregations_with_mask_holes(loss_type, want):
    assert LOSS_AGGREGATIONS[loss_type](L_NT, M_NT, 10).item() == pytest.approx(want)


@pytest.mark.parametrize("loss_type,want", [
    # at ratio 1 each token's loss is -A_n; A = [2, -1]
    ("grpo", (-2 + 1) / 2), ("bnpo", (-2 - 2 + 1) / 3), ("dr_grpo", (-2 - 2 + 1) / 6), ("dapo", (-2 - 2 + 1) / 12),
])
def test_grpo_loss_aggregates_through_the_mask(loss_type, want):
    old = torch.full((2, 3), -1.5, dtype=torch.float64)
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    loss, stats = grpo_loss(old.clone(), old, adv, loss_type=loss_type, mask_NT=M_NT, tokens_in_batch=12)
    assert loss.item() == pytest.approx(want)
    assert stats["loss"] == pytest.approx(want)


def test_full_mask_coincidences():
    g = torch.Generator().manual_seed(2)
    old = -5 * torch.rand(4, 6, generator=g, dtype=torch.float64)
    logp = old + 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    ref = old + 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    kw = dict(beta=0.05, epsilon=0.2, epsilon_high=0.28, tokens_in_batch=4 * 4 * 6)  # the minibatch is 1/4
    loss = {t: grpo_loss(logp, old, adv, ref, loss_type=t, **kw)[0].item() for t in LOSS_AGGREGATIONS}
    assert loss["grpo"] == pytest.approx(loss["bnpo"], rel=1e-12)
    assert loss["grpo"] == pytest.approx(loss["dr_grpo"], rel=1e-12)
    assert loss["dapo"] == pytest.approx(loss["bnpo"] * (4 * 6) / (4 * 4 * 6), rel=1e-12)


def test_dapo_defaults_to_the_minibatch_tokens():
    old = torch.zeros(2, 3, dtype=torch.float64)
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    bnpo, _ = grpo_loss(old.clone(), old, adv, loss_type="bnpo", mask_NT=M_NT)
    dapo, _ = grpo_loss(old.clone(), old, adv, loss_type="dapo", mask_NT=M_NT)
    assert dapo.item() == pytest.approx(bnpo.item())


def test_bad_loss_type():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        grpo_loss(x, x, torch.zeros(1), loss_type="sum")


# ------------------------------------------------------------------------------------------------ KL term

def test_beta_zero_has_no_kl():
    old = torch.zeros(2, 3)
    loss, stats = grpo_loss(old.clone(), old, torch.tensor([1.0, -1.0]), None, beta=0.0)
    assert "kl" not in stats
    assert loss.item() == pytest.approx(0.0)


def test_beta_needs_reference():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(x, x, torch.zeros(1), None, beta=0.1)


def test_kl_term_by_hand():
    # ratio 1 and A = 0: the loss is beta * (masked mean of k3)
    logp = torch.full((1, 2), math.log(0.5), dtype=torch.float64)
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=torch.float64)
    loss, stats = grpo_loss(logp, logp.clone(), torch.zeros(1, dtype=torch.float64), ref, beta=0.1)
    k3 = 0.5 - math.log(0.5) - 1
    assert stats["kl"] == pytest.approx(k3 / 2)
    assert loss.item() == pytest.approx(0.1 * k3 / 2)
    # the reported kl is the masked mean
    _, st = grpo_loss(logp, logp.clone(), torch.zeros(1, dtype=torch.float64), ref, beta=0.1,
                      mask_NT=torch.tensor([[1.0, 0.0]]))
    assert st["kl"] == pytest.approx(k3)


# ------------------------------------------------------------------------------------------------ gradients

def test_grpo_gradient_at_ratio_one():
    # loss = mean_n( sum_t -rho A_n / T ), rho = 1: d loss / d logp_{n,t} = -A_n / (N T)
    N, T = 3, 5
    old = -torch.rand(N, T, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    logp = old.clone().requires_grad_(True)
    adv = torch.tensor([1.5, -0.5, 0.0], dtype=torch.float64)
    loss, stats = grpo_loss(logp, old, adv, loss_type="grpo")
    loss.backward()
    assert torch.allclose(logp.grad, (-adv / (N * T))[:, None].expand(N, T))
    assert stats["ratio_max_abs_dev"] == 0.0


def test_grpo_gradient_with_mask_holes():
    # each row is normalised by its own token count: -A_n / (N T_n) on its tokens, 0 in the holes
    old = torch.zeros(2, 3, dtype=torch.float64)
    logp = old.clone().requires_grad_(True)
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    grpo_loss(logp, old, adv, loss_type="grpo", mask_NT=M_NT)[0].backward()
    want = torch.tensor([[-2.0 / (2 * 2), -2.0 / (2 * 2), 0.0], [1.0 / (2 * 1), 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(logp.grad, want)


def test_kl_gradient_pulls_towards_the_reference():
    # d k3 / d logp = 1 - exp(ref - logp): negative where the policy is below the reference
    logp = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=torch.float64)
    k3_kl(logp, ref).sum().backward()
    assert logp.grad.tolist()[0] == pytest.approx([1 - 2.0, 1 - 0.5])


@pytest.mark.parametrize("loss_type", sorted(LOSS_AGGREGATIONS))
def test_tokens_the_update_filter_excludes_leave_the_loss_without_nan(loss_type):
    # A code the sampler drew that the update pass's own filter excludes: policy log-prob -inf (the reference
    # filtered it too). The loss and every gradient stay finite, the token is counted, and the loss equals the
    # loss with that token masked out.
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(2, 4, generator=g, dtype=torch.float64)
    raw = (old + 0.05 * torch.randn(2, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    excluded = torch.zeros(2, 4, dtype=torch.bool)
    excluded[0, 1] = True
    logp = torch.where(excluded, torch.full_like(raw, -math.inf), raw)
    ref = torch.where(excluded, torch.full_like(old, -math.inf), old - 0.1)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    kw = dict(beta=0.03, epsilon=0.2, loss_type=loss_type, tokens_in_batch=8)
    loss, st = grpo_loss(logp, old, adv, ref, **kw)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(raw.grad).all() and raw.grad[0, 1] == 0
    assert st["excluded_token_frac"] == pytest.approx(1 / 8) and math.isfinite(st["kl"])
    clean = raw.detach().clone().requires_grad_(True)
    want, _ = grpo_loss(clean, old, adv, ref.masked_fill(excluded, 0.0), mask_NT=(~excluded).double(), **kw)
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
