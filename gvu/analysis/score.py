"""`gvu score`: the intrinsic reward of every image of a GenEval-layout folder, and how well it ranks correct
images above incorrect ones (ROC AUC) where the folder is a shapes-world benchmark the exact judge can read.

Images are read as pixels, so the model re-encodes them (reward image path 'pixels'), as the published code
scores decoded images. Which model scores:

- `policy`: the model given by --model;
- `reference`: the frozen model that model was trained from. For a plain model folder (`gvu pretrain` output)
  there is nothing else, so the reference IS the model and both scorers agree. Only `gvu train` outputs hold a
  separate base, found in this order: a `reference/` model folder (or link) next to `final/`; the
  `trained_from` (or `base`) entry of the model's gvu.json; the `model` entry of the run's config.yaml. A path
  recorded there is tried as given (relative to the directory training ran from), then relative to the run
  folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from urllib.parse import urlencode

from gvu.eval.check import check_layout_rows
from gvu.eval.judging import check_size, off_palette, wrapped_shape
from gvu.eval.layout import iter_layout, load_image
from gvu.eval.metadata import atomic_write_text
from gvu.eval.quality import auc, auc_by_tag, format_auc, within_group_auc
from gvu.models.builtin.model import GVU_FILE
from gvu.models.load import folder_spec, load_model
from gvu.reward import SCORERS, RewardConfig, intrinsic_reward
from gvu.world import spec
from gvu.world.detect import detect
from gvu.world.judge import COLOUR_OUTCOMES, RELATION_OUTCOMES, colour_outcome, evaluate, relation_outcome

SCORE_FIELDS = ("filename", "prompt", "tag", "reward", "correct")


# ------------------------------------------------------------------------------------------ which model

def _is_model(path: Path) -> bool:
    return (path / GVU_FILE).is_file() or (path / "final" / GVU_FILE).is_file()


def _recorded_base(run: Path, model_dir: Path) -> list[str]:
    """Paths a train output records as its starting model, most explicit first."""
    found = []
    info = json.loads((model_dir / GVU_FILE).read_text()) if (model_dir / GVU_FILE).is_file() else {}
    found += [info[k] for k in ("trained_from", "base") if isinstance(info.get(k), str) and info[k]]
    if (run / "config.yaml").is_file():
        import yaml

        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        if isinstance(cfg, dict) and isinstance(cfg.get("model"), str) and cfg["model"]:
            found.append(cfg["model"])
    return found


def resolve_scorer(spec: str | os.PathLike, scorer: str = "policy") -> tuple[str, str]:
    """(model spec to load, one line saying what it is) for a scorer of a model spec. A folder's
    `?trust_remote_code=1` (the user's consent) goes to its reference as well."""
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")
    if scorer == "policy":
        return str(spec), f"policy: {spec}"
    folder, options = folder_spec(str(spec))
    path, what = _reference(folder)
    return path + (f"?{urlencode(options)}" if options else ""), what


def _reference(spec: str) -> tuple[str, str]:
    run = Path(spec)
    is_train_output = (run / "final" / GVU_FILE).is_file()
    model_dir = run / "final" if is_train_output else run
    if _is_model(run / "reference"):
        return str(run / "reference"), f"reference: {run / 'reference'}"
    tried = []
    for base in (b.split("?", 1)[0] for b in _recorded_base(run, model_dir)):  # a record's options: not consent
        for cand in (Path(base), run / base):
            tried.append(str(cand))
            if _is_model(cand):
                return str(cand), f"reference: {cand} (the model {spec} was trained from)"
    if tried:
        raise ValueError(f"{spec} records its base model as {', '.join(dict.fromkeys(tried))}, but no model is "
                         f"there; link the base as {run / 'reference'} or score with --scorer policy")
    if is_train_output:
        raise ValueError(f"{spec} is a training output with no record of its base model; link the base as "
                         f"{run / 'reference'} or score with --scorer policy")
    return str(spec), f"reference: {spec} itself (a plain model folder holds no separate base)"


def load_scorer(spec: str | os.PathLike, scorer: str = "policy", device: str | None = None):
    """(model, description) for `gvu score --model SPEC --scorer SCORER`."""
    path, what = resolve_scorer(spec, scorer)
    return load_model(path, device=device), what


# ------------------------------------------------------------------------------------------------ scoring

def is_shapes_benchmark(row: dict, pixels) -> bool:
    """True where the exact judge can read the image: a 96x96 shapes-world render of a prompt about shapes."""
    items = list(row.get("include", [])) + list(row.get("exclude", []))
    return pixels.shape == (spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3) and all(it.get("class") in spec.SHAPES
                                                                        for it in items)


def score_folder(model, outdir: str | os.PathLike, cfg: RewardConfig | None = None, seed: int = 0,
                 progress: bool = False) -> list[dict]:
    """One record per image of a GenEval-layout folder: filename (relative to the folder), prompt, tag, reward,
    index, sample, and where the folder is a shapes-world benchmark: `correct` (exact judge, geneval mode),
    `correct_strict` (strict mode: exact counts, so an extra copy is wrong) and `malformed` (blobs the detector
    found but could not read as a shape: half-drawn objects) and `wrapped` (the image holds a large object wrapped
    across the row edge, the commonest half-drawn shape: gvu.world.scene.wrapped_rows).
    `cfg.image_path` is forced to 'pixels' (the images ARE pixels); `cfg.micro_batch` images are loaded and
    scored at a time. `seed` draws the contrastive variant's negatives."""
    import numpy as np
    from tqdm import tqdm

    cfg = dataclasses.replace(cfg or RewardConfig(), image_path="pixels")
    outdir = Path(outdir)
    samples = list(iter_layout(outdir))
    # every prompt folder's row before the first forward pass: tags, the world (built-in model), its words
    check_layout_rows(samples, world=getattr(model, "world", None) == "shapes",
                      tokenizer=getattr(model, "tokenizer", None))
    rng = np.random.default_rng(seed)
    records: list[dict] = []
    bar = tqdm(total=len(samples), desc="scoring", unit="img", disable=not progress)
    for start in range(0, len(samples), cfg.micro_batch):
        chunk = samples[start:start + cfg.micro_batch]
        pixels = [load_image(s.path) for s in chunk]
        shapes = {p.shape for p in pixels}
        if len(shapes) > 1:
            raise ValueError(f"{outdir}: images of different sizes {sorted(shapes)}; the reward reads one size")
        rows = [s.row for s in chunk]
        reward = intrinsic_reward(model, np.stack(pixels), [r["prompt"] for r in rows], cfg, rows=rows, rng=rng)
        for s, px, r in zip(chunk, pixels, reward.reward_N.tolist()):
            rec = {"filename": s.path.relative_to(outdir).as_posix(), "prompt": s.row["prompt"],
                   "tag": s.row["tag"], "reward": float(r), "index": s.index, "sample": s.sample_index}
            if is_shapes_benchmark(s.row, px) and off_palette(px):
                rec["clean"] = False  # not an exact render: no verdict, counted apart (gvu.eval.judging)
            elif is_shapes_benchmark(s.row, px):
                check_size(px, s.path)
                dets = detect(px)
                rec.update(correct=evaluate(dets, s.row, "geneval").correct,
                           correct_strict=evaluate(dets, s.row, "strict").correct, malformed=int(dets.malformed),
                           wrapped=wrapped_shape(px))
                colours, relation = colour_outcome(dets, s.row), relation_outcome(dets, s.row)
                if colours is not None:
                    rec["colour_outcome"] = colours
                if relation is not None:
                    rec["relation_outcome"] = list(relation)
            records.append(rec)
        bar.update(len(chunk))
    bar.close()
    return records


def _tag_auc(sel: list[dict], label: str, keep=lambda r: True) -> float | None:
    """AUC of the reward against `label` over the records of `sel` that hold it and pass `keep`."""
    import numpy as np

    sel = [r for r in sel if label in r and keep(r)]
    return auc(np.asarray([r["reward"] for r in sel], dtype=float), np.asarray([r[label] for r in sel], dtype=bool))


def summarise_scores(records: list[dict]) -> dict:
    """Mean reward; where judged: accuracy, pooled AUC overall and per tag, and within-prompt AUC. Per tag also
    `auc_strict` (against the strict verdict: GenEval's rule takes "a cross" as at least one, the judge reads
    exactly one) and `auc_well_formed` (only images with no malformed blob), which tell a judge that misreads
    from a painter whose drawings it was never taught, or a metric more lenient than the words."""
    import numpy as np

    rewards = np.array([r["reward"] for r in records], dtype=float)
    out: dict = {"images": len(records), "mean_reward": float(rewards.mean()) if len(records) else None}
    judged = [r for r in records if "correct" in r]
    out["judged"] = len(judged)
    out["unclean"] = sum(1 for r in records if r.get("clean") is False)
    wrapped = [r["wrapped"] for r in records if "wrapped" in r]
    out["wrapped_fraction"] = float(np.mean(wrapped)) if wrapped else None
    if not judged:
        return out
    s = [r["reward"] for r in judged]
    y = [r["correct"] for r in judged]
    a = auc_by_tag(s, y, [r["tag"] for r in judged])
    wg, groups = within_group_auc(s, y, [r["index"] for r in judged])
    tags = {}
    for tag in a["tags"]:
        sel = [r for r in judged if r["tag"] == tag]
        good = [r["reward"] for r in sel if r["correct"]]
        bad = [r["reward"] for r in sel if not r["correct"]]
        tags[tag] = {"auc": a["tags"][tag], "images": len(sel), "accuracy": len(good) / len(sel),
                     "mean_reward_correct": float(np.mean(good)) if good else None,
                     "mean_reward_incorrect": float(np.mean(bad)) if bad else None,
                     "auc_strict": _tag_auc(sel, "correct_strict"),
                     "auc_well_formed": _tag_auc(sel, "correct", lambda r: r.get("malformed") == 0),
                     "malformed_incorrect": sum(1 for r in sel if not r["correct"] and r.get("malformed", 0) > 0)}
    out.update(accuracy=float(np.mean(y)), auc=a["overall"], within_prompt_auc=wg, within_prompt_groups=groups,
               tags=tags, reward_by_outcome=reward_by_outcome(judged))
    return out


def reward_by_outcome(records: list[dict]) -> dict:
    """The mean reward of the images by how a two-colour binding came out ('colours': as asked, swapped, ...,
    gvu.world.judge.colour_outcome) and by how each relation came out ('left of', ...: as asked, reversed, ...):
    whether the reward ranks the right binding or side above the wrong one, and the wrong ones among themselves
    (a reward that prefers a missing object to a swapped one teaches dropping it). Outcomes with no image are left
    out."""
    import numpy as np

    groups: dict[str, dict[str, list[float]]] = {}
    for r in records:
        if "colour_outcome" in r:
            groups.setdefault("colours", {}).setdefault(r["colour_outcome"], []).append(r["reward"])
        if "relation_outcome" in r:
            rel, outcome = r["relation_outcome"]
            groups.setdefault(rel, {}).setdefault(outcome, []).append(r["reward"])
    order = lambda g: COLOUR_OUTCOMES if g == "colours" else RELATION_OUTCOMES  # noqa: E731
    return {g: {o: {"images": len(v[o]), "mean_reward": float(np.mean(v[o]))} for o in order(g) if o in v}
            for g, v in sorted(groups.items(), key=lambda kv: (kv[0] != "colours", kv[0]))}


def format_scores(summary: dict, title: str = "") -> str:
    lines = [title] if title else []
    if not summary["images"]:
        return "\n".join(lines + ["  no images"])
    lines.append(f"  {summary['images']} images, mean reward {summary['mean_reward']:.4g}")
    if summary.get("wrapped_fraction") is not None:
        lines.append(f"  {summary['wrapped_fraction']:.1%} of the judged images hold a large object wrapped across the "
                     "row edge (a half-drawn shape)")
    if summary.get("unclean"):
        lines.append(f"  {summary['unclean']} images not a clean render: no exact verdict, left out of the AUC")
    if not summary["judged"]:
        lines.append("  not a shapes-world benchmark: no exact verdicts, so no AUC")
        return "\n".join(lines)
    width = max([len(t) for t in summary["tags"]] + [len("overall")])
    lines.append(f"  {'tag':<{width}}  {'AUC':>5}  {'acc':>5}  {'images':>6}  {'r|correct':>9}  {'r|wrong':>9}  "
                 f"{'strict':>6}  {'formed':>6}")
    fmt = lambda v: f"{v:9.4g}" if v is not None else f"{'-':>9}"  # noqa: E731
    for tag, t in summary["tags"].items():
        lines.append(f"  {tag:<{width}}  {format_auc(t['auc'])}  {t['accuracy']:5.3f}  {t['images']:6d}  "
                     f"{fmt(t['mean_reward_correct'])}  {fmt(t['mean_reward_incorrect'])}  "
                     f" {format_auc(t.get('auc_strict'))}   {format_auc(t.get('auc_well_formed'))}")
    lines.append(f"  {'overall':<{width}}  {format_auc(summary['auc'])}  {summary['accuracy']:5.3f}  "
                 f"{summary['judged']:6d}   (pooled over prompts)")
    lines.append(f"  within-prompt AUC {format_auc(summary['within_prompt_auc'])} "
                 f"(mean over {summary['within_prompt_groups']} prompts with both correct and incorrect images)")
    lines.append("  strict: AUC against the strict verdict (exact counts); formed: AUC over the images with no "
                 "malformed (half-drawn) object")
    if summary.get("reward_by_outcome"):
        lines.append("  mean reward by how a two-colour binding / a relation came out (images):")
        for group, outcomes in summary["reward_by_outcome"].items():
            lines.append(f"    {group:<8}  " + ", ".join(f"{o} {v['mean_reward']:.3f} ({v['images']})"
                                                         for o, v in outcomes.items()))
    return "\n".join(lines)


def write_scores(path: str | os.PathLike, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


# ---------------------------------------------------------------------------------------------------- CLI

def cmd_score(a: argparse.Namespace) -> None:
    model, what = load_scorer(a.model, a.scorer)
    cfg = RewardConfig(variant=a.variant, scorer=a.scorer, image_path="pixels", micro_batch=a.micro_batch,
                       blend_weight=a.blend_weight)
    records = score_folder(model, a.dir, cfg, seed=a.seed, progress=True)
    if a.out:
        write_scores(a.out, records)
    print(format_scores(summarise_scores(records), f"{a.dir}: intrinsic reward ({a.variant}), scored by {what}"))
    if a.out:
        print(f"wrote {len(records)} scores to {a.out}")
