"""Model specs on the command line -> a model of the interface.

Accepted forms: a directory written by `gvu pretrain` or `gvu train` (the built-in model). Adapters for other
model families register further prefixes here.
"""

from __future__ import annotations

from pathlib import Path

SPEC_FORMS = ("DIR (a folder written by `gvu pretrain` or `gvu train`)",)


def load_model(spec: str, device: str | None = None):
    from gvu.models.builtin import GVU_FILE, is_model_dir, load_builtin

    path = Path(spec)
    if path.is_dir() and (path / GVU_FILE).is_file():
        return load_builtin(path, device=device)
    if path.is_dir() and (path / "final" / GVU_FILE).is_file():  # a `gvu train` output folder
        return load_builtin(path / "final", device=device)
    why = "does not exist" if not path.exists() else "holds no gvu model" if path.is_dir() else "is not a folder"
    raise ValueError(f"model {spec!r} {why}; accepted forms: " + "; ".join(SPEC_FORMS))
