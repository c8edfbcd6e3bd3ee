"""The 2-D reader (gvu.models.builtin.grid): it touches exactly the images the understanding branch reads, survives
save/load, and the flat-raster ablation stays a plain LlamaForCausalLM."""

import json

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from gvu.models.builtin.grid import GridLlamaForCausalLM
from gvu.models.builtin.model import FORMAT, build_builtin, load_builtin, save_builtin
from gvu.models.protocol import DEFAULT_INSTRUCTION, SamplingConfig
from gvu.world import spec

PROMPTS = ["a photo of a circle to the left of a star", "a photo of two blue squares"]


@pytest.fixture(scope="module")
def model(one_thread):
    return build_builtin("tiny", seed=0)


def codes(seed: int, n: int = 2) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).integers(0, spec.NUM_CODES, (n, spec.NUM_TOKENS)))


def test_cells_only_inside_understanding_images(model):
    tok, lay = model.tokenizer, model.layout
    c = codes(0, 1)[0].tolist()
    und, _ = lay.understanding_sequence(c, tok.encode(DEFAULT_INSTRUCTION), tok.encode(PROMPTS[0]))
    gen = lay.generation_sequence(tok.encode(PROMPTS[0]), c)
    uncond = lay.generation_sequence([], c)
    S = max(len(und), len(gen))
    ids = torch.full((3, S), tok.pad_id)
    for i, s in enumerate((und, gen, uncond)):
        ids[i, :len(s)] = torch.tensor(s)
    cells = model.lm.grid_cells(ids)
    start = len(lay.und_prefix)
    assert cells[0, start:start + spec.NUM_TOKENS].tolist() == list(range(spec.NUM_TOKENS))
    assert (cells[0, :start] == -1).all() and (cells[0, start + spec.NUM_TOKENS:] == -1).all()
    assert (cells[1:] == -1).all()  # generation, conditional or not, writes a flat raster


def test_grid_changes_understanding_and_nothing_else(model):
    other = build_builtin("tiny", seed=0)
    with torch.no_grad():
        other.lm.row_embed.weight.mul_(0).add_(1.0)  # a different reader, same everything else
    imgs = codes(1)
    a, mask = model.prompt_logprobs(imgs, PROMPTS)
    b, _ = other.prompt_logprobs(imgs, PROMPTS)
    assert (a - b)[mask].abs().max() > 1e-3
    for sampling in (SamplingConfig(), SamplingConfig(guidance=3.0)):
        ga = model.image_logprobs(PROMPTS, imgs, sampling)
        gb = other.image_logprobs(PROMPTS, imgs, sampling)
        assert torch.equal(ga, gb)
    ra = model.sample(PROMPTS, 2, SamplingConfig(guidance=2.0), torch.Generator().manual_seed(0))
    rb = other.sample(PROMPTS, 2, SamplingConfig(guidance=2.0), torch.Generator().manual_seed(0))
    assert torch.equal(ra.image_tokens_NT, rb.image_tokens_NT) and torch.equal(ra.logp_NT, rb.logp_NT)


def test_ordinal_start(model):
    # row r's embedding is a ramp along one direction: neighbours are closer than the two ends
    for table in (model.lm.row_embed.weight, model.lm.col_embed.weight):
        d = torch.cdist(table, table)
        assert d[0, 1] < d[0, -1] and d[-2, -1] < d[0, -1]


def test_save_load_keeps_the_reader(model, tmp_path):
    save_builtin(model, tmp_path / "m")
    info = json.loads((tmp_path / "m" / "gvu.json").read_text())
    assert info["format"] == FORMAT and info["grid"] is True
    back = load_builtin(tmp_path / "m")
    assert isinstance(back.lm, GridLlamaForCausalLM) and back.grid
    imgs = codes(2)
    assert torch.equal(back.prompt_logprobs(imgs, PROMPTS)[0], model.prompt_logprobs(imgs, PROMPTS)[0])


def test_flat_ablation_is_a_plain_llama(tmp_path):
    flat = build_builtin("tiny", seed=0, grid=False)
    assert type(flat.lm) is LlamaForCausalLM and not flat.grid
    save_builtin(flat, tmp_path / "f")
    back = load_builtin(tmp_path / "f")
    assert type(back.lm) is LlamaForCausalLM and json.loads((tmp_path / "f" / "gvu.json").read_text())["grid"] is False


def test_old_checkpoint_names_the_rebuild_command(model, tmp_path):
    save_builtin(model, tmp_path / "old")
    path = tmp_path / "old" / "gvu.json"
    info = json.loads(path.read_text())
    info["format"] = 1
    path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"format 1.*gvu pretrain --preset"):
        load_builtin(tmp_path / "old")


def test_bidirectional_image_span(model):
    bi = build_builtin("tiny", seed=0, bidirectional=True)  # the same weights, image tokens attend both ways
    for a, b in zip(model.lm.parameters(), bi.lm.parameters()):
        assert torch.equal(a, b)
    imgs = codes(3)
    a, mask = model.prompt_logprobs(imgs, PROMPTS)
    b, _ = bi.prompt_logprobs(imgs, PROMPTS)
    assert (a - b)[mask].abs().max() > 1e-4  # the text reads image states that saw the whole image
    sampling = SamplingConfig(guidance=2.0)
    assert torch.equal(model.image_logprobs(PROMPTS, imgs, sampling), bi.image_logprobs(PROMPTS, imgs, sampling))
    # the mask: causal everywhere, both ways inside the span only
    tok, lay = bi.tokenizer, bi.layout
    seq, _ = lay.understanding_sequence(imgs[0].tolist(), tok.encode(DEFAULT_INSTRUCTION), tok.encode(PROMPTS[0]))
    ids = torch.tensor([seq])
    m4 = bi.lm.span_mask(bi.lm.grid_cells(ids), torch.ones_like(ids), torch.float32)[0, 0] == 0
    s, e = len(lay.und_prefix), len(lay.und_prefix) + spec.NUM_TOKENS
    causal = torch.ones(len(seq), len(seq), dtype=torch.bool).tril()
    assert m4[s:e, s:e].all() and torch.equal(m4[e:], causal[e:]) and torch.equal(m4[:s], causal[:s])
    # a caption decoded with the KV cache reads the same states as one full forward of its text
    text = bi.caption(imgs[:1])[0]
    cap_lp, cap_mask = bi.prompt_logprobs(imgs[:1], [text])
    inst = tok.encode(DEFAULT_INSTRUCTION)
    prefix = lay.understanding_prefix(imgs[0].tolist(), inst)
    full = torch.tensor([prefix + tok.encode(text)])
    with torch.no_grad():
        logits = bi.lm(input_ids=full, attention_mask=torch.ones_like(full)).logits[0, len(prefix) - 1:-1]
    allowed = torch.tensor(lay.caption_ids)
    assert logits[:, allowed].argmax(-1).tolist() == [allowed.tolist().index(i) for i in tok.encode(text)]


def test_relative_reader_biases_image_pairs_by_their_offset(model, tmp_path):
    rel = build_builtin("tiny", seed=0, relative=True)
    bias = rel.lm.rel_bias
    assert bias.shape == (rel.lm.config.num_attention_heads, 2 * spec.GRID - 1, 2 * spec.GRID - 1)
    C = spec.GRID - 1  # the index of offset 0
    # heads 0 and 1 start looking left and right: keys to the query's left (column offset > 0) get +, right -
    assert bias[0, C, C + 1] > 0 > bias[0, C, C - 1] and bias[1, C, C - 1] > 0 > bias[1, C, C + 1]
    assert bias[0, C, C] == 0
    # the bias of a pair: query cell 7 (row 1, column 1), key cell 0 (row 0, column 0): offsets (+1, +1)
    tok, lay = rel.tokenizer, rel.layout
    imgs = codes(4)
    seq, _ = lay.understanding_sequence(imgs[0].tolist(), tok.encode(DEFAULT_INSTRUCTION), tok.encode(PROMPTS[0]))
    cells = rel.lm.grid_cells(torch.tensor([seq]))
    b = rel.lm.relative_bias(cells)[0]
    s = len(lay.und_prefix)
    assert b[1, s + 7, s + 0] == bias[1, C + 1, C + 1] and b[0, s + 7, s + 0] == bias[0, C + 1, C + 1]
    assert (b[:, :s] == 0).all() and (b[:, s + spec.NUM_TOKENS:] == 0).all()  # text rows carry no bias
    # understanding reads it, generation never does
    other = build_builtin("tiny", seed=0, relative=True)
    with torch.no_grad():
        other.lm.rel_bias.mul_(-1)
    a, mask = rel.prompt_logprobs(imgs, PROMPTS)
    o, _ = other.prompt_logprobs(imgs, PROMPTS)
    assert (a - o)[mask].abs().max() > 1e-4
    sampling = SamplingConfig(guidance=2.0)
    assert torch.equal(rel.image_logprobs(PROMPTS, imgs, sampling), other.image_logprobs(PROMPTS, imgs, sampling))
    # it trains, and survives save/load
    a.sum().backward()
    assert rel.lm.rel_bias.grad is not None and rel.lm.rel_bias.grad.abs().sum() > 0
    save_builtin(rel, tmp_path / "r")
    back = load_builtin(tmp_path / "r")
    assert torch.equal(back.lm.rel_bias, rel.lm.rel_bias)
    assert torch.allclose(back.prompt_logprobs(imgs, PROMPTS)[0], a.detach())


def test_relative_reader_needs_the_grid():
    with pytest.raises(ValueError, match="needs grid=True"):
        build_builtin("tiny", relative=True, grid=False)


def test_rope2d_positions_turn_by_row_and_column(model, tmp_path):
    r2 = build_builtin("tiny", seed=0, rope2d=True)  # the same weights as `model`, only the rotary differs
    for a, b in zip(model.lm.parameters(), r2.lm.parameters()):
        assert torch.equal(a, b)
    tok, lay = r2.tokenizer, r2.layout
    imgs = codes(5)
    seq, _ = lay.understanding_sequence(imgs[0].tolist(), tok.encode(DEFAULT_INSTRUCTION), tok.encode(PROMPTS[0]))
    ids = torch.tensor([seq])
    rows, cols = r2.lm.grid_positions(r2.lm.grid_cells(ids), None)
    s, G = len(lay.und_prefix), spec.GRID
    j = torch.arange(len(seq))
    # cell 13 = (row 2, column 1) sits 3 rows and 2 columns past the opener; text keeps its 1-D position
    assert rows[0, s + 13] == s + 2 and cols[0, s + 13] == s + 1
    assert torch.equal(rows[0, :s], j[:s]) and torch.equal(cols[0, s + G * G:], j[s + G * G:])
    # the rotation of two image tokens depends on (row offset, column offset) only, and each axis on its own
    rot = r2.lm.model.rotary_emb
    rot.grid_positions = (rows, cols)
    cos, sin = rot(torch.zeros(1), torch.zeros_like(ids))
    rot.grid_positions = None
    half = cos.shape[-1] // 2
    assert torch.allclose(cos[0, s + 1, :half:2], cos[0, s + 0, :half:2])  # same row: even frequencies agree
    assert not torch.allclose(cos[0, s + 1, 1:half:2], cos[0, s + 0, 1:half:2])  # odd ones turn with the column
    assert torch.allclose(cos[0, s + G, 1:half:2], cos[0, s + 0, 1:half:2])  # same column: odd ones agree
    # text alone, and generation, are rotated as by the stock embedding
    sampling = SamplingConfig(guidance=2.0)
    assert torch.equal(model.image_logprobs(PROMPTS, imgs, sampling), r2.image_logprobs(PROMPTS, imgs, sampling))
    a, mask = model.prompt_logprobs(imgs, PROMPTS)
    b, _ = r2.prompt_logprobs(imgs, PROMPTS)
    assert (a - b)[mask].abs().max() > 1e-4
    # a caption decoded with the KV cache reads the same states as one full forward of its text
    text = r2.caption(imgs[:1])[0]
    prefix = lay.understanding_prefix(imgs[0].tolist(), tok.encode(DEFAULT_INSTRUCTION))
    full = torch.tensor([prefix + tok.encode(text)])
    with torch.no_grad():
        logits = r2.lm(input_ids=full, attention_mask=torch.ones_like(full)).logits[0, len(prefix) - 1:-1]
    allowed = torch.tensor(lay.caption_ids)
    assert logits[:, allowed].argmax(-1).tolist() == [allowed.tolist().index(i) for i in tok.encode(text)]
    save_builtin(r2, tmp_path / "r")
    back = load_builtin(tmp_path / "r")
    assert torch.allclose(back.prompt_logprobs(imgs, PROMPTS)[0], b)
    with pytest.raises(ValueError, match="need grid=True"):
        build_builtin("tiny", rope2d=True, grid=False)


def test_paint_gives_the_written_image_the_grid(tmp_path):
    read = build_builtin("tiny", seed=0, rope2d=True, relative=True)  # the shipped reader, a flat-raster painter
    paint = build_builtin("tiny", seed=0, rope2d=True, relative=True, paint=True)  # the same weights
    for a, b in zip(read.lm.parameters(), paint.lm.parameters()):
        assert torch.equal(a, b)
    tok, lay = paint.tokenizer, paint.layout
    c = codes(7, 1)[0].tolist()
    for prompt in (tok.encode(PROMPTS[0]), []):  # conditional and unconditional rows alike
        ids = torch.tensor([lay.generation_sequence(prompt, c)])
        cells = paint.lm.grid_cells(ids)[0]
        s = len(lay.generation_prefix(prompt))
        assert cells[s:s + spec.NUM_TOKENS].tolist() == list(range(spec.NUM_TOKENS))
        assert (cells[:s] == -1).all() and (cells[s + spec.NUM_TOKENS:] == -1).all()
        assert (read.lm.grid_cells(ids) == -1).all()
    imgs = codes(8)
    # understanding reads as before; generation now depends on the grid
    assert torch.equal(read.prompt_logprobs(imgs, PROMPTS)[0], paint.prompt_logprobs(imgs, PROMPTS)[0])
    sampling = SamplingConfig()
    assert (read.image_logprobs(PROMPTS, imgs, sampling) - paint.image_logprobs(PROMPTS, imgs, sampling)).abs().max() > 1e-3
    # the KV-cached sampler (cells from the prefill's <boi>) and the teacher-forced pass agree, guided or not
    for sampling in (SamplingConfig(), SamplingConfig(guidance=3.0)):
        r = paint.sample(PROMPTS, 2, sampling, torch.Generator().manual_seed(0))
        tf = paint.image_logprobs([p for p in PROMPTS for _ in range(2)], r.image_tokens_NT, sampling)
        assert torch.allclose(tf, r.logp_NT, atol=1e-4)
    save_builtin(paint, tmp_path / "p")
    back = load_builtin(tmp_path / "p")
    assert back.lm.grid["paint"] and torch.equal(back.image_logprobs(PROMPTS, imgs, sampling),
                                                 paint.image_logprobs(PROMPTS, imgs, sampling))
    with pytest.raises(ValueError, match="needs grid=True"):
        build_builtin("tiny", paint=True, grid=False)
