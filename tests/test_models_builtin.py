"""The built-in model through the UnifiedModel interface, on the tiny preset with random weights (seconds)."""

import json

import numpy as np
import pytest
import torch

from gvu.models.builtin.model import build_builtin, load_builtin, save_builtin
from gvu.models.builtin.tokenizer import WordTokenizer
from gvu.models.protocol import Rollout, SamplingConfig, UnifiedModel
from gvu.models.sampling import cfg_combine, filter_logits
from gvu.world import grammar, spec

# Different lengths on purpose: the batch is left-padded for generation and right-padded for understanding.
PROMPTS = [
    "a photo of a heart",
    "a photo of two blue squares and a green star",
    "a photo of a larger red circle on the left and a smaller white cross on the right",
]

SAMPLINGS = {
    "plain": SamplingConfig(),
    "cfg3": SamplingConfig(guidance=3.0),
    "t0.7": SamplingConfig(temperature=0.7),
    "t0.7-cfg3": SamplingConfig(temperature=0.7, guidance=3.0),
    "filters": SamplingConfig(top_k=20, top_p=0.9, min_p=0.05),
    "filters-cfg": SamplingConfig(temperature=0.7, top_k=50, top_p=0.8, min_p=0.2, guidance=2.0),
}


@pytest.fixture(scope="module")
def model(one_thread):
    return build_builtin("tiny", seed=0)


def sample(model, sampling, seed=0, group_size=2):
    return model.sample(PROMPTS, group_size, sampling, torch.Generator().manual_seed(seed))


def test_is_a_unified_model(model):
    assert isinstance(model, UnifiedModel)
    assert model.module is model.lm


@pytest.mark.parametrize("name", list(SAMPLINGS))
def test_sampler_logprobs_match_teacher_forcing(model, name):
    sampling = SAMPLINGS[name]
    r = sample(model, sampling)
    assert isinstance(r, Rollout)
    assert r.image_tokens_NT.shape == r.logp_NT.shape == (len(PROMPTS) * 2, spec.NUM_TOKENS)
    assert r.prompt_index_N.tolist() == [0, 0, 1, 1, 2, 2]
    logp_NT = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
    assert logp_NT.requires_grad
    assert (logp_NT.detach() - r.logp_NT).abs().max().item() <= 1e-4
    assert torch.isfinite(r.logp_NT).all() and (r.logp_NT <= 0).all()


@pytest.mark.parametrize("name", ["plain", "t0.7-cfg3"])
@pytest.mark.parametrize("painter", [False, True], ids=["flat", "painter"])
def test_shared_prompt_prefix_gives_the_same_logprobs_and_gradients(one_thread, name, painter):
    """image_logprobs runs each distinct prompt prefix once and indexes its KV cache out to the group's rows:
    the same log-probs and the same gradients as the whole sequences, and the first forward has one row per
    distinct prefix (the prompts, and one unconditional row under guidance)."""
    m = build_builtin("tiny", seed=1, relative=painter, rope2d=painter, paint=painter)
    sampling = SAMPLINGS[name]
    r = sample(m, sampling, group_size=3)
    rows = []
    hook = m.lm.register_forward_pre_hook(lambda mod, a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    out = {}
    try:
        for share in (True, False):
            m.share_prefix = share
            m.lm.zero_grad(set_to_none=True)
            logp = m.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
            (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
            out[share] = (logp.detach(), {k: p.grad.clone() for k, p in m.lm.named_parameters() if p.grad is not None})
    finally:
        hook.remove()
        m.share_prefix = True
    guided = sampling.uses_guidance
    assert rows == [len(PROMPTS) + guided, len(PROMPTS) * 3 * (1 + guided), len(PROMPTS) * 3 * (1 + guided)]
    assert (out[True][0] - out[False][0]).abs().max().item() <= 1e-5
    assert (out[True][0] - r.logp_NT).abs().max().item() <= 1e-4
    assert out[True][1].keys() == out[False][1].keys()
    for k, g in out[False][1].items():
        assert (out[True][1][k] - g).abs().max() <= 1e-4 * g.abs().max(), k


def test_filters_change_the_distribution(model):
    # guards the test above against filters that silently do nothing
    plain, filt = sample(model, SAMPLINGS["plain"]), sample(model, SAMPLINGS["filters"])
    assert filt.logp_NT.mean() > plain.logp_NT.mean() + 0.5


def test_same_seed_same_samples(model):
    a, b, c = (sample(model, SAMPLINGS["cfg3"], seed=s) for s in (7, 7, 8))
    assert torch.equal(a.image_tokens_NT, b.image_tokens_NT) and torch.equal(a.logp_NT, b.logp_NT)
    assert not torch.equal(a.image_tokens_NT, c.image_tokens_NT)


def test_samples_are_valid_codes_and_decode(model):
    r = sample(model, SAMPLINGS["t0.7"])
    assert r.image_tokens_NT.dtype == torch.long
    assert r.image_tokens_NT.min() >= 0 and r.image_tokens_NT.max() < spec.NUM_CODES
    pixels = model.decode(r.image_tokens_NT)
    assert pixels.dtype == np.uint8 and pixels.shape == (6, spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3)
    assert torch.equal(model.encode(pixels), r.image_tokens_NT)


@pytest.mark.parametrize("name", list(SAMPLINGS))
def test_filtered_logprobs_are_normalised(name):
    sampling = SAMPLINGS[name]
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(5, spec.NUM_CODES, generator=g) * 3, torch.randn(5, spec.NUM_CODES, generator=g)
    logp = filter_logits(cond, sampling, uncond if sampling.uses_guidance else None)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(5), atol=1e-5)
    if sampling.top_k:
        assert ((logp > -torch.inf).sum(-1) <= sampling.top_k).all()


def test_filter_masks_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    kept = lambda **kw: (filter_logits(logits, SamplingConfig(**kw)) > -torch.inf)[0].tolist()
    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.7) == [True, True, False, False]  # 0.5 < 0.7, 0.75 >= 0.7
    assert kept(min_p=0.4) == [True, True, False, False]  # 0.15 < 0.4 * 0.5 <= 0.25
    assert torch.allclose(filter_logits(logits, SamplingConfig(top_k=2)).exp(), torch.tensor([[2 / 3, 1 / 3, 0, 0]]))
    assert torch.equal(cfg_combine(torch.tensor([2.0]), torch.tensor([1.0]), 3.0), torch.tensor([4.0]))
    with pytest.raises(ValueError, match="unconditional"):
        filter_logits(logits, SamplingConfig(guidance=2.0))


@pytest.mark.parametrize("kw, match", [({"temperature": 0}, "temperature"), ({"top_p": 0}, "top_p"),
                                       ({"min_p": 1.0}, "min_p"), ({"top_k": -1}, "top_k"),
                                       ({"guidance": -1}, "guidance")])
def test_sampling_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kw)


def test_prompt_logprobs_batched_equals_loop(model):
    codes = sample(model, SAMPLINGS["plain"], group_size=1).image_tokens_NT
    logp_NL, mask_NL = model.prompt_logprobs(codes, PROMPTS)
    lengths = [len(model.tokenizer.encode(p)) for p in PROMPTS]
    assert mask_NL.sum(1).tolist() == lengths and logp_NL.shape == (3, max(lengths))
    for i, p in enumerate(PROMPTS):
        one, m1 = model.prompt_logprobs(codes[i:i + 1], [p])
        assert m1.all() and one.shape == (1, lengths[i])
        assert (logp_NL[i, :lengths[i]] - one[0]).abs().max().item() <= 1e-5
    assert (logp_NL[~mask_NL] == 0).all() and (logp_NL[mask_NL] < 0).all()
    # pixels are encoded first and give the same answer
    pix_NL, _ = model.prompt_logprobs(model.decode(codes), PROMPTS)
    assert torch.equal(pix_NL, logp_NL)


def test_prompt_logprobs_is_a_literal_token_loop(model):
    # the single pass against scoring each prompt token with its own forward over the prefix
    codes = sample(model, SAMPLINGS["plain"], group_size=1).image_tokens_NT[1]
    tok, layout = model.tokenizer, model.layout
    prefix = layout.understanding_prefix(codes.tolist(), tok.encode("Describe the image in detail."))
    ids = tok.encode(PROMPTS[1])
    logp_NL, _ = model.prompt_logprobs(codes[None], [PROMPTS[1]])
    with torch.no_grad():
        for j, x in enumerate(ids):
            logits = model.lm(input_ids=torch.tensor([prefix + ids[:j]])).logits[0, -1]
            assert abs(torch.log_softmax(logits, -1)[x].item() - logp_NL[0, j].item()) <= 1e-5


def test_caption_writes_words(model):
    texts = model.caption(sample(model, SAMPLINGS["plain"], group_size=1).image_tokens_NT, max_len=6)
    vocab = set(model.tokenizer.words)
    assert len(texts) == 3 and all(w.rstrip(",.") in vocab for t in texts for w in t.split())


def test_tokenizer_round_trip_and_errors(tmp_path):
    tok = WordTokenizer()
    assert tok.vocab_size == tok.image_token_offset + spec.NUM_CODES
    assert set(grammar.vocabulary()) <= set(tok.words) and "." in tok.words
    for text in PROMPTS + ["a photo of a red heart, a blue star, and two black crosses"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("Describe the image in detail.")) == "describe the image in detail."
    ids = [tok.bos_id, *tok.encode("a photo of a star"), tok.boi_id, tok.image_token_offset + 5]
    assert tok.decode(ids) == "a photo of a star"
    assert tok.decode(ids, skip_special=False) == "<bos> a photo of a star <boi> <img5>"
    with pytest.raises(ValueError, match="word 'grey' is not in the model's vocabulary"):
        tok.encode("a photo of a grey circle")
    with pytest.raises(ValueError, match="'3'"):
        tok.encode("a photo of 3 circles")
    tok.save(tmp_path)
    assert WordTokenizer.load(tmp_path) == tok


def test_save_load_round_trip(model, tmp_path):
    target = tmp_path / "m"
    save_builtin(model, target, extra={"note": "test"})
    save_builtin(model, target)  # replacing a model in place works
    assert json.loads((target / "gvu.json").read_text())["kind"] == "builtin"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    loaded = load_builtin(target)
    assert loaded.size == "tiny" and loaded.tokenizer == model.tokenizer
    s = SAMPLINGS["filters-cfg"]
    a, b = sample(model, s, seed=3), sample(loaded, s, seed=3)
    assert torch.equal(a.image_tokens_NT, b.image_tokens_NT) and torch.equal(a.logp_NT, b.logp_NT)
    assert torch.equal(model.prompt_logprobs(a.image_tokens_NT, a.row_prompts())[0],
                       loaded.prompt_logprobs(a.image_tokens_NT, a.row_prompts())[0])


def test_load_and_save_refuse_other_folders(model, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileNotFoundError, match="is not a gvu model directory: expected gvu.json, config.json"):
        load_builtin(tmp_path)
    with pytest.raises(FileExistsError, match="not a gvu model directory"):
        save_builtin(model, tmp_path)
    assert (tmp_path / "notes.txt").exists()


def test_half_precision_weights_load_as_the_saved_model(tmp_path):
    m = build_builtin("tiny", seed=1)
    save_builtin(m, tmp_path / "f32")
    before = [p.detach().clone() for p in m.lm.parameters()]
    save_builtin(m, tmp_path / "f16", weights_dtype="float16")
    assert any(not torch.equal(a, p) for a, p in zip(before, m.lm.parameters()))  # rounded to what was written
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("f32", "f16")}
    assert size["f16"] < 0.55 * size["f32"]
    back = load_builtin(tmp_path / "f16")
    assert all(p.dtype == torch.float32 for p in back.lm.parameters())
    for a, b in zip(m.lm.state_dict().values(), back.lm.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="weights_dtype must be"):
        save_builtin(m, tmp_path / "bad", weights_dtype="bfloat16")
