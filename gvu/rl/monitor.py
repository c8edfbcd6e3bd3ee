"""What the trainer watches besides the loss: a monitor hook, chosen by the model's world.

Every step the trainer hands the monitor its images (on each process), gathers what the monitor returns per
image, and asks it for the step's metrics. Every `eval_steps` it asks the monitor to evaluate.

- ShapesMonitor (the built-in shapes-world model): the exact judge on the step's images (`monitor_images` of them
  drawn at random, or all) -> `accuracy`, and the ROC AUC of the intrinsic reward against correctness
  (`reward_auc`, the reward-hacking alarm), with the number judged (`monitor_images`, for their intervals);
  evaluation on the shapes-world benchmarks (gvu.eval.evaluate).
- RewardMonitor (real models on natural images, where the shapes judge sees nothing): reward statistics every
  step; every `eval_steps` the images of fixed prompts (`eval_prompts`, fixed seeds) written in GenEval's folder
  layout under `evals/step_NNNNN/`, an image grid of them under `grids/`, and, when `eval_command` is set, that
  command run on the folder (GenEval's own evaluator, for instance) with its output kept beside the images.

Phase timing: `PhaseClock` records the seconds and the peak memory of each named phase of a step (CUDA's peak
allocated memory on a GPU, the process's peak resident memory on CPU).
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gvu.eval.quality import auc
from gvu.rl.evaluation import evaluate_prompts, evaluate_shapes
from gvu.world.judge import judge_image


class PhaseClock:
    """`with clock("sample"): ...` adds time/sample (seconds, summed over the phase's entries) and mem/sample (peak MiB
    during the phase)."""

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self.values: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        cuda = self.device is not None and self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()
        t = time.perf_counter()
        try:
            yield
        finally:
            # a phase entered again in the same step (dynamic sampling's extra rollouts) adds its time
            self.values[f"time/{name}"] = self.values.get(f"time/{name}", 0.0) + time.perf_counter() - t
            peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20 if cuda else peak_rss_since_reset()
            if peak is not None:
                self.values[f"mem/{name}"] = max(peak, self.values.get(f"mem/{name}", 0.0))


_PEAK_BEFORE_RESETS_MIB = 0.0
"""The largest VmHWM seen just before a reset: the reset also clears Linux's ru_maxrss, so the process's peak since
it started is kept here (read it with `process_peak_rss_mib`)."""


def reset_peak_rss() -> bool:
    """Linux: reset this process's VmHWM so `peak_rss_since_reset` measures one phase; False where unsupported.
    The peak so far is remembered first (for `process_peak_rss_mib`)."""
    global _PEAK_BEFORE_RESETS_MIB
    _PEAK_BEFORE_RESETS_MIB = max(_PEAK_BEFORE_RESETS_MIB, peak_rss_since_reset() or 0.0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset() -> float | None:
    """The process's peak resident memory (MiB) since the last reset_peak_rss; None where unsupported."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def process_peak_rss_mib() -> float:
    """The process's peak resident memory (MiB) since it started, across `reset_peak_rss` calls (which clear both
    VmHWM and ru_maxrss on Linux). Linux reports ru_maxrss in KiB, macOS in bytes."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2 ** 20 if sys.platform == "darwin" else 1024)
    return max(_PEAK_BEFORE_RESETS_MIB, peak_rss_since_reset() or 0.0, own)


class ShapesMonitor:
    """The exact shapes-world judge: per image correct or not; accuracy and reward AUC per step."""

    name = "shapes"

    def per_image(self, pixels, rows: list[dict]) -> list[bool]:
        return [judge_image(px, row)[0].correct for px, row in zip(pixels, rows)]

    def step_metrics(self, values: list, intrinsic_N: torch.Tensor) -> dict:
        """Over the judged images (None: not judged this step, monitor_images); `monitor_images` how many."""
        judged = [i for i, v in enumerate(values) if v is not None]
        verdicts = [values[i] for i in judged]
        return {"accuracy": float(np.mean(verdicts)), "reward_auc": auc(intrinsic_N[judged].tolist(), verdicts),
                "monitor_images": len(judged)}

    def evaluate(self, trainer) -> dict:
        return evaluate_shapes(trainer)


class RewardMonitor:
    """Natural images: reward statistics per step; fixed-prompt images, a grid and an optional external
    evaluator every `eval_steps`."""

    name = "reward"

    def per_image(self, pixels, rows: list[dict]) -> list:
        return []

    def step_metrics(self, values: list, intrinsic_N: torch.Tensor) -> dict:
        r = intrinsic_N.float()
        return {"intrinsic_reward_std": r.std().item() if r.numel() > 1 else 0.0,
                "intrinsic_reward_min": r.min().item(), "intrinsic_reward_max": r.max().item()}

    def evaluate(self, trainer) -> dict:
        return evaluate_prompts(trainer)


def pick_monitor(name: str, policy):
    """'shapes', 'reward', or 'auto': shapes for the built-in shapes-world model, reward for everything else."""
    if name == "auto":
        name = "shapes" if getattr(policy, "world", None) == "shapes" else "reward"
    return ShapesMonitor() if name == "shapes" else RewardMonitor()
