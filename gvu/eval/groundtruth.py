"""Ground-truth renders of a prompt set in GenEval's layout: the ceiling every model is measured against."""

from __future__ import annotations

import os

import numpy as np

from gvu.eval.layout import write_prompt_dir
from gvu.world.dense import DPG_TAG, realise_dense
from gvu.world.render import decode
from gvu.world.scene import realise, scene_tokens


def render_ground_truth(rows: list[dict], outdir: str | os.PathLike, per_prompt: int = 4, seed: int = 0,
                        progress: bool = True) -> None:
    """`per_prompt` random scenes that satisfy each row (a dense one: every question of its graph); prompt i's scenes
    depend only on (seed, i)."""
    from tqdm import tqdm

    for i, row in enumerate(tqdm(rows, desc="rendering", unit="prompt", disable=not progress)):
        rng = np.random.default_rng([seed, i])
        draw = realise_dense if row["tag"] == DPG_TAG else realise
        tokens = np.stack([scene_tokens(draw(row, rng)) for _ in range(per_prompt)])
        write_prompt_dir(outdir, i, row, decode(tokens))
