"""Plumbing shared by the benchmark scripts: make `gvu` importable from a checkout that is not installed, then hand
over to gvu.bench.perf, which holds the benchmarks so that `gvu bench` works from an installed package too."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(only: tuple[str, ...], argv: list[str] | None = None) -> int:
    """Options as `gvu bench`: --quick, --out FILE, --threads N, --size {default,tiny}, --repeats N."""
    from gvu.bench.perf import script_main

    return script_main(only, argv)
