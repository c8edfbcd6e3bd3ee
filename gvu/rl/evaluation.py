"""The trainer's periodic evaluation, one function per monitor (gvu.rl.monitor).

- evaluate_shapes: the shapes-world benchmarks (GenEval-, GenEval++-style, understanding) on fixed prompts and
  seeds, judged exactly; a grid of some images under grids/.
- evaluate_prompts: any model: the images of the fixed prompts in `eval_prompts` (a GenEval metadata file; default
  GenEval's own 553 prompts, `eval_limit` of them spread over the tags) with fixed seeds, written in GenEval's
  folder layout under evals/step_NNNNN/, a grid under grids/, and `eval_command` run on the folder when set.
"""

from __future__ import annotations

from pathlib import Path

GENEVAL_METADATA = Path(__file__).resolve().parents[1] / "bench" / "data" / "geneval" / "evaluation_metadata.jsonl"


def _grid(trainer, images, captions, correct=None) -> None:
    if not images or not trainer.dist.is_main:
        return
    from gvu.analysis.plots import image_grid

    (trainer.out / "grids").mkdir(parents=True, exist_ok=True)
    image_grid(images, trainer.out / "grids" / f"step_{trainer.step:05d}.png", captions=captions, correct=correct,
               title=f"step {trainer.step}")


def evaluate_shapes(trainer) -> dict:
    from gvu.bench.evaluate import benchmark_rows, generate_and_judge, spread
    from gvu.bench.understanding import build_understanding_set, run_understanding

    cfg, out, sets = trainer.cfg, {}, trainer._eval_sets
    grid_imgs, grid_caps, grid_ok = [], [], []
    for name in cfg.eval_benchmarks:
        if name == "understanding":
            if name not in sets:
                sets[name] = build_understanding_set(limit=cfg.eval_limit or None)
            u = run_understanding(trainer.policy, sets[name], captions=True)
            out["eval_understanding"] = u["overall"]
            out["eval_caption_truthfulness"] = u["caption_truthfulness"]
            out.update({f"eval_understanding/{k}": v for k, v in u["by_perturbation"].items()})
            continue
        if name not in sets:
            sets[name] = spread(benchmark_rows(name), cfg.eval_limit)

        def keep(i, row, imgs, rs, name=name):
            if i % max(1, len(sets[name]) // 8) == 0 and len(grid_imgs) < 16:
                grid_imgs.append(imgs[0]); grid_caps.append(row["prompt"]); grid_ok.append(rs[0]["correct"])

        _, summary = generate_and_judge(trainer.policy, sets[name], cfg.eval_per_prompt, cfg.eval_seed,
                                        trainer.sampling, progress=False, on_images=keep)
        out[f"eval_{name}"] = summary["overall"]
        out[f"eval_{name}_strict"] = summary["strict_overall"]
        out.update({f"eval_{name}/{tag}": v for tag, v in summary["tags"].items()})
    _grid(trainer, grid_imgs, grid_caps, grid_ok)
    return out


def eval_prompt_rows(cfg) -> list[dict]:
    from gvu.bench.evaluate import spread
    from gvu.bench.metadata import read_metadata

    rows = read_metadata(cfg.eval_prompts or GENEVAL_METADATA)
    return spread(rows, cfg.eval_limit or 16)


def evaluate_prompts(trainer) -> dict:
    """Images of the fixed evaluation prompts in GenEval's layout (+ grid, + eval_command). Every process samples
    the same prompts under FSDP2 (its passes are collectives); only the main process writes."""
    from gvu.bench.layout import write_prompt_dir
    from gvu.models.sampling import prompt_generators
    from gvu.rl.monitor import run_eval_command

    cfg = trainer.cfg
    if "prompts" not in trainer._eval_sets:
        trainer._eval_sets["prompts"] = eval_prompt_rows(cfg)
    rows, G = trainer._eval_sets["prompts"], cfg.eval_per_prompt
    folder = trainer.out / "evals" / f"step_{trainer.step:05d}"
    grid_imgs, grid_caps = [], []
    for start in range(0, len(rows), 8):
        chunk = rows[start:start + 8]
        gens = prompt_generators(cfg.eval_seed, range(start, start + len(chunk)))
        rollout = trainer.policy.sample([r["prompt"] for r in chunk], G, trainer.sampling, gens)
        seeds = [cfg.eval_seed * 1_000_003 + (start + j) * G + k for j in range(len(chunk)) for k in range(G)]
        pixels = trainer.policy.decode(rollout.image_tokens_NT, prompts=rollout.row_prompts(), seeds=seeds)
        for j, row in enumerate(chunk):
            if trainer.dist.is_main:
                write_prompt_dir(folder, start + j, row, pixels[j * G:(j + 1) * G])
            if len(grid_imgs) < 16:
                grid_imgs.append(pixels[j * G]); grid_caps.append(row["prompt"])
    _grid(trainer, grid_imgs, grid_caps)
    out = {"eval_images": len(rows) * G}
    if cfg.eval_command and trainer.dist.is_main:
        out.update(run_eval_command(cfg.eval_command, folder))
    return out

