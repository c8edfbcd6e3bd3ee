"""Resumable training checkpoints, written atomically.

A checkpoint folder holds the trainable weights (all of them, or only the LoRA adapters), the optimizer and
scheduler states (keyed by parameter name and unsharded, so any number of processes can load them), the
random states the loop carries (the minibatch generator and torch's global RNG; rollouts draw from per-prompt
generators seeded by the data position), the step and the data position, and the config. It is written into
a temporary sibling folder and renamed, so an interrupted save leaves the previous checkpoint intact. Every file
is read back as data only (gvu/datafile.py): a checkpoint from elsewhere cannot run code as it is resumed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from gvu.datafile import load_data, NotData

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


def _unreadable(path: Path, err: BaseException) -> ValueError:
    """A damaged checkpoint file, or one that is more than data (NotData): name it, and the checkpoint to resume
    from instead."""
    ckpt = path.parent
    earlier = [c for c in list_checkpoints(ckpt.parent) if _step(c) < _step(ckpt)]
    what = (f"resume from the previous checkpoint instead: gvu train --resume {earlier[-1]}" if earlier else
            f"there is no earlier checkpoint in {ckpt.parent}: start the run again with --overwrite")
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    problem = str(err) if isinstance(err, NotData) else f"{path} is damaged and cannot be read ({reason})"
    return ValueError(f"{problem}; {what}")


def _step(ckpt: Path) -> int:
    m = _NAME.search(ckpt.name)
    return int(m.group(1)) if m else -1


def read_state(ckpt: Path) -> dict:
    """The checkpoint's trainer state (step, data position, config)."""
    try:
        state = json.loads((ckpt / STATE).read_text())
        if not isinstance(state, dict) or "config" not in state or "step" not in state:
            raise ValueError("no step or config in it")
    except (ValueError, UnicodeDecodeError) as err:
        raise _unreadable(ckpt / STATE, err) from None
    return state


def _load(path: Path):
    """One checkpoint file, as data only (gvu/datafile.py): a file that would run code is refused, none of it run."""
    try:
        return load_data(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated or overwritten (pickle, zip and EOF errors of every kind), or NotData
        raise _unreadable(path, err) from None


def load_checkpoint(ckpt: Path) -> tuple[dict, dict, dict, dict]:
    """(trainable weights, optimizer+scheduler states, rng states, trainer state)."""
    state = read_state(ckpt)
    return _load(ckpt / "trainable.pt"), _load(ckpt / "optim.pt"), _load(ckpt / "rng.pt"), state


def resume_config(saved: dict, overrides: dict, run: Path, new_model: bool) -> dict:
    """The checkpoint's config with the overrides (e.g. max_steps=... to train further), writing into the folder
    as it is now (a copied run writes into the copy, not where it was first trained)."""
    if "output_dir" in overrides and Path(overrides["output_dir"]).resolve() != run.resolve():
        raise ValueError(f"a resumed run writes into its own folder ({run}); to continue it elsewhere, copy the "
                         "folder there and resume the copy")
    if overrides.get("model", saved.get("model")) != saved.get("model") and not new_model:
        raise ValueError(f"the run was trained from model={saved.get('model')}; model={overrides['model']} would "
                         "switch the policy's reference mid-run: pass --new-model to do that on purpose")
    return {**saved, **overrides, "output_dir": str(run)}


def load_weights(ckpt: Path) -> dict:
    """The checkpoint's trainable weights alone, by name (data only), e.g. to evaluate the policy at that step."""
    read_state(ckpt)
    return _load(ckpt / "trainable.pt")
