"""The trainer's periodic evaluation, one function per monitor (gvu.rl.monitor).

- evaluate_shapes: the shapes-world benchmarks (GenEval-, GenEval++-style, understanding, DPG-shapes) on fixed
  prompts and seeds, judged exactly; a grid of some images under grids/.
- evaluate_prompts: any model: the images of the fixed prompts in `eval_prompts` (a GenEval metadata file; default
  GenEval's own 553 prompts, `eval_limit` of them spread over the tags) with fixed seeds, written in GenEval's
  folder layout under evals/step_NNNNN/, a grid under grids/, and `eval_command` run on the folder when set.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from gvu.eval.evaluate import benchmark_rows, benchmark_seed, generate_layout, run_benchmark
from gvu.eval.metadata import read_metadata
from gvu.eval.plots import image_grid
from gvu.eval.prompts import spread
from gvu.eval.understanding import build_understanding_set

GENEVAL_METADATA = Path(__file__).resolve().parents[1] / "eval" / "data" / "geneval" / "evaluation_metadata.jsonl"


def _grid(trainer, images, captions, correct=None) -> None:
    if not images or not trainer.dist.is_main:
        return
    (trainer.out / "grids").mkdir(parents=True, exist_ok=True)
    image_grid(images, trainer.out / "grids" / f"step_{trainer.step:05d}.png", captions=captions, correct=correct,
               title=f"step {trainer.step}")


def evaluate_shapes(trainer) -> dict:
    cfg, out, sets = trainer.cfg, {}, trainer._eval_sets
    grid_imgs, grid_caps, grid_ok = [], [], []
    for name in cfg.eval_benchmarks:
        if name not in sets:  # built once per run: the same prompts (and understanding pairs) at every evaluation
            sets[name] = (build_understanding_set(limit=_understanding_limit(cfg)) if name == "understanding"
                          else spread(benchmark_rows(name), cfg.eval_limit))

        def keep(i, row, imgs, rs, name=name):
            if i % max(1, len(sets[name]) // 8) == 0 and len(grid_imgs) < 16:
                grid_imgs.append(imgs[0]); grid_caps.append(row["prompt"]); grid_ok.append(rs[0]["correct"])

        s = run_benchmark(trainer.policy, name, trainer.sampling, cfg.eval_per_prompt,
                          benchmark_seed(name, cfg.eval_seed, cfg.val_seed),
                          cfg.eval_limit or None, progress=False, rows=sets.get(name), on_images=keep,
                          uset=sets.get("understanding"))
        out.update(_metrics(name, s))
    _grid(trainer, grid_imgs, grid_caps, grid_ok)
    return out


def _understanding_limit(cfg) -> int | None:
    limits = [n for n in (cfg.eval_limit, cfg.eval_understanding_limit) if n]
    return min(limits) if limits else None


def _metrics(name: str, s: dict) -> dict:
    """A benchmark's summary as flat eval_* log metrics."""
    if name == "dpg":  # DPG-Bench's overall and its five categories
        return {"eval_dpg": s["overall"], **{f"eval_dpg/{c}": v for c, v in s["categories"].items() if v is not None}}
    if name == "understanding":
        return {"eval_understanding": s["overall"], "eval_caption_truthfulness": s["caption_truthfulness"],
                **{f"eval_understanding/{k}": v for k, v in s["by_perturbation"].items()},
                **{f"eval_relation_sign/{k}": v for k, v in s.get("relation_sign", {}).items() if k != "scenes"},
                **({"eval_colour_binding": s["colour_binding"]["all"]} if "colour_binding" in s else {})}
    return {f"eval_{name}": s["overall"], f"eval_{name}_strict": s["strict_overall"],
            **{f"eval_{name}/{tag}": v for tag, v in s["tags"].items()}}


def eval_prompt_rows(cfg) -> list[dict]:
    rows = read_metadata(cfg.eval_prompts or GENEVAL_METADATA)
    return spread(rows, cfg.eval_limit or 16)


def evaluate_prompts(trainer) -> dict:
    """Images of the fixed evaluation prompts in GenEval's layout, drawn as `gvu generate` draws them (+ grid, +
    eval_command). Every process samples the same prompts under FSDP2 (its passes are collectives); only the main
    process writes."""
    cfg = trainer.cfg
    if "prompts" not in trainer._eval_sets:
        trainer._eval_sets["prompts"] = eval_prompt_rows(cfg)
    rows = trainer._eval_sets["prompts"]
    folder = trainer.out / "evals" / f"step_{trainer.step:05d}"
    grid_imgs, grid_caps = [], []

    def keep(i, row, imgs):
        if len(grid_imgs) < 16:
            grid_imgs.append(imgs[0]); grid_caps.append(row["prompt"])

    n = generate_layout(trainer.policy, rows, folder if trainer.dist.is_main else None, cfg.eval_per_prompt,
                        cfg.eval_seed, sampling=trainer.sampling, progress=False, on_images=keep)
    _grid(trainer, grid_imgs, grid_caps)
    out = {"eval_images": n}
    if cfg.eval_command and trainer.dist.is_main:
        out.update(run_eval_command(cfg.eval_command, folder))
    return out


def run_eval_command(template: str, folder: Path) -> dict:
    """Run `template` with {dir} replaced by the GenEval-layout folder; its output goes to eval_command.log there.
    Returns eval_command_rc (and never raises: an evaluator failing must not stop training)."""
    cmd = template.replace("{dir}", shlex.quote(str(folder)))
    log = folder / "eval_command.log"
    try:
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        log.write_text(f"$ {cmd}\n{done.stdout}{done.stderr}")
        return {"eval_command_rc": done.returncode}
    except OSError as err:
        log.write_text(f"$ {cmd}\n{err}\n")
        return {"eval_command_rc": -1}
