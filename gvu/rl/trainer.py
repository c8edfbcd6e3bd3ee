"""The GvU loop: prompts -> the policy's own images -> its own reward -> GRPO update.

One step: sample `num_generations` images for each of `prompts_per_step` prompts (recording the sampler's
log-probs), decode, score (the intrinsic reward, or an oracle), turn rewards into group-relative
advantages, then `num_iterations` passes over the rollout in minibatches of `minibatch_size` images, each an
optimizer step. Because the old log-probs are fixed at sampling time, the ratio moves after the first
minibatch step and clipping really acts when num_iterations > 1 (in the published code, one update per
rollout, the ratio is always 1).

Every step also hands its images to a monitor (gvu.rl.monitor): on the shapes world the exact evaluator judges
them and the ROC AUC of the intrinsic reward against correctness is logged (a falling AUC while the reward rises
is the reward-hacking alarm); on natural images reward statistics, and fixed-prompt images every eval_steps.

Under `torchrun` / `accelerate launch` the same loop runs on every process (gvu.rl.distributed): each rank
samples and scores its share of the prompts, the rollout is gathered, and each minibatch is split across ranks,
so the parameters follow the one-process run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import re
import signal
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import torch

from gvu.models.protocol import SamplingConfig
from gvu.models.sampling import prompt_generators
from gvu.reward import RewardConfig, intrinsic_reward, oracle_reward_function
from gvu.rl import checkpoint as ckpt
from gvu.rl import distributed as D
from gvu.rl import runfolder
from gvu.rl.config import TrainConfig, dump_config
from gvu.rl.grpo import group_advantages, grpo_loss, k3_kl
from gvu.rl.monitor import PhaseClock, pick_monitor


def load_prompt_rows(cfg: TrainConfig, tokenizer) -> list[dict]:
    """The training prompts, each checked against the model's vocabulary before any compute."""
    if cfg.prompts == "train":
        from gvu.bench.prompts import build_train

        rows, where = build_train("shapes", seed=cfg.seed, n=cfg.num_prompts,
                                  weights=cfg.prompt_weights or None), "built-in training set"
    else:
        from gvu.bench.metadata import read_metadata

        rows, where = read_metadata(cfg.prompts), cfg.prompts
    if not rows:  # e.g. num_prompts=0: the data order below would divide by zero at the first step
        raise ValueError(f"{where}: no training prompts")
    # read_metadata skips blank lines, so row k is not file line k: name the file's own line numbers
    lines: range | list[int] = range(1, len(rows) + 1)
    if cfg.prompts != "train":
        with open(cfg.prompts, encoding="utf-8") as fp:  # split exactly as read_metadata does
            lines = [i for i, text in enumerate(fp, start=1) if text.strip()]
    for line, row in zip(lines, rows):
        try:
            tokenizer.encode(row["prompt"])
        except ValueError as err:
            raise ValueError(f"{where}:{line}: {err}; the model can only read prompts in its vocabulary") from None
    try:  # the instruction is read at every reward: check it before any compute too
        tokenizer.encode(cfg.instruction)
    except ValueError as err:
        raise ValueError(f"instruction: {err}") from None
    return rows


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, overwrite: bool = False):
        from gvu.models.load import load_model

        self.cfg = cfg
        self.out = runfolder.check_path(cfg.output_dir)
        self.overwrite = overwrite  # a fresh run may replace another run's files in output_dir (gvu.rl.runfolder)
        runfolder.check_run(self.out, resumed=resume is not None, overwrite=overwrite)  # before any compute
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        W = D.launched_world_size()
        if cfg.prompts_per_step % W or cfg.minibatch_size % W:
            raise ValueError(f"{W} processes: prompts_per_step ({cfg.prompts_per_step}) and minibatch_size "
                             f"({cfg.minibatch_size}) must both be multiples of {W}, so every process gets whole "
                             "groups and equal shards; change them or the number of processes")
        self.dist = D.init_distributed(cfg.strategy)
        torch.manual_seed(cfg.seed)  # the same on every rank: adapters start identical everywhere
        self.policy = load_model(cfg.model, device=D.device_for(self.dist))
        self.rows = load_prompt_rows(cfg, self.policy.tokenizer)
        if cfg.prompts != "train":  # tags, classes, colours, counts, prompt against include: gvu.bench.check
            from gvu.bench.check import check_rows, file_lines

            check_rows(self.rows, cfg.prompts, file_lines(cfg.prompts),
                       world=getattr(self.policy, "world", None) == "shapes")
        self.sampling = SamplingConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                       min_p=cfg.min_p, guidance=cfg.guidance_scale)
        self.reward_cfg = RewardConfig(instruction=cfg.instruction, variant=cfg.reward_variant,
                                       scorer=cfg.reward_scorer, image_path=cfg.reward_image_path)
        self.reference = None
        if cfg.use_lora:
            from peft import LoraConfig, get_peft_model

            self.policy.lm = get_peft_model(self.policy.lm, LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=lora_targets(self.policy, cfg.lora_target_modules), bias="none"))
        elif cfg.needs_reference():
            self.reference = copy.deepcopy(self.policy)
            for p in self.reference.lm.parameters():
                p.requires_grad_(False)
        if self.dist.fsdp:
            if not getattr(self.policy, "supports_fsdp2", False):
                raise ValueError(f"strategy fsdp2 needs a model whose passes all go through its root module "
                                 f"(the built-in and causal-lm adapters); {type(self.policy).__name__} calls "
                                 "submodules directly: use strategy: ddp")
            D.shard_fsdp2(self.policy.lm)
            if self.reference is not None:
                D.shard_fsdp2(self.reference.lm)
        self.params = [p for p in self.policy.lm.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_lambda())
        self.update_gen = torch.Generator().manual_seed(cfg.seed + 1)  # the same on every rank
        self._ddp = None
        if self.dist.enabled and cfg.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            dev = self.policy.device
            self._ddp = DistributedDataParallel(_MinibatchLoss(self), device_ids=None if dev.type == "cpu" else [dev])
        self.step = 0
        self._nonfinite_in_a_row = 0
        self.data_pos = 0
        self.oracle = oracle_reward_function(cfg.reward.removeprefix("oracle_")) if cfg.reward != "intrinsic" else None
        self.monitor = pick_monitor(cfg.monitor, self.policy)
        self._eval_sets: dict = {}
        self._resumed = False
        if resume is not None:
            self._resume(resume)

    # ------------------------------------------------------------------------------------------ plumbing

    def _lr_lambda(self):
        cfg = self.cfg
        total = cfg.max_steps * cfg.num_iterations * (cfg.rows_per_step // cfg.minibatch_size)

        def f(k: int) -> float:
            if k < cfg.warmup_steps:
                return (k + 1) / cfg.warmup_steps
            t = min(1.0, (k - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
            return {"constant": 1.0, "linear": 1.0 - t, "cosine": 0.5 * (1 + math.cos(math.pi * t))}[
                cfg.lr_scheduler_type]
        return f

    @contextlib.contextmanager
    def reference_model(self):
        """The frozen reference: a copy, or the policy with its LoRA adapter disabled."""
        if self.cfg.use_lora:
            with self.policy.lm.disable_adapter():
                yield self.policy
        else:
            if self.reference is None:
                raise RuntimeError("no reference model loaded (beta = 0 and the policy scores the reward)")
            yield self.reference

    def next_rows(self) -> list[dict]:
        """The next prompts (all ranks') in a per-epoch shuffled order; the data position is all the state."""
        out = []
        n = len(self.rows)
        for _ in range(self.cfg.prompts_per_step):
            epoch, i = divmod(self.data_pos, n)
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
            out.append(self.rows[order[i]])
            self.data_pos += 1
        return out

    def _rng_state(self) -> dict:
        return {"update": self.update_gen.get_state(), "torch": torch.get_rng_state()}

    def save(self) -> Path:
        """A checkpoint with full (unsharded) states, written by rank 0 (a collective: every rank calls it)."""
        weights = D.full_model_state(self.policy.lm, trainable_only=True)
        optim = {"optimizer": D.full_optimizer_state(self.policy.lm, self.opt), "scheduler": self.sched.state_dict()}
        target = self.out / f"checkpoint-{self.step}"
        if self.dist.is_main:
            target = ckpt.save_checkpoint(self.out, self.step, weights, optim, self._rng_state(),
                                          {"data_pos": self.data_pos, "world_size": self.dist.world,
                                           "config": dataclasses.asdict(self.cfg)}, keep=self.cfg.save_total_limit)
        self.dist.barrier()
        return target

    def _resume(self, path):
        c = ckpt.resolve_checkpoint(path)
        weights, optim, rng, state = ckpt.load_checkpoint(c)
        names = {n for n, p in self.policy.lm.named_parameters() if p.requires_grad}
        missing = names ^ set(weights)
        if missing:
            raise ValueError(f"{c} does not match this model/config (parameters differ: {sorted(missing)[:3]}...)")
        D.load_model_state(self.policy.lm, weights)
        D.load_optimizer_state(self.policy.lm, self.opt, optim["optimizer"])
        self.sched.load_state_dict(optim["scheduler"])
        self.update_gen.set_state(rng["update"])
        torch.set_rng_state(rng["torch"])
        self.step, self.data_pos = state["step"], state["data_pos"]
        self._resumed = True

    # ------------------------------------------------------------------------------------------ one step

    def score(self, tokens_NT, pixels, row_prompts, row_meta) -> tuple[torch.Tensor, torch.Tensor]:
        """(reward used for training, intrinsic reward for logging). A model that reads pixels (or the 'pixels'
        reward path) gets the images decoded once for this step, not decoded again."""
        scorer_ctx = self.reference_model() if self.cfg.reward_scorer == "reference" else contextlib.nullcontext(self.policy)
        images = pixels if (self.cfg.reward_image_path == "pixels" or getattr(self.policy, "reads_pixels", False)) \
            else tokens_NT
        with scorer_ctx as scorer:
            intrinsic = intrinsic_reward(scorer, images, row_prompts, self.reward_cfg, rows=row_meta,
                                         rng=np.random.default_rng([self.cfg.seed, self.step])).reward_N
        if self.oracle is None:
            return intrinsic, intrinsic
        return torch.tensor(self.oracle(row_prompts, pixels, rows=row_meta), dtype=torch.float32), intrinsic

    def train_step(self) -> dict:
        cfg, G, g = self.cfg, self.cfg.num_generations, self.dist
        clock = PhaseClock(self.policy.device)
        t_step = time.perf_counter()
        first = self.data_pos
        rows = self.next_rows()
        mine = g.shard(len(rows))  # this rank's prompts, each with its whole group
        local_rows = rows[mine]
        with clock("sample"):
            gens = prompt_generators(cfg.seed, range(first + mine.start, first + mine.stop))
            rollout = self.policy.sample([r["prompt"] for r in local_rows], G, self.sampling, gens)
        tokens_NT = rollout.image_tokens_NT
        local_prompts = rollout.row_prompts()
        local_meta = [local_rows[i] for i in rollout.prompt_index_N.tolist()]
        with clock("decode"):  # decoders that draw (diffusion) get fixed seeds: a resumed run decodes the same
            seeds = [cfg.seed * 1_000_003 + (first + mine.start) * G + k for k in range(len(local_prompts))]
            pixels = self.policy.decode(tokens_NT, prompts=local_prompts, seeds=seeds)
        with clock("reward"):
            reward_N, intrinsic_N = self.score(tokens_NT, pixels, local_prompts, local_meta)
        with clock("monitor"):
            watched = self.monitor.per_image(pixels, local_meta)
        times = clock.values

        with clock("reference"):  # and the replay, if any
            old_N, ref_NT, und_ref, stats = self._reference_pass(rollout, local_prompts)
        sampled_NT = rollout.logp_NT
        if g.enabled:  # the whole rollout on every rank, in rank order (= the order of `rows`)
            with clock("gather"):
                parts = g.gather({"tokens": tokens_NT, "old": old_N, "sampled": sampled_NT, "reward": reward_N,
                                  "intrinsic": intrinsic_N, "watched": watched, "ref": ref_NT, "und": und_ref})
                dev = tokens_NT.device
                tokens_NT = torch.cat([p["tokens"] for p in parts]).to(dev)
                old_N = torch.cat([p["old"] for p in parts]).to(dev)
                sampled_NT = torch.cat([p["sampled"] for p in parts])
                reward_N = torch.cat([p["reward"] for p in parts])
                intrinsic_N = torch.cat([p["intrinsic"] for p in parts])
                watched = [c for p in parts for c in p["watched"]]
                ref_NT = None if ref_NT is None else torch.cat([p["ref"] for p in parts]).to(dev)
                if und_ref is not None:
                    und_ref = tuple(_pad_cat([p["und"][i] for p in parts]).to(dev) for i in range(2))
        row_prompts = [r["prompt"] for r in rows for _ in range(G)]
        adv_N, adv_stats = group_advantages(reward_N, G, cfg.scale_rewards)
        stats.update(adv_stats)
        with clock("update"):
            means, region_max = self._update(tokens_NT, row_prompts, old_N, adv_N, ref_NT, und_ref, stats)
        self.step += 1
        return {"step": self.step, **stats, **means, "clip_ratio/region_max": region_max,
                "entropy": -sampled_NT.mean().item(),  # Monte Carlo estimate from the drawn codes
                "intrinsic_reward": intrinsic_N.mean().item(), **self.monitor.step_metrics(watched, intrinsic_N),
                "learning_rate": self.sched.get_last_lr()[0], **times, "step_time": time.perf_counter() - t_step}

    def _reference_pass(self, rollout, prompts_N):
        """(old log-probs, reference log-probs or None, the judge's reference prompt log-probs or None, stats)."""
        cfg, tokens_NT = self.cfg, rollout.image_tokens_NT
        old_N, stats = rollout.logp_NT, {}
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

    def _update(self, tokens_NT, row_prompts, old_N, adv_N, ref_NT, und_ref, stats) -> tuple[dict, float]:
        """num_iterations passes over the rollout in minibatches, one optimizer step each; non-finite ones are
        skipped (see _skip_minibatch). Returns the minibatch means of the loss statistics and the largest
        clipped fraction."""
        cfg, g = self.cfg, self.dist
        N, T = tokens_NT.shape
        M = cfg.minibatch_size
        agg: dict[str, list[float]] = {}
        for _ in range(cfg.num_iterations):
            perm = torch.randperm(N, generator=self.update_gen)
            for s in range(0, N, M):
                batch = perm[s:s + M]
                und_count = None if und_ref is None else und_ref[1][batch].sum().clamp(min=1)
                idx = batch[g.shard(M)]  # this rank's equal shard of the minibatch
                args = (idx, tokens_NT, [row_prompts[i] for i in idx.tolist()], old_N, adv_N, ref_NT, und_ref,
                        und_count, N * T // g.world)
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

    MAX_NONFINITE_IN_A_ROW = 5

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
                       tokens_in_batch) -> tuple[torch.Tensor, dict]:
        """The loss of one rank's shard `idx` of a minibatch, normalised so that the average over ranks (what
        DDP and FSDP2 do to gradients) is the whole minibatch's loss: shards are equal, so per-sequence and
        per-token means carry over; 'dapo' counts a shard as 1/world of the rollout's tokens; the understanding
        leash divides by the whole minibatch's prompt-token count (`und_count`) times world."""
        cfg = self.cfg
        logp = self.policy.image_logprobs(prompts, tokens_NT[idx], self.sampling)
        loss, st = grpo_loss(logp, old_N[idx], adv_N[idx], None if ref_NT is None else ref_NT[idx],
                             beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                             loss_type=cfg.loss_type, tokens_in_batch=tokens_in_batch)
        if und_ref is not None:
            und_logp, und_mask = self.policy.prompt_logprobs(tokens_NT[idx], prompts, cfg.instruction)
            ref_lp = und_ref[0][idx][:, :und_logp.shape[1]]  # right-padded: the shard may be narrower
            kl_und = (k3_kl(und_logp, ref_lp) * und_mask).sum() / und_count * self.dist.world
            loss = loss + cfg.beta_understanding * kl_und
            st["kl_understanding"] = kl_und.item()
        return loss, st

    # ------------------------------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict:
        """The eval_* metrics on fixed prompts and seeds. Under DDP rank 0 evaluates while the others wait; under
        FSDP2 every rank runs the same evaluation (the sharded passes are collectives), rank 0 writes."""
        if self.dist.enabled and not (self.dist.fsdp or self.dist.is_main):
            self.dist.barrier()
            return {}
        out = self._evaluate()
        if self.dist.enabled and not self.dist.fsdp:
            self.dist.barrier()
        return out

    def _evaluate(self) -> dict:
        return self.monitor.evaluate(self)

    # ------------------------------------------------------------------------------------------ the loop

    def train(self, progress: bool = True) -> Path:
        from tqdm import tqdm

        cfg, main = self.cfg, self.dist.is_main
        lock = None
        if main:  # one writer: logs, reports and checkpoints come from rank 0
            lock = runfolder.take(self.out, resumed=self._resumed, overwrite=self.overwrite)
            (self.out / "config.yaml").write_text(dump_config(cfg))
            if self._resumed:
                _drop_log_after(self.out / "log.jsonl", self.step)
        self.dist.barrier()
        log = open(self.out / "log.jsonl", "a") if main else None
        tb = _tensorboard(self.out) if main else None

        def write(m: dict):
            if log is None:
                return
            log.write(json.dumps(m) + "\n")
            log.flush()
            if tb is not None:
                for k, v in m.items():
                    if isinstance(v, (int, float)) and k != "step":
                        tb.add_scalar(k, v, m["step"])

        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="gvu train", unit="step",
                   disable=not (progress and main))
        # A KeyboardInterrupt inside train_step leaves a half-done step (data position and generators advanced,
        # some minibatches applied, self.step not yet counted): a checkpoint of that would not resume exactly.
        # So the first Ctrl-C only asks the loop to stop after the current step; only a consistent state is saved.
        consistent = True
        try:
            with _stop_after_step() as stop:
                if cfg.eval_steps and self.step == 0:
                    write({"step": 0, **self.evaluate()})
                while self.step < cfg.max_steps:
                    if self.dist.any(stop.requested):  # every rank stops after the same step
                        raise KeyboardInterrupt
                    consistent = False
                    m = self.train_step()
                    if cfg.eval_steps and (self.step % cfg.eval_steps == 0 or self.step == cfg.max_steps):
                        m.update(self.evaluate())
                    if self.step % cfg.logging_steps == 0 or any(k.startswith("eval_") for k in m):
                        write(m)
                    consistent = True
                    bar.set_postfix(reward=f"{m['reward']:.3f}", **({"acc": f"{m['accuracy']:.2f}"} if "accuracy" in m
                                                                      else {}))
                    bar.update(1)
                    if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < cfg.max_steps:
                        self.save()
        except KeyboardInterrupt:
            if consistent:
                path = self.save()
                if main:
                        print(f"\ninterrupted at step {self.step}; checkpoint saved to {path}; resume with "
                          f"`gvu train --resume {self.out}`", file=sys.stderr)
            else:
                last = ckpt.list_checkpoints(self.out)
                print("\ninterrupted in the middle of a step; no checkpoint written (the state is half-updated); "
                      + (f"the latest is {last[-1]}" if last else "there is no checkpoint yet"), file=sys.stderr)
            raise
        finally:
            bar.close()
            if log is not None:
                log.close()
            if tb is not None:
                tb.close()
            if sys.exc_info()[0] is not None:  # leaving with an error: free the folder (else after final/)
                runfolder.release(lock)
        try:
            self.save()
            return self.save_final()
        finally:
            runfolder.release(lock)

    def save_final(self) -> Path:
        """`final/` in the format the model was loaded from, written by rank 0 (every rank calls this)."""
        final_dir = self.out / "final"
        policy = self.policy
        if self.dist.fsdp:  # gather the shards into an ordinary (unsharded) copy on rank 0
            full = D.full_model_state(self.policy.lm, trainable_only=False)
            if self.dist.is_main:
                from gvu.models.load import load_model

                policy = load_model(self.cfg.model, device=D.device_for(self.dist))
                if self.cfg.use_lora:
                    from peft import get_peft_model

                    policy.lm = get_peft_model(policy.lm, self.policy.lm.peft_config["default"])
                policy.lm.load_state_dict(full)
        if self.dist.is_main:
            final_dir = self._write_final(policy)
        self.dist.barrier()
        return final_dir

    def _write_final(self, policy) -> Path:
        # the built-in model writes full weights (adapters merged); transformers adapters the LoRA adapter (or the
        # full weights) with a gvu.json naming the base model, which load_model reads back
        return policy.save_pretrained(self.out / "final", extra={"trained_from": self.cfg.model,
                                                                 "train": dataclasses.asdict(self.cfg)})


def lora_targets(policy, names) -> str:
    """A PEFT target pattern: the named linear layers inside the model's language model only (`lora_scope`, a
    module path), so a vision encoder or VQ model whose layers share the names (SigLIP's q_proj) gets no adapter
    that would never train."""
    alt = "|".join(re.escape(n) for n in names)
    scope = getattr(policy, "lora_scope", "")
    return rf"{re.escape(scope)}\..*\.(?:{alt})" if scope else rf"(?:.*\.)?(?:{alt})"


class _MinibatchLoss(torch.nn.Module):
    """What DDP wraps: the policy's weights, and a forward that is one rank's minibatch loss (every pass of it,
    the understanding leash included, in one forward, so DDP sees one forward per backward)."""

    def __init__(self, trainer: "Trainer"):
        super().__init__()
        self.lm = trainer.policy.lm
        self._loss = trainer.minibatch_loss

    def forward(self, *args):
        return self._loss(*args)


def _pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate [n_i, L_i] tensors along dim 0, right-padding each with zeros to the largest L."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


@contextlib.contextmanager
def _stop_after_step():
    """While active, the first Ctrl-C (SIGINT) only sets `.requested`; a second one interrupts at once. Signals
    reach only the main thread, so elsewhere this does nothing."""
    stop = types.SimpleNamespace(requested=False)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to stop now, unsaved)",
              file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _drop_log_after(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint's step (written after it by a run that then died), so the
    resumed run does not log those steps twice; a torn last line goes too. At step 0 the only line is the initial
    evaluation, which the resumed run writes again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            logged = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if logged < step or logged == step > 0:
            kept.append(line if line.endswith("\n") else line + "\n")
    path.write_text("".join(kept))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional; the JSONL log is always written
        return None
    return SummaryWriter(str(out / "tensorboard"))
