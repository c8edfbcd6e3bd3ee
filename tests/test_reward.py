"""The intrinsic reward against the published algorithm, its variants, the TRL-style function and the oracle rewards.

The published reward (official GvU code) runs, for each prompt token j, a full forward pass over
[understanding prefix, x_<j], takes p(x_j), multiplies the raw probabilities and takes the L-th root. It is
written out literally below and compared with our one-pass, log-space version on a tiny random model.
"""

import math

import zlib

import numpy as np
import pytest
import torch

from gvu.models.builtin.model import build_builtin
from gvu.reward import (RewardConfig, hard_negatives, intrinsic_reward,
                        intrinsic_reward_function, oracle_reward_function, prompt_token_logprobs)
from gvu.world.grammar import parse_prompt
from gvu.world.render import blank_tokens, decode
from gvu.world.scene import Obj, realise, scene_tokens

# Ragged on purpose: 5, 10 and 18 tokens with different paddings in one batch.
PROMPTS = ["a photo of a heart", "a photo of two blue squares and a green star",
           "a photo of a larger red circle on the left and a smaller white cross on the right"]
# Short enough that the float32 product of the published loop stays above float32's smallest normal number.
EQ_PROMPTS = ["a photo of a green star and a cross", "a photo of a heart",
              "a photo of a larger red circle on the left"]
LONG = "a photo of a red circle, a blue star, a green heart, and a yellow cross"  # 19 tokens (4-item color_attr)


@pytest.fixture(scope="module")
def model():
    return build_builtin("tiny", seed=0)


@pytest.fixture(scope="module")
def sharp_model():
    """The tiny model with 8x embeddings (tied to the output layer): per-token probabilities spread over two
    orders of magnitude, so a misaligned position or a wrong token would show."""
    m = build_builtin("tiny", seed=1)
    with torch.no_grad():
        m.lm.get_input_embeddings().weight.mul_(8)
    return m


def rows_of(prompts):
    return [parse_prompt(p) for p in prompts]


def gt_tokens(rows, seed=0):
    rng = np.random.default_rng(seed)
    return torch.as_tensor(np.stack([scene_tokens(realise(r, rng)) for r in rows]))


@torch.no_grad()
def published_reward(model, codes_T, prompt, instruction, prob_dtype=torch.float32, probs_out=None):
    """The published algorithm, literally: one image, one full forward per prompt token, product of raw probs."""
    inst_ids = model.tokenizer.encode(instruction)
    x = model.tokenizer.encode(prompt)
    prefix = model.layout.understanding_prefix(list(codes_T), inst_ids)
    prod = torch.tensor(1.0, dtype=prob_dtype)
    for j in range(len(x)):
        ids = torch.tensor([prefix + x[:j]])
        logits = model.lm(input_ids=ids).logits[0, -1]
        p = torch.softmax(logits.float(), dim=-1)[x[j]]
        if probs_out is not None:
            probs_out.append(p.item())
        prod = prod * p.to(prob_dtype)
    return prod ** (1.0 / len(x))


def test_single_pass_equals_published_loop_on_ragged_batch(sharp_model):
    m = sharp_model
    rows = rows_of(EQ_PROMPTS)
    codes = gt_tokens(rows)
    cfg = RewardConfig()
    ours = intrinsic_reward(m, codes, EQ_PROMPTS, cfg)
    lens = [int(x) for x in ours.mask_NL.sum(-1).tolist()]
    assert lens == [9, 5, 10]  # ragged, as intended, longest not first
    loop, probs = [], []
    for c, p in zip(codes, EQ_PROMPTS):
        probs.append([])
        loop.append(published_reward(m, c.tolist(), p, cfg.instruction, probs_out=probs[-1]))
    loop = torch.stack(loop)
    assert torch.isfinite(loop).all() and (loop > 0).all()
    rel = ((ours.reward_N - loop).abs() / loop).max().item()
    assert rel <= 1e-5, (ours.reward_N, loop)
    # token by token too, so agreement cannot come from cancelling errors; pads hold zeros
    for n, L in enumerate(lens):
        torch.testing.assert_close(ours.logp_NL[n, :L].exp(), torch.tensor(probs[n]), rtol=1e-5, atol=0)
        assert ours.logp_NL[n, L:].eq(0).all()
    assert min(min(p) for p in probs) < max(max(p) for p in probs) / 10  # the model is not near-uniform


def test_published_loop_underflows_on_long_prompt_where_ours_does_not(model):
    row = parse_prompt(LONG)
    assert row["tag"] == "color_attr" and len(row["include"]) == 4
    codes = gt_tokens([row])
    cfg = RewardConfig()
    ours = intrinsic_reward(model, codes, [LONG], cfg)
    L = int(ours.mask_NL.sum())
    assert L == 19
    # A random model gives every token about 1/V: the float32 product (~1e-51) is below the smallest float32.
    V = model.tokenizer.vocab_size
    assert (ours.logp_NL[0, :L].exp() < 5.0 / V).all()
    loop32 = published_reward(model, codes[0].tolist(), LONG, cfg.instruction, torch.float32)
    assert loop32.item() == 0.0 or math.isnan(loop32.item())
    r = ours.reward_N.item()
    assert math.isfinite(r) and r > 0
    # The same loop in float64 does not underflow and agrees with ours: the algorithm is the same, only the
    # arithmetic differs.
    loop64 = published_reward(model, codes[0].tolist(), LONG, cfg.instruction, torch.float64)
    assert loop64.item() > 0 and abs(r - loop64.item()) / loop64.item() <= 1e-5


def test_micro_batching_gives_the_same_rewards(model):
    prompts = PROMPTS + [LONG, "a photo of four stars"]
    codes = gt_tokens(rows_of(prompts))
    full = intrinsic_reward(model, codes, prompts, RewardConfig(micro_batch=128))
    for mb in (1, 2, 3):
        part = intrinsic_reward(model, codes, prompts, RewardConfig(micro_batch=mb))
        torch.testing.assert_close(part.reward_N, full.reward_N, rtol=1e-5, atol=0)
        assert torch.equal(part.mask_NL, full.mask_NL)


def test_content_variant_ignores_the_template_prefix(model):
    prompts = PROMPTS[:2]
    codes = gt_tokens(rows_of(prompts))
    logp, mask = prompt_token_logprobs(model, codes, prompts)
    content = intrinsic_reward(model, codes, prompts, RewardConfig(variant="content")).reward_N
    geo = intrinsic_reward(model, codes, prompts, RewardConfig()).reward_N
    for n in range(2):
        L = int(mask[n].sum())
        assert model.tokenizer.decode(model.tokenizer.encode(prompts[n])[:3]) == "a photo of"
        by_hand = math.exp(logp[n, 3:L].double().mean().item())
        assert content[n].item() == pytest.approx(by_hand, rel=1e-5)
        assert geo[n].item() == pytest.approx(math.exp(logp[n, :L].double().mean().item()), rel=1e-5)
        assert content[n].item() != pytest.approx(geo[n].item(), rel=1e-4)


def test_content_variant_keeps_prompts_without_the_prefix(model):
    codes = gt_tokens(rows_of(["a photo of a star"]))
    # "a star" alone has no template prefix: nothing is dropped
    geo = intrinsic_reward(model, codes, ["a star"], RewardConfig()).reward_N
    content = intrinsic_reward(model, codes, ["a star"], RewardConfig(variant="content")).reward_N
    torch.testing.assert_close(content, geo)


def test_contrastive_is_true_prompt_probability_among_candidates(model):
    prompts = PROMPTS + ["a photo of four stars"]
    rows = rows_of(prompts)
    codes = gt_tokens(rows)
    r = intrinsic_reward(model, codes, prompts, RewardConfig(variant="contrastive"), rows=rows,
                         rng=np.random.default_rng(5)).reward_N
    assert ((r > 0) & (r <= 1)).all()
    base = int(np.random.default_rng(5).integers(2 ** 63))  # the same draws, by hand: one per prompt
    for n, row in enumerate(rows):
        rng = np.random.default_rng([base, zlib.crc32(row["prompt"].encode())])
        cands = [prompts[n]] + [neg["prompt"] for neg in hard_negatives(row, rng)]
        assert len(cands) >= 2 and len(set(cands)) == len(cands)
        lp, mask = prompt_token_logprobs(model, codes[[n] * len(cands)], cands)
        total = (lp * mask).sum(-1).double()
        assert r[n].item() == pytest.approx(torch.softmax(total, 0)[0].item(), rel=1e-5)


def test_contrastive_negatives_do_not_depend_on_the_other_rows(model):
    """A run split over processes scores each shard alone: a row's reward must be the one it gets in the whole
    batch, and the images of one prompt are weighed against the same negatives."""
    prompts = PROMPTS + ["a photo of four stars"]
    rows = rows_of(prompts)
    codes = gt_tokens(rows)
    for variant in ("contrastive", "blend"):
        cfg = RewardConfig(variant=variant)
        whole = intrinsic_reward(model, codes, prompts, cfg, rows=rows, rng=np.random.default_rng(5)).reward_N
        for lo, hi in ((0, 1), (1, len(rows))):
            part = intrinsic_reward(model, codes[lo:hi], prompts[lo:hi], cfg, rows=rows[lo:hi],
                                    rng=np.random.default_rng(5)).reward_N
            torch.testing.assert_close(part, whole[lo:hi])
        twice = intrinsic_reward(model, codes[[0, 0]], [prompts[0]] * 2, cfg, rows=[rows[0]] * 2,
                                 rng=np.random.default_rng(5)).reward_N
        assert twice[0].item() == twice[1].item()


def test_blend_weighs_the_geometric_mean_with_the_contrastive_probability(model):
    prompts = PROMPTS + ["a photo of four stars"]
    rows = rows_of(prompts)
    codes = gt_tokens(rows)
    geo = intrinsic_reward(model, codes, prompts, RewardConfig()).reward_N
    con = intrinsic_reward(model, codes, prompts, RewardConfig(variant="contrastive"), rows=rows,
                           rng=np.random.default_rng(5)).reward_N
    for w in (0.25, 0.5):
        blend = intrinsic_reward(model, codes, prompts, RewardConfig(variant="blend", blend_weight=w), rows=rows,
                                 rng=np.random.default_rng(5)).reward_N
        torch.testing.assert_close(blend, geo.pow(1 - w) * con.pow(w))
    assert not torch.allclose(geo, con)  # the two factors differ, so the weight is read
    with pytest.raises(ValueError, match="metadata row"):
        intrinsic_reward(model, codes, prompts, RewardConfig(variant="blend"))


@pytest.mark.parametrize("w", [0, 1, 1.5, -0.1, True, "0.5"])
def test_blend_weight_must_lie_strictly_between_0_and_1(w):
    with pytest.raises(ValueError, match="blend_weight must be a number in \\(0, 1\\)"):
        RewardConfig(variant="blend", blend_weight=w)


def test_contrastive_needs_rows(model):
    codes = gt_tokens(rows_of(PROMPTS[:1]))
    with pytest.raises(ValueError, match="metadata row"):
        intrinsic_reward(model, codes, PROMPTS[:1], RewardConfig(variant="contrastive"))


def _swaps(row):
    """The negatives of a row that keep every object as it is (shape, count, relation) but its colour, and the
    row's colours as a multiset: a colour moved to another object."""
    colours = sorted(x.get("color", "") for x in row["include"])
    return [n for n in hard_negatives(row, np.random.default_rng(0))
            if [{k: v for k, v in x.items() if k != "color"} for x in n["include"]]
            == [{k: v for k, v in x.items() if k != "color"} for x in row["include"]]
            and sorted(x.get("color", "") for x in n["include"]) == colours]


@pytest.mark.parametrize("prompt, swapped", [
    ("a photo of a red square and a blue circle", "a photo of a blue square and a red circle"),
    ("a photo of a red square to the left of a blue circle", "a photo of a blue square to the left of a red circle"),
    ("a photo of two green stars and one yellow heart", "a photo of two yellow stars and one green heart"),
])
def test_hard_negatives_hold_the_colours_swapped(prompt, swapped):
    """The binding negative: the same words, each colour on the other shape."""
    negs = _swaps(parse_prompt(prompt))
    assert [n["prompt"] for n in negs] == [swapped]


@pytest.mark.parametrize("prompt", ["a photo of a red square and a red circle",  # one colour: nothing to swap
                                    "a photo of a red square and a circle",
                                    "a photo of a red square and a blue square"])  # swapped: the same scene
def test_hard_negatives_swap_only_into_another_scene(prompt):
    from gvu.world.kinds import scene_key
    row = parse_prompt(prompt)
    assert _swaps(row) == []
    for seed in range(20):
        for neg in hard_negatives(row, np.random.default_rng(seed)):
            assert scene_key(neg) != scene_key(row), neg["prompt"]


def test_pixels_path_equals_tokens_path_on_clean_renders(model):
    codes = gt_tokens(rows_of(PROMPTS))
    tok = intrinsic_reward(model, codes, PROMPTS, RewardConfig(image_path="tokens")).reward_N
    pix = intrinsic_reward(model, codes, PROMPTS, RewardConfig(image_path="pixels")).reward_N
    torch.testing.assert_close(pix, tok, rtol=0, atol=0)
    # uint8 pixels given directly are re-encoded whatever the path says
    given = intrinsic_reward(model, decode(codes.numpy()), PROMPTS, RewardConfig(image_path="pixels")).reward_N
    torch.testing.assert_close(given, tok, rtol=0, atol=0)


def test_reward_leaves_train_mode_and_grad_alone(model):
    codes = gt_tokens(rows_of(PROMPTS[:1]))
    model.lm.train()
    try:
        out = intrinsic_reward(model, codes, PROMPTS[:1])
        assert model.lm.training and not out.reward_N.requires_grad
    finally:
        model.lm.eval()


def test_reward_function_shape_and_errors(model):
    codes = gt_tokens(rows_of(PROMPTS))
    f = intrinsic_reward_function(model)
    vals = f(PROMPTS, codes.numpy())
    assert len(vals) == 3 and all(isinstance(v, float) and 0 < v < 1 for v in vals)
    with pytest.raises(ValueError, match="prompts for"):
        intrinsic_reward(model, codes, PROMPTS[:2])


def test_oracle_rewards_on_corrupted_scenes():
    color_row = parse_prompt("a photo of a red circle, a blue star, and a green heart")
    wrong_color = [Obj("circle", "red", "small", 0, 0), Obj("star", "yellow", "small", 0, 3),
                   Obj("heart", "green", "small", 4, 4)]
    two_obj = parse_prompt("a photo of a circle and a star")
    extra_circle = [Obj("circle", "red", "small", 0, 0), Obj("circle", "blue", "small", 3, 3),
                    Obj("star", "green", "small", 5, 0)]
    rows = [color_row, color_row, two_obj]
    imgs = decode(np.stack([scene_tokens(wrong_color), blank_tokens(), scene_tokens(extra_circle)]))
    prompts = [r["prompt"] for r in rows]
    assert oracle_reward_function("binary")(prompts, imgs, rows=rows) == [0.0, 0.0, 1.0]  # at least one circle
    assert oracle_reward_function("strict")(prompts, imgs, rows=rows) == [0.0, 0.0, 0.0]  # exactly one
    partial = oracle_reward_function("partial")(prompts, imgs, rows=rows)
    assert partial == pytest.approx([0.9 * 2 / 3, 0.0, 0.9 * 1 / 2])


def test_oracle_errors():
    with pytest.raises(ValueError, match="oracle kind"):
        oracle_reward_function("fuzzy")
    with pytest.raises(ValueError, match="metadata row"):
        oracle_reward_function()(["a photo of a star"], decode(blank_tokens()[None]))


@pytest.mark.parametrize("kw, match", [
    (dict(variant="mean"), "variant"), (dict(scorer="teacher"), "scorer"), (dict(image_path="latents"), "image_path"),
    (dict(micro_batch=0), "micro_batch"), (dict(micro_batch=2.5), "micro_batch"), (dict(micro_batch=True), "micro_batch"),
    (dict(instruction=None), "instruction"),
])
def test_reward_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        RewardConfig(**kw)
