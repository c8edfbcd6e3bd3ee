"""A pretraining run's resumable state (weights, optimizer, schedule, step, batch generator) and its learning-rate
schedule: gvu.models.builtin.pretrain writes it every `save_every` steps and on Ctrl-C, and resumes from it, reading it
as data only (gvu/datafile.py)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from gvu.datafile import load_data, NotData


def lr_lambda(cfg):
    """The multiplier of the peak learning rate at each step: linear warm-up, then a cosine decay to 10%."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def save_state(path: Path, model, opt, sched, step: int, rng: np.random.Generator, cfg):
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.lm.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "step": step, "rng": rng.bit_generator.state, "config": asdict(cfg)}, tmp)
    os.replace(tmp, path)


def restore(state_path: Path, cfg, lm, opt, sched, rng) -> int:
    """Load a saved run's state into the given objects; the step to resume at (0 without a state)."""
    if not state_path.exists():
        return 0
    try:
        state = load_data(state_path)  # data only: a state file from elsewhere cannot run code as it loads
    except NotData as err:
        raise ValueError(f"{err}; delete it (or the whole {state_path.parent}) to pretrain from the start") from None
    if state["config"] != asdict(cfg):
        raise ValueError(f"{state_path} was written with another configuration; delete it or use the same "
                         "options to resume")
    lm.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    rng.bit_generator.state = state["rng"]
    return state["step"]
