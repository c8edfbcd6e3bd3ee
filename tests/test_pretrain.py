"""Pretraining the built-in model on the tiny preset: the loss falls, the same seed gives the same weights, an
interrupted run resumes to exactly the weights of an uninterrupted one, and batches put the loss where the
module docstring says (image codes for generation, description + <eos> for understanding). Seconds each."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import gvu.models.builtin.pretrain as pt
from gvu.models.builtin.model import build_builtin, load_builtin
from gvu.models.builtin.pretrain import (LOG_FILE, STATE_FILE, PretrainConfig, ScenePool, build_pool, make_batch,
                                         pretrain)
from gvu.world import spec
from gvu.world.grammar import SHAPES_LEXICON, parse_prompt
from gvu.world.judge import evaluate, judge_image
from gvu.world.render import decode
from gvu.world.scene import scene_detections

# warmup 5 (not the default 100) so 30 steps actually move the weights
TINY = PretrainConfig(size="tiny", steps=30, num_scenes=200, batch_size=16, warmup_steps=5, seed=3, relation_fraction=0.0,
                      gen_fraction=0.5, relation_replay=0.0)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted tiny run, shared: (output folder, returned model)."""
    out = tmp_path_factory.mktemp("ref") / "base"
    model = pretrain(TINY, out, progress=False)
    return out, model


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.lm.state_dict().items()}


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def fixed_batch_loss(model, pool) -> float:
    """The training loss on a fixed batch drawn with its own generator (independent of training's batches)."""
    b = make_batch(model, pool, TINY, np.random.default_rng(123))
    with torch.no_grad():
        return pt.lm_loss(model.lm, b.ids, b.mask, b.labels, b.is_gen, b.neg_rows, b.true_rows)[0].item()


# ------------------------------------------------------------------------------------------------ training

def test_loss_falls_on_a_fixed_batch(reference_run):
    _, trained = reference_run
    untrained = build_builtin(TINY.size, seed=TINY.seed)  # pretrain starts from exactly this initialisation
    pool = build_pool(TINY.num_scenes, TINY.seed, TINY.kinds, progress=False)
    before, after = fixed_batch_loss(untrained, pool), fixed_batch_loss(trained, pool)
    assert math.isfinite(after)
    assert before > math.log(100)  # random init: roughly uniform over a vocabulary of ~500 ids
    assert after < 0.75 * before, (before, after)


def test_output_folder_loads_and_holds_the_log(reference_run):
    out, trained = reference_run
    loaded = load_builtin(out)
    assert_same_weights(weights(loaded), weights(trained))
    info = json.loads((out / "gvu.json").read_text())
    assert info["pretrain"] == json.loads(json.dumps(dataclasses.asdict(TINY)))
    lines = [json.loads(x) for x in (out / LOG_FILE).read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 11)) + [TINY.steps]  # the first ten, every 50th, the last
    assert all(math.isfinite(m[k]) for m in lines for k in ("loss", "loss_gen", "loss_und", "lr"))
    # the hidden work folder is gone once the model is written
    assert not (out.parent / f".{out.name}.pretrain").exists()


def test_same_seed_same_weights(reference_run, tmp_path):
    _, first = reference_run
    second = pretrain(TINY, tmp_path / "again", progress=False)
    assert_same_weights(weights(first), weights(second))
    other = build_builtin(TINY.size, seed=TINY.seed + 1)  # and the seed matters
    assert not torch.equal(weights(other)["model.embed_tokens.weight"], weights(first)["model.embed_tokens.weight"])


def _interrupt_at(monkeypatch, name: str, call: int, exc: BaseException):
    """Make pt.<name> raise `exc` on its `call`-th call (1-based) during the run."""
    real = getattr(pt, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(pt, name, wrapped)


# A Ctrl-C lands anywhere. In the loss, step 13 has drawn its batch but not updated the weights: the state must
# be that of step 12 with the generator as step 13 began. In the periodic save after step 10, the step is
# complete: the state is step 10 with the generator as it is. (save_every never changes what is trained.)
@pytest.mark.parametrize("where,call,saved_step", [("lm_loss", 13, 12), ("_save_state", 1, 10)])
def test_interrupt_then_resume_matches_uninterrupted(reference_run, tmp_path, monkeypatch, capsys, where, call,
                                                     saved_step):
    _, uninterrupted = reference_run
    cfg = dataclasses.replace(TINY, save_every=10)
    out = tmp_path / "base"
    work = tmp_path / ".base.pretrain"
    with monkeypatch.context() as m:
        _interrupt_at(m, where, call, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            pretrain(cfg, out, progress=False)
    assert "rerun the same command to resume" in capsys.readouterr().out
    assert (work / STATE_FILE).is_file() and not out.exists()
    assert torch.load(work / STATE_FILE, weights_only=False)["step"] == saved_step

    # a different configuration must not silently continue from this state
    with pytest.raises(ValueError, match="another configuration.*same"):
        pretrain(dataclasses.replace(cfg, learning_rate=1e-3), out, progress=False)

    resumed = pretrain(cfg, out, progress=False)
    assert_same_weights(weights(resumed), weights(uninterrupted))
    assert not work.exists()
    logged = [json.loads(x)["step"] for x in (out / LOG_FILE).read_text().splitlines()]
    assert logged == list(range(1, 11)) + [cfg.steps]


def test_init_starts_from_a_saved_models_weights(reference_run, tmp_path):
    """`init` continues pretraining from a saved base: with a zero learning rate the result is the base's weights
    exactly (a fresh start is not), and a run with steps moves on from them."""
    parent, trained = reference_run
    still = pretrain(dataclasses.replace(TINY, steps=3, learning_rate=0.0, init=str(parent)), tmp_path / "a",
                     progress=False)
    assert_same_weights(weights(still), weights(trained))
    fresh = pretrain(dataclasses.replace(TINY, steps=3, learning_rate=0.0), tmp_path / "b", progress=False)
    assert any(not torch.equal(v, trained.lm.state_dict()[k]) for k, v in fresh.lm.state_dict().items())
    pool = build_pool(TINY.num_scenes, TINY.seed, TINY.kinds, progress=False)
    moved = pretrain(dataclasses.replace(TINY, steps=5, init=str(parent)), tmp_path / "c", progress=False)
    assert abs(fixed_batch_loss(moved, pool) - fixed_batch_loss(trained, pool)) < 0.5 * fixed_batch_loss(fresh, pool)
    assert json.loads((tmp_path / "c" / "gvu.json").read_text())["pretrain"]["init"] == str(parent)


def test_init_refuses_another_architecture(reference_run, tmp_path):
    parent, _ = reference_run
    with pytest.raises(ValueError, match="architecture differs.*paint"):
        pretrain(dataclasses.replace(TINY, steps=2, paint=True, init=str(parent)), tmp_path / "x", progress=False)
    with pytest.raises(FileNotFoundError, match="not a gvu model directory"):
        pretrain(dataclasses.replace(TINY, steps=2, init=str(tmp_path / "none")), tmp_path / "y", progress=False)


def test_crash_resumes_from_the_last_periodic_state(reference_run, tmp_path, monkeypatch):
    """Not a Ctrl-C (e.g. the machine dies): the periodic state file is all there is, and it is enough."""
    _, uninterrupted = reference_run
    cfg = dataclasses.replace(TINY, save_every=10)
    assert cfg.steps == TINY.steps
    out = tmp_path / "base"
    with monkeypatch.context() as m:
        _interrupt_at(m, "lm_loss", 25, RuntimeError("power cut"))
        with pytest.raises(RuntimeError, match="power cut"):
            pretrain(cfg, out, progress=False)
    assert torch.load(tmp_path / ".base.pretrain" / STATE_FILE, weights_only=False)["step"] == 20
    resumed = pretrain(cfg, out, progress=False)
    # save_every only decides when state is written, never what is trained
    assert_same_weights(weights(resumed), weights(uninterrupted))


# ------------------------------------------------------------------------------------------------ batches

@pytest.fixture(scope="module")
def one_scene_pool():
    """A pool of ONE scene, so every example of a batch is known exactly."""
    pool = build_pool(40, seed=0, kinds=TINY.kinds, progress=False)
    # a scene with several distinct shapes, so it has many different true descriptions
    k = max(range(40), key=lambda i: len({o.cls for o in pool.objs[i]}))
    assert len({o.cls for o in pool.objs[k]}) >= 3
    return ScenePool(pool.tokens[k:k + 1], pool.rows[k:k + 1], pool.objs[k:k + 1])


def test_generation_labels_are_exactly_the_image_codes(one_scene_pool):
    model = build_builtin("tiny")
    layout = model.layout
    cfg = dataclasses.replace(TINY, gen_fraction=1.0, uncond_prob=0.5, batch_size=24)
    b = make_batch(model, one_scene_pool, cfg, np.random.default_rng(0))
    ids, mask, labels, is_gen = b.ids, b.mask, b.labels, b.is_gen
    assert is_gen.all() and len(ids) == 24 and len(b.neg_rows) == 0  # negatives come with understanding only
    image_ids = layout.image_ids(one_scene_pool.tokens[0])
    prompt_ids = model.tokenizer.encode(one_scene_pool.rows[0]["prompt"])
    lengths = set()
    for i in range(len(ids)):
        n = int(mask[i].sum())
        lengths.add(n)
        on = (labels[i] != -100).nonzero()[:, 0].tolist()
        assert [int(x) for x in labels[i, on]] == image_ids
        assert on == list(range(on[0], on[0] + len(image_ids)))  # one contiguous span
        seq = ids[i, :n].tolist()
        prompt = prompt_ids if n == len(layout.generation_sequence(prompt_ids, one_scene_pool.tokens[0])) else []
        assert seq == layout.generation_sequence(prompt, one_scene_pool.tokens[0])
        assert on[0] == len(layout.generation_prefix(prompt))  # nothing of the prompt or the end marker is a target
    assert len(lengths) == 2  # both conditional and prompt-dropped (guidance) examples occurred


@pytest.mark.parametrize("noise", [0.0, 0.5, 1.0])
def test_prompt_noise_gives_that_share_of_images_another_scenes_prompt(noise):
    """A noisy caption keeps the image as the target and swaps the prompt for another scene's: the share of
    generation examples whose prompt is not their scene's follows prompt_noise."""
    model = build_builtin("tiny")
    pool = build_pool(200, seed=0, kinds=TINY.kinds, progress=False)
    cfg = dataclasses.replace(TINY, gen_fraction=1.0, uncond_prob=0.0, batch_size=200, prompt_noise=noise)
    b = make_batch(model, pool, cfg, np.random.default_rng(1))
    prompts_of: dict[tuple, set] = {}  # an image's own prompts (two scenes may draw the same image)
    codes_of: dict[tuple, list] = {}
    for t, r in zip(pool.tokens, pool.rows):
        image = tuple(model.layout.image_ids(t))
        prompts_of.setdefault(image, set()).add(r["prompt"])
        codes_of[image] = t
    other = 0
    for i in range(len(b.ids)):
        on = (b.labels[i] != -100).nonzero()[:, 0].tolist()
        seq = b.ids[i, :int(b.mask[i].sum())].tolist()
        image = tuple(seq[on[0]:on[-1] + 1])  # the target is a pool scene's image
        other += not any(seq == model.layout.generation_sequence(model.tokenizer.encode(p), codes_of[image])
                         for p in prompts_of[image])
    assert abs(other / len(b.ids) - noise) < 0.12
    with pytest.raises(ValueError, match="prompt_noise"):
        dataclasses.replace(TINY, prompt_noise=1.5)


def test_understanding_labels_are_a_true_description_and_eos(one_scene_pool):
    model = build_builtin("tiny")
    tok, layout = model.tokenizer, model.layout
    cfg = dataclasses.replace(TINY, gen_fraction=0.0, batch_size=24, negative_prob=0.5)
    b = make_batch(model, one_scene_pool, cfg, np.random.default_rng(0))
    ids, mask, labels, is_gen = b.ids, b.mask, b.labels, b.is_gen
    assert not is_gen.any()
    dets = scene_detections(one_scene_pool.objs[0])
    descriptions = set()
    # the hard negatives: extra rows after the batch, each the same image with a description the judge finds false
    assert 4 <= len(b.neg_rows) <= 20 and b.neg_rows.tolist() == list(range(24, len(ids)))
    for n, t in zip(b.neg_rows.tolist(), b.true_rows.tolist()):
        assert t < 24 and ids[n, 2:2 + spec.NUM_TOKENS].tolist() == ids[t, 2:2 + spec.NUM_TOKENS].tolist()
        on = (labels[n] != -100).nonzero()[:, 0].tolist()
        text = tok.decode([int(x) for x in labels[n, on]][:-1])
        assert not evaluate(dets, parse_prompt(text, SHAPES_LEXICON), "strict").correct, text
    for i in range(24):
        on = (labels[i] != -100).nonzero()[:, 0].tolist()
        target = [int(x) for x in labels[i, on]]
        assert on == list(range(on[0], on[0] + len(target)))
        assert target[-1] == layout.eos_id and layout.eos_id not in target[:-1]
        assert on[-1] == int(mask[i].sum()) - 1  # the span ends the sequence: eos is the last real token
        assert ids[i, on[0] - 1] == tok.ans_id  # and starts right after the answer marker
        text = tok.decode(target[:-1])
        assert evaluate(dets, parse_prompt(text, SHAPES_LEXICON), "strict").correct, text
        descriptions.add(text)
        assert (labels[i, int(mask[i].sum()):] == -100).all()  # padding is never a target
    assert len(descriptions) > 3  # drawn fresh for each example


def test_binding_negatives_swap_two_colours_of_a_true_description():
    """binding_negative_prob=1: every understanding example whose description colours two objects differently
    carries the description with those two colours swapped, false on its image."""
    pool = build_pool(200, seed=0, kinds=TINY.kinds, progress=False)
    k = next(i for i in range(200) if len({(o.cls, o.color) for o in pool.objs[i]}) >= 3
             and len({o.color for o in pool.objs[i]}) >= 2)
    one = ScenePool(pool.tokens[k:k + 1], pool.rows[k:k + 1], pool.objs[k:k + 1])
    model = build_builtin("tiny")
    tok = model.tokenizer
    cfg = dataclasses.replace(TINY, gen_fraction=0.0, batch_size=32, binding_negative_prob=1.0)
    b = make_batch(model, one, cfg, np.random.default_rng(0))
    dets = scene_detections(one.objs[0])

    def text(i):
        on = (b.labels[i] != -100).nonzero()[:, 0].tolist()
        return tok.decode([int(x) for x in b.labels[i, on]][:-1])

    assert len(b.neg_rows) >= 4
    for n, t in zip(b.neg_rows.tolist(), b.true_rows.tolist()):
        true, neg = parse_prompt(text(t), SHAPES_LEXICON), parse_prompt(text(n), SHAPES_LEXICON)
        assert not evaluate(dets, neg, "strict").correct and evaluate(dets, true, "strict").correct
        strip = lambda r: [{k: v for k, v in x.items() if k != "color"} for x in r["include"]]  # noqa: E731
        assert strip(neg) == strip(true)  # the same objects, counts and relations
        changed = [j for j, (x, y) in enumerate(zip(true["include"], neg["include"])) if x.get("color") != y.get("color")]
        a, c = changed  # exactly two objects, their colours exchanged
        assert (neg["include"][a]["color"], neg["include"][c]["color"]) == (true["include"][c]["color"],
                                                                            true["include"][a]["color"])
    with pytest.raises(ValueError, match="binding_negative_prob"):
        dataclasses.replace(TINY, binding_negative_prob=2.0)


def test_presets_set_gen_fraction():
    weak, regular = PretrainConfig(preset="weak"), PretrainConfig(preset="regular")
    assert 0 < weak.gen_fraction < regular.gen_fraction <= 1
    assert PretrainConfig(preset="weak", gen_fraction=0.7).gen_fraction == 0.7
    with pytest.raises(ValueError, match="preset"):
        PretrainConfig(preset="strong")
    with pytest.raises(ValueError, match="gen_fraction"):
        PretrainConfig(gen_fraction=1.5)
    with pytest.raises(ValueError, match="save_dtype"):
        PretrainConfig(save_dtype="bfloat16")
    with pytest.raises(ValueError, match="paint"):
        PretrainConfig(grid=False, relative=False, rope2d=False, paint=True)
    # and the fraction is what batches contain
    pool = build_pool(20, seed=0, kinds=TINY.kinds, progress=False)
    model = build_builtin("tiny")
    frac = {}
    for name, c in (("weak", weak), ("regular", regular)):
        c = dataclasses.replace(c, batch_size=400)
        frac[name] = make_batch(model, pool, c, np.random.default_rng(1)).is_gen[:400].float().mean().item()
    assert abs(frac["weak"] - weak.gen_fraction) < 0.06 and abs(frac["regular"] - regular.gen_fraction) < 0.06


@pytest.mark.parametrize("phase", ["relation phase", "replay"])
def test_relation_examples_are_two_object_scenes_described_by_their_prompt(one_scene_pool, phase):
    """The relation phase, and relation_replay after it, teach fresh two-object scenes of position prompts with
    that prompt as the target: each true on its image, each image a new one (not the pool's one scene)."""
    model = build_builtin("tiny")
    tok, layout = model.tokenizer, model.layout
    cfg = dataclasses.replace(TINY, gen_fraction=0.0, batch_size=16, relation_replay=1.0)
    b = make_batch(model, one_scene_pool, cfg, np.random.default_rng(1), relation_phase=phase == "relation phase")
    assert not b.is_gen.any()
    images = set()
    for i in range(16):
        on = (b.labels[i] != -100).nonzero()[:, 0].tolist()
        row = parse_prompt(tok.decode([int(x) for x in b.labels[i, on]][:-1]), SHAPES_LEXICON)
        assert row["tag"] == "position" and len(row["include"]) == 2
        codes = [int(x) - tok.image_token_offset for x in b.ids[i, 2:2 + spec.NUM_TOKENS]]
        assert codes != one_scene_pool.tokens[0].tolist()
        assert layout.image_ids(codes) == b.ids[i, 2:2 + spec.NUM_TOKENS].tolist()
        assert judge_image(decode(np.array([codes]))[0], row, "strict")[0].correct
        images.add(tuple(codes))
    assert len(images) > 12


def test_wrapped_objects_are_no_object_and_left_out_of_the_description():
    """wrap_prob puts a large object across the row edge (quarters consecutive in the sequence, apart on the image):
    the pixel detector finds no object there, only malformed blobs, and every description stays true on the pixels.
    With wrap_prob 0 the batches are what they were (the shipped bases' manifests replay)."""
    from gvu.models.builtin.pretrain_data import add_wrapped
    from gvu.world.detect import detect
    from gvu.world.scene import Obj, scene_tokens, wrapped_rows

    objs = [Obj("cross", "red", "small", 2, 2), Obj("heart", "blue", "large", 3, 2)]
    row = {"tag": "two_object", "include": [{"class": "cross", "count": 1}, {"class": "heart", "count": 1}],
           "prompt": "a photo of a cross and a heart"}
    pool = ScenePool(scene_tokens(objs)[None], [row], [objs])
    model = build_builtin("tiny")
    tok = model.tokenizer
    cfg = dataclasses.replace(TINY, gen_fraction=0.0, batch_size=24, debris_prob=0.0, wrap_prob=1.0)
    b = make_batch(model, pool, cfg, np.random.default_rng(0))
    last, rows_used = spec.GRID - 1, set()
    for i in range(24):
        codes = np.array([int(x) - tok.image_token_offset for x in b.ids[i, 2:2 + spec.NUM_TOKENS]])
        grid = codes.reshape(spec.GRID, spec.GRID)
        changed = np.argwhere(grid != pool.tokens[0].reshape(spec.GRID, spec.GRID))
        assert len(changed) == 4 and sorted(set(changed[:, 1].tolist())) == [0, last]
        r = int(changed[:, 0].min())
        rows_used.add(r)
        assert wrapped_rows(codes) == [r, r + 1] and wrapped_rows(pool.tokens[0]) == []
        assert [tuple(x) for x in changed.tolist()] == [(r, last), (r + 1, 0), (r + 1, last), (r + 2, 0)]
        pixels = decode(codes[None])[0]
        dets = detect(pixels)
        assert dets.malformed >= 1 and {k: len(v) for k, v in dets.objects.items()} == {"cross": 1, "heart": 1}
        on = (b.labels[i] != -100).nonzero()[:, 0].tolist()
        said = parse_prompt(tok.decode([int(x) for x in b.labels[i, on]][:-1]), SHAPES_LEXICON)
        assert judge_image(pixels, said, "strict")[0].correct
    assert len(rows_used) > 1  # placed where there is room, not always in one place
    # no room: unchanged; and off by default, with the random stream of the batches untouched
    full = np.full(spec.NUM_TOKENS, spec.code_of("cross", "red", "small"))
    assert add_wrapped(full, np.random.default_rng(0)) is full
    assert PretrainConfig().wrap_prob == 0.0
    off = dataclasses.replace(cfg, wrap_prob=0.0)
    a = make_batch(model, pool, off, np.random.default_rng(3))
    assert torch.equal(a.ids[:, 2:2 + spec.NUM_TOKENS] - tok.image_token_offset,
                       torch.as_tensor(pool.tokens).expand(len(a.ids), -1))
    with pytest.raises(ValueError, match="wrap_prob"):
        PretrainConfig(wrap_prob=1.5)
