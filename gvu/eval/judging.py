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

from gvu.eval.check import check_layout_rows
from gvu.eval.layout import iter_layout, load_image
from gvu.eval.metadata import atomic_write_text
from gvu.world.detect import detect
from gvu.world.judge import colour_outcome, COLOUR_OUTCOMES, evaluate, relation_outcome, RELATION_OUTCOMES
from gvu.world.render import encode
from gvu.world.scene import wrapped_rows
from gvu.world.spec import BACKGROUND, COLORS, IMAGE_SIZE, PALETTE

_CLEAN = np.array([(r << 16) | (g << 8) | b for r, g, b in [PALETTE[c] for c in COLORS] + [BACKGROUND]])
UNCLEAN = "not a clean render"
UNCLEAN_MODES = ("refuse", "report")


def off_palette(pixels: np.ndarray) -> int:
    """How many pixels are not exactly a palette colour or the background. Every render of the world has none;
    JPEG compression, grayscale, resizing or blur give thousands, and the judge's snapping would then score the
    image silently wrong (the same correct images as JPEG scored 0.934 instead of 1.000)."""
    px = np.asarray(pixels).astype(np.int64)
    packed = (px[..., 0] << 16) | (px[..., 1] << 8) | px[..., 2]
    return int((~np.isin(packed, _CLEAN)).sum())


def check_size(pixels: np.ndarray, where) -> None:
    if pixels.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        h, w = pixels.shape[:2]
        raise ValueError(f"{where}: a {w}x{h} image is not a shapes-world image ({IMAGE_SIZE}x{IMAGE_SIZE} RGB); "
                         "judge other images with GenEval's own tools")


def wrapped_shape(pixels: np.ndarray) -> bool:
    """Whether a clean render holds a large object wrapped across the row edge, the painter's commonest half-drawn
    shape (gvu.world.scene.wrapped_rows): the pixel detector finds no object there, so only this tells a judge that
    rewards it (docs/bases.md, "Teaching the judge the wrapped shape")."""
    return bool(wrapped_rows(encode(np.asarray(pixels)[None])[0]))


def judge_pixels(pixels: np.ndarray, row: dict, mode: str = "geneval", with_strict: bool = False) -> dict:
    """One GenEval-style result row (without filename) for one image; `details.wrapped` as in wrapped_shape;
    `with_strict` adds the strict verdict as `correct_strict` from the same detections."""
    check_size(pixels, "image")
    dets = detect(pixels)
    verdict = evaluate(dets, row, mode)
    extra = {"correct_strict": evaluate(dets, row, "strict").correct} if with_strict else {}
    details = {"failures": sorted(verdict.kinds), "malformed": dets.malformed, "wrapped": wrapped_shape(pixels),
               "objects": [d.to_json() for d in dets.all()]}
    if (placed := relation_outcome(dets, row)) is not None:
        details["relation"] = list(placed)  # [relation, outcome]: gvu.world.judge.relation_outcome
    if (bound := colour_outcome(dets, row)) is not None:
        details["colours"] = bound  # gvu.world.judge.colour_outcome
    return {"tag": row["tag"], "prompt": row["prompt"], "correct": verdict.correct, "reason": verdict.reason,
            "metadata": json.dumps(row), "details": details, **extra}


def summarise(results: Iterable[dict]) -> dict:
    """Accuracy per tag and overall; images without a verdict (not clean renders) are counted apart."""
    by_tag: dict[str, list[bool]] = defaultdict(list)
    unclean: dict[str, int] = defaultdict(int)
    wrapped: list[bool] = []
    placed: dict[str, list[str]] = defaultdict(list)
    bound: list[str] = []
    for r in results:
        d = r.get("details", {})
        if "wrapped" in d:
            wrapped.append(bool(d["wrapped"]))
        if "relation" in d:
            placed[d["relation"][0]].append(d["relation"][1])
        if "colours" in d:
            bound.append(d["colours"])
        if r["correct"] is None:
            unclean[r["tag"]] += 1
            continue
        by_tag[r["tag"]].append(bool(r["correct"]))
    tags = {t: float(np.mean(v)) for t, v in by_tag.items()}
    out = {"overall": float(np.mean(list(tags.values()))) if tags else 0.0, "tags": tags,
           "images": {t: len(v) for t, v in by_tag.items()}}
    if wrapped:
        out["wrapped_fraction"] = float(np.mean(wrapped))
    if placed:  # per relation asked: the share of each outcome, and the images
        out["relations"] = {rel: {**{o: outcomes.count(o) / len(outcomes) for o in RELATION_OUTCOMES},
                                  "images": len(outcomes)} for rel, outcomes in sorted(placed.items())}
    if bound:  # two objects, two colours: the share of each outcome
        out["colour_pairs"] = {**{o: bound.count(o) / len(bound) for o in COLOUR_OUTCOMES}, "images": len(bound)}
    if unclean:
        out["unclean"] = sum(unclean.values())
        out["unclean_by_tag"] = dict(unclean)
    return out


def clean_images(samples, unclean: str, progress: bool = True):
    """Each sample with its pixels and its count of pixels off the world's palette (0: an exact render); an image
    that is not an exact render is refused, naming the file, unless `unclean="report"`."""
    from tqdm import tqdm

    for s in tqdm(samples, desc="judging", unit="img", disable=not progress):
        px = load_image(s.path)
        check_size(px, s.path)
        bad = off_palette(px)
        if bad and unclean == "refuse":
            raise ValueError(f"{s.path} is {UNCLEAN} ({bad} pixels off the world's palette: JPEG, grayscale or "
                             "resized?); the exact judge reads lossless renders only: export PNGs as drawn, or "
                             "pass --unclean report to count such images apart")
        yield s, px, bad


def judge_folder(outdir: str | os.PathLike, mode: str = "geneval", progress: bool = True,
                 unclean: str = "refuse") -> tuple[list[dict], dict]:
    """Judge every image; one that is not an exact render is refused (`unclean="refuse"`, naming the file) or
    gets the verdict 'not a clean render' (`"report"`), counted in the summary and never scored."""
    if unclean not in UNCLEAN_MODES:
        raise ValueError(f"unclean must be one of {UNCLEAN_MODES}, got {unclean!r}")
    samples = list(iter_layout(outdir))
    check_layout_rows(samples)  # every prompt folder's row, before the first image
    results = []
    for s, px, bad in clean_images(samples, unclean, progress):
        if bad:
            r = {"tag": s.row["tag"], "prompt": s.row["prompt"], "correct": None,
                 "reason": f"{UNCLEAN}: {bad} pixels off the palette", "metadata": json.dumps(s.row),
                 "details": {"clean": False, "off_palette": bad}}
        else:
            r = judge_pixels(px, s.row, mode)
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
    if summary.get("wrapped_fraction") is not None:
        lines.append(f"  {summary['wrapped_fraction']:.1%} of the images hold a large object wrapped across the row "
                     "edge (a half-drawn shape)")
    for rel, o in (summary.get("relations") or {}).items():
        lines.append(f"  asked {rel!r}: " + ", ".join(f"{o[k]:.2f} {k}" for k in RELATION_OUTCOMES)
                     + f" ({o['images']} images)")
    if (o := summary.get("colour_pairs")) is not None:
        lines.append("  two objects, two colours: " + ", ".join(f"{o[k]:.2f} {k}" for k in COLOUR_OUTCOMES)
                     + f" ({o['images']} images)")
    if summary.get("unclean"):
        lines.append(f"  {summary['unclean']} images {UNCLEAN} (not scored): "
                     + ", ".join(f"{t} {n}" for t, n in summary["unclean_by_tag"].items()))
    return "\n".join(lines)
