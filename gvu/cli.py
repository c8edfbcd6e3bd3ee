"""The `gvu` command line: parse arguments, call library functions, print. Heavy imports stay inside commands."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from gvu.argcheck import COUNT, SEED, STEPS, THREADS, at_least, finite


# The one lazy-import place (docs/design.md, "The layers"): `gvu --help` and argument errors must not import torch,
# so the parser imports nothing of gvu's library, and each command imports its module when it runs.

def _lazy(module: str, name: str):
    """A command function in `module`, imported when the command runs."""
    def run(a: argparse.Namespace):
        return getattr(importlib.import_module(module), name)(a)
    return run


def _member(module: str, name: str):
    """An argument type: one of the names in `module.name` (read from the library when the flag is given)."""
    def parse(text: str) -> str:
        allowed = getattr(importlib.import_module(module), name)
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(map(str, allowed))})")
        return text
    return parse


def _members(module: str, name: str):
    """An argument type: a comma-separated subset of `module.name`."""
    def parse(text: str) -> tuple[str, ...]:
        allowed = getattr(importlib.import_module(module), name)
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"unknown name(s) {unknown or [text]}; choose from {', '.join(allowed)}")
        return names
    return parse


# `gvu pretrain --size` in its help, without importing torch: gvu.models.builtin.model.PRESETS's keys (a test checks)
PRETRAIN_SIZES = ("tiny", "default", "large")


def cmd_prompts(a: argparse.Namespace) -> None:
    from gvu.eval import prompts
    from gvu.eval.metadata import write_metadata, write_prompts

    if a.set == "dpg":  # its own files: DPG-shapes, or DPG-Bench's prompts and question file
        return _lazy("gvu.eval.dpg_shapes", "cmd_prompts_dpg")(a)
    if a.csv:
        raise ValueError("--csv is DPG-Bench's question file: it goes with gvu prompts dpg --world coco")
    rows = prompts.build_set(a.set, a.world, seed=a.seed, n=a.n)
    out = Path(a.out)
    write_metadata(out / "evaluation_metadata.jsonl", rows)
    write_prompts(out / "generation_prompts.txt", rows)
    print(f"wrote {len(rows)} prompts to {out}/evaluation_metadata.jsonl and generation_prompts.txt")


def cmd_world_render(a: argparse.Namespace) -> None:
    from gvu.eval.check import read_checked
    from gvu.eval.groundtruth import render_ground_truth
    from gvu.rl.runfolder import claim_image_folder

    rows = read_checked(a.metadata)  # the world's classes, colours, counts: every row before the first image
    claim_image_folder(a.outdir, a.overwrite)
    render_ground_truth(rows, a.outdir, per_prompt=a.per_prompt, seed=a.seed)
    print(f"rendered {len(rows)} prompts x {a.per_prompt} images to {a.outdir}")


def pretrain_config_of(a: argparse.Namespace):
    """The PretrainConfig a parsed `gvu pretrain` command line asks for (a shipped base's manifest command is
    replayed through this in the tests)."""
    import dataclasses

    from gvu.models.builtin.pretrain import PretrainConfig
    from gvu.rl.config import parse_overrides

    kw = {k: getattr(a, k) for k in ("steps", "batch_size", "learning_rate", "gen_fraction", "num_scenes",
                                      "threads") if getattr(a, k) is not None}
    kw.update(parse_overrides(a.overrides, tuple(f.name for f in dataclasses.fields(PretrainConfig))))
    if not isinstance(kw.get("threads", 0), int) or kw.get("threads", 0) < 0:
        raise ValueError(f"threads must be an integer >= 0 (0: torch's default), got {kw['threads']!r}")
    return PretrainConfig(**{"preset": a.preset, "size": a.size, "seed": a.seed, "grid": not a.flat, **kw})


def cmd_pretrain(a: argparse.Namespace) -> None:
    from gvu.models.builtin.pretrain import pretrain
    from gvu.rl import runfolder

    cfg = pretrain_config_of(a)
    runfolder.check_base_out(a.out, a.overwrite)
    with runfolder.holding(Path(a.out), runfolder.lock_beside(Path(a.out))):  # one pretraining per folder
        runfolder.check_base_out(a.out, a.overwrite)  # again under the lock: a run that finished meanwhile counts
        model = pretrain(cfg, a.out, stop_after=a.stop_after)
    print(f"stopped after step {a.stop_after} of {cfg.steps}; rerun the same command without --stop-after to go on"
          if model is None else f"wrote a {cfg.preset} base ({model.num_parameters():,} parameters, size {cfg.size}) "
          f"to {a.out}")


def cmd_eval(a: argparse.Namespace) -> None:
    from gvu.eval.evaluate import evaluate_model
    from gvu.models.load import load_model
    from gvu.models.protocol import SamplingConfig
    from gvu.rl.runfolder import claim_eval_folder

    if a.out:
        claim_eval_folder(a.out, a.overwrite)
    summary = evaluate_model(load_model(a.model), a.benchmark, sampling=SamplingConfig(guidance=a.guidance),
                             per_prompt=a.per_prompt, seed=a.seed, val_seed=a.val_seed, out=a.out)
    print(summary["table"])
    if a.out:
        print(f"wrote {Path(a.out) / 'summary.json'}")


def cmd_train(a: argparse.Namespace) -> None:
    from gvu.rl.config import load_config, parse_overrides
    from gvu.rl.trainer import Trainer

    if a.resume:
        from gvu.rl.checkpoint import read_state, resolve_checkpoint, resume_config

        if a.overwrite or a.config:
            raise ValueError("--resume continues a run with its own config: leave out --config and --overwrite")
        ckpt = resolve_checkpoint(a.resume)
        cfg = load_config(None, resume_config(read_state(ckpt)["config"], parse_overrides(a.overrides),
                                               ckpt.parent, a.new_model))
    else:
        if not a.config:
            raise ValueError("give --config FILE (see configs/) or --resume DIR")
        cfg = load_config(a.config, a.overrides)
    trainer = Trainer(cfg, resume=ckpt if a.resume else None, overwrite=a.overwrite)
    try:
        final = trainer.train()
    finally:
        if trainer.dist.enabled:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if trainer.dist.is_main:
        print(f"wrote the trained policy to {final}")


def cmd_demo(a: argparse.Namespace) -> None:
    from gvu.demo import DemoConfig, run_demo, run_demo_seeds, terminal_summary
    from gvu.rl.config import parse_overrides

    default_out = "runs/demo-quick" if a.quick else f"runs/demo-{a.base}" + ("-flat" if a.flat else "")
    cfg = DemoConfig(base=a.base, quick=a.quick, out=a.out or default_out, reward=a.reward, scorer=a.scorer,
                     flat=a.flat, seed=a.seed, threads=a.threads, cache=a.cache, eval_per_prompt=a.per_prompt,
                     overwrite=a.overwrite, model=a.model, train=parse_overrides(a.overrides))
    if a.seeds > 1:
        summary = run_demo_seeds(cfg, a.seeds)
        print(f"{summary.read_text()}\nseeds: {summary} (and seeds.json; each seed's report in {cfg.out}/seed-K)")
        return
    report = run_demo(cfg)
    print(terminal_summary(report.parent))
    print(f"report: {report} (and report.html beside it)")


def cmd_generate(a: argparse.Namespace) -> None:
    from gvu.eval.check import check_rows, file_lines, read_checked
    from gvu.eval.evaluate import generate_layout
    from gvu.models.load import load_model
    from gvu.models.protocol import SamplingConfig
    from gvu.rl.runfolder import claim_image_folder

    if a.dpg:  # DPG-Bench's layout: one 2x2 grid per prompt file, named by its item id
        return _lazy("gvu.analysis.dpg", "cmd_generate_dpg")(a)
    rows = read_checked(a.metadata, world=False)  # format and tags; the world and words once the model is known
    model = load_model(a.model)
    check_rows(rows, a.metadata, file_lines(a.metadata), world=getattr(model, "world", None) == "shapes",
               tokenizer=model.tokenizer)
    claim_image_folder(a.outdir, a.overwrite)
    sampling = SamplingConfig(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                              guidance=a.guidance)
    n = generate_layout(model, rows, a.outdir, per_prompt=a.per_prompt, seed=a.seed, sampling=sampling,
                        prompts_per_batch=a.batch)
    print(f"wrote {n} images for {len(rows)} prompts to {a.outdir} (GenEval layout)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gvu", description="Learning to Generate via Understanding (GvU).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prompts", help="build a prompt set in GenEval's metadata format")
    s.add_argument("set", choices=["geneval", "genevalpp", "val", "train", "dpg"],
                   help="test, validation or training set; dpg: dense prompts (DPG-shapes, or DPG-Bench's own)")
    s.add_argument("--world", choices=["shapes", "coco"], default="shapes")
    s.add_argument("--seed", type=int, default=None, help="default: 43 for geneval, 7 for val, 0 otherwise")
    s.add_argument("-n", type=int, default=None,
                   help="geneval: prompts per task (100); genevalpp and val: per kind (40); train: total (50000); "
                   "dpg: total (200)")
    s.add_argument("--csv", help="dpg --world coco: your copy of DPG-Bench's dpg_bench.csv, checked and copied")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=cmd_prompts)

    w = sub.add_parser("world", help="the shapes world")
    wsub = w.add_subparsers(dest="world_command", required=True)
    r = wsub.add_parser("render", help="render ground-truth scenes of a metadata file in GenEval's layout")
    r.add_argument("--metadata", required=True)
    r.add_argument("--outdir", required=True)
    r.add_argument("--per-prompt", type=COUNT, default=4)
    r.add_argument("--seed", type=SEED, default=0)
    r.add_argument("--overwrite", action="store_true", help="remove the prompt folders already in --outdir first")
    r.set_defaults(func=cmd_world_render)

    j = sub.add_parser("judge", help="judge a GenEval-layout folder of shapes-world images exactly")
    j.add_argument("dir")
    j.add_argument("--strict", action="store_true", help="exact counts for every include")
    j.add_argument("--out", help="write GenEval-style results.jsonl here")
    j.add_argument("--unclean", choices=["refuse", "report"], default="refuse",
                   help="images that are not exact palette renders (JPEG, grayscale, resized): refuse the folder "
                        "(default), or report them as 'not a clean render', counted apart and never scored")
    j.set_defaults(func=_lazy("gvu.eval.dpg_shapes", "cmd_judge"))  # GenEval's rules, or DPG's on dense prompts

    pt = sub.add_parser("pretrain", help="pretrain the built-in unified model from scratch")
    pt.add_argument("--preset", choices=["regular", "weak"], default="regular")
    pt.add_argument("--size", type=_member("gvu.models.builtin.model", "PRESETS"), default="default",
                    metavar="|".join(PRETRAIN_SIZES), help="the model's size: one of the architectures of "
                    "gvu/models/builtin/model.py PRESETS (default: default)")
    pt.add_argument("--out", required=True, help="model folder (rerun the same command to resume)")
    pt.add_argument("--overwrite", action="store_true", help="replace a finished base already in --out")
    pt.add_argument("--seed", type=SEED, default=0)
    pt.add_argument("--steps", type=COUNT)
    pt.add_argument("--batch-size", dest="batch_size", type=COUNT)
    pt.add_argument("--learning-rate", dest="learning_rate", type=finite(0, above=True))
    pt.add_argument("--gen-fraction", dest="gen_fraction", type=finite(0))
    pt.add_argument("--num-scenes", dest="num_scenes", type=COUNT)
    pt.add_argument("--threads", type=THREADS)
    pt.add_argument("--flat", action="store_true", help="the ablation: understanding reads the flat raster (no "
                    "2-D reader)")
    pt.add_argument("--stop-after", dest="stop_after", type=COUNT, help="stop after this many steps, keeping the "
                    "resumable state (the same command without it goes on to the same weights)")
    pt.add_argument("overrides", nargs="*", help="key=value for any PretrainConfig field, e.g. relation_fraction=0 "
                    "or describe_weights={position: 4, colors: 1}")
    pt.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("eval", help="generate for a benchmark, judge, and summarise")
    ev.add_argument("--model", required=True)
    ev.add_argument("--benchmark", default="all", help="geneval|genevalpp|val_geneval|val_genevalpp|understanding|"
                    "dpg, a group (all, val, test) or FILE.jsonl")
    ev.add_argument("--per-prompt", dest="per_prompt", type=COUNT, default=4)
    ev.add_argument("--seed", type=SEED, default=0, help="evaluation seed (the validation benchmarks: --val-seed)")
    ev.add_argument("--val-seed", dest="val_seed", type=SEED, default=4321)
    ev.add_argument("--guidance", type=finite(0), default=1.0, help="classifier-free guidance scale (1 = off)")
    ev.add_argument("--out", help="folder for images (GenEval layout), results and summary.json")
    ev.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    ev.set_defaults(func=cmd_eval)

    tr = sub.add_parser("train", help="GvU: self-supervised GRPO with the model's own understanding as reward")
    tr.add_argument("--config", help="YAML config (configs/tiny.yaml, configs/default.yaml)")
    tr.add_argument("--resume", help="a checkpoint folder, or a training output folder (its latest checkpoint)")
    tr.add_argument("--overwrite", action="store_true", help="replace another run's files in output_dir")
    tr.add_argument("--new-model", dest="new_model", action="store_true",
                    help="with --resume and model=...: switch the policy's reference on purpose")
    tr.add_argument("overrides", nargs="*", help="key=value config overrides")
    tr.set_defaults(func=cmd_train)

    ge = sub.add_parser("generate", help="images of any model for a metadata file, in GenEval's folder layout")
    ge.add_argument("--model", required=True, help="a gvu model folder, janus:..., emu3:..., causal-lm:...")
    src = ge.add_mutually_exclusive_group(required=True)
    src.add_argument("--metadata", help="GenEval-format metadata JSONL (GenEval's layout)")
    src.add_argument("--dpg", help="a folder of DPG-Bench prompt files (gvu prompts dpg --out DIR: DIR/prompts): one "
                     "2x2 grid of four samples per prompt, <item_id>.png, DPG-Bench's layout")
    ge.add_argument("--outdir", required=True)
    ge.add_argument("--overwrite", action="store_true", help="remove the prompt folders already in --outdir first")
    ge.add_argument("--per-prompt", dest="per_prompt", type=COUNT, default=4)
    ge.add_argument("--seed", type=SEED, default=0)
    ge.add_argument("--batch", type=COUNT, default=8, help="prompts per sampling call")
    ge.add_argument("--temperature", type=finite(0, above=True), default=1.0)
    ge.add_argument("--top-k", dest="top_k", type=at_least(0), default=0)
    ge.add_argument("--top-p", dest="top_p", type=finite(0, above=True), default=1.0)
    ge.add_argument("--min-p", dest="min_p", type=finite(0), default=0.0)
    ge.add_argument("--guidance", type=finite(0), default=1.0)
    ge.set_defaults(func=cmd_generate)

    dm = sub.add_parser("demo", help="the paper's experiment end to end from a shipped base: evaluate, GvU, "
                        "evaluate, report")
    dm.add_argument("--base", choices=["regular", "weak"], default="regular")
    dm.add_argument("--quick", action="store_true", help="tiny model and subsets: a few minutes")
    dm.add_argument("--out", help="output folder (default runs/demo-BASE or runs/demo-quick)")
    dm.add_argument("--reward", choices=["intrinsic", "oracle_strict", "oracle_binary"], default="intrinsic",
                    help="oracle_strict / oracle_binary: the exact judge as reward (exact counts / GenEval's rules), "
                    "the yardstick")
    dm.add_argument("--scorer", choices=["policy", "reference"], default="policy")
    dm.add_argument("--flat", action="store_true", help="the ablation base bases/regular-flat: understanding reads "
                    "the flat raster (no 2-D reader)")
    dm.add_argument("--overwrite", action="store_true", help="start over, removing a demo's files from --out (without "
                    "it, the same command on an unfinished demo resumes it, on a finished one shows its report)")
    dm.add_argument("--seed", type=SEED, default=0)
    dm.add_argument("--seeds", type=COUNT, default=1, help="this many training seeds from --seed, in OUT/seed-K, "
                    "and their mean with its interval in OUT/seeds.md")
    dm.add_argument("--threads", type=THREADS, default=0)
    dm.add_argument("--per-prompt", dest="per_prompt", type=COUNT, default=None,
                    help="images per prompt in the before/after evaluation (default 8; --quick: 2)")
    dm.add_argument("--model", help="start from this base folder instead of the shipped one (bases/BASE)")
    dm.add_argument("--cache", default="runs/cache", help="where --quick keeps the tiny base it pretrains (default "
                    "runs/cache)")
    dm.add_argument("overrides", nargs="*", help="key=value for any TrainConfig field of the GvU run, e.g. "
                    "curriculum=true max_steps=90 (configs/default.yaml lists them)")
    dm.set_defaults(func=cmd_demo)

    rp = sub.add_parser("report", help="rebuild a demo run's report from its saved outputs (optionally against an "
                        "oracle run of the same base)")
    rp.add_argument("run", help="a `gvu demo` output folder, or a `gvu demo --seeds` folder (rebuilds its seeds.md)")
    rp.add_argument("--oracle", help="a `gvu demo --reward oracle_strict` folder of the same base: adds the "
                    "fraction of the oracle's gain")
    rp.set_defaults(func=_lazy("gvu.analysis.seeds", "cmd_report"))

    cv = sub.add_parser("curve", help="gains over the steps: a run's checkpoints evaluated in full, the gain after a "
                        "step, the own-sample accuracy's slope over the last third (curve.md, .json, .png)")
    cv.add_argument("runs", nargs="+", help="`gvu train` folders, e.g. one per seed (save_total_limit=0 keeps all)")
    cv.add_argument("--out", required=True, help="folder for each point's evaluation and the curve (resumes)")
    cv.add_argument("--benchmark", default="val", help="as gvu eval's (default val: the validation benchmarks)")
    cv.add_argument("--per-prompt", dest="per_prompt", type=COUNT, default=8)
    cv.add_argument("--seed", type=SEED, default=1234, help="evaluation seed (the validation benchmarks: --val-seed)")
    cv.add_argument("--val-seed", dest="val_seed", type=SEED, default=4321)
    cv.add_argument("--against", type=at_least(0), default=20, help="the step the last step's gain is read from")
    cv.add_argument("--steps", type=STEPS, help="evaluate only these steps, e.g. 0,20,120 (default: all)")
    cv.set_defaults(func=_lazy("gvu.analysis.curve", "cmd_curve"))

    ld = sub.add_parser("lead", help="per-tag judge's lead (reward AUC on the base's own samples) against "
                        "per-tag gain, for one or more demo runs: a table, JSON and a scatter plot")
    ld.add_argument("runs", nargs="+", help="`gvu demo` output folders")
    ld.add_argument("--label", action="append", help="a name per run, in order (default: the folder names)")
    ld.add_argument("--out", default="runs/lead", help="output path without suffix (default runs/lead: "
                    "runs/lead.png and runs/lead.json)")
    ld.set_defaults(func=_lazy("gvu.analysis.lead", "cmd_lead"))

    sc = sub.add_parser("score", help="score every image of a GenEval-layout folder with the intrinsic reward; AUC "
                        "against the exact judge on shapes-world folders")
    sc.add_argument("dir", help="GenEval-layout folder (00000/metadata.jsonl, 00000/samples/0000.png, ...)")
    sc.add_argument("--model", required=True, help="model folder (`gvu pretrain` or `gvu train` output)")
    sc.add_argument("--scorer", type=_member("gvu.reward", "SCORERS"), default="policy",
                    help="policy: the model; reference: the base a `gvu train` output started from (a plain "
                         "model folder is its own reference)")
    sc.add_argument("--variant", type=_member("gvu.reward", "VARIANTS"), default="geomean", help="the reward's form")
    sc.add_argument("--blend-weight", dest="blend_weight", type=float, default=0.25, help="blend: contrastive exponent")
    sc.add_argument("--out", help="write one JSON line per image here (filename, prompt, tag, reward, correct)")
    sc.add_argument("--micro-batch", dest="micro_batch", type=COUNT, default=64, help="images per forward pass")
    sc.add_argument("--seed", type=SEED, default=0, help="draws the contrastive variant's negatives")
    sc.set_defaults(func=_lazy("gvu.analysis.score", "cmd_score"))

    se = sub.add_parser("sensitivity", help="the paper's Fig. 8: reward with count/colour/region words removed "
                        "from the prompts")
    se.add_argument("--model", required=True, help="model folder (`gvu pretrain` or `gvu train` output)")
    se.add_argument("--out", help="folder for sensitivity.json, sensitivity_details.json and sensitivity.png "
                    "(without it, only the table is printed)")
    se.add_argument("--per-prompt", dest="per_prompt", type=int, default=2,
                    help="ground-truth scenes and model samples per prompt")
    se.add_argument("--prompts-per-tag", dest="prompts_per_tag", type=int, default=40,
                    help="GenEval++-shapes prompts per tag (7 tags)")
    se.add_argument("--variant", choices=("geomean", "content"), default="geomean")
    se.add_argument("--micro-batch", dest="micro_batch", type=int, default=128, help="images per forward pass")
    se.add_argument("--seed", type=int, default=0)
    se.set_defaults(func=_lazy("gvu.analysis.sensitivity", "cmd_sensitivity"))

    be = sub.add_parser("bench", help="speed benchmarks: ours vs the published baselines, checked equal (JSON)")
    be.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a smoke run, not a measurement)")
    be.add_argument("--out", help="write the JSON here")
    be.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    be.add_argument("--size", choices=["default", "tiny"], default="default", help="built-in model preset")
    be.add_argument("--repeats", type=int, default=None, help="override every repeat count")
    be.add_argument("--only", type=_members("gvu.perf.run", "BENCHMARKS"), default=None, metavar="NAME[,NAME]",
                    help="run only these of reward, rollout, step, limit, step_ab (default: all but step_ab)")
    be.add_argument("--full-size", type=_member("gvu.perf.fullsize", "ARCHS"), metavar="ARCH",
                    help="instead: one complete GvU training step of this architecture (janus-pro-1b, or tiny) with "
                    "random weights, each phase timed once (gvu.perf.fullsize)")
    be.add_argument("--dtype", type=_member("gvu.perf.fullsize", "DTYPES"), default=None, metavar="DTYPE",
                    help="with --full-size: the weights' dtype, auto, bfloat16 or float32 (auto: bf16 where the "
                    "CPU computes it natively, float32 elsewhere)")
    be.set_defaults(func=_lazy("gvu.perf.run", "cmd_bench"))
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
    except OSError as err:  # e.g. a read-only output folder: the file and what to do, no traceback
        where = f"{err.filename}: " if err.filename else ""
        print(f"gvu {args.command}: error: {where}{err.strerror or err}; check that the folder exists and is "
              "writable, or choose another one", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
