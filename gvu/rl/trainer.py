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
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gvu.eval.check import check_rows, file_lines
from gvu.models.load import load_model
from gvu.models.protocol import SamplingConfig
from gvu.reward import oracle_reward_function
from gvu.rl import checkpoint as ckpt, distributed as D, runfolder
from gvu.rl.config import dump_config, TrainConfig
from gvu.rl.curriculum import KindCurriculum
from gvu.rl.monitor import pick_monitor
from gvu.rl.setup import RunLog, attach_training, drop_log_after, load_prompt_rows, stop_after_step
from gvu.rl.step import GRPOStep, MinibatchLoss
from gvu.world.kinds import tag_weights


class Trainer(GRPOStep):
    """The GvU loop: prompts in a fixed seeded order, one GRPO step at a time (gvu.rl.step), evaluation and
    checkpoints; Ctrl-C stops after a whole step and saves."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, overwrite: bool = False):
        self.cfg = cfg
        self.out = runfolder.check_path(cfg.output_dir)
        self.overwrite = overwrite  # a fresh run may replace another run's files in output_dir (gvu.rl.runfolder)
        runfolder.check_run(self.out, resumed=resume is not None, overwrite=overwrite)  # before any compute
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        W = D.launched_world_size()
        if cfg.prompts_per_step % W or cfg.minibatch_rows % W:
            raise ValueError(f"{W} processes: prompts_per_step ({cfg.prompts_per_step}) and minibatch_size "
                             f"({cfg.minibatch_rows} rows) must both be multiples of {W}, so every process gets whole "
                             "groups and equal shards; change them or the number of processes")
        self.dist = D.init_distributed(cfg.strategy)
        torch.manual_seed(cfg.seed)  # the same on every rank: adapters start identical everywhere
        self.policy = load_model(cfg.model, device=D.device_for(self.dist))
        self.rows = load_prompt_rows(cfg, self.policy.tokenizer)
        self.curriculum = KindCurriculum(self.rows, cfg.seed, cfg.curriculum_floor, cfg.curriculum_decay,
                                         prior=tag_weights(cfg.mix) if cfg.mix else None) \
            if cfg.curriculum else None
        if cfg.prompts != "train":  # tags, classes, colours, counts, prompt against include: gvu.eval.check

            check_rows(self.rows, cfg.prompts, file_lines(cfg.prompts),
                       world=self.policy.world == "shapes")
        self.sampling = SamplingConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                       min_p=cfg.min_p, guidance=cfg.guidance_scale)
        self.reward_cfg = cfg.reward_config
        self.reference = attach_training(self.policy, cfg, self.dist)
        self.params = [p for p in self.policy.module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                     betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_lambda())
        self.update_gen = torch.Generator().manual_seed(cfg.seed + 1)  # the same on every rank
        self._ddp = None
        if self.dist.enabled and cfg.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            dev = self.policy.device
            self._ddp = DistributedDataParallel(MinibatchLoss(self), device_ids=None if dev.type == "cpu" else [dev])
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
        total = cfg.max_steps * cfg.num_iterations * (cfg.rows_per_step // cfg.minibatch_rows)

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
            with self.policy.module.disable_adapter():
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
            if self.curriculum is not None:
                k = self.curriculum.next_index(self.data_pos)
            else:
                epoch, i = divmod(self.data_pos, n)
                k = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)[i]
            out.append(self.rows[k])
            self.data_pos += 1
        return out

    def _rng_state(self) -> dict:
        return {"update": self.update_gen.get_state(), "torch": torch.get_rng_state()}

    def save(self) -> Path:
        """A checkpoint with full (unsharded) states, written by rank 0 (a collective: every rank calls it)."""
        weights = D.full_model_state(self.policy.module, trainable_only=True)
        optim = {"optimizer": D.full_optimizer_state(self.policy.module, self.opt), "scheduler": self.sched.state_dict()}
        target = self.out / f"checkpoint-{self.step}"
        if self.dist.is_main:
            target = ckpt.save_checkpoint(self.out, self.step, weights, optim, self._rng_state(),
                                          {"data_pos": self.data_pos, "world_size": self.dist.world,
                                           **({"curriculum": self.curriculum.state_dict()} if self.curriculum else {}),
                                           "config": dataclasses.asdict(self.cfg)}, keep=self.cfg.save_total_limit)
        self.dist.barrier()
        return target

    def _resume(self, path):
        c = ckpt.resolve_checkpoint(path)
        weights, optim, rng, state = ckpt.load_checkpoint(c)
        names = {n for n, p in self.policy.module.named_parameters() if p.requires_grad}
        missing = names ^ set(weights)
        if missing:
            raise ValueError(f"{c} does not match this model/config (parameters differ: {sorted(missing)[:3]}...)")
        D.load_model_state(self.policy.module, weights)
        D.load_optimizer_state(self.policy.module, self.opt, optim["optimizer"])
        self.sched.load_state_dict(optim["scheduler"])
        self.update_gen.set_state(rng["update"])
        torch.set_rng_state(rng["torch"])
        self.step, self.data_pos = state["step"], state["data_pos"]
        if self.curriculum is not None:
            if "curriculum" not in state:
                raise ValueError(f"{c} was written without the curriculum; resume with curriculum=false")
            self.curriculum.load_state_dict(state["curriculum"])
        self._resumed = True

    # ------------------------------------------------------------------------------------------ one step

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
        lock = None
        if self.dist.is_main:  # one writer: logs, reports and checkpoints come from rank 0
            lock = runfolder.take(self.out, resumed=self._resumed, overwrite=self.overwrite)
            (self.out / "config.yaml").write_text(dump_config(self.cfg))
            if self._resumed:
                drop_log_after(self.out / "log.jsonl", self.step)
        self.dist.barrier()
        log = RunLog(self.out) if self.dist.is_main else None
        try:
            self._loop(log, progress)
        except BaseException:  # leaving with an error: free the folder (else after final/)
            runfolder.release(lock)
            raise
        finally:
            if log is not None:
                log.close()
        try:
            self.save()
            return self.save_final()
        finally:
            runfolder.release(lock)

    def _loop(self, log, progress: bool) -> None:
        """Steps until max_steps, evaluating and checkpointing on schedule. A KeyboardInterrupt inside train_step
        leaves a half-done step (data position and generators advanced, some minibatches applied, self.step not
        yet counted): a checkpoint of that would not resume exactly. So the first Ctrl-C only asks the loop to
        stop after the current step; only a consistent state is saved."""
        cfg, write = self.cfg, (log.write if log is not None else (lambda m: None))
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="gvu train", unit="step",
                   disable=not (progress and self.dist.is_main))
        consistent = True
        try:
            with stop_after_step() as stop:
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
                    bar.set_postfix(reward=f"{m['reward']:.3f}",
                                    **({"acc": f"{m['accuracy']:.2f}"} if "accuracy" in m else {}))
                    bar.update(1)
                    if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < cfg.max_steps:
                        self.save()
        except KeyboardInterrupt:
            self._interrupted(consistent)
            raise
        finally:
            bar.close()

    def _interrupted(self, consistent: bool) -> None:
        if consistent:
            path = self.save()
            if self.dist.is_main:
                print(f"\ninterrupted at step {self.step}; checkpoint saved to {path}; resume with "
                      f"`gvu train --resume {self.out}`", file=sys.stderr)
            return
        last = ckpt.list_checkpoints(self.out)
        print("\ninterrupted in the middle of a step; no checkpoint written (the state is half-updated); "
              + (f"the latest is {last[-1]}" if last else "there is no checkpoint yet"), file=sys.stderr)

    def save_final(self) -> Path:
        """`final/` in the format the model was loaded from, written by rank 0 (every rank calls this)."""
        final_dir = self.out / "final"
        policy = self.policy
        if self.dist.fsdp:  # gather the shards into an ordinary (unsharded) copy on rank 0
            full = D.full_model_state(self.policy.module, trainable_only=False)
            if self.dist.is_main:
                policy = load_model(self.cfg.model, device=D.device_for(self.dist))
                if self.cfg.use_lora:
                    from peft import get_peft_model

                    policy.module = get_peft_model(policy.module, self.policy.module.peft_config["default"])
                policy.module.load_state_dict(full)
        if self.dist.is_main:
            final_dir = self._write_final(policy)
        self.dist.barrier()
        return final_dir

    def _write_final(self, policy) -> Path:
        # the built-in model writes full weights (adapters merged); transformers adapters the LoRA adapter (or the
        # full weights) with a gvu.json naming the base model, which load_model reads back
        return policy.save_pretrained(self.out / "final", extra={"trained_from": self.cfg.model,
                                                                 "train": dataclasses.asdict(self.cfg)})





