"""Generate images for a benchmark with any model of the interface, judge them, summarise.

Seeds are fixed per prompt chunk, so the same model, benchmark and seed give the same images whatever else
ran before; evaluation during training and `gvu eval` therefore see identical draws.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from gvu.bench.judging import judge_pixels, summarise
from gvu.bench.layout import write_prompt_dir
from gvu.models.protocol import SamplingConfig

BENCHMARKS = ("geneval", "genevalpp", "understanding")


def spread(rows: list, limit: int | None) -> list:
    """`limit` rows spread evenly over the list, or all of them. Every tag keeps its share, and at least one row
    while `limit` is at least the number of tags (even spacing over the whole list skips small tags: 8 of
    GenEval-shapes' 319 rows missed `counting`, so its per-tag table and overall lost a tag)."""
    if not limit or limit >= len(rows):
        return rows
    by_tag: dict = {}
    for i, r in enumerate(rows):
        by_tag.setdefault(r.get("tag") if isinstance(r, dict) else None, []).append(i)
    if limit < len(by_tag):
        return [rows[int(i)] for i in np.linspace(0, len(rows) - 1, limit).round()]
    share = {t: limit * len(idx) / len(rows) for t, idx in by_tag.items()}
    take = {t: max(1, int(s)) for t, s in share.items()}
    while sum(take.values()) > limit:  # the minimum of one pushed the total over: trim the most over-served
        t = max((t for t in take if take[t] > 1), key=lambda t: take[t] - share[t])
        take[t] -= 1
    while sum(take.values()) < limit:  # largest remainders first
        t = max((t for t in take if take[t] < len(by_tag[t])), key=lambda t: share[t] - take[t])
        take[t] += 1
    keep = sorted(by_tag[t][int(j)] for t, idx in by_tag.items()
                  for j in np.linspace(0, len(idx) - 1, take[t]).round())
    return [rows[i] for i in keep]


def benchmark_rows(name: str) -> list[dict]:
    from gvu.bench.prompts import build_geneval, build_genevalpp

    if name == "geneval":
        return build_geneval("shapes")
    if name == "genevalpp":
        return build_genevalpp("shapes")
    raise ValueError(f"unknown benchmark {name!r}")


@torch.no_grad()
def generate_and_judge(model, rows: list[dict], per_prompt: int = 4, seed: int = 0,
                       sampling: SamplingConfig | None = None, prompts_per_batch: int = 16,
                       outdir: str | os.PathLike | None = None, progress: bool = True,
                       on_images: Callable[[int, dict, np.ndarray, list[dict]], None] | None = None
                       ) -> tuple[list[dict], dict]:
    """Sample `per_prompt` images per row, judge each in geneval mode (and strict, as `correct_strict`)."""
    from tqdm import tqdm

    sampling = sampling or SamplingConfig()
    results: list[dict] = []
    bar = tqdm(total=len(rows), desc="generating", unit="prompt", disable=not progress, leave=False)
    for start in range(0, len(rows), prompts_per_batch):
        chunk = rows[start:start + prompts_per_batch]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        rollout = model.sample([r["prompt"] for r in chunk], per_prompt, sampling, gen)
        pixels = model.decode(rollout.image_tokens_NT)
        for j, row in enumerate(chunk):
            imgs = pixels[j * per_prompt:(j + 1) * per_prompt]
            rs = []
            for k, img in enumerate(imgs):
                r = judge_pixels(img, row, "geneval")
                r["correct_strict"] = judge_pixels(img, row, "strict")["correct"]
                r["filename"] = f"{start + j:05d}/samples/{k:04d}.png"
                rs.append(r)
            if outdir is not None:
                write_prompt_dir(outdir, start + j, row, imgs)
            if on_images is not None:
                on_images(start + j, row, imgs, rs)
            results.extend(rs)
        bar.update(len(chunk))
    bar.close()
    summary = summarise(results)
    summary["strict_overall"] = summarise({**r, "correct": r["correct_strict"]} for r in results)["overall"]
    return results, summary


def evaluate_model(model_spec, benchmark: str = "all", per_prompt: int = 4, seed: int = 0,
                   out: str | os.PathLike | None = None, guidance: float = 1.0, progress: bool = True,
                   limit: int | None = None) -> dict:
    """`gvu eval`: run one benchmark, all three, or a shapes-world metadata file; write summary.json.
    `limit` keeps that many prompts of each benchmark, spread over its tags (see `spread`), for quick runs."""
    import json
    from pathlib import Path

    from gvu.bench.judging import format_summary, write_results
    from gvu.bench.metadata import atomic_write_text
    from gvu.bench.understanding import run_understanding
    from gvu.models.load import load_model

    model = load_model(model_spec) if isinstance(model_spec, (str, os.PathLike)) else model_spec
    names = list(BENCHMARKS) if benchmark == "all" else [benchmark]
    summary: dict = {}
    lines = []
    sampling = SamplingConfig(guidance=guidance)
    for name in names:
        if name == "understanding":
            from gvu.bench.understanding import build_understanding_set

            u = run_understanding(model, build_understanding_set(limit=limit))
            summary["understanding"] = u
            lines.append("understanding\n  matching accuracy  {:.3f}  ({} pairs)\n".format(u["overall"], u["pairs"])
                         + "".join(f"    {k:<8} {v:.3f}\n" for k, v in u["by_perturbation"].items())
                         + f"  caption truthfulness  {u['caption_truthfulness']:.3f}")
            continue
        if name in BENCHMARKS:
            key, rows = name, benchmark_rows(name)
        elif str(name).endswith(".jsonl"):
            from gvu.bench.check import read_checked

            # every row checked (the world, the model's words) before the first image, errors with file:line
            key, rows = "file", read_checked(name, tokenizer=getattr(model, "tokenizer", None))
        else:
            raise ValueError(f"unknown benchmark {name!r}; use geneval, genevalpp, understanding, all or a "
                             "shapes-world metadata FILE.jsonl")
        rows = spread(rows, limit)
        img_dir = Path(out) / key if out else None
        results, s = generate_and_judge(model, rows, per_prompt=per_prompt, seed=seed, sampling=sampling,
                                        outdir=img_dir, progress=progress)
        if img_dir is not None:
            write_results(img_dir / "results.jsonl", results)
        summary[key] = s
        lines.append(format_summary(s, f"{key} ({len(results)} images, seed {seed})"))
    if out:
        atomic_write_text(Path(out) / "summary.json", json.dumps(summary, indent=1) + "\n")
    summary["table"] = "\n".join(lines)
    return summary


@torch.no_grad()
def generate_layout(model, rows: list[dict], outdir: str | os.PathLike, per_prompt: int = 4, seed: int = 0,
                    sampling: SamplingConfig | None = None, prompts_per_batch: int = 8, progress: bool = True) -> int:
    """Images of any model in GenEval's folder layout, unjudged (score them with GenEval's or GenEval++'s own
    tools, or with `gvu judge` for the shapes world). Same seeding as generate_and_judge. Returns the count."""
    from tqdm import tqdm

    sampling = sampling or SamplingConfig()
    n = 0
    for start in tqdm(range(0, len(rows), prompts_per_batch), desc="generating", unit="batch", disable=not progress):
        chunk = rows[start:start + prompts_per_batch]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        rollout = model.sample([r["prompt"] for r in chunk], per_prompt, sampling, gen)
        seeds = [seed * 1_000_003 + (start + j) * per_prompt + k for j in range(len(chunk)) for k in range(per_prompt)]
        pixels = model.decode(rollout.image_tokens_NT, prompts=rollout.row_prompts(), seeds=seeds)
        for j, row in enumerate(chunk):
            write_prompt_dir(outdir, start + j, row, pixels[j * per_prompt:(j + 1) * per_prompt])
            n += per_prompt
    return n
