"""`gvu demo`: the paper's experiment end to end on the shapes world, with a report.

a shipped base (bases/regular, bases/weak, bases/regular-flat: pretrained once, with the manifest that rebuilds
it; docs/bases.md) -> evaluate it (GenEval-shapes, GenEval++-shapes, DPG-shapes, the validation benchmarks,
understanding) -> GvU training -> evaluate again -> the sensitivity study -> report.md, report.html (pictures
inlined) and report.json.

`--quick` runs the same pipeline on a tiny model it pretrains itself (cached) and small evaluation subsets
(minutes; the test suite runs it). Evaluation uses fixed seeds, so "before" and "after" see the same prompts and generators.

An interrupted demo (Ctrl-C, a kill, a lost machine) goes on where it stopped when the same command runs again:
demo.json records the options at the start and each stage once its outputs are complete; the rerun keeps the
finished stages, resumes training from its last checkpoint as `gvu train --resume` does (the quick demo saves one
every step, the full one every `save_steps`, 20 of 60), and runs the rest, so the report's numbers are those of an
uninterrupted run. On a finished folder it prints the report's table and computes nothing; a rerun with other
options is refused, naming them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gvu.analysis.dpg import terminal_dpg
from gvu.analysis.lead import SCORES
from gvu.analysis.report import BENCH_TITLES, QUICK_NOTE, write_report
from gvu.analysis.score import score_folder, write_scores
from gvu.analysis.seeds import seed_dirs, write_seeds
from gvu.analysis.sensitivity import run_sensitivity
from gvu.eval import evaluate as evaluation
from gvu.eval.metadata import atomic_write_text
from gvu.models.builtin import pretrain as pretraining
from gvu.models.builtin.model import is_model_dir
from gvu.models.builtin.pretrain import PretrainConfig
from gvu.models.load import load_model
from gvu.models.protocol import SamplingConfig
from gvu.rl import checkpoint as ckpt, runfolder
from gvu.rl.config import TrainConfig
from gvu.rl.monitor import process_peak_rss_mib
from gvu.rl.trainer import Trainer


OWN_KEYS = {"model", "output_dir", "seed", "reward", "reward_scorer", "threads"}


@dataclass
class DemoConfig:
    base: str = "regular"
    """Which base to start from: 'regular' or 'weak' (the paper's Sec. 4.4)."""
    quick: bool = False
    """Tiny model and small subsets: the whole pipeline in a few minutes."""
    out: str = "runs/demo"
    """Output folder (report, evaluations, training run)."""
    cache: str = "runs/cache"
    """Where --quick keeps and reuses the tiny base it pretrains."""
    model: str | None = None
    """The base folder to start from; None: the shipped base of `base` and `flat` (bases/regular, bases/weak,
    bases/regular-flat)."""
    reward: str = "intrinsic"
    """'intrinsic' (GvU), or the exact judge as reward, the yardstick: 'oracle_strict' (exact counts) or
    'oracle_binary' (GenEval's rules, which pass over-drawn counts)."""
    scorer: str = "policy"
    """Who scores the intrinsic reward: 'policy' or 'reference'."""
    flat: bool = False
    """The ablation base: understanding reads images as the flat raster generation writes (no 2-D reader)."""
    seed: int = 0
    """Seeds pretraining and training."""
    threads: int = 0
    """torch threads (0: torch's default)."""
    eval_per_prompt: int | None = None
    """Images per prompt in the before/after evaluation; None: 8, or 2 with --quick (on a subset). At 2 per prompt
    the standard error of GenEval-shapes overall is about 0.02, the size of the gains measured here; at 8 about
    0.01. The curves during training keep the trainer's own `eval_per_prompt`. Recorded as used."""
    overwrite: bool = False
    """Start over: remove a demo's files from `out` first. Without it, `out` holding this demo (the same options,
    but for FREE_OPTIONS and FREE_TRAINING) resumes it, or shows it if finished; another run's files are refused."""
    train: dict = dataclasses.field(default_factory=dict)
    """TrainConfig fields for the GvU run on top of the trainer's defaults (`gvu demo ... curriculum=true`); what the
    demo's own flags set (model, output_dir, seed, reward, reward_scorer, threads) is refused here."""

    def __post_init__(self):
        taken = sorted(set(self.train) & OWN_KEYS)
        if taken:
            raise ValueError(f"{', '.join(taken)}: set by the demo's own flags (--model, --out, --seed, --reward, "
                             "--scorer, --threads), not as key=value")
        if self.eval_per_prompt is None:
            self.eval_per_prompt = 2 if self.quick else 8
        if self.eval_per_prompt < 1:
            raise ValueError(f"eval_per_prompt must be >= 1, got {self.eval_per_prompt}")


def pretrain_config(cfg: DemoConfig) -> PretrainConfig:
    if cfg.quick:
        return PretrainConfig(preset=cfg.base, size="tiny", seed=cfg.seed, steps=300, batch_size=32,
                              num_scenes=2000, learning_rate=3e-3, threads=cfg.threads, grid=not cfg.flat)
    return PretrainConfig(preset=cfg.base, seed=cfg.seed, threads=cfg.threads, grid=not cfg.flat)


def train_overrides(cfg: DemoConfig, base_dir: Path, out: Path) -> dict:
    o = {"model": str(base_dir), "output_dir": str(out / "train"), "seed": cfg.seed, "reward": cfg.reward,
         "reward_scorer": cfg.scorer, "threads": cfg.threads}
    if cfg.quick:  # a checkpoint every step (0.48 MB, tens of ms): a killed run loses at most the step under way
        o.update(max_steps=6, prompts_per_step=4, num_generations=4, minibatch_size=16, num_prompts=2000,
                 learning_rate=1e-3, eval_steps=3, eval_per_prompt=1, eval_limit=16, save_steps=1)
    o.update(cfg.train)
    return o


def base_dir_for(cfg: DemoConfig) -> Path:
    """A cache key from every pretraining setting, so a changed setting never reuses a stale base."""
    import hashlib

    pc = dataclasses.asdict(pretrain_config(cfg))
    pc.pop("threads")
    key = hashlib.sha1(json.dumps(pc, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cfg.cache) / f"base-{cfg.base}-{pc['size']}-{key}"


BASES = Path(__file__).resolve().parent.parent / "bases"
"""The shipped bases, in the repository beside the package (docs/bases.md)."""


def shipped_base(base: str, flat: bool = False) -> Path:
    """The shipped base folder of a preset (regular, weak; `flat`: the regular base's flat-raster twin)."""
    if flat and base != "regular":
        raise ValueError(f"the flat-raster twin is shipped for the regular base only, not {base!r}")
    path = BASES / (f"{base}-flat" if flat else base)
    if not is_model_dir(path):
        raise FileNotFoundError(f"{path} holds no base model. docs/bases.md lists the bases that ship with the "
                                "repository and the gvu pretrain command that builds each (`--out` that folder); or "
                                "pass --model with a base of your own")
    return path


STAGES = ("eval_before", "score_before", "train", "eval_after", "sensitivity")
"""The demo's stages after its base is found (with --quick: pretrained into the cache, itself resumable), in order.
demo.json records a stage's time only once its outputs are complete, and that record is what marks it done."""

_COMPLETE = {  # the output each stage writes last (atomically): a record without it (deleted since) is not done
    "eval_before": lambda out: (out / "eval_before" / "summary.json").is_file(),
    "score_before": lambda out: (out / SCORES).is_file(),
    "train": lambda out: is_model_dir(out / "train" / "final"),
    "eval_after": lambda out: (out / "eval_after" / "summary.json").is_file(),
    "sensitivity": lambda out: (out / "sensitivity" / "sensitivity.json").is_file(),
}
REPORT_FILES = ("report.md", "report.json", "report.html")

FREE_OPTIONS = ("out", "overwrite", "threads")
"""Options a rerun may change and still resume: how the folder is spelled, starting over, and the thread count
(speed, not the experiment; `cache` too without --quick, which never reads it)."""
FREE_TRAINING = ("save_steps", "save_total_limit")
"""Training settings a rerun may change: how often checkpoints are written, and how many are kept."""


def run_demo(cfg: DemoConfig, progress: bool = True) -> Path:
    """Run the demo into `cfg.out`, or resume the one left there unfinished (the same options: the stages it
    finished are kept, training goes on from its last checkpoint), or, if it is finished, return its report
    without computing anything. `--overwrite` starts over."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = runfolder.check_path(cfg.out, "--out")
    # resumed=True: the folder's files are judged here, under the lock, by what demo.json says they are
    lock = runfolder.take(out, resumed=not cfg.overwrite, overwrite=cfg.overwrite, names=runfolder.DEMO_FILES)
    try:
        return _run(cfg, out, None if cfg.overwrite else earlier_run(cfg, out), progress)
    finally:
        runfolder.release(lock)


def earlier_run(cfg: DemoConfig, out: Path) -> dict | None:
    """The record (demo.json) of the demo `out` holds, if it is this one: the same options, but for FREE_OPTIONS and
    FREE_TRAINING. None for a folder without a demo's files. Another run's files are refused, naming what differs."""
    found = runfolder.run_entries(out, runfolder.DEMO_FILES)
    if not found:
        return None
    shown = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
    try:
        record = json.loads((out / "demo.json").read_text())
        recorded = record["demo"]
        if not isinstance(recorded, dict) or not isinstance(record.get("timings", {}), dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{out} holds another run's files ({shown}) but no record of its options (demo.json), so "
                         "it cannot be resumed; replace them with --overwrite, or choose another folder") from None
    differ = option_differences(recorded, cfg)
    if differ:
        raise ValueError(f"{out} holds a demo run with other options ({'; '.join(differ)}); rerun it with its own "
                         "options to resume or show it, replace its files with --overwrite, or choose another folder")
    return record


_UNSET = object()


def option_differences(recorded: dict, cfg: DemoConfig) -> list[str]:
    """`NAME: OLD there, NEW now` for each option (each training override `train.KEY`) that differs."""
    free = set(FREE_OPTIONS) | (set() if cfg.quick else {"cache"})
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as demo.json holds it (lists, not tuples)

    def flat(d: dict) -> dict:
        items = {k: v for k, v in d.items() if k not in free and k != "train"}
        train = d.get("train", {})
        return {**items, **{f"train.{k}": v for k, v in (train.items() if isinstance(train, dict) else {})
                            if k not in FREE_TRAINING}}

    old, new = flat(recorded), flat(now)

    def show(k, v):  # an option an older demo.json lacks is not recorded; a training override left out is not set
        return repr(v) if v is not _UNSET else "not set" if k.startswith("train.") else "not recorded"

    return [f"{k}: {show(k, old.get(k, _UNSET))} there, {show(k, new.get(k, _UNSET))} now"
            for k in [*new, *(k for k in old if k not in new)] if old.get(k, _UNSET) != new.get(k, _UNSET)]


def _base(cfg: DemoConfig) -> Path:
    """The base folder the demo starts from (with --quick: where its tiny base is, or will be, cached)."""
    if cfg.model:
        base = Path(cfg.model)
        if not is_model_dir(base):
            raise FileNotFoundError(f"--model {base} is not a built-in base model folder (gvu pretrain --out)")
        return base
    return base_dir_for(cfg) if cfg.quick else shipped_base(cfg.base, cfg.flat)


def _write_record(out: Path, record: dict) -> None:
    record["peak_rss_mib"] = max(record.get("peak_rss_mib") or 0.0, process_peak_rss_mib())  # over every process
    atomic_write_text(out / "demo.json", json.dumps(record, indent=1) + "\n")


def _run(cfg: DemoConfig, out: Path, record: dict | None, progress: bool) -> Path:
    fresh = record is None
    timings = {} if fresh else record.setdefault("timings", {})
    done: list[str] = []
    for stage in STAGES:  # the finished stages, up to the first that is not: it and all after it run
        if stage not in timings or not _COMPLETE[stage](out):
            break
        done.append(stage)
    rest = STAGES[len(done):]
    if not rest and all((out / f).is_file() for f in REPORT_FILES):
        print(f"note: {out} holds this demo, finished; nothing to compute (--overwrite starts it over)",
              file=sys.stderr)
        return out / "report.md"

    base = _base(cfg)
    tcfg = TrainConfig(**train_overrides(cfg, base, out))
    eval_kw = dict(sampling=SamplingConfig(), per_prompt=cfg.eval_per_prompt, seed=tcfg.eval_seed,
                   val_seed=tcfg.val_seed, limit=tcfg.eval_limit or None, progress=progress)
    # On the base, as the paper's Fig. 8: which descriptors the untrained judge is sensitive to.
    sens = {"per_prompt": 1 if cfg.quick else 2, "prompts_per_tag": 4 if cfg.quick else 40}
    if fresh:
        record = {"demo": dataclasses.asdict(cfg), "base_dir": str(base), "train_dir": str(tcfg.output_dir),
                  "timings": timings, "peak_rss_mib": None, "settings": {
                      "evaluation": {"per_prompt": cfg.eval_per_prompt, "limit": tcfg.eval_limit or None,
                                     "seed": tcfg.eval_seed},
                      "sensitivity": sens, "train_config": str(Path(tcfg.output_dir) / "config.yaml")}}
    else:
        record["train_dir"] = str(tcfg.output_dir)  # the folder as named now (it may have been moved)
        record.setdefault("settings", {})["train_config"] = str(Path(tcfg.output_dir) / "config.yaml")
        for stage in rest:  # a record of a stage that runs again is dropped before it starts
            timings.pop(stage, None)
        if rest:
            record.setdefault("resumptions", []).append({"kept": done, "threads": cfg.threads})
            print(f"note: resuming the demo in {out}: " + (f"{', '.join(done)} finished earlier, kept; " if done else
                  "no stage finished earlier; ") + f"running {', '.join(rest)}", file=sys.stderr)
    _write_record(out, record)  # the options first, so that a rerun can compare them

    t = time.perf_counter()
    if cfg.quick and not cfg.model and not is_model_dir(base):
        pretraining.pretrain(pretrain_config(cfg), base, progress=progress)
    if "pretrain" not in timings:  # kept from the run that found or made the base
        timings["pretrain"] = time.perf_counter() - t

    stage = None
    try:
        for stage in rest:
            t = time.perf_counter()
            _stage(stage, out, base, tcfg, eval_kw, sens, record, progress)
            timings[stage] = time.perf_counter() - t
            _write_record(out, record)  # after the stage's outputs: now it is done
    except KeyboardInterrupt:
        kept = [s for s in STAGES if s in timings]
        print(f"\ninterrupted during {stage}; {out} keeps " + (f"the finished stages ({', '.join(kept)})" if kept
              else "no finished stage") + ": run the same command again to go on from there", file=sys.stderr)
        raise
    timings.update({s: timings.pop(s) for s in STAGES})  # in pipeline order, however the runs went
    return write_report(out, **record)


def _stage(stage: str, out: Path, base: Path, tcfg: TrainConfig, eval_kw: dict, sens: dict, record: dict,
           progress: bool) -> None:
    if stage == "eval_before":
        shutil.rmtree(out / stage, ignore_errors=True)  # an interrupted evaluation's prompt folders
        evaluation.evaluate_model(load_model(str(base)), "all", out=out / stage, **eval_kw)
    elif stage == "score_before":
        # The judge's lead per tag: the base's reward on its own GenEval samples against their exact verdicts.
        write_scores(out / SCORES, score_folder(load_model(str(base)), out / SCORES.parent, progress=progress))
    elif stage == "train":
        _train(tcfg, out, record, progress)
    elif stage == "eval_after":
        shutil.rmtree(out / stage, ignore_errors=True)
        final = Path(tcfg.output_dir) / "final"
        evaluation.evaluate_model(load_model(str(final)), "all", out=out / stage, **eval_kw)
    elif stage == "sensitivity":
        shutil.rmtree(out / stage, ignore_errors=True)
        run_sensitivity(load_model(str(base)), out / stage, **sens)
    else:
        raise AssertionError(stage)


def _train(tcfg: TrainConfig, out: Path, record: dict, progress: bool) -> None:
    """GvU training, or its resumption from the last checkpoint exactly as `gvu train --resume` does it."""
    run = Path(tcfg.output_dir)
    last = ckpt.list_checkpoints(run)
    if not last:  # none written yet: a run interrupted before its first checkpoint starts over
        Trainer(tcfg, overwrite=run.exists()).train(progress=progress)
        return
    state = ckpt.read_state(last[-1])
    now = json.loads(json.dumps(dataclasses.asdict(tcfg)))
    differ = [k for k in now if k not in ("threads", "output_dir", *FREE_TRAINING)
              and state["config"].get(k, _UNSET) != now[k]]
    if differ:  # the demo's options are the same (earlier_run), so the training defaults changed since
        shown = "; ".join(f"{k}: {state['config'].get(k, 'not recorded')!r} there, {now[k]!r} now" for k in differ[:4])
        raise ValueError(f"{last[-1]} was written with other training settings ({shown}): this version of gvu "
                         "trains the demo differently from the one that started it; finish it with that version, or "
                         "start over with --overwrite")
    print(f"note: training resumes from {last[-1]} (step {state['step']} of {tcfg.max_steps})", file=sys.stderr)
    if record.get("resumptions"):
        record["resumptions"][-1]["train_from_step"] = state["step"]
        _write_record(out, record)  # now, as an interruption of this run would lose it
    Trainer(tcfg, resume=last[-1]).train(progress=progress)


def terminal_summary(run: Path) -> str:
    """The before/after table of a finished demo, for the terminal (report.md holds the same numbers)."""
    report = json.loads((Path(run) / "report.json").read_text())
    lines = []
    for bench, title in BENCH_TITLES.items():
        c = report["comparison"].get(bench)
        if c is None:
            continue
        width = max([len(t) for t in c["tags"]] + [len("overall")])
        lines += [f"{title}", f"  {'tag':<{width}}  before   after"]
        lines += [f"  {t:<{width}}  {v['before']:6.3f}  {v['after']:6.3f}" for t, v in c["tags"].items()]
        o = c["overall"]
        lines += [f"  {'overall':<{width}}  {o['before']:6.3f}  {o['after']:6.3f}"]
    lines += terminal_dpg(report["comparison"].get("dpg"))
    u = report["comparison"].get("understanding")
    if u:
        lines += [f"Understanding (matching accuracy)  {u['overall']['before']:.3f} -> {u['overall']['after']:.3f}"]
    if ((report.get("demo") or {}).get("demo") or {}).get("quick"):
        lines += [QUICK_NOTE]
    return "\n".join(lines)



def run_demo_seeds(cfg: DemoConfig, seeds: int, progress: bool = True) -> Path:
    """The same demo for `seeds` training seeds (cfg.seed, cfg.seed + 1, ...), each in `out`/seed-K, then their mean
    with the combined interval in `out`/seeds.md and seeds.json (gvu.analysis.seeds)."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    numbers = list(range(cfg.seed, cfg.seed + seeds))
    runs = seed_dirs(cfg.out, numbers)
    for seed, run in zip(numbers, runs):
        run_demo(dataclasses.replace(cfg, seed=seed, out=str(run)), progress=progress)
    return write_seeds(cfg.out, runs)
