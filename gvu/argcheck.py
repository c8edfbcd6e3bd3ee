"""Argument types for the command line: a bad value fails at parse time, before any compute, with argparse's
one-line message naming the flag (`gvu generate: error: argument --per-prompt: must be an integer >= 1, got 0`).
Stdlib only: `gvu --help` must not import torch."""

from __future__ import annotations

import argparse
import math


def at_least(minimum: int):
    """An integer >= minimum (1 for counts and batch sizes, 0 for seeds and thread counts)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def finite(minimum: float | None = None, above: bool = False):
    """A finite float, optionally >= minimum (or > minimum with above=True)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if minimum is not None and (value <= minimum if above else value < minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {minimum}, got {value}")
        return value
    parse.__name__ = "number"
    return parse


COUNT = at_least(1)
SEED = at_least(0)
THREADS = at_least(0)


def STEPS(text: str) -> set[int]:
    """Comma-separated training steps, each >= 0 (0: the model a run started from)."""
    try:
        steps = {int(t) for t in text.split(",") if t.strip()}
    except ValueError:
        steps = set()
    if not steps or min(steps) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give steps as whole numbers >= 0, e.g. 0,20,120")
    return steps
