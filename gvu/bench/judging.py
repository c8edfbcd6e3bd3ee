"""Judge a GenEval-layout folder of shapes-world images with the exact evaluator, and summarise.

Result rows carry GenEval's fields (filename, tag, prompt, correct, reason, metadata, details) so scripts
written for GenEval's results.jsonl read ours. The summary is GenEval's: accuracy per tag, and the overall
score as the unweighted mean over tags.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Iterable

import numpy as np

from gvu.bench.layout import iter_layout, load_image
from gvu.bench.metadata import atomic_write_text
from gvu.world.judge import evaluate
from gvu.world.detect import detect
from gvu.world.spec import IMAGE_SIZE


def judge_pixels(pixels: np.ndarray, row: dict, mode: str = "geneval") -> dict:
    """One GenEval-style result row (without filename) for one image."""
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"image of shape {pixels.shape} is not a shapes-world image "
                         f"({IMAGE_SIZE}x{IMAGE_SIZE} RGB); judge other images with GenEval's own tools")
    dets = detect(pixels)
    verdict = evaluate(dets, row, mode)
    return {
        "tag": row["tag"], "prompt": row["prompt"], "correct": verdict.correct, "reason": verdict.reason,
        "metadata": json.dumps(row),
        "details": {"failures": sorted(verdict.kinds), "malformed": dets.malformed,
                    "objects": [d.to_json() for d in dets.all()]},
    }


def summarise(results: Iterable[dict]) -> dict:
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        by_tag[r["tag"]].append(bool(r["correct"]))
    tags = {t: float(np.mean(v)) for t, v in by_tag.items()}
    return {"overall": float(np.mean(list(tags.values()))) if tags else 0.0, "tags": tags,
            "images": {t: len(v) for t, v in by_tag.items()}}


def judge_folder(outdir: str | os.PathLike, mode: str = "geneval", progress: bool = True) -> tuple[list[dict], dict]:
    samples = list(iter_layout(outdir))
    results = []
    from tqdm import tqdm

    for s in tqdm(samples, desc="judging", unit="img", disable=not progress):
        r = judge_pixels(load_image(s.path), s.row, mode)
        results.append({"filename": str(s.path), **r})
    return results, summarise(results)


def write_results(path: str | os.PathLike, results: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in results))


def format_summary(summary: dict, title: str = "") -> str:
    width = max([len(t) for t in summary["tags"]] + [7])
    lines = [title] if title else []
    for tag, acc in summary["tags"].items():
        lines.append(f"  {tag:<{width}}  {acc:6.3f}  ({summary['images'][tag]} images)")
    lines.append(f"  {'overall':<{width}}  {summary['overall']:6.3f}  (unweighted mean of {len(summary['tags'])} tags)")
    return "\n".join(lines)
