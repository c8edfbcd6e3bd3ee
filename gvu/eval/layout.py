"""GenEval's image folder layout, which its evaluator (`evaluation/evaluate_images.py`) reads:

    <outdir>/00000/metadata.jsonl      the prompt's metadata row, one JSON object on one line
    <outdir>/00000/samples/0000.png    the generated images, RGB
    <outdir>/00000/samples/0001.png ...

Writing is streaming (one prompt folder at a time) so a long generation run can export as it goes. Reading
follows GenEval's rules for what counts (digit-named folders, `<digits>.png` samples; anything else in the
output folder, such as a results file, is not a prompt) but, unlike GenEval, a prompt folder that is broken
(no metadata, bad JSON, no samples) is an error rather than a crash or a silent gap in the scores.
"""

from __future__ import annotations

import io
import json
import operator
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gvu.eval.metadata import atomic_write_bytes, atomic_write_text, MetadataError, read_metadata, validate_row

_SAMPLE_RE = re.compile(r"\d+\.png")  # GenEval's filter for sample files


@dataclass(frozen=True)
class LayoutSample:
    index: int  # prompt folder number (the row's position in the metadata file)
    sample_index: int  # image number within the prompt folder
    path: Path  # the PNG
    row: dict  # the prompt folder's metadata row (shared by all samples of that prompt)


def prompt_dir(outdir: str | os.PathLike, index: int) -> Path:
    return Path(outdir) / f"{index:05d}"


def write_prompt_dir(outdir: str | os.PathLike, index: int, row: Mapping,
                     images: Sequence[np.ndarray]) -> Path:
    """Write one prompt folder: metadata.jsonl plus samples/NNNN.png for each uint8 HxWx3 image (a list, or
    a decoder's uint8 [N, H, W, 3] batch).

    Rewriting a folder replaces it: old samples are removed first, so a rerun with fewer images per prompt
    leaves no stale PNGs that the evaluator would score.
    """
    from PIL import Image  # lazy: only needed when exporting images

    index = operator.index(index)  # accepts numpy integers, rejects floats
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    folder = prompt_dir(outdir, index)
    try:
        validate_row(row)
    except MetadataError as err:
        raise err.at(folder / "metadata.jsonl", 1) from None
    if len(images) == 0:  # len, not truthiness: a [N, H, W, 3] batch array is accepted too
        raise ValueError(f"{folder}: no images for prompt {index}; GenEval scores each prompt by its samples")
    for i, img in enumerate(images):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"image {i} for prompt {index} must be a uint8 HxWx3 array, got {got}")

    samples = folder / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.jsonl").unlink(missing_ok=True)  # until rewritten below, the folder reads as broken
    for old in samples.iterdir():
        if _SAMPLE_RE.fullmatch(old.name):
            old.unlink()
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
        atomic_write_bytes(samples / f"{i:04d}.png", buf.getvalue())
    # Metadata last: a folder with metadata is complete; one killed mid-export has none, and reading it fails
    # loudly instead of scoring a partial or stale set of samples.
    atomic_write_text(folder / "metadata.jsonl", json.dumps(dict(row)) + "\n")
    return folder


def _numbered(entries: Iterator[os.DirEntry], want_dir: bool, pattern: re.Pattern) -> list[tuple[int, Path]]:
    """Entries whose names match GenEval's pattern, sorted by number; two names for one number is an error."""
    found: dict[int, Path] = {}
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        if (entry.is_dir() if want_dir else entry.is_file()):
            number = int(entry.name.split(".")[0])
            if number in found:
                raise MetadataError(f"{found[number].name} and {entry.name} have the same number",
                                    entry.path, None, "keep one of them")
            found[number] = Path(entry.path)
    return sorted(found.items())


def iter_layout(outdir: str | os.PathLike) -> Iterator[LayoutSample]:
    """Yield every sample of a GenEval output folder, prompts and samples in numeric order.

    The folder is checked now (missing or empty is an error at call time); broken prompt folders raise
    MetadataError when iteration reaches them.
    """
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise FileNotFoundError(f"{outdir}: no such GenEval output folder (generate images into it first)")
    with os.scandir(outdir) as it:
        prompts = _numbered(it, True, re.compile(r"\d+"))
    if not prompts:
        raise MetadataError("no prompt folders (00000, 00001, ...)", outdir, None,
                            "write them with gvu.eval.layout.write_prompt_dir")
    return _iter_prompts(prompts)


def _iter_prompts(prompts: list[tuple[int, Path]]) -> Iterator[LayoutSample]:
    for index, folder in prompts:
        meta = folder / "metadata.jsonl"
        if not meta.is_file():
            raise MetadataError("prompt folder has no metadata.jsonl", folder, None,
                                "each prompt folder needs its metadata row; re-export it")
        rows = read_metadata(meta)
        if len(rows) != 1:
            # GenEval json.load()s the whole file: exactly one object.
            raise MetadataError(f"expected one metadata row, found {len(rows)}", meta, None,
                                "a prompt folder holds exactly one prompt")
        samples_dir = folder / "samples"
        if not samples_dir.is_dir():
            raise MetadataError("prompt folder has no samples/ folder", folder, None, "re-export its images")
        with os.scandir(samples_dir) as it:
            samples = _numbered(it, False, _SAMPLE_RE)
        if not samples:
            raise MetadataError("no samples (0000.png, ...)", samples_dir, None, "re-export its images")
        for sample_index, path in samples:
            yield LayoutSample(index, sample_index, path, rows[0])


def read_layout(outdir: str | os.PathLike) -> list[LayoutSample]:
    return list(iter_layout(outdir))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """A sample as uint8 HxWx3 RGB (palette, grey or alpha PNGs are converted)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated or not an image: PIL raises OSError, SyntaxError, ValueError...
        raise ValueError(f"{path}: cannot read the image ({err}); generate or export it again") from None
