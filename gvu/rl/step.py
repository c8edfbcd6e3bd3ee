"""One GRPO step of the trainer, as three named parts (docs/design.md, "The method"):

- rollout: this process's prompts -> sampled codes and their log-probs, decoded images and the training reward (a
  Draw); with dynamic sampling, groups without a signal set aside and more prompts drawn; then, for the kept groups
  only, the logged reward, what the monitor watches, and the old / reference log-probs (a StepData);
- gather: every process's StepData, field by field, in rank order (skipped in one process);
- update: `num_iterations` passes over the rollout in minibatches, each an optimizer step, non-finite ones
  skipped and counted.

Each phase is timed by a PhaseClock (seconds and peak memory).

Letters: N rows (prompts x group size), T image codes, L prompt tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import numpy as np
import torch

from gvu.eval.evaluate import row_seeds
from gvu.models.forward import checkpointing
from gvu.models.sampling import prompt_generators
from gvu.reward import intrinsic_reward
from gvu.rl.grpo import group_advantages, grpo_loss, k3_kl
from gvu.rl.monitor import PhaseClock
from gvu.rl.setup import pad_cat


@dataclasses.dataclass
class StepData:
    """One rollout, on one process or gathered from all."""

    tokens_NT: torch.Tensor
    old_N: torch.Tensor
    """pi_old: the sampler's log-probs (or their replay)."""
    sampled_NT: torch.Tensor
    """The sampler's own log-probs (the entropy estimate)."""
    reward_N: torch.Tensor
    intrinsic_N: torch.Tensor
    watched: list
    """What the monitor keeps per image (the shapes judge's verdicts; nothing for natural images)."""
    prompts: list
    """Each row's prompt."""
    ref_NT: torch.Tensor | None = None
    und_ref: tuple[torch.Tensor, torch.Tensor] | None = None
    """The judge's reference prompt log-probs and mask (the understanding leash), right-padded."""
    und_policy: tuple[torch.Tensor, torch.Tensor] | None = None
    """The policy's prompt log-probs and mask from the reward's forward, graph kept (reuse_reward_pass); None:
    the update computes them."""


def gather_step(dist, d: StepData) -> StepData:
    """Every process's StepData in rank order: tensors concatenated (back on this process's device where the
    update reads them), lists joined, ragged (log-probs, mask) pairs right-padded."""
    parts = dist.gather(dataclasses.asdict(d))
    dev = d.tokens_NT.device
    out = {}
    for f in dataclasses.fields(StepData):
        vals = [p[f.name] for p in parts]
        if vals[0] is None:
            out[f.name] = None
        elif isinstance(vals[0], list):
            out[f.name] = [x for v in vals for x in v]
        elif isinstance(vals[0], tuple):
            out[f.name] = tuple(pad_cat([v[i] for v in vals]).to(dev) for i in range(len(vals[0])))
        else:
            out[f.name] = torch.cat(vals).to(dev)
    return StepData(**out)


@dataclasses.dataclass
class Draw:
    """This process's freshly sampled groups, before anything that only the kept groups need (the logged
    intrinsic reward under an oracle, the monitor, the reference pass): whole groups of G rows, in draw order."""

    rows: list
    """The prompt row of each group."""
    tokens_NT: torch.Tensor
    sampled_NT: torch.Tensor
    pixels: np.ndarray
    reward_N: torch.Tensor
    """The training reward (what dynamic sampling selects on)."""
    intrinsic_N: torch.Tensor | None
    """Already computed where it is the training reward; None under an oracle."""
    scored: tuple[torch.Tensor, torch.Tensor] | None = None
    """The reward's prompt log-probs and mask with their graph (reuse_reward_pass), for the first draw of a step
    only; selecting groups drops it (the update would backpropagate through rows it does not use)."""

    def groups(self, idx_P: torch.Tensor, G: int) -> "Draw":
        """The groups `idx_P`, in that order."""
        idx_N = (idx_P[:, None] * G + torch.arange(G)).reshape(-1)

        def take(x):
            if x is None:
                return None
            return x[idx_N.numpy()] if isinstance(x, np.ndarray) else x[idx_N.to(x.device)]
        return Draw([self.rows[int(p)] for p in idx_P], take(self.tokens_NT), take(self.sampled_NT),
                    take(self.pixels), take(self.reward_N), take(self.intrinsic_N))

    @staticmethod
    def cat(parts: list["Draw"]) -> "Draw":
        def join(xs):
            if xs[0] is None:
                return None
            return np.concatenate(xs) if isinstance(xs[0], np.ndarray) else torch.cat(xs)
        return Draw([r for p in parts for r in p.rows], *(join([getattr(p, f) for p in parts]) for f in
                                                          ("tokens_NT", "sampled_NT", "pixels", "reward_N",
                                                           "intrinsic_N")))


def informative_groups(reward_N: torch.Tensor, G: int) -> torch.Tensor:
    """Which groups' rewards are not all equal [P] (the others have zero advantage and teach nothing)."""
    return reward_N.float().view(-1, G).std(1) >= 1e-8


class GRPOStep:
    """The step, mixed into gvu.rl.trainer.Trainer (which holds the policy, the optimizer and the data order)."""

    MAX_NONFINITE_IN_A_ROW = 5

    def train_step(self) -> dict:
        cfg, G = self.cfg, self.cfg.num_generations
        clock, t_step = PhaseClock(self.policy.device), time.perf_counter()
        d, stats = self.draw_batch(clock)
        adv_N, adv_stats = group_advantages(d.reward_N, G, cfg.scale_rewards)
        stats.update(adv_stats)
        with clock("update"):
            means, region_max = self.update(d, d.prompts, adv_N, stats)
        self.step += 1
        return {"step": self.step, **stats, **means, "clip_ratio/region_max": region_max,
                "entropy": -d.sampled_NT.mean().item(),  # Monte Carlo estimate from the drawn codes
                "intrinsic_reward": d.intrinsic_N.mean().item(), **self.monitor.step_metrics(d.watched, d.intrinsic_N),
                "learning_rate": self.sched.get_last_lr()[0], **clock.values,
                **(self.curriculum.log() if self.curriculum is not None else {}),
                "step_time": time.perf_counter() - t_step}

    def draw_batch(self, clock: PhaseClock) -> tuple[StepData, dict]:
        """The step's rollout: this process's groups drawn (with dynamic sampling, refilled), then finished (logged
        reward, monitor, reference) and gathered from every rank in rank order."""
        draw, stats = self.draw_local(clock, opening=True), {}
        if self.cfg.dynamic_sampling:
            draw, stats = self.fill_with_signal(draw, clock)
        d, more = self.finish(draw, clock)
        stats.update(more)
        if self.dist.enabled:
            with clock("gather"):
                d = gather_step(self.dist, d)
        return d, stats

    def fill_with_signal(self, draw: Draw, clock: PhaseClock) -> tuple[Draw, dict]:
        """DAPO's dynamic sampling on this process's share: groups whose rewards are all equal are set aside and
        more prompts drawn until the share is full of groups that carry a signal, or `max_sampling_rounds` draws
        were made (then it is filled with set-aside groups, in draw order, so its size never changes). Every rank
        draws as many rounds as the neediest one, so their passes stay in step."""
        cfg, G = self.cfg, self.cfg.num_generations
        P = len(draw.rows)
        kept, spare = [], []
        drawn = informative = rounds = 0
        reward_sum = 0.0
        while True:
            ok_P = informative_groups(draw.reward_N, G)
            drawn, informative, rounds = drawn + len(ok_P), informative + int(ok_P.sum()), rounds + 1
            reward_sum += float(draw.reward_N.float().sum())
            kept.append(draw.groups(ok_P.nonzero()[:, 0], G))
            spare.append(draw.groups((~ok_P).nonzero()[:, 0], G))
            need = sum(len(k.rows) for k in kept) < P
            if self.dist.enabled:
                need = self.dist.any(need)
            if not need or rounds == cfg.max_sampling_rounds:
                break
            draw = self.draw_local(clock)
        # what was drawn, before the selection: comparable with a run without dynamic sampling
        stats = self.dist.mean_dict({"frac_reward_zero_std_drawn": 1.0 - informative / drawn,
                                     "reward_drawn": reward_sum / (drawn * G)})
        if rounds == 1 and informative == drawn:  # every group kept, in order: the draw itself (and its graph)
            return draw, {"sampling_rounds": rounds, **stats}
        return Draw.cat(kept + spare).groups(torch.arange(P), G), {"sampling_rounds": rounds, **stats}

    def draw_local(self, clock: PhaseClock, opening: bool = False) -> Draw:
        """The next prompts' share of this process, each with its whole group: sample, decode, training reward.
        Decoders that draw (diffusion) get seeds fixed by (seed, prompt position, row), so a resumed run decodes the
        same pixels. The `opening` draw of a step keeps the reward's graph where the update can reuse it."""
        cfg, G = self.cfg, self.cfg.num_generations
        rows = self.next_rows()
        first = self.data_pos - len(rows)
        mine = self.dist.shard(len(rows))
        local_rows = rows[mine]
        with clock("sample"):
            gens = prompt_generators(cfg.seed, range(first + mine.start, first + mine.stop))
            rollout = self.policy.sample([r["prompt"] for r in local_rows], G, self.sampling, gens)
        prompts, meta = rollout.row_prompts(), [local_rows[i] for i in rollout.prompt_index_N.tolist()]
        with clock("decode"):
            seeds = row_seeds(cfg.seed, (first + mine.start) * G, len(prompts))
            pixels = self.policy.decode(rollout.image_tokens_NT, prompts=prompts, seeds=seeds)
        scored = None
        with clock("reward"):
            if self.oracle is None and opening and self.reuses_reward_pass():
                reward_N, scored = self.intrinsic_scored(rollout.image_tokens_NT, prompts, meta)
                intrinsic_N = reward_N
            elif self.oracle is None:
                reward_N = intrinsic_N = self.intrinsic(rollout.image_tokens_NT, pixels, prompts, meta)
            else:
                reward_N, intrinsic_N = torch.tensor(self.oracle(prompts, pixels, rows=meta), dtype=torch.float32), None
        if self.curriculum is not None:  # every rank folds in every rank's groups: the next draws stay identical
            self.curriculum.fold(self.dist.sum_array(self.curriculum.group_sums(local_rows, reward_N, G)))
        return Draw(list(local_rows), rollout.image_tokens_NT, rollout.logp_NT, pixels, reward_N, intrinsic_N, scored)

    def finish(self, draw: Draw, clock: PhaseClock) -> tuple[StepData, dict]:
        """What only the kept groups need: the intrinsic reward for the log (under an oracle), the monitor, and the
        old / reference log-probs."""
        G = self.cfg.num_generations
        meta = [r for r in draw.rows for _ in range(G)]
        prompts = [r["prompt"] for r in meta]
        intrinsic_N, scored = draw.intrinsic_N, draw.scored
        if intrinsic_N is None:
            with clock("reward"):
                if self.reuses_reward_pass():  # under an oracle: the logged reward, of the kept groups only
                    intrinsic_N, scored = self.intrinsic_scored(draw.tokens_NT, prompts, meta)
                else:
                    intrinsic_N = self.intrinsic(draw.tokens_NT, draw.pixels, prompts, meta)
        with clock("monitor"):
            watched = self.watch(draw.pixels, meta)
        with clock("reference"):  # and the replay, if any
            old_N, ref_NT, und_ref, stats = self._reference_pass(draw.tokens_NT, draw.sampled_NT, prompts)
        return StepData(tokens_NT=draw.tokens_NT, old_N=old_N, sampled_NT=draw.sampled_NT, reward_N=draw.reward_N,
                        intrinsic_N=intrinsic_N, watched=watched, prompts=prompts, ref_NT=ref_NT,
                        und_ref=und_ref, und_policy=scored), stats

    def intrinsic(self, tokens_NT, pixels, row_prompts, row_meta) -> torch.Tensor:
        """The intrinsic reward (trained on, or logged beside an oracle). A model that reads pixels (or the 'pixels'
        reward path) gets the images decoded once for this step, not decoded again."""
        scorer_ctx = self.reference_model() if self.cfg.reward_scorer == "reference" else contextlib.nullcontext(self.policy)
        images = pixels if self.cfg.reward_image_path == "pixels" or self.policy.reads_pixels else tokens_NT
        with scorer_ctx as scorer:
            return intrinsic_reward(scorer, images, row_prompts, self.reward_cfg, rows=row_meta,
                                    rng=np.random.default_rng([self.cfg.seed, self.step])).reward_N

    def intrinsic_scored(self, tokens_NT, row_prompts, row_meta) -> tuple[torch.Tensor, tuple]:
        """The policy's intrinsic reward on image tokens with the graph of its prompt log-probs kept: (reward_N,
        (logp_NL, mask_NL)) for the update's understanding leash (reuse_reward_pass)."""
        out = intrinsic_reward(self.policy, tokens_NT, row_prompts, self.reward_cfg, rows=row_meta,
                               rng=np.random.default_rng([self.cfg.seed, self.step]), grad=True)
        return out.reward_N, (out.logp_NL, out.mask_NL)

    def reuses_reward_pass(self) -> bool:
        """Whether the update's leash can take the policy's prompt log-probs from the reward's forward: the same
        model (the policy, unchanged until the one optimizer step), the same sequences (image tokens, the same
        instruction), the same mode (no dropout), one process. Gradient checkpointing is left alone (holding the
        reward's activations through the reference pass would cost what it saves)."""
        cfg = self.cfg
        if not (cfg.reuse_reward_pass and cfg.beta_understanding > 0 and cfg.reward_scorer == "policy"
                and cfg.reward_image_path == "tokens" and cfg.num_iterations == 1
                and cfg.minibatch_rows == cfg.rows_per_step and not self.dist.enabled):
            return False
        m = self.policy.module
        return (not self.policy.reads_pixels
                and not checkpointing(m)
                and not any(isinstance(x, torch.nn.Dropout) and x.p > 0 for x in m.modules())
                and not any(float(getattr(getattr(x, "config", None), "attention_dropout", 0) or 0) > 0
                            for x in m.modules()))

    def watch(self, pixels, meta: list[dict]) -> list:
        """The monitor's per-image values; with monitor_images, the shapes judge sees that many of the kept images
        (per process), drawn by (seed, step, rank), and the others are None."""
        n, k = len(meta), -(-self.cfg.monitor_images // self.dist.world)
        if not k or k >= n or getattr(self.monitor, "name", None) != "shapes":
            return self.monitor.per_image(pixels, meta)
        pick = np.sort(np.random.default_rng([self.cfg.seed, self.step, self.dist.rank]).choice(n, k, replace=False))
        out: list = [None] * n
        for i, v in zip(pick.tolist(), self.monitor.per_image(pixels[pick], [meta[i] for i in pick])):
            out[i] = v
        return out

    def _reference_pass(self, tokens_NT, sampled_NT, prompts_N):
        """(old log-probs, reference log-probs or None, the judge's reference prompt log-probs or None, stats)."""
        cfg = self.cfg
        old_N, stats = sampled_NT, {}
        if cfg.old_logp_source == "replay":
            with torch.no_grad():
                replay = self.policy.image_logprobs(prompts_N, tokens_NT, self.sampling)
            stats["rollout_replay_max_abs_diff"] = self.dist.all_max((replay - old_N).abs().max().item())
            old_N = replay
        ref_NT = und_ref = None
        if cfg.beta > 0:
            with torch.no_grad(), self.reference_model() as ref:
                ref_NT = ref.image_logprobs(prompts_N, tokens_NT, self.sampling)
        if cfg.beta_understanding > 0:  # the judge's own leash: its prompt log-probs on these images
            with torch.no_grad(), self.reference_model() as ref:
                und_ref = ref.prompt_logprobs(tokens_NT, prompts_N, cfg.instruction)
        return old_N, ref_NT, und_ref, stats

    def update(self, d: "StepData", row_prompts: list[str], adv_N, stats: dict) -> tuple[dict, float]:
        """num_iterations passes over the rollout in minibatches, one optimizer step each; non-finite ones are
        skipped (see _skip_minibatch). Returns the minibatch means of the loss statistics and the largest
        clipped fraction."""
        cfg, g = self.cfg, self.dist
        tokens_NT, old_N, ref_NT, und_ref = d.tokens_NT, d.old_N, d.ref_NT, d.und_ref
        N, T = tokens_NT.shape
        M = cfg.minibatch_rows
        agg: dict[str, list[float]] = {}
        for _ in range(cfg.num_iterations):
            perm = torch.randperm(N, generator=self.update_gen)
            for s in range(0, N, M):
                batch = perm[s:s + M]
                und_count = None if und_ref is None else und_ref[1][batch].sum().clamp(min=1)
                idx = batch[g.shard(M)]  # this rank's equal shard of the minibatch
                args = (idx, tokens_NT, [row_prompts[i] for i in idx.tolist()], old_N, adv_N, ref_NT, und_ref,
                        und_count, N * T // g.world, d.und_policy)
                loss, st = self._ddp(*args) if self._ddp is not None else self.minibatch_loss(*args)
                self.opt.zero_grad(set_to_none=True)
                if not self._finite(loss.detach()):  # agreed across ranks, so no rank skips a collective alone
                    self._skip_minibatch(stats)
                    continue
                loss.backward()
                gn = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm if cfg.max_grad_norm > 0
                                                    else float("inf"))
                gn = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
                if not math.isfinite(gn):  # a finite loss can still have a non-finite gradient
                    self.opt.zero_grad(set_to_none=True)
                    self._skip_minibatch(stats)
                    continue
                self._nonfinite_in_a_row = 0
                st["grad_norm"] = gn
                self.opt.step()
                self.sched.step()
                for k, v in st.items():
                    agg.setdefault(k, []).append(v)
        stats.setdefault("skipped_minibatches", 0)
        means = g.mean_dict({k: float(np.mean(v)) for k, v in agg.items()})
        return means, (g.all_max(max(agg["clip_ratio/region_mean"])) if agg else 0.0)

    def _finite(self, loss: torch.Tensor) -> bool:
        bad = 0.0 if bool(torch.isfinite(loss)) else 1.0
        return (self.dist.all_max(bad) if self.dist.enabled else bad) == 0.0

    def _skip_minibatch(self, stats: dict) -> None:
        """A non-finite loss or gradient never reaches the weights: the minibatch is skipped and counted; several
        in a row stop the run (the weights are as they were before the first of them)."""
        stats["skipped_minibatches"] = stats.get("skipped_minibatches", 0) + 1
        self._nonfinite_in_a_row += 1
        if self._nonfinite_in_a_row >= self.MAX_NONFINITE_IN_A_ROW:
            raise RuntimeError(
                f"{self._nonfinite_in_a_row} minibatches in a row had a non-finite loss or gradient (step "
                f"{self.step + 1}); the weights were not updated by any of them. Lower learning_rate, use float32 "
                "(dtype) or drop the sampling filters (top_k/top_p/min_p), then resume from the last checkpoint "
                f"in {self.cfg.output_dir}")

    def minibatch_loss(self, idx, tokens_NT, prompts, old_N, adv_N, ref_NT, und_ref, und_count,
                       tokens_in_batch, und_policy=None) -> tuple[torch.Tensor, dict]:
        """The loss of one rank's shard `idx` of a minibatch, normalised so that the average over ranks (what
        DDP and FSDP2 do to gradients) is the whole minibatch's loss: shards are equal, so per-sequence and
        per-token means carry over; 'dapo' counts a shard as 1/world of the rollout's tokens; the understanding
        leash divides by the whole minibatch's prompt-token count (`und_count`) times world. `und_policy`: the
        policy's prompt log-probs of every row from the reward's forward (reuse_reward_pass), taken instead of a
        forward of the shard's understanding sequences."""
        cfg = self.cfg
        logp = self.policy.image_logprobs(prompts, tokens_NT[idx], self.sampling)
        loss, st = grpo_loss(logp, old_N[idx], adv_N[idx], None if ref_NT is None else ref_NT[idx],
                             beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                             loss_type=cfg.loss_type, tokens_in_batch=tokens_in_batch)
        if und_ref is not None:
            if und_policy is not None:
                und_logp, und_mask = und_policy[0][idx], und_policy[1][idx]
            else:
                und_logp, und_mask = self.policy.prompt_logprobs(tokens_NT[idx], prompts, cfg.instruction)
            ref_lp = und_ref[0][idx][:, :und_logp.shape[1]]  # right-padded: the shard may be narrower
            kl_und = (k3_kl(und_logp, ref_lp) * und_mask).sum() / und_count * self.dist.world
            loss = loss + cfg.beta_understanding * kl_und
            st["kl_understanding"] = kl_und.item()
        return loss, st


class MinibatchLoss(torch.nn.Module):
    """What DDP wraps: the policy's weights, and a forward that is one rank's minibatch loss (every pass of it,
    the understanding leash included, in one forward, so DDP sees one forward per backward)."""

    def __init__(self, trainer):
        super().__init__()
        self.lm = trainer.policy.module
        self._loss = trainer.minibatch_loss

    def forward(self, *args):
        return self._loss(*args)
