"""The one sampling loop of the shapes-world benchmarks: a model of the interface draws `per_prompt` images per
prompt, in chunks whose generator is seeded by the chunk's first row (so the same model, rows and seed give the same
images whatever ran before, and evaluation during training and `gvu eval` see identical draws), and each image is
judged by the benchmark's own judge (GenEval's rules: gvu.eval.evaluate; DPG-Bench's: gvu.eval.dpg_shapes)."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from gvu.eval.layout import write_prompt_dir


@torch.no_grad()
def draw_and_judge(model, rows: list[dict], per_prompt: int, seed: int, *, sampling,
                   judge: Callable[[np.ndarray, dict, int], dict], prompts_per_batch: int = 16,
                   outdir: str | os.PathLike | None = None, progress: bool = True,
                   on_images: Callable[[int, dict, np.ndarray, list[dict]], None] | None = None) -> list[dict]:
    """Every image's verdict, `judge(pixels, row, row_index)` plus its `filename` in GenEval's layout (written under
    `outdir` when given); `on_images(index, row, images, verdicts)` sees each prompt's images."""
    from tqdm import tqdm

    results: list[dict] = []
    bar = tqdm(total=len(rows), desc="generating", unit="prompt", disable=not progress, leave=False)
    for start in range(0, len(rows), prompts_per_batch):
        chunk = rows[start:start + prompts_per_batch]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        pixels = model.decode(model.sample([r["prompt"] for r in chunk], per_prompt, sampling, gen).image_tokens_NT)
        for j, row in enumerate(chunk):
            imgs = pixels[j * per_prompt:(j + 1) * per_prompt]
            rs = [{**judge(img, row, start + j), "filename": f"{start + j:05d}/samples/{k:04d}.png"}
                  for k, img in enumerate(imgs)]
            if outdir is not None:
                write_prompt_dir(outdir, start + j, row, imgs)
            if on_images is not None:
                on_images(start + j, row, imgs, rs)
            results.extend(rs)
        bar.update(len(chunk))
    bar.close()
    return results
