"""The `gvu` command line: parse arguments, call library functions, print. Heavy imports stay inside commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _rows_from(source: str, world: str = "shapes") -> list[dict]:
    """A metadata file, or the name of a built-in prompt set."""
    from gvu.bench import prompts

    builders = {"geneval": prompts.build_geneval, "genevalpp": prompts.build_genevalpp}
    if source in builders:
        return builders[source](world)
    from gvu.bench.metadata import read_metadata

    return read_metadata(source)


def cmd_prompts(a: argparse.Namespace) -> None:
    from gvu.bench import prompts
    from gvu.bench.metadata import write_metadata, write_prompts

    if a.set == "geneval":
        rows = prompts.build_geneval(a.world, seed=43 if a.seed is None else a.seed, n=a.n or 100)
    elif a.set == "genevalpp":
        rows = prompts.build_genevalpp(a.world, seed=0 if a.seed is None else a.seed, n=a.n or 40)
    else:
        rows = prompts.build_train(a.world, seed=0 if a.seed is None else a.seed, n=a.n or 50_000)
    out = Path(a.out)
    write_metadata(out / "evaluation_metadata.jsonl", rows)
    write_prompts(out / "generation_prompts.txt", rows)
    print(f"wrote {len(rows)} prompts to {out}/evaluation_metadata.jsonl and generation_prompts.txt")


def cmd_world_render(a: argparse.Namespace) -> None:
    from gvu.bench.groundtruth import render_ground_truth
    from gvu.bench.metadata import read_metadata

    rows = read_metadata(a.metadata)
    render_ground_truth(rows, a.outdir, per_prompt=a.per_prompt, seed=a.seed)
    print(f"rendered {len(rows)} prompts x {a.per_prompt} images to {a.outdir}")


def cmd_judge(a: argparse.Namespace) -> None:
    from gvu.bench.judging import format_summary, judge_folder, write_results

    results, summary = judge_folder(a.dir, mode="strict" if a.strict else "geneval")
    if a.out:
        write_results(a.out, results)
    print(format_summary(summary, f"{a.dir} ({'strict' if a.strict else 'geneval'} mode, {len(results)} images)"))


def cmd_pretrain(a: argparse.Namespace) -> None:
    import dataclasses

    from gvu.models.pretrain import PretrainConfig, pretrain
    from gvu.rl.config import parse_overrides

    kw = {k: getattr(a, k) for k in ("steps", "batch_size", "learning_rate", "gen_fraction", "num_scenes",
                                      "threads") if getattr(a, k) is not None}
    kw.update(parse_overrides(a.overrides, tuple(f.name for f in dataclasses.fields(PretrainConfig))))
    cfg = PretrainConfig(**{"preset": a.preset, "size": a.size, "seed": a.seed, "grid": not a.flat, **kw})
    model = pretrain(cfg, a.out)
    print(f"wrote a {cfg.preset} base ({model.num_parameters():,} parameters, size {cfg.size}) to {a.out}")


def cmd_eval(a: argparse.Namespace) -> None:
    from gvu.bench.evaluate import evaluate_model

    summary = evaluate_model(a.model, a.benchmark, per_prompt=a.per_prompt, seed=a.seed, out=a.out,
                             guidance=a.guidance)
    print(summary["table"])
    if a.out:
        print(f"wrote {Path(a.out) / 'summary.json'}")


def cmd_train(a: argparse.Namespace) -> None:
    from gvu.rl.config import load_config, parse_overrides
    from gvu.rl.trainer import Trainer

    if a.resume:
        from gvu.rl.checkpoint import STATE, resolve_checkpoint

        ckpt = resolve_checkpoint(a.resume)
        saved = json.loads((ckpt / STATE).read_text())["config"]
        saved.update(parse_overrides(a.overrides))  # e.g. max_steps=... to train further
        cfg = load_config(None, saved)
    else:
        if not a.config:
            raise ValueError("give --config FILE (see configs/) or --resume DIR")
        cfg = load_config(a.config, a.overrides)
    trainer = Trainer(cfg, resume=ckpt if a.resume else None)
    try:
        final = trainer.train()
    finally:
        if trainer.dist.enabled:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if trainer.dist.is_main:
        print(f"wrote the trained policy to {final}")


def cmd_report(a: argparse.Namespace) -> None:
    from gvu.analysis.report import write_report

    print(f"report: {write_report(a.run, oracle=a.oracle)} (and report.html, report.json beside it)")


def cmd_demo(a: argparse.Namespace) -> None:
    from gvu.demo import DemoConfig, run_demo

    default_out = "runs/demo-quick" if a.quick else f"runs/demo-{a.base}" + ("-flat" if a.flat else "")
    cfg = DemoConfig(base=a.base, quick=a.quick, out=a.out or default_out, reward=a.reward, scorer=a.scorer,
                     flat=a.flat, seed=a.seed, threads=a.threads, cache=a.cache, eval_per_prompt=a.per_prompt)
    report = run_demo(cfg)
    print(f"report: {report} (and report.html beside it)")


def cmd_generate(a: argparse.Namespace) -> None:
    from gvu.bench.evaluate import generate_layout
    from gvu.bench.metadata import read_metadata
    from gvu.models.load import load_model
    from gvu.models.protocol import SamplingConfig

    rows = read_metadata(a.metadata)
    model = load_model(a.model)
    sampling = SamplingConfig(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                              guidance=a.guidance)
    n = generate_layout(model, rows, a.outdir, per_prompt=a.per_prompt, seed=a.seed, sampling=sampling,
                        prompts_per_batch=a.batch)
    print(f"wrote {n} images for {len(rows)} prompts to {a.outdir} (GenEval layout)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gvu", description="Learning to Generate via Understanding (GvU).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prompts", help="build a prompt set in GenEval's metadata format")
    s.add_argument("set", choices=["geneval", "genevalpp", "train"])
    s.add_argument("--world", choices=["shapes", "coco"], default="shapes")
    s.add_argument("--seed", type=int, default=None, help="default: 43 for geneval (GenEval's own), 0 otherwise")
    s.add_argument("-n", type=int, default=None,
                   help="geneval: prompts per task (100); genevalpp: per tag (40); train: total (50000)")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=cmd_prompts)

    w = sub.add_parser("world", help="the shapes world")
    wsub = w.add_subparsers(dest="world_command", required=True)
    r = wsub.add_parser("render", help="render ground-truth scenes of a metadata file in GenEval's layout")
    r.add_argument("--metadata", required=True)
    r.add_argument("--outdir", required=True)
    r.add_argument("--per-prompt", type=int, default=4)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=cmd_world_render)

    j = sub.add_parser("judge", help="judge a GenEval-layout folder of shapes-world images exactly")
    j.add_argument("dir")
    j.add_argument("--strict", action="store_true", help="exact counts for every include")
    j.add_argument("--out", help="write GenEval-style results.jsonl here")
    j.set_defaults(func=cmd_judge)

    pt = sub.add_parser("pretrain", help="pretrain the built-in unified model from scratch")
    pt.add_argument("--preset", choices=["regular", "weak"], default="regular")
    pt.add_argument("--size", choices=["default", "tiny"], default="default")
    pt.add_argument("--out", required=True, help="model folder (rerun the same command to resume)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--steps", type=int)
    pt.add_argument("--batch-size", dest="batch_size", type=int)
    pt.add_argument("--learning-rate", dest="learning_rate", type=float)
    pt.add_argument("--gen-fraction", dest="gen_fraction", type=float)
    pt.add_argument("--num-scenes", dest="num_scenes", type=int)
    pt.add_argument("--threads", type=int)
    pt.add_argument("--flat", action="store_true", help="the ablation: understanding reads the flat raster (no "
                    "2-D row+column reader)")
    pt.add_argument("overrides", nargs="*", help="key=value for any PretrainConfig field, e.g. relation_fraction=0 "
                    "or describe_weights={position: 4, colors: 1}")
    pt.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("eval", help="generate for a benchmark, judge, and summarise")
    ev.add_argument("--model", required=True)
    ev.add_argument("--benchmark", default="all", help="geneval | genevalpp | understanding | all | FILE.jsonl")
    ev.add_argument("--per-prompt", dest="per_prompt", type=int, default=4)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    ev.add_argument("--out", help="folder for images (GenEval layout), results and summary.json")
    ev.set_defaults(func=cmd_eval)

    tr = sub.add_parser("train", help="GvU: self-supervised GRPO with the model's own understanding as reward")
    tr.add_argument("--config", help="YAML config (configs/tiny.yaml, configs/default.yaml)")
    tr.add_argument("--resume", help="a checkpoint folder, or a training output folder (its latest checkpoint)")
    tr.add_argument("overrides", nargs="*", help="key=value config overrides")
    tr.set_defaults(func=cmd_train)

    ge = sub.add_parser("generate", help="images of any model for a metadata file, in GenEval's folder layout")
    ge.add_argument("--model", required=True, help="a gvu model folder, janus:..., emu3:..., causal-lm:...")
    ge.add_argument("--metadata", required=True, help="GenEval-format metadata JSONL")
    ge.add_argument("--outdir", required=True)
    ge.add_argument("--per-prompt", dest="per_prompt", type=int, default=4)
    ge.add_argument("--seed", type=int, default=0)
    ge.add_argument("--batch", type=int, default=8, help="prompts per sampling call")
    ge.add_argument("--temperature", type=float, default=1.0)
    ge.add_argument("--top-k", dest="top_k", type=int, default=0)
    ge.add_argument("--top-p", dest="top_p", type=float, default=1.0)
    ge.add_argument("--min-p", dest="min_p", type=float, default=0.0)
    ge.add_argument("--guidance", type=float, default=1.0)
    ge.set_defaults(func=cmd_generate)

    dm = sub.add_parser("demo", help="the paper's experiment end to end: pretrain, evaluate, GvU, evaluate, report")
    dm.add_argument("--base", choices=["regular", "weak"], default="regular")
    dm.add_argument("--quick", action="store_true", help="tiny model and subsets: a few minutes")
    dm.add_argument("--out", help="output folder (default runs/demo-BASE or runs/demo-quick)")
    dm.add_argument("--reward", choices=["intrinsic", "oracle_strict", "oracle_binary"], default="intrinsic",
                    help="oracle_strict / oracle_binary: the exact judge as reward (exact counts / GenEval's rules), "
                    "the yardstick")
    dm.add_argument("--scorer", choices=["policy", "reference"], default="policy")
    dm.add_argument("--flat", action="store_true", help="the ablation base: understanding reads the flat raster "
                    "(no 2-D row+column reader)")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--threads", type=int, default=0)
    dm.add_argument("--per-prompt", dest="per_prompt", type=int, default=8,
                    help="images per prompt in the before/after evaluation (default 8; --quick uses 2)")
    dm.add_argument("--cache", default="runs/cache", help="where pretrained bases are kept and reused (default "
                    "runs/cache; a new folder times the demo with its pretraining)")
    dm.set_defaults(func=cmd_demo)

    rp = sub.add_parser("report", help="rebuild a demo run's report from its saved outputs (optionally against an "
                        "oracle run of the same base)")
    rp.add_argument("run", help="a `gvu demo` output folder")
    rp.add_argument("--oracle", help="a `gvu demo --reward oracle_strict` folder of the same base: adds the "
                    "fraction of the oracle's gain")
    rp.set_defaults(func=cmd_report)

    from gvu.analysis import lead, score, sensitivity

    lead.register(sub)
    score.register(sub)
    sensitivity.register(sub)
    from gvu.bench import perf

    perf.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:  # bad input: say what and where, no traceback
        print(f"gvu {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
