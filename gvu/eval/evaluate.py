"""Generate images for a benchmark with any model of the interface, judge them, summarise.

Seeds are fixed per prompt chunk, so the same model, benchmark and seed give the same images whatever else
ran before; evaluation during training and `gvu eval` therefore see identical draws.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gvu.eval.check import read_checked
from gvu.eval.drawing import draw_and_judge
from gvu.eval.dpg_shapes import build_dpg, format_summary as format_dpg, run_dpg
from gvu.eval.judging import format_summary, judge_pixels, summarise, write_results
from gvu.eval.layout import write_prompt_dir
from gvu.eval.metadata import atomic_write_text
from gvu.eval.prompts import build_geneval, build_genevalpp, build_val, spread, VAL_BENCHMARKS, VAL_EVAL_SEED
from gvu.eval.understanding import build_understanding_set, RELATIONS, run_understanding, UnderstandingSet

BENCHMARKS = ("geneval", "genevalpp", "dpg", *VAL_BENCHMARKS, "understanding")
"""The test benchmarks (GenEval-shapes, GenEval++-shapes, DPG-shapes: dense prompts, gvu.eval.dpg_shapes), the
validation benchmarks (GenEval's and GenEval++'s kinds on scenes in neither test set nor any training set:
docs/protocol.md) and the understanding benchmark."""
GROUPS = {"all": BENCHMARKS, "val": tuple(VAL_BENCHMARKS), "test": ("geneval", "genevalpp", "dpg")}
"""Names of several benchmarks at once: `gvu eval --benchmark val` runs both validation benchmarks."""


def benchmark_rows(name: str) -> list[dict]:
    if name == "geneval":
        return build_geneval("shapes")
    if name == "genevalpp":
        return build_genevalpp("shapes")
    if name in VAL_BENCHMARKS:
        return build_val("shapes", VAL_BENCHMARKS[name])
    if name == "dpg":
        return build_dpg()
    raise ValueError(f"unknown benchmark {name!r}")


def benchmark_seed(name: str, seed: int, val_seed: int = VAL_EVAL_SEED) -> int:
    """The evaluation seed a benchmark draws with: the validation benchmarks have their own, so no choice read
    from them sees the test numbers' draws."""
    return val_seed if name in VAL_BENCHMARKS else seed


def generate_and_judge(model, rows: list[dict], per_prompt: int = 4, seed: int = 0, *,
                       sampling, prompts_per_batch: int = 16,
                       outdir: str | os.PathLike | None = None, progress: bool = True,
                       on_images: Callable[[int, dict, np.ndarray, list[dict]], None] | None = None
                       ) -> tuple[list[dict], dict]:
    """Sample `per_prompt` images per row, judge each in geneval mode (and strict, as `correct_strict`). `sampling`
    is the model's SamplingConfig."""
    def judge(img, row, index):  # one detection for both verdicts
        return judge_pixels(img, row, "geneval", with_strict=True)

    results = draw_and_judge(model, rows, per_prompt, seed, sampling=sampling, judge=judge,
                             prompts_per_batch=prompts_per_batch, outdir=outdir, progress=progress,
                             on_images=on_images)
    summary = summarise(results)
    summary["strict_overall"] = summarise({**r, "correct": r["correct_strict"]} for r in results)["overall"]
    return results, summary


def run_benchmark(model, name: str, sampling, per_prompt: int = 4, seed: int = 0, limit: int | None = None,
                  outdir: str | os.PathLike | None = None, progress: bool = True, rows: list[dict] | None = None,
                  on_images: Callable | None = None, uset: UnderstandingSet | None = None) -> dict:
    """One benchmark on a model of the interface: `understanding` (matching accuracy, captions), GenEval-,
    GenEval++-style, DPG-shapes (`dpg`, DPG-Bench's rules: gvu.eval.dpg_shapes) or a metadata file's `rows`
    (dense rows scored as DPG-shapes), generated and judged. The summary `gvu eval` writes and the trainer's
    evaluation logs. `sampling` is the model's SamplingConfig; `uset` a prebuilt understanding set (the trainer
    builds its own once)."""
    if name == "understanding":
        return run_understanding(model, uset or build_understanding_set(limit=limit), captions=True,
                                 sign_limit=limit)
    if name == "dpg" or (rows and all(r["tag"] == "dpg" for r in rows)):
        return run_dpg(model, sampling, per_prompt, seed, limit, outdir, progress, rows, on_images)
    if rows is None:
        rows = benchmark_rows(name)
    results, summary = generate_and_judge(model, spread(rows, limit), per_prompt=per_prompt, seed=seed,
                                          sampling=sampling, outdir=outdir, progress=progress, on_images=on_images)
    if outdir is not None:
        write_results(Path(outdir) / "results.jsonl", results)
    return summary


def evaluate_model(model, benchmark: str = "all", *, sampling, per_prompt: int = 4, seed: int = 0,
                   val_seed: int = VAL_EVAL_SEED, out: str | os.PathLike | None = None, progress: bool = True,
                   limit: int | None = None) -> dict:
    """`gvu eval`: one benchmark, a group of them (all, val, test: GROUPS), or a shapes-world metadata file;
    summary.json in `out`. The validation benchmarks draw with `val_seed`, the others with `seed`. `limit` keeps
    that many prompts of each benchmark, spread over its tags (see gvu.eval.prompts.spread), for quick runs."""
    names = list(GROUPS.get(benchmark, [benchmark]))
    summary: dict = {}
    lines = []
    for name in names:
        rows = None
        if str(name).endswith(".jsonl"):
            # every row checked (the world, the model's words) before the first image, errors with file:line
            rows = read_checked(name, tokenizer=getattr(model, "tokenizer", None))
        elif name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {name!r}; use {', '.join(BENCHMARKS)}, {', '.join(GROUPS)} or a "
                             "shapes-world metadata FILE.jsonl")
        key = "file" if rows is not None else name
        key_seed = benchmark_seed(key, seed, val_seed)
        s = run_benchmark(model, key, sampling, per_prompt, key_seed, limit, Path(out) / key if out and
                          key != "understanding" else None, progress, rows)
        summary[key] = s
        lines.append(_format_understanding(s) if key == "understanding" else
                     format_dpg(s, f"{key} (DPG-shapes, {s['images']} images, seed {key_seed})") if "categories" in s
                     else format_summary(s, f"{key} ({sum(s['images'].values())} images, seed {key_seed})"))
    if out:
        atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=1) + "\n")
    summary["table"] = "\n".join(lines)
    return summary


def _format_understanding(u: dict) -> str:
    return ("understanding\n  matching accuracy  {:.3f}  ({} pairs)\n".format(u["overall"], u["pairs"])
            + "".join(f"    {k:<8} {v:.3f}\n" for k, v in u["by_perturbation"].items())
            + f"  caption truthfulness  {u['caption_truthfulness']:.3f}"
            + ("" if "relation_sign" not in u else "\n  relation sign  {:.3f}  ({} scenes: {})".format(
                u["relation_sign"]["all"], u["relation_sign"]["scenes"],
                ", ".join(f"{k} {u['relation_sign'][k]:.2f}" for k in RELATIONS if k in u["relation_sign"])))
            + ("" if "colour_binding" not in u else "\n  colour binding  {:.3f}  ({} scenes: the true colours above "
               "the swapped ones)".format(u["colour_binding"]["all"], u["colour_binding"]["scenes"])))


def row_seeds(seed: int, first_row: int, n: int) -> list[int]:
    """Decoder seeds of `n` image rows from row `first_row` on (rows = prompts x images per prompt, in order):
    decoders that draw (X-Omni's diffusion decoder) then give the same pixels for the same images, whatever the
    batch, and a resumed run decodes as the uninterrupted one."""
    return [seed * 1_000_003 + first_row + k for k in range(n)]


@torch.no_grad()
def generate_layout(model, rows: list[dict], outdir: str | os.PathLike | None, per_prompt: int = 4, seed: int = 0, *,
                    sampling, prompts_per_batch: int = 8, progress: bool = True,
                    on_images: Callable[[int, dict, np.ndarray], None] | None = None) -> int:
    """Images of any model in GenEval's folder layout, unjudged (score them with GenEval's or GenEval++'s own
    tools, or with `gvu judge` for the shapes world). Same seeding as generate_and_judge. `outdir` None writes
    nothing (a process that only samples); `on_images(index, row, images)` sees each prompt's images. Returns the
    count."""
    from tqdm import tqdm

    n = 0
    for start in tqdm(range(0, len(rows), prompts_per_batch), desc="generating", unit="batch", disable=not progress):
        chunk = rows[start:start + prompts_per_batch]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        rollout = model.sample([r["prompt"] for r in chunk], per_prompt, sampling, gen)
        seeds = row_seeds(seed, start * per_prompt, len(chunk) * per_prompt)
        pixels = model.decode(rollout.image_tokens_NT, prompts=rollout.row_prompts(), seeds=seeds)
        for j, row in enumerate(chunk):
            imgs = pixels[j * per_prompt:(j + 1) * per_prompt]
            if outdir is not None:
                write_prompt_dir(outdir, start + j, row, imgs)
            if on_images is not None:
                on_images(start + j, row, imgs)
            n += per_prompt
    return n
