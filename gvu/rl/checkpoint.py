"""Resumable training checkpoints, written atomically.

A checkpoint folder holds the trainable weights (all of them, or only the LoRA adapters), the optimizer and
scheduler states (keyed by parameter name and unsharded, so any number of processes can load them), the
random states the loop carries (the minibatch generator and torch's global RNG; rollouts draw from per-prompt
generators seeded by the data position), the step and the data position, and the config. It is written into
a temporary sibling folder and renamed, so an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

STATE = "trainer_state.json"
_NAME = re.compile(r"checkpoint-(\d+)$")


def save_checkpoint(output_dir: Path, step: int, weights: dict[str, torch.Tensor], optim: dict, rng: dict,
                    state: dict, keep: int = 2) -> Path:
    """`weights`: the trainable weights by name; `optim`: {"optimizer": ..., "scheduler": ...} states."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(dir=output_dir, prefix=".checkpoint-tmp-"))
    try:
        torch.save(weights, tmp / "trainable.pt")
        torch.save(optim, tmp / "optim.pt")
        torch.save(rng, tmp / "rng.pt")
        (tmp / STATE).write_text(json.dumps({"step": step, **state}, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(output_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in output_dir.glob("checkpoint-*") if (m := _NAME.search(p.name))
             and (p / STATE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training output folder (its latest checkpoint)."""
    p = Path(path)
    if (p / STATE).is_file():
        return p
    ckpts = list_checkpoints(p) if p.is_dir() else []
    if not ckpts:
        raise FileNotFoundError(f"{p} holds no checkpoint (expected {STATE} in it, or checkpoint-N folders)")
    return ckpts[-1]


def load_checkpoint(ckpt: Path) -> tuple[dict, dict, dict, dict]:
    """(trainable weights, optimizer+scheduler states, rng states, trainer state)."""
    return (torch.load(ckpt / "trainable.pt", weights_only=True), torch.load(ckpt / "optim.pt", weights_only=False),
            torch.load(ckpt / "rng.pt", weights_only=False), json.loads((ckpt / STATE).read_text()))
