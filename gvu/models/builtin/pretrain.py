"""Pretraining the built-in UMM from scratch on both directions of the shapes world.

Each example is either GENERATION (prompt -> image codes of a random scene that satisfies it; the loss is on
the image codes) or UNDERSTANDING (image codes + instruction -> a true description of the scene, full or
partial, drawn fresh each time, so the model learns P(any true description | image); the loss is on the
description and <eos>). A fraction `uncond_prob` of generation examples drop the prompt, which is what
classifier-free guidance needs later.

The two presets differ only in how much generation they are taught (`gen_fraction`), so generation lags
understanding widely (weak) or moderately (regular), as in the paper's Sec. 4.4.

Interruption-safe: a state file (weights, optimizer, step, RNG states) is written atomically every
`save_every` steps and on Ctrl-C; rerunning the same command resumes from it and ends with the same weights
as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from gvu.models.builtin.model import build_builtin, BuiltinUMM, load_builtin, save_builtin
from gvu.models.builtin.pretrain_data import (add_debris, add_wrapped, build_pool, ranked_negatives, relation_example,
                                             ScenePool)
from gvu.models.builtin.pretrain_state import lr_lambda as _lr_lambda, restore as _restore, save_state as _save_state
from gvu.models.forward import pad_batch
from gvu.models.protocol import DEFAULT_INSTRUCTION
from gvu.world.describe import describe
from gvu.world.kinds import check_weights, KINDS

STATE_FILE = "pretrain_state.pt"
LOG_FILE = "pretrain_log.jsonl"
FIRST_LOGGED = 10
"""The log holds every one of the first FIRST_LOGGED steps, then every 50th (a shipped base's manifest keeps the
first ones, which its command must reproduce)."""


@dataclass
class PretrainConfig:
    preset: str = "regular"
    """'regular' or 'weak': sets gen_fraction unless it is given."""
    size: str = "default"
    """Architecture preset of gvu.models.builtin.model.PRESETS ('tiny' for tests)."""
    seed: int = 0
    """Seeds the weights, the scenes and the batch order: the same seed gives the same model."""
    steps: int | None = None
    """Optimizer steps; None takes the preset's (PRESET_STEPS)."""
    batch_size: int = 64
    """Examples per step."""
    learning_rate: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    gen_fraction: float | None = None
    """Fraction of generation examples; None takes the preset's value."""
    uncond_prob: float = 0.1
    """Fraction of generation examples with the prompt dropped (for classifier-free guidance)."""
    prompt_noise: float = 0.0
    """Fraction of generation examples whose prompt is another scene's (a noisy caption, as web alt-text is): the
    painter learns the prompt's images mixed with any image, so it draws the prompt only part of the time; the
    judge's descriptions stay true. How the shipped bases' painter lags their judge (docs/bases.md)."""
    num_scenes: int = 30_000
    """Size of the scene pool (drawn once); descriptions are drawn fresh for every understanding example."""
    save_every: int = 500
    """Steps between resumable state files."""
    threads: int = 0
    """torch threads; 0 keeps torch's default."""
    kinds: tuple[str, ...] = field(default_factory=lambda: KINDS)
    """Prompt kinds of the scene pool (all thirteen by default)."""
    debris_prob: float = 0.3
    """Fraction of understanding examples whose image gets 1-3 isolated quarter codes ("debris": parts of large
    objects that form no object). The pixel judge sees nothing there and the description does not mention them,
    so the understanding branch learns what the judge knows: a broken object is no object. Without it, RL found
    that half-drawn objects fool the judge (measured; see docs/results.md)."""
    wrap_prob: float = 0.0
    """Fraction of understanding examples whose image also gets one large object wrapped across the row edge
    (pretrain_data.add_wrapped), left out of the description: the painter's own half-drawn shape, which isolated
    quarters do not teach (docs/bases.md, "Why some AUCs are low"). Drawn after the debris, only when above 0."""
    aligned_init: bool = True
    """Initialise word and image-code embeddings from shared shape/colour factors (see builtin.align_embeddings)."""
    grid: bool = True
    """Understanding reads images through a 2-D row+column embedding (gvu.models.builtin.grid); False: the flat raster,
    the ablation in which the judge reads images exactly as the painter writes them."""
    bidirectional: bool = False
    """With the grid: the tokens of an understanding image attend to each other both ways, as a vision encoder's
    patches do (the causal raster lets an object see only the objects before it)."""
    relative: bool | None = None
    """With the grid: the tokens of an understanding image attend to each other both ways with a learned bias per
    head by row and column offset (gvu.models.builtin.grid), whose first heads start looking left, right, up and down.
    None: on with the grid (the shipped bases' reader, with rope2d; docs/results.md has the probe)."""
    rope2d: bool | None = None
    """With the grid: rotary positions in two dimensions inside an understanding image (gvu.models.builtin.grid
    GridRotaryEmbedding), so the text after the image sees a column offset as it sees a row offset. None: on with
    the grid."""
    paint: bool = False
    """With the grid: the image a generation example writes gets the grid's row and column embedding (and, with
    rope2d, its 2-D rotary positions) as the images understanding reads do; attention stays causal. Off: the
    painter writes a flat 1-D raster, as in the earlier bases (the shipped regular and weak bases paint in 2-D)."""
    init: str | None = None
    """A saved built-in model folder to start from: its weights, with a fresh optimizer and schedule (continued
    pretraining; how the shipped regular and weak bases continue one parent, docs/bases.md). Its architecture must be
    the one this command builds (size, grid, relative, rope2d, bidirectional, paint)."""
    save_dtype: str = "float32"
    """How the finished model's weights are stored: 'float16' halves the file (it loads as float32)."""
    describe_weights: dict[str, float] | None = None
    """What the understanding branch is taught to say: relative weight of each description kind (see
    describe.describe); None takes the preset's mix (PRESET_DESCRIBE_WEIGHTS), {} all thirteen kinds equally."""
    negative_prob: float = 0.0
    """Fraction of understanding examples that also carry a hard negative (one fact of the description changed
    through the grammar, false on the image), with a ranking loss softplus(logp(negative) - logp(true)) over the
    description's summed log-probs. Off by default: at 0.5 (1,000 steps, regular mix) relation matching stayed at
    chance (0.48) while colour fell to 0.47 and GenEval-shapes to 0.26 (docs/results.md)."""
    negative_weight: float = 1.0
    """Weight of the ranking loss against the language-modelling loss."""
    binding_negative_prob: float = 0.0
    """Fraction of understanding examples whose description gives two objects different colours that also carry
    the binding negative (`swap_colours`: the two colours swapped, false on the image), with the same ranking
    loss: the one negative that no word-level cue rules out, so only binding each colour to its shape can."""
    relation_fraction: float | None = None
    """A curriculum: the first `relation_fraction` x `steps` steps are understanding only, on fresh two-object
    scenes of position prompts described by their prompt (_relation_example), where the 2-D reader learns the sign
    of left of / right of / above / below (docs/bases.md); then the whole mix. None takes the preset's value."""

    relation_replay: float | None = None
    """After the relation phase, the fraction of understanding examples that are still fresh two-object position
    scenes described by their prompt (the rest: descriptions of pool scenes, `describe_weights`). Without it the
    mix unlearned the sign the relation phase had taught (docs/bases.md). None takes the preset's value."""

    @property
    def relation_steps(self) -> int:
        return int(round(self.relation_fraction * self.steps))

    def __post_init__(self):
        if self.relative is None:
            self.relative = self.grid
        if self.rope2d is None:
            self.rope2d = self.grid
        if (self.relative or self.rope2d or self.bidirectional or self.paint) and not self.grid:
            raise ValueError("relative, rope2d, bidirectional and paint are parts of the 2-D reader: they need "
                             "grid=True (the flat ablation reads the raster as generation writes it)")
        if self.preset not in PRESET_GEN_FRACTION:
            raise ValueError(f"preset must be one of {sorted(PRESET_GEN_FRACTION)}, got {self.preset!r}")
        if self.gen_fraction is None:
            self.gen_fraction = PRESET_GEN_FRACTION[self.preset]
        if self.steps is None:
            self.steps = PRESET_STEPS[self.preset]
        if self.describe_weights is None:
            self.describe_weights = dict(PRESET_DESCRIBE_WEIGHTS)
        if self.describe_weights:
            check_weights(self.describe_weights, "describe_weights")
            if unknown := sorted(set(self.describe_weights) - set(KINDS)):
                raise ValueError(f"describe_weights: {unknown} are not description kinds; known: {', '.join(KINDS)}")
        if self.relation_fraction is None:
            self.relation_fraction = PRESET_RELATION_FRACTION[self.preset]
        if self.relation_replay is None:
            self.relation_replay = PRESET_RELATION_REPLAY[self.preset]
        if not 0.0 <= self.relation_replay <= 1.0:
            raise ValueError(f"relation_replay must be in [0, 1], got {self.relation_replay}")
        if not 0.0 <= self.relation_fraction <= 1.0:
            raise ValueError(f"relation_fraction must be in [0, 1], got {self.relation_fraction}")
        if not 0.0 <= self.negative_prob <= 1.0:
            raise ValueError(f"negative_prob must be in [0, 1], got {self.negative_prob}")
        if not 0.0 <= self.binding_negative_prob <= 1.0:
            raise ValueError(f"binding_negative_prob must be in [0, 1], got {self.binding_negative_prob}")
        if not (math.isfinite(self.negative_weight) and self.negative_weight >= 0):
            raise ValueError(f"negative_weight must be a finite number >= 0, got {self.negative_weight}")
        if not 0.0 <= self.debris_prob <= 1.0:
            raise ValueError(f"debris_prob must be in [0, 1], got {self.debris_prob}")
        if self.save_dtype not in ("float32", "float16"):
            raise ValueError(f"save_dtype must be 'float32' or 'float16', got {self.save_dtype!r}")
        if not 0.0 <= self.prompt_noise <= 1.0:
            raise ValueError(f"prompt_noise must be in [0, 1], got {self.prompt_noise}")
        if not 0.0 <= self.wrap_prob <= 1.0:
            raise ValueError(f"wrap_prob must be in [0, 1], got {self.wrap_prob}")
        if not 0.0 <= self.gen_fraction <= 1.0:
            raise ValueError(f"gen_fraction must be in [0, 1], got {self.gen_fraction}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        self.kinds = tuple(self.kinds)


# The shipped bases' recipe (docs/bases.md): the whole mix from the first step, half of its understanding examples
# fresh two-object position scenes (relation_replay), where the 2-D reader learns the sign of left/right/above/below;
# no relation-only phase (one left colour matching at chance). The presets differ only in how many generation
# examples the painter sees: regular 3,000 x 64 x 0.17 = 32,640 (about as many as the earlier 1,000-step regular base,
# GenEval-shapes 0.62), weak 0.10 (19,200, as many as the earlier weak base). The judge is taught the same.
PRESET_GEN_FRACTION = {"regular": 0.17, "weak": 0.10}
PRESET_RELATION_FRACTION = {"regular": 0.0, "weak": 0.0}
PRESET_STEPS = {"regular": 3000, "weak": 3000}
PRESET_RELATION_REPLAY = {"regular": 0.5, "weak": 0.5}
# Relations are learned late and need many examples (docs/results.md): the relation-bearing kinds get most of the
# descriptions; the rest keep colour, count and object words in view.
PRESET_DESCRIBE_WEIGHTS = {"position": 4, "spatial_count_attr": 2, "color_spatial_attr": 2, "size_spatial_attr": 2,
                           "single_object": 0.5, "two_object": 0.5, "counting": 1, "colors": 0.5, "color_attr": 1,
                           "color_attr_pp": 1, "counting_pp": 1, "color_count_attr": 1, "multi_object_count_attr": 1}


@dataclass
class Batch:
    """One pretraining step: ids/mask/labels [N, S] (labels -100 off the targets), which rows are generation
    examples, and the hard-negative rows with the true row each one is ranked against ([K] each)."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    is_gen: torch.Tensor
    neg_rows: torch.Tensor
    true_rows: torch.Tensor


def make_batch(model: BuiltinUMM, pool: ScenePool, cfg: PretrainConfig, rng: np.random.Generator,
               relation_phase: bool = False) -> Batch:
    """`cfg.batch_size` examples, plus one extra row per hard negative; in the relation phase, understanding
    examples of fresh two-object position scenes only (no debris)."""
    tok, layout = model.tokenizer, model.layout
    inst = tok.encode(DEFAULT_INSTRUCTION)
    seqs, spans, is_gen = [], [], []
    pairs: list[tuple[list[int], tuple[int, int], int]] = []
    for _ in range(cfg.batch_size):
        k = int(rng.integers(len(pool.rows)))
        row, codes, objs = None, pool.tokens[k], pool.objs[k]
        is_gen.append(not relation_phase and bool(rng.random() < cfg.gen_fraction))
        if relation_phase or (not is_gen[-1] and cfg.relation_replay and rng.random() < cfg.relation_replay):
            codes, objs, row = relation_example(rng)
        if is_gen[-1]:
            if cfg.prompt_noise and rng.random() < cfg.prompt_noise:
                k = int(rng.integers(len(pool.rows)))  # a noisy caption: another scene's prompt for this image
            prompt = [] if rng.random() < cfg.uncond_prob else tok.encode(pool.rows[k]["prompt"])
            seq = layout.generation_sequence(prompt, codes)
            start = len(layout.generation_prefix(prompt))
            seqs.append(seq)
            spans.append((start, start + len(codes)))
        else:
            relation = row is not None
            row = row or describe(objs, rng, weights=cfg.describe_weights) or pool.rows[k]
            if not relation and rng.random() < cfg.debris_prob:
                codes = add_debris(codes, rng, int(rng.integers(1, 4)))
            if not relation and cfg.wrap_prob and rng.random() < cfg.wrap_prob:
                codes = add_wrapped(codes, rng)
            seq, (a, b) = layout.understanding_sequence(codes, inst, tok.encode(row["prompt"]))
            seqs.append(seq)
            spans.append((a, b + len(layout.und_suffix)))  # the description and <eos>
            for neg in ranked_negatives(row, objs, rng, cfg.negative_prob, cfg.binding_negative_prob):
                nseq, (na, nb) = layout.understanding_sequence(codes, inst, tok.encode(neg["prompt"]))
                pairs.append((nseq, (na, nb + len(layout.und_suffix)), len(seqs) - 1))
    for nseq, span, _ in pairs:
        seqs.append(nseq)
        spans.append(span)
        is_gen.append(False)
    ids, mask = pad_batch(seqs, layout.pad_id, "right")
    labels = torch.full_like(ids, -100)
    for i, (a, b) in enumerate(spans):
        labels[i, a:b] = ids[i, a:b]
    n = cfg.batch_size
    return Batch(ids, mask, labels, torch.tensor(is_gen), torch.arange(n, n + len(pairs)),
                 torch.tensor([t for _, _, t in pairs], dtype=torch.long))


def lm_loss(lm: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
            is_gen: torch.Tensor | None = None, neg_rows: torch.Tensor | None = None,
            true_rows: torch.Tensor | None = None, negative_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over the target tokens of the true rows, plus `negative_weight` x the mean ranking loss
    softplus(logp(negative) - logp(true)) of the hard-negative pairs (summed description log-probs); the
    per-branch means (generation, understanding) and the pairs' accuracy for logs."""
    logits = lm(input_ids=ids, attention_mask=mask).logits[:, :-1]
    tgt = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tgt.reshape(-1),
                                           ignore_index=-100, reduction="none").view(tgt.shape)
    on = (tgt != -100).float()
    is_true = torch.ones(ids.shape[0], dtype=torch.bool)
    if neg_rows is not None and len(neg_rows):
        is_true[neg_rows] = False
    loss = (ce * on)[is_true].sum() / on[is_true].sum()
    stats = {}
    if neg_rows is not None and len(neg_rows):
        nll_N = (ce * on).sum(-1)  # -log p(description | image), summed over its tokens
        margin_K = nll_N[neg_rows] - nll_N[true_rows]  # log p(true) - log p(negative)
        rank = torch.nn.functional.softplus(-margin_K).mean()
        loss = loss + negative_weight * rank
        stats.update(loss_rank=float(rank.detach()), rank_acc=float((margin_K.detach() > 0).float().mean()))
    if is_gen is not None:
        for name, rows in (("loss_gen", is_gen & is_true), ("loss_und", ~is_gen & is_true)):
            w = on[rows]
            if w.sum() > 0:
                stats[name] = float((ce.detach()[rows] * w).sum() / w.sum())  # a log value: no grad
    return loss, stats


def _update(lm, b: Batch, cfg: PretrainConfig, opt, sched):
    """One optimizer step on a batch; (loss, its parts)."""
    loss, parts = lm_loss(lm, b.ids, b.mask, b.labels, b.is_gen, b.neg_rows, b.true_rows, cfg.negative_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss, parts


def _log_step(log, step: int, loss: float, parts: dict, lr: float, tokens_per_s: float) -> None:
    log.write(json.dumps({"step": step, "loss": loss, **parts, "lr": lr, "tokens_per_s": tokens_per_s}) + "\n")
    log.flush()


def _write_base(model: BuiltinUMM, cfg: PretrainConfig, out: Path, work: Path) -> BuiltinUMM:
    """The finished model into `out`, with its log; the work folder (state, log) goes."""
    model.lm.eval()
    save_builtin(model, out, extra={"pretrain": asdict(cfg)}, weights_dtype=cfg.save_dtype)
    os.replace(work / LOG_FILE, out / LOG_FILE)
    (work / STATE_FILE).unlink(missing_ok=True)
    work.rmdir()
    return model


def _initial_model(cfg: PretrainConfig) -> BuiltinUMM:
    """The model a run starts from: fresh weights, or those of `cfg.init` when they fit this architecture."""
    model = build_builtin(cfg.size, seed=cfg.seed, aligned=cfg.aligned_init, grid=cfg.grid,
                          bidirectional=cfg.bidirectional, relative=cfg.relative, rope2d=cfg.rope2d, paint=cfg.paint)
    if cfg.init is None:
        return model
    parent = load_builtin(cfg.init).lm
    shapes = {k: tuple(v.shape) for k, v in model.lm.state_dict().items()}
    differ = sorted(k for k in ("gvu_grid", "hidden_size", "num_hidden_layers", "vocab_size")
                    if getattr(parent.config, k, None) != getattr(model.lm.config, k, None))
    if differ or shapes != {k: tuple(v.shape) for k, v in parent.state_dict().items()}:
        raise ValueError(f"init={cfg.init}: that model's architecture differs from the one this command builds "
                         f"({', '.join(differ) or 'weight shapes'}); give the same size, --flat, relative, rope2d, "
                         "bidirectional and paint as the command that pretrained it (its gvu.json, 'pretrain')")
    model.lm.load_state_dict(parent.state_dict())
    return model


def pretrain(cfg: PretrainConfig, out: str | os.PathLike, progress: bool = True,
             stop_after: int | None = None) -> BuiltinUMM | None:
    """Pretrain (or resume) and write the model to `out`; returns the model. With `stop_after`, stop once that
    many steps are done (before cfg.steps): the resumable state is saved, nothing is written to `out`, and None
    is returned; the same call without it goes on from there, to the same weights as one uninterrupted run."""
    from tqdm import tqdm

    out = Path(out)
    # Work in progress (resumable state, log) lives in a hidden sibling folder until the model is written.
    work = out.parent / f".{out.name}.pretrain"
    work.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    state_path = work / STATE_FILE
    model = _initial_model(cfg)
    pool = build_pool(cfg.num_scenes, cfg.seed, cfg.kinds, progress)
    lm = model.lm
    opt = torch.optim.AdamW(lm.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    rng = np.random.default_rng([cfg.seed, 2])
    step = _restore(state_path, cfg, lm, opt, sched, rng)
    lm.train()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"pretrain {cfg.preset}", unit="step", disable=not progress)
    log = open(work / LOG_FILE, "a")
    tokens_seen, t0 = 0, time.perf_counter()
    began = (step, rng.bit_generator.state)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    try:
        while step < end:
            # A Ctrl-C before the step completes saves the generator as it was when the step began, so the
            # resumed run draws this step's batch again (saving its live state would skip the batch already
            # drawn and change the weights). Left out: a Ctrl-C between opt.step() and `step += 1` (weights
            # updated, step not counted), a window of a millisecond.
            began = (step, rng.bit_generator.state)
            b = make_batch(model, pool, cfg, rng, relation_phase=step < cfg.relation_steps)
            loss, parts = _update(lm, b, cfg, opt, sched)
            step += 1
            tokens_seen += int(b.mask.sum())
            tps = tokens_seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
            if step <= FIRST_LOGGED or step % 50 == 0 or step == cfg.steps:
                _log_step(log, step, loss.item(), parts, sched.get_last_lr()[0], tps)
            if step % cfg.save_every == 0 and step < cfg.steps:
                _save_state(state_path, model, opt, sched, step, rng, cfg)
    except KeyboardInterrupt:
        if step == began[0]:
            rng.bit_generator.state = began[1]
        _save_state(state_path, model, opt, sched, step, rng, cfg)
        bar.close()
        print(f"interrupted at step {step}; state saved to {state_path}: rerun the same command to resume")
        raise
    finally:
        log.close()
    bar.close()
    if step < cfg.steps:
        _save_state(state_path, model, opt, sched, step, rng, cfg)
        return None
    return _write_base(model, cfg, out, work)
