"""The direction of one GRPO update on a real (tiny, random) built-in model and a fixed rollout: for every loss
type the policy's log-probability of the positive-advantage samples rises relative to the negative ones, and with
a fixed reference the KL leash pulls back toward it. These guard the alignment of the teacher-forced pass with the
sampled tokens and the sign of every row, which the math tests on hand-made tensors cannot see.

Letters: P prompts, G group size, N = P * G rows, T image tokens.
"""

import copy

import pytest
import torch

from gvu.models.builtin.model import build_builtin
from gvu.models.protocol import SamplingConfig
from gvu.models.sampling import prompt_generators
from gvu.rl.grpo import LOSS_AGGREGATIONS, group_advantages, grpo_loss

PROMPTS = ["a photo of a red circle", "a photo of two blue stars", "a photo of a green square above a pink heart"]
G = 4


@pytest.fixture(scope="module")
def rollout():
    model = build_builtin("tiny", seed=3)
    sampling = SamplingConfig()
    r = model.sample(PROMPTS, G, sampling, prompt_generators(0, range(len(PROMPTS))))
    # rewards with a spread inside every group: rows 0 and 2 of each group good, 1 and 3 bad
    reward_N = torch.tensor([1.0, 0.0, 0.7, 0.1] * len(PROMPTS))
    adv_N, _ = group_advantages(reward_N, G)
    return model, sampling, r, adv_N


def seq_logp(model, r, sampling):
    with torch.no_grad():
        return model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling).sum(-1)


@pytest.mark.parametrize("loss_type", sorted(LOSS_AGGREGATIONS))
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_update_raises_the_positive_samples_against_the_negative(rollout, loss_type, optimizer):
    model0, sampling, r, adv_N = rollout
    model = copy.deepcopy(model0)
    before_N = seq_logp(model, r, sampling)
    params = [p for p in model.lm.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5) if optimizer == "sgd" else torch.optim.AdamW(params, lr=1e-3)
    logp_NT = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
    loss, _ = grpo_loss(logp_NT, r.logp_NT, adv_N, loss_type=loss_type, tokens_in_batch=logp_NT.numel())
    opt.zero_grad()
    loss.backward()
    opt.step()
    change_N = seq_logp(model, r, sampling) - before_N
    pos, neg = adv_N > 0, adv_N < 0
    assert change_N[pos].mean() > change_N[neg].mean() + 1e-3, (loss_type, optimizer, change_N)
    # and per group: the best sample of each group gains more than the worst
    change_PG, adv_PG = change_N.view(-1, G), adv_N.view(-1, G)
    best, worst = adv_PG.argmax(1), adv_PG.argmin(1)
    ar = torch.arange(len(PROMPTS))
    assert bool((change_PG[ar, best] > change_PG[ar, worst]).all()), (loss_type, optimizer, change_PG)


def test_kl_leash_alone_pulls_a_moved_policy_back(rollout):
    model0, sampling, r, _ = rollout
    moved = copy.deepcopy(model0)
    with torch.no_grad():
        for p in moved.lm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref_NT = model0.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling).detach()
    gap = lambda m: (seq_logp(m, r, sampling) - ref_NT.sum(-1)).abs().mean()  # noqa: E731
    before = gap(moved)
    opt = torch.optim.SGD(moved.lm.parameters(), lr=0.5)
    for _ in range(3):
        logp_NT = moved.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
        loss, _ = grpo_loss(logp_NT, logp_NT.detach(), torch.zeros(len(logp_NT)), ref_NT, beta=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gap(moved) < before
