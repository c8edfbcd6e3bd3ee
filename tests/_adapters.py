"""What the tests of the transformers adapters (causal-lm, Emu3, Janus) share: prompts, samplings, LoRA targets
and the published GRPO recipe as a direct loop."""

import math

import torch

from gvu.models.protocol import SamplingConfig
from gvu.reward import intrinsic_reward
from gvu.rl.grpo import group_advantages, grpo_loss

PROMPTS = ["a photo of a cat", "two red squares to the left of a large blue circle", "a dog"]
SAMPLINGS = {
    "plain": SamplingConfig(),
    "published": SamplingConfig(min_p=0.03),
    "cfg3": SamplingConfig(guidance=3.0),
    "filters-cfg": SamplingConfig(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, guidance=5.0),
}
LM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def grpo_steps(model, steps=2, lr=1e-2, beta=0.03, targets=LM_TARGETS):
    """The published recipe as a direct loop: G=2, one update per rollout, k3 KL to the reference (the adapter
    disabled), LoRA on the language model's linear layers. Sampling is unfiltered here: with min_p the reference
    gives -inf to codes its own mask drops once the policy has moved, and the k3 KL is then inf (a property of
    the filtered KL in gvu.rl.grpo, not of the adapter). Returns the names of the weights that changed."""
    from peft import LoraConfig, get_peft_model

    model.lm = get_peft_model(model.lm, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=list(targets)))
    before = {k: v.detach().clone() for k, v in model.lm.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.lm.parameters() if p.requires_grad], lr=lr)
    sampling, gen = SamplingConfig(), torch.Generator().manual_seed(0)
    for _ in range(steps):
        r = model.sample(PROMPTS[:2], 2, sampling, gen)
        reward_N = intrinsic_reward(model, r.image_tokens_NT, r.row_prompts()).reward_N
        adv_N, stats = group_advantages(reward_N, 2)
        assert stats["frac_reward_zero_std"] < 1
        with torch.no_grad(), model.lm.disable_adapter():
            ref_NT = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
        logp_NT = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
        loss, st = grpo_loss(logp_NT, r.logp_NT, adv_N, ref_NT, beta=beta)
        assert st["ratio_max_abs_dev"] <= 1e-4 and math.isfinite(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.lm.state_dict()
    return [k for k in before if not torch.equal(before[k], after[k])]
