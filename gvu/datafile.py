"""The files gvu writes with torch.save (a training checkpoint's weights, optimizer and random states; a pretraining
run's state), read back as data only.

`torch.load(..., weights_only=False)` unpickles, and a pickle names functions to call while it loads, so a run
folder from someone else could run any code the moment it is resumed. What gvu writes is tensors, numbers,
strings, None, lists, tuples and dicts (the optimizer and scheduler states, torch's generator states, numpy's
generator state as a dict of ints, the config as a dict): torch's weights-only reader takes all of it, no safe
globals needed, in the files of every gvu version so far. A file that asks for anything else (a function or class
to call) is refused before any of it runs.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch


class NotData(ValueError):
    """A file whose pickle asks for more than data: refused, nothing in it run. `reason`: what it asked for
    ('its pickle calls posix.system')."""

    def __init__(self, path, reason: str):
        super().__init__(path, reason)
        self.path, self.reason = Path(path), reason

    def __str__(self) -> str:
        return (f"{self.path} holds more than data ({self.reason}); gvu reads it as data only and ran none of it. "
                "A file gvu wrote holds only tensors and plain values, so this one was altered or written by "
                "something else")


def load_data(path: str | Path):
    """torch.load with weights_only=True; a file that would run code raises NotData (other failures, a truncated
    or overwritten file, raise as torch raises them)."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if not text.startswith("Weights only load failed"):
            raise
        # torch's message goes on to suggest weights_only=False, which is what must not happen here: keep only
        # what the file asked for (a function or class to import and call, or an instruction the reader refuses)
        called = re.search(r"GLOBAL ([\w.]+)", text)
        other = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        reason = (f"its pickle calls {called.group(1)}" if called else
                  f"torch's data-only reader refuses it: {other.group(1).strip().rstrip('.')}" if other else
                  "not a weights-only pickle")
        raise NotData(path, reason) from None
