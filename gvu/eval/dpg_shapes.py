"""DPG-shapes: DPG-Bench's rules on dense prompts of the shapes world (gvu.world.dense), every question answered by
the exact judge, so no VQA model is needed. `gvu eval --benchmark dpg` runs it, `gvu prompts dpg` writes its files,
`gvu world render` draws its ground truth and `gvu judge` scores a folder of it.

The set: N_PROMPTS dense prompts drawn with a fixed seed, each 3-6 shapes with counts, colours, sizes, regions and
1-4 relations in at most 80 tokens, and its question graph (16.9 questions a prompt). Scores (gvu.eval.dpg.SHAPES):
an image's score is the share of its prompt's questions it satisfies after DPG's parent rule; a prompt's the mean
over its images (DPG-Bench's four crops are its samples); the benchmark's the mean over prompts; each L1 category
the share of its questions answered "yes" over every image, before the parent rule, as DPG-Bench's table counts
them. With the exact judge the parent rule changes nothing: a shape that is not drawn fails every question about it
anyway. The training prompts are not dense (one or two clauses each): this benchmark asks what GvU never trains on.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gvu.eval import dpg
from gvu.eval.check import check_layout_rows
from gvu.eval.drawing import draw_and_judge
from gvu.eval.judging import (check_size, clean_images, format_summary as format_geneval,
                              judge_folder as judge_geneval, UNCLEAN, wrapped_shape, write_results)
from gvu.eval.layout import read_layout
from gvu.eval.metadata import MetadataError, write_metadata, write_prompts
from gvu.eval.prompts import spread
from gvu.world.dense import answer, DPG_TAG, draw_dense, questions
from gvu.world.detect import detect

N_PROMPTS = 200
SEED = 0
PROMPTS_PER_BATCH = 16


def item_id(index: int) -> str:
    """A DPG-shapes prompt's item id in DPG-Bench's files: not all digits (pandas, which the official scorer reads
    the question file with, would turn such ids into numbers that no image name matches)."""
    return f"shapes_{index:05d}"


@lru_cache(maxsize=4)
def _drawn(seed: int, n: int) -> tuple[str, ...]:
    rng, rows, seen = np.random.default_rng(seed), [], set()
    while len(rows) < n:
        row = draw_dense(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(json.dumps(row))
    return tuple(rows)


def build_dpg(seed: int = SEED, n: int = N_PROMPTS) -> list[dict]:
    """DPG-shapes: `n` distinct dense prompts (metadata rows with tag "dpg"), the same for the same seed."""
    return [json.loads(r) for r in _drawn(seed, n)]


def judge_dpg_pixels(pixels: np.ndarray, row: dict) -> dict:
    """One result row for one image: every question's raw answer (in question order), the image's score after the
    parent rule, `correct` when every answer is yes; the judge's details as gvu.eval.judging writes them."""
    check_size(pixels, "image")
    qs = questions(row)
    dets = detect(pixels)
    raw = {qid: float(a) for qid, a in answer(dets, qs).items()}
    after = dpg.parent_rule(qs, raw)
    return {"tag": DPG_TAG, "prompt": row["prompt"], "correct": all(raw.values()),
            "reason": "\n".join(f"no: {q.proposition}" for q in qs if not raw[q.qid]),
            "score": sum(after.values()) / len(after), "answers": [int(raw[q.qid]) for q in qs],
            "metadata": json.dumps(row), "details": {"malformed": dets.malformed, "wrapped": wrapped_shape(pixels),
                                                      "objects": [d.to_json() for d in dets.all()]}}


def judge_answers(crop: np.ndarray, qs) -> list[str]:
    """The exact judge as DPG-Bench's answerer (gvu.eval.dpg.score_folder): "yes" or "no" to each question of a
    prompt on one image, so a DPG-layout folder of shapes-world grids scores under DPG-Bench's own procedure."""
    got = answer(detect(crop), list(qs))
    return ["yes" if got[q.qid] else "no" for q in qs]


def summarise(results: list[dict]) -> dict:
    """DPG-shapes' summary from result rows: `overall` (mean over prompts), `categories` (the five L1 ones),
    `detailed`, `answers` per category, `prompts`, `images`, `se` (the overall's standard error from the images:
    sqrt(sum over prompts of var / n) / prompts, each prompt's image scores' variance; None with one image a
    prompt), `all_yes` (the share of images that satisfy every question) and `unclean` (images not scored)."""
    by_item: dict = defaultdict(list)
    by_category: dict = defaultdict(list)
    graphs: dict = {}
    unclean, all_yes = 0, []
    for r in results:
        if r["correct"] is None:
            unclean += 1
            continue
        qs = graphs.get(r["metadata"]) or graphs.setdefault(r["metadata"], questions(json.loads(r["metadata"])))
        by_item[r["item"]].append(r["score"])
        all_yes.append(bool(r["correct"]))
        for q, a in zip(qs, r["answers"]):
            by_category[q.category].append(float(a))
    scores = [float(np.mean(v)) for v in by_item.values()]
    out = dpg.summarise(scores, by_category)
    se = None
    if by_item and all(len(v) > 1 for v in by_item.values()):
        se = float(sum(np.var(v, ddof=1) / len(v) for v in by_item.values()) ** 0.5 / len(by_item))
    out.update(prompts=len(by_item), images=len(all_yes), se=se,
               all_yes=float(np.mean(all_yes)) if all_yes else None)
    if unclean:
        out["unclean"] = unclean
    return out


@torch.no_grad()
def run_dpg(model, sampling, per_prompt: int = 4, seed: int = 0, limit: int | None = None,
            outdir: str | os.PathLike | None = None, progress: bool = True, rows: list[dict] | None = None,
            on_images: Callable[[int, dict, np.ndarray, list[dict]], None] | None = None) -> dict:
    """Generate `per_prompt` images per prompt with any model of the interface (seeded per prompt chunk, as every
    benchmark of gvu.eval.evaluate), judge each, summarise; with `outdir`, GenEval's layout and results.jsonl."""
    rows = spread(build_dpg() if rows is None else rows, limit)
    results = draw_and_judge(model, rows, per_prompt, seed, sampling=sampling, prompts_per_batch=PROMPTS_PER_BATCH,
                             judge=lambda img, row, index: {"item": index, **judge_dpg_pixels(img, row)},
                             outdir=outdir, progress=progress, on_images=on_images)
    if outdir is not None:
        write_results(Path(outdir) / "results.jsonl", results)
    return summarise(results)


def layout_kind(outdir: str | os.PathLike) -> str:
    """'dpg' for a GenEval-layout folder of dense prompts, 'geneval' for one of GenEval's rows; a mix is refused."""
    tags = {s.row.get("tag") == DPG_TAG for s in read_layout(outdir)}
    if len(tags) > 1:
        raise MetadataError("the folder mixes dense (dpg) prompts with GenEval's", outdir, None,
                            "judge DPG-shapes and GenEval-style images in separate folders")
    return "dpg" if tags == {True} else "geneval"


def judge_folder(outdir: str | os.PathLike, unclean: str = "refuse", progress: bool = True
                 ) -> tuple[list[dict], dict]:
    """Judge every image of a GenEval-layout folder of DPG-shapes prompts; an image that is not an exact render is
    refused or (`unclean="report"`) counted apart, as gvu.eval.judging.judge_folder does."""
    samples = read_layout(outdir)
    check_layout_rows(samples)
    results = []
    for s, px, bad in clean_images(samples, unclean, progress):
        r = ({"tag": DPG_TAG, "prompt": s.row["prompt"], "correct": None, "score": None,
              "reason": f"{UNCLEAN}: {bad} pixels off the palette", "metadata": json.dumps(s.row)} if bad
             else judge_dpg_pixels(px, s.row))
        results.append({"filename": str(s.path), "item": s.index, **r})
    return results, summarise(results)


def format_summary(summary: dict, title: str = "") -> str:
    lines = [title] if title else []
    for cat, v in summary["categories"].items():
        if v is not None:
            lines.append(f"  {cat:<9}  {v:6.3f}  ({summary['answers'][cat]} answers)")
    se = "" if summary.get("se") is None else f" ± {summary['se']:.3f}"
    lines.append(f"  {'overall':<9}  {summary['overall']:6.3f}{se}  (mean over {summary['prompts']} prompts of each "
                 "image's share of its questions, after DPG's parent rule)")
    lines.append(f"  {summary['all_yes']:.1%} of the {summary['images']} images satisfy every question")
    if summary.get("unclean"):
        lines.append(f"  {summary['unclean']} images {UNCLEAN} (not scored)")
    return "\n".join(lines)


def write_dpg_set(out: str | os.PathLike, rows: list[dict]) -> None:
    """A DPG-shapes set in both formats: GenEval's metadata (evaluation_metadata.jsonl, generation_prompts.txt: for
    gvu world render, generate and eval) and DPG-Bench's files (prompts/<item_id>.txt and dpg_bench.csv, the
    question graph in its columns)."""
    out = Path(out)
    write_metadata(out / "evaluation_metadata.jsonl", rows)
    write_prompts(out / "generation_prompts.txt", rows)
    ids = [item_id(i) for i in range(len(rows))]
    dpg.write_questions(out / "dpg_bench.csv", {i: dpg.Item(r["prompt"], tuple(questions(r))) for i, r in zip(ids, rows)})
    dpg.write_prompt_files(out / "prompts", {i: r["prompt"] for i, r in zip(ids, rows)})


def cmd_prompts_dpg(a) -> None:
    """`gvu prompts dpg`: DPG-shapes (--world shapes) or DPG-Bench's own prompts (--world coco, --csv its questions)."""
    out = Path(a.out)
    if a.world == "coco":
        if a.seed is not None or a.n is not None:
            raise ValueError("--world coco writes DPG-Bench's own 1,065 prompts; --seed and -n draw DPG-shapes sets "
                             "(--world shapes)")
        prompts = dpg.published_prompts()
        items = dpg.copy_question_file(a.csv, out / "dpg_bench.csv", set(prompts)) if a.csv else None
        dpg.write_prompt_files(out / "prompts", prompts)
        print(f"wrote DPG-Bench's {len(prompts)} prompts to {out}/prompts" + (
            f" and its question file ({sum(len(i.questions) for i in items.values())} questions) to "
            f"{out}/dpg_bench.csv" if items else "; its question file does not ship: --csv PATH checks and copies "
            "your copy of dpg_bench/dpg_bench.csv"))
        return
    if a.csv:
        raise ValueError("--csv reads DPG-Bench's own question file, for --world coco; --world shapes writes its "
                     "own question graph (dpg_bench.csv)")
    rows = build_dpg(SEED if a.seed is None else a.seed, a.n or N_PROMPTS)
    write_dpg_set(out, rows)
    print(f"wrote {len(rows)} DPG-shapes prompts to {out}: evaluation_metadata.jsonl, generation_prompts.txt, "
          f"dpg_bench.csv ({sum(len(questions(r)) for r in rows)} questions) and prompts/")


def cmd_judge(a) -> None:
    """`gvu judge DIR`: GenEval's rules on GenEval-style rows, DPG-Bench's on dense ones."""
    if layout_kind(a.dir) == "dpg":
        results, summary = judge_folder(a.dir, unclean=a.unclean)
        table = format_summary(summary, f"{a.dir} (DPG-shapes, {len(results)} images)")
    else:
        mode = "strict" if a.strict else "geneval"
        results, summary = judge_geneval(a.dir, mode=mode, unclean=a.unclean)
        table = format_geneval(summary, f"{a.dir} ({mode} mode, {len(results)} images)")
    if a.out:
        write_results(a.out, results)
    print(table)
