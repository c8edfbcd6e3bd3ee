"""Output folders that own themselves: one run per folder, nothing of another run replaced without asking.

A run (`gvu train`, `gvu demo`) holds a lock file in its folder with its process id while it writes there, so a
second run into the same folder stops before it computes anything; `gvu pretrain`, whose folder is moved into
place whole at its end, holds the same lock in a file beside the folder (`lock_beside`). A lock whose process is
gone (a run killed with kill -9) is reported and taken over. A fresh run into a folder that holds another run's
files refuses and says how to go on (`--resume`, `--overwrite`, another folder); `--overwrite` removes exactly
those files, never anything else in the folder. `gvu demo` judges its folder's files by the options its demo.json
records (gvu.demo.earlier_run): the same demo is resumed, or shown if finished; another is refused, naming what
differs. Unfinished checkpoint writes (`.checkpoint-tmp-*`, left by a kill during a save) are removed when the next
run takes the folder.

Image folders (`gvu generate`, `gvu world render`) are claimed the same way without a lock: a folder that already
holds prompt folders is refused (the judge would score old and new images together) unless `--overwrite`, which
removes its prompt folders first.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from gvu.models.builtin.model import is_model_dir

LOCK = ".gvu.lock"
TMP_PREFIX = ".checkpoint-tmp-"
TRAIN_FILES = ("log.jsonl", "config.yaml", "final", "grids", "tensorboard", "checkpoint-*")
DEMO_FILES = ("demo.json", "report.md", "report.json", "report.html", "curves.png", "grid_*.png", "lead.png",
              "train", "eval_before", "eval_after", "sensitivity")
_HELD: set[Path] = set()  # locks this process holds (a run inside a run of the same process is not a rival)


def check_path(folder: str | os.PathLike, name: str = "output_dir") -> Path:
    if not str(folder).strip():
        raise ValueError(f"{name} is empty; give the folder to write into (e.g. {name}=runs/my-run)")
    return Path(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def lock_beside(folder: Path) -> Path:
    """The lock of a folder that is written whole at its end (a pretrained base, moved into place atomically):
    a file beside it, `.NAME.gvu.lock`, since a lock inside would be replaced with the folder."""
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}{LOCK}"


def lock_owner(folder: Path, lock: Path | None = None) -> int | None:
    """The process id in the folder's lock, if a live process other than this one holds it."""
    try:
        pid = int((lock or folder / LOCK).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != os.getpid() and _alive(pid) else None


def _in_use(folder: Path, pid: int, lock: Path | None = None) -> ValueError:
    return ValueError(f"{folder} is in use by process {pid} (lock file {lock or folder / LOCK}); wait for that "
                      "run to finish or write to another folder")


def acquire(folder: Path, lock: Path | None = None) -> Path | None:
    """Create the folder's lock (default: `LOCK` inside it) with this process id; None if this process already
    holds it."""
    lock = (lock or folder / LOCK).resolve()
    lock.parent.mkdir(parents=True, exist_ok=True)
    if lock in _HELD:
        return None
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = lock_owner(folder, lock)
            if pid is not None:
                raise _in_use(folder, pid, lock) from None
            stale = lock.read_text().strip() if lock.is_file() else "?"
            print(f"note: {lock} was left by process {stale or '?'}, which is no longer running (a killed run); "
                  "taking the folder over", file=sys.stderr)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fp:
            fp.write(f"{os.getpid()}\n")
        _HELD.add(lock)
        return lock
    raise ValueError(f"{folder}: could not take the lock {lock}; another run keeps taking it")


def release(lock: Path | None) -> None:
    if lock is None or lock not in _HELD:
        return
    _HELD.discard(lock)
    lock.unlink(missing_ok=True)


@contextmanager
def holding(folder: Path, lock: Path | None = None):
    """Hold the folder's lock (`acquire`) for the body of a with-statement."""
    held = acquire(folder, lock)
    try:
        yield held
    finally:
        release(held)


def run_entries(folder: Path, names: tuple[str, ...] = TRAIN_FILES) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted({p for pattern in names for p in folder.glob(pattern)})


def check_run(folder: Path, *, resumed: bool, overwrite: bool, names: tuple[str, ...] = TRAIN_FILES,
              how: str = "continue it with `gvu train --resume {folder}`, ") -> None:
    """Refuse (before any compute) a folder another live run holds, or a fresh run into another run's files."""
    pid = lock_owner(folder)
    if pid is not None:
        raise _in_use(folder, pid)
    found = [] if resumed or overwrite else run_entries(folder, names)
    if found:
        shown = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise ValueError(f"{folder} holds another run's files ({shown}); {how.format(folder=folder)}replace "
                         "them with --overwrite, or choose another folder")


def take(folder: Path, *, resumed: bool, overwrite: bool, names: tuple[str, ...] = TRAIN_FILES,
         how: str = "continue it with `gvu train --resume {folder}`, ") -> Path | None:
    """Lock the folder, check it again under the lock, clear it if asked, and remove unfinished checkpoint
    writes. Returns the lock to `release`."""
    lock = acquire(folder)
    try:
        check_run(folder, resumed=resumed, overwrite=overwrite, names=names, how=how)
        if overwrite and not resumed:
            for p in run_entries(folder, names):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        for tmp in folder.glob(TMP_PREFIX + "*"):
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"note: removed {tmp}, an unfinished checkpoint write of an interrupted run", file=sys.stderr)
    except BaseException:
        release(lock)
        raise
    return lock


_PROMPT_DIR = re.compile(r"\d+")


def claim_image_folder(outdir: str | os.PathLike, overwrite: bool, flag: str = "--outdir") -> Path:
    """An image folder for a fresh GenEval layout: empty, or cleared of its prompt folders with --overwrite."""
    out = check_path(outdir, flag)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file, not a folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(p.name for p in entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ValueError(f"{flag} {out} is not empty ({shown}); the judge would read old and new images together: "
                         "choose an empty folder, or pass --overwrite to remove its prompt folders first")
    for p in entries:
        if overwrite and p.is_dir() and _PROMPT_DIR.fullmatch(p.name):
            shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)
    return out


def claim_eval_folder(out: str | os.PathLike, overwrite: bool) -> None:
    """An evaluation folder holds one evaluation: one that holds an earlier one (its summary.json or prompt
    folders) is refused, or with --overwrite cleared of them first, so that a judge never reads both."""
    path = check_path(out, "--out")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file, not a folder")
    layouts = [path / k for k in ("geneval", "genevalpp", "dpg", "val_geneval", "val_genevalpp", "file")
               if (path / k).is_dir()]
    earlier = [p for p in [path / "summary.json", *layouts] if p.exists()]
    if earlier and not overwrite:
        raise ValueError(f"--out {path} holds an earlier evaluation ({', '.join(p.name for p in earlier)}); choose "
                         "an empty folder, or pass --overwrite to replace it")
    for folder in layouts:
        claim_image_folder(folder, True, "--out")
        (folder / "results.jsonl").unlink(missing_ok=True)
    (path / "summary.json").unlink(missing_ok=True)


def check_base_out(out: str, overwrite: bool) -> None:
    """`gvu pretrain --out`: a finished base is never replaced without --overwrite; a folder of other files never."""
    path = check_path(out, "--out")
    if is_model_dir(path) and not overwrite:
        raise ValueError(f"--out {path} already holds a finished base model; pass --overwrite to pretrain a new "
                         "one in its place, or choose another --out")
    if path.is_dir() and any(path.iterdir()) and not is_model_dir(path):
        raise ValueError(f"--out {path} is a folder of other files, not a gvu model; choose another --out")
