"""The paper's Fig. 8 study: does the intrinsic reward depend on the words that carry a prompt's facts?

For a fixed set of images -- ground-truth renders of the GenEval++-shapes prompts (counts, colours, regions)
AND the model's own samples of the same prompts -- the reward is recomputed with prompts whose count, colour
and region descriptors are removed, alone and in every combination. If the understanding branch reads those
facts from the image, dropping the words that state them should lower the reward (the paper: every removal
lowers it, region most).

Ablated prompts are built from the metadata through the grammar, never by editing text: the field is removed
from each include item and `render_prompt` writes the sentence, so articles and plurals stay right
("an orange star" -> "a star"). Removing a count: a number above one becomes a bare plural ("four stars" ->
"stars"), and GenEval++'s "one star" becomes "a star" (an article is not a count word; English needs one).
An ablation applies to a prompt only where it changes the text, and each ablation is compared with the
original prompts on the SAME images ('drop'), so a mean over a different mix of prompts never passes for an
effect. Combinations apply where any of their fields is present.

Left out: the position tag's relation words (GenEval++ has none; its spatial facts are regions), and sizes.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from gvu.eval.metadata import atomic_write_text
from gvu.eval.plots import bar_chart
from gvu.eval.prompts import build_genevalpp
from gvu.models.load import load_model
from gvu.models.protocol import SamplingConfig
from gvu.reward import intrinsic_reward, RewardConfig
from gvu.world.grammar import COUNTED_TAGS, render_prompt
from gvu.world.scene import realise, scene_tokens

if TYPE_CHECKING:  # stdlib only at import time: gvu.cli builds its parser from `register` below
    import torch

FIELDS = ("count", "color", "region")
# 'none', the single fields, then pairs and the triple; a combination is named by its sorted fields joined by '+'
ABLATIONS = ("none",) + tuple("+".join(sorted(c)) for k in (1, 2, 3) for c in itertools.combinations(FIELDS, k))
SOURCES = ("ground_truth", "samples")


def ablate(row: dict, fields: tuple[str, ...] | list[str]) -> dict:
    """The row with `fields` removed from every include item (see the module docstring for counts), with its
    `prompt` re-rendered. `tag` is kept; the returned row is for scoring text, not for judging."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown ablation fields {sorted(unknown)}; known: {FIELDS}")
    out = copy.deepcopy(row)
    counted = row.get("tag") in COUNTED_TAGS
    for it in out["include"]:
        if "count" in fields and it.get("count", 1) > 1:
            it["count"] = None  # bare plural
        if "color" in fields:
            it.pop("color", None)
        if "region" in fields:
            it.pop("region", None)
    # render_prompt writes number words for every item of a counted tag; without counts the row speaks like
    # the uncounted tags ("a star"), so render it under a tag that is not counted
    render_row = dict(out, tag="_ablated") if counted and "count" in fields else out
    out["prompt"] = render_prompt(render_row)
    return out


def ablated_prompts(row: dict) -> dict[str, str]:
    """{ablation name: prompt text} for the ablations that change this row's text ('none' always)."""
    original = render_prompt(row)
    out = {"none": original}
    for name in ABLATIONS[1:]:
        text = ablate(row, tuple(name.split("+")))["prompt"]
        if text != original:
            out[name] = text
    return out


def study_images(model, rows: list[dict], per_prompt: int = 2, seed: int = 0,
                 prompts_per_batch: int = 16) -> dict[str, torch.Tensor]:
    """Image codes [len(rows) * per_prompt, T] per source, row-major (image k of row i at i * per_prompt + k):
    ground-truth scenes (row i's depend only on (seed, i), as `gvu world render`) and the model's samples."""
    import numpy as np
    import torch

    gt = []
    for i, row in enumerate(rows):
        rng = np.random.default_rng([seed, i])
        gt += [scene_tokens(realise(row, rng)) for _ in range(per_prompt)]
    samples = []
    for start in range(0, len(rows), prompts_per_batch):
        chunk = rows[start:start + prompts_per_batch]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        samples.append(model.sample([r["prompt"] for r in chunk], per_prompt, SamplingConfig(), gen)
                       .image_tokens_NT.cpu())
    return {"ground_truth": torch.as_tensor(np.stack(gt)), "samples": torch.cat(samples)}


def score_ablations(model, rows: list[dict], images: dict[str, torch.Tensor], per_prompt: int,
                    cfg: RewardConfig | None = None) -> list[dict]:
    """One record per image: source, row index, tag, and the reward under every ablation that applies."""
    cfg = cfg or RewardConfig()
    if cfg.variant in ("contrastive", "blend"):
        raise ValueError(f"the {cfg.variant} variant needs metadata for its hard negatives, which ablated prompts "
                         "do not have; run the sensitivity study with the geomean or content variant")
    prompts_of = [ablated_prompts(r) for r in rows]
    records = []
    for source, codes in images.items():
        if codes.shape[0] != len(rows) * per_prompt:
            raise ValueError(f"{source}: {codes.shape[0]} images for {len(rows)} prompts x {per_prompt}")
        img_idx, texts, keys = [], [], []
        for n in range(codes.shape[0]):
            i = n // per_prompt
            records.append({"source": source, "row": i, "tag": rows[i]["tag"], "rewards": {}})
            for name, text in prompts_of[i].items():
                img_idx.append(n)
                texts.append(text)
                keys.append((len(records) - 1, name))
        reward = intrinsic_reward(model, codes[img_idx], texts, cfg).reward_N.tolist()
        for (rec, name), r in zip(keys, reward):
            records[rec]["rewards"][name] = float(r)
    return records


def _stats(records: list[dict], name: str) -> dict:
    import numpy as np

    sel = [r for r in records if name in r["rewards"]]
    if not sel:
        return {"mean": None, "none_same_prompts": None, "drop": None, "relative_drop": None, "prompts": 0,
                "images": 0}
    mean = float(np.mean([r["rewards"][name] for r in sel]))
    base = float(np.mean([r["rewards"]["none"] for r in sel]))
    return {"mean": mean, "none_same_prompts": base, "drop": base - mean,
            "relative_drop": (base - mean) / base if base > 0 else None,
            "prompts": len({(r["source"], r["row"]) for r in sel}), "images": len(sel)}


def _vs_parts(records: list[dict], name: str) -> dict:
    """A combination against each of its single fields on the very same images (paired): the mean reward of
    each, and the fraction of images where removing them together scores below removing any one alone."""
    import numpy as np

    parts = name.split("+")
    if not records:
        return {"images": 0, "mean": None, "parts": {}, "frac_below_every_part": None}
    combo = np.array([r["rewards"][name] for r in records])
    singles = {f: np.array([r["rewards"][f] for r in records]) for f in parts}
    below = np.all(np.stack([combo < v for v in singles.values()]), axis=0)
    return {"images": len(records), "mean": float(combo.mean()),
            "parts": {f: float(v.mean()) for f, v in singles.items()},
            "frac_below_every_part": float(below.mean())}


def summarise(records: list[dict]) -> dict:
    """Per ablation: pooled over both sources, per source and per tag (prompts counted per source), and for a
    combination also on the prompts that hold every one of its fields (`all_fields`: where each field alone
    changes the text), which isolates the combined effect from the mix of prompts, and paired against its single
    fields on those same images (`vs_parts`)."""
    tags = sorted({r["tag"] for r in records})
    out = {}
    for name in ABLATIONS:
        s = _stats(records, name)
        if "+" in name:
            both = [r for r in records if all(f in r["rewards"] for f in name.split("+"))]
            s["all_fields"] = _stats(both, name)
            s["vs_parts"] = _vs_parts(both, name)
        s["by_source"] = {src: _stats([r for r in records if r["source"] == src], name) for src in SOURCES
                          if any(r["source"] == src for r in records)}
        s["by_tag"] = {t: st for t in tags if (st := _stats([r for r in records if r["tag"] == t], name))["images"]}
        out[name] = s
    return out


def format_table(summary: dict, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"  {'ablation':<20} {'reward':>9} {'original':>9} {'drop':>9} {'rel drop':>8} {'prompts':>7}")
    for name, s in summary.items():
        if s["mean"] is None:
            lines.append(f"  {name:<20} {'(applies to no prompt)':>40}")
            continue
        rel = f"{100 * s['relative_drop']:7.1f}%" if s["relative_drop"] is not None else f"{'-':>8}"
        lines.append(f"  {name:<20} {s['mean']:9.4g} {s['none_same_prompts']:9.4g} {s['drop']:9.3g} {rel} "
                     f"{s['prompts']:7d}")
    lines.append("  (original: the unablated prompts on the same images; prompts counted once per image source)")
    return "\n".join(lines)


def plot(summary: dict, path: str | os.PathLike, title: str = "") -> Path:
    names = [n for n in ABLATIONS if summary[n]["mean"] is not None]
    values = [summary[n]["mean"] for n in names]
    reference = [None if n == "none" else summary[n]["none_same_prompts"] for n in names]
    notes = ["" if n == "none" else f"{-summary[n]['drop']:+.2g}" + (
        f"\n({-100 * summary[n]['relative_drop']:+.1f}%)" if summary[n]["relative_drop"] is not None else "")
        for n in names]
    labels = ["original" if n == "none" else f"w/o {n}" for n in names]
    return bar_chart(labels, values, path, reference=reference, annotations=notes, ylabel="mean reward",
                     title=title or "Reward with prompt descriptors removed", value_label="ablated prompt",
                     reference_label="original prompt, same images")


def run_sensitivity(model, out: str | os.PathLike | None = None, per_prompt: int = 2, seed: int = 0,
                    prompts_per_tag: int = 40, cfg: RewardConfig | None = None) -> dict:
    """The whole study on GenEval++-shapes. Writes DIR/sensitivity.json ({ablation: mean reward}),
    DIR/sensitivity_details.json and DIR/sensitivity.png when `out` is given. Returns the summary."""
    cfg = cfg or RewardConfig()

    rows = build_genevalpp("shapes", n=prompts_per_tag)
    images = study_images(model, rows, per_prompt=per_prompt, seed=seed)
    summary = summarise(score_ablations(model, rows, images, per_prompt, cfg))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "sensitivity.json",
                          json.dumps({n: s["mean"] for n, s in summary.items()}, indent=1) + "\n")
        details = {"config": {"prompts": len(rows), "prompts_per_tag": prompts_per_tag, "per_prompt": per_prompt,
                              "seed": seed, "variant": cfg.variant, "instruction": cfg.instruction,
                              "sources": list(images)},
                   "ablations": summary}
        atomic_write_text(out / "sensitivity_details.json", json.dumps(details, indent=1) + "\n")
        plot(summary, out / "sensitivity.png")
    return summary


# ---------------------------------------------------------------------------------------------------- CLI

def cmd_sensitivity(a: argparse.Namespace) -> None:
    model = load_model(a.model)
    cfg = RewardConfig(variant=a.variant, micro_batch=a.micro_batch)
    summary = run_sensitivity(model, a.out, per_prompt=a.per_prompt, seed=a.seed,
                              prompts_per_tag=a.prompts_per_tag, cfg=cfg)
    print(format_table(summary, f"reward sensitivity of {a.model} ({a.variant}; GenEval++-shapes ground truth "
                                f"and samples, {a.per_prompt} per prompt)"))
    if a.out:
        print(f"wrote {Path(a.out) / 'sensitivity.json'}, sensitivity_details.json and sensitivity.png")
