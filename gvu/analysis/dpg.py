"""DPG-Bench at the command line and in the demo's report.

- `gvu generate --dpg DIR`: any model's images of a folder of DPG-Bench prompt files in DPG-Bench's own layout (one
  `<item_id>.png` per prompt, a 2x2 grid of four samples), so that its official script scores a real model's
  images (`bash dpg_bench/dist_eval.sh OUTDIR RESOLUTION`, with its mPLUG answerer and its question file).
- The report's DPG-shapes section: before/after per category and overall, the gain with its 95% interval.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np

from gvu.eval.dpg import grid_2x2, L1_CATEGORIES, read_prompt_folder
from gvu.eval.evaluate import generate_layout
from gvu.eval.metadata import atomic_write_bytes
from gvu.models.load import load_model
from gvu.models.protocol import SamplingConfig
from gvu.rl.runfolder import check_path

SAMPLES = 4  # DPG-Bench's layout: four samples a prompt, one 2x2 grid


def claim_grid_folder(outdir: str | os.PathLike, overwrite: bool) -> Path:
    """An empty folder for DPG-Bench's layout, or with --overwrite one cleared of its PNGs: its scorer reads every
    file of the folder as a prompt's grid."""
    out = check_path(outdir, "--outdir")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--outdir {out} is a file, not a folder")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(p.name for p in entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ValueError(f"--outdir {out} is not empty ({shown}); DPG-Bench's scorer reads every file there: choose "
                         "an empty folder, or pass --overwrite to remove its PNGs first")
    for p in entries:
        if p.is_file() and p.suffix == ".png":
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def generate_dpg_layout(model, prompts: list[tuple[str, str]], outdir: str | os.PathLike, *, sampling, seed: int = 0,
                        prompts_per_batch: int = 8, progress: bool = True) -> int:
    """Four samples of each (item id, prompt), drawn as `gvu generate` draws (gvu.eval.evaluate.generate_layout),
    written as `<item_id>.png` grids. Returns the samples' resolution, the scorer's --resolution."""
    from PIL import Image

    sizes = set()

    def save(index: int, row: dict, images: np.ndarray) -> None:
        buf = io.BytesIO()
        Image.fromarray(grid_2x2(np.asarray(images))).save(buf, format="PNG")
        atomic_write_bytes(Path(outdir) / f"{row['item_id']}.png", buf.getvalue())
        sizes.add(int(images[0].shape[0]))

    rows = [{"prompt": text, "item_id": item_id} for item_id, text in prompts]
    generate_layout(model, rows, None, per_prompt=SAMPLES, seed=seed, sampling=sampling,
                    prompts_per_batch=prompts_per_batch, progress=progress, on_images=save)
    return sizes.pop() if len(sizes) == 1 else max(sizes)


def cmd_generate_dpg(a: argparse.Namespace) -> None:
    """`gvu generate --dpg DIR`: every prompt file of DIR, checked against the model's words before the first image."""
    if a.per_prompt != SAMPLES:
        raise ValueError(f"--per-prompt {a.per_prompt}: DPG-Bench's layout holds {SAMPLES} samples a prompt (a 2x2 "
                         f"grid); leave --per-prompt at {SAMPLES} with --dpg")
    prompts = read_prompt_folder(a.dpg)
    model = load_model(a.model)
    for item_id, text in prompts:
        try:
            model.tokenizer.encode(text)
        except ValueError as err:  # the built-in model's closed vocabulary
            raise ValueError(f"{Path(a.dpg) / (item_id + '.txt')}: {err}") from None
    out = claim_grid_folder(a.outdir, a.overwrite)
    sampling = SamplingConfig(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                              guidance=a.guidance)
    res = generate_dpg_layout(model, prompts, out, sampling=sampling, seed=a.seed, prompts_per_batch=a.batch)
    print(f"wrote {len(prompts)} grids of {SAMPLES} samples ({res}x{res} each) to {out} (DPG-Bench's layout); its "
          f"scorer: bash dpg_bench/dist_eval.sh {out} {res}")


# ------------------------------------------------------------------------------------------------ the report

def compare_dpg(before: dict, after: dict) -> dict:
    """`{"dpg": ...}`, DPG-shapes before/after: overall with standard errors and the gain's 95% interval, the five
    categories; `{}` unless both evaluations have it."""
    b, a = before.get("dpg"), after.get("dpg")
    if not b or not a:
        return {}
    se_b, se_a = b.get("se"), a.get("se")
    half = None if se_b is None or se_a is None else 1.96 * (se_b ** 2 + se_a ** 2) ** 0.5
    o = {"before": b["overall"], "after": a["overall"], "gain": a["overall"] - b["overall"],
         "relative": None if not b["overall"] else (a["overall"] - b["overall"]) / b["overall"],
         "se_before": se_b, "se_after": se_a, "gain_ci95_half_width": half}
    return {"dpg": {"overall": o, "categories": {c: {"before": b["categories"].get(c), "after": a["categories"].get(c)}
                                                 for c in L1_CATEGORIES},
                    "all_yes": {"before": b.get("all_yes"), "after": a.get("all_yes")},
                    "prompts": {"before": b.get("prompts"), "after": a.get("prompts")},
                    "images": {"before": b.get("images"), "after": a.get("images")}}}


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown_dpg(c: dict | None) -> list[str]:
    if not c:
        return []
    o = c["overall"]
    rel = "n/a" if o["relative"] is None else f"{100 * o['relative']:+.1f}%"
    lines = ["## DPG-shapes (dense prompts)", "",
             f"DPG-Bench's rules on {c['prompts']['before']} dense prompts of the shapes world (3-6 shapes with counts, "
             "colours, sizes, regions and relations; the exact judge answers every question): a category is the "
             "share of its questions satisfied, the overall the mean over prompts of each image's share after the "
             "parent rule. Neither the base's pretraining nor GvU's training prompts are dense: this asks whether "
             "what GvU teaches carries over to long prompts.", "",
             "| category | before | after |", "|---|---|---|"]
    lines += [f"| {k} | {_f(v['before'])} | {_f(v['after'])} |" for k, v in c["categories"].items()]
    if o["gain_ci95_half_width"] is None:
        lines += [f"| **overall** | **{o['before']:.3f}** | **{o['after']:.3f}** ({rel}) |", ""]
    else:
        half = o["gain_ci95_half_width"]
        verdict = ("GvU lifts DPG-shapes" if o["gain"] > half else "GvU lowers DPG-shapes" if o["gain"] < -half
                   else "The change lies inside the interval: no lift shown")
        lines += [f"| **overall** | **{o['before']:.3f}** ± {o['se_before']:.3f} | **{o['after']:.3f}** ± "
                  f"{o['se_after']:.3f} ({rel}) |", "",
                  f"Gain {o['gain']:+.3f}, 95% interval ± {half:.3f} (± is the standard error of the sampled images, "
                  f"{c['images']['before']} per evaluation). {verdict}.", ""]
    y = c["all_yes"]
    if y["before"] is not None and y["after"] is not None:
        lines += [f"Images that satisfy every question of their prompt: {y['before']:.1%} before, {y['after']:.1%} "
                  "after.", ""]
    return lines


def terminal_dpg(c: dict | None) -> list[str]:
    """The demo's terminal line for DPG-shapes: before -> after, and the gain's 95% interval where there is one."""
    if not c:
        return []
    o = c["overall"]
    gain = "" if o["gain_ci95_half_width"] is None else f" (gain {o['gain']:+.3f} ± {o['gain_ci95_half_width']:.3f})"
    return [f"DPG-shapes (dense prompts)  {o['before']:.3f} -> {o['after']:.3f}{gain}"]
