"""`gvu demo`: the paper's experiment end to end on the shapes world, with a report.

a shipped base (bases/regular, bases/weak, bases/regular-flat: pretrained once, with the manifest that rebuilds
it; docs/bases.md) -> evaluate it -> GvU training -> evaluate again -> the sensitivity study -> report.md,
report.html (pictures inlined) and report.json.

`--quick` runs the same pipeline on a tiny model it pretrains itself (cached) and small evaluation subsets
(minutes; the test suite runs it). Evaluation uses fixed seeds, so "before" and "after" see the same prompts and generators.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from gvu.analysis.lead import SCORES
from gvu.analysis.report import BENCH_TITLES, QUICK_NOTE, write_report
from gvu.analysis.score import score_folder, write_scores
from gvu.analysis.seeds import seed_dirs, write_seeds
from gvu.analysis.sensitivity import run_sensitivity
from gvu.eval import evaluate as evaluation
from gvu.models.builtin import is_model_dir
from gvu.models.load import load_model
from gvu.models import pretrain as pretraining
from gvu.models.pretrain import PretrainConfig
from gvu.models.protocol import SamplingConfig
from gvu.rl import runfolder
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
    """Replace an earlier demo's files in `out` (without it, such a folder is refused: runs would mix)."""
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
    if cfg.quick:
        o.update(max_steps=6, prompts_per_step=4, num_generations=4, minibatch_size=16, num_prompts=2000,
                 learning_rate=1e-3, eval_steps=3, eval_per_prompt=1, eval_limit=16, save_steps=0)
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


def run_demo(cfg: DemoConfig, progress: bool = True) -> Path:
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = runfolder.check_path(cfg.out, "--out")
    lock = runfolder.take(out, resumed=False, overwrite=cfg.overwrite, names=runfolder.DEMO_FILES, how="")
    try:
        return _run(cfg, out, progress)
    finally:
        runfolder.release(lock)


def _run(cfg: DemoConfig, out: Path, progress: bool) -> Path:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if cfg.model:
        base = Path(cfg.model)
        if not is_model_dir(base):
            raise FileNotFoundError(f"--model {base} is not a built-in base model folder (gvu pretrain --out)")
    elif cfg.quick:
        base = base_dir_for(cfg)
        if not is_model_dir(base):
            pretraining.pretrain(pretrain_config(cfg), base, progress=progress)
    else:
        base = shipped_base(cfg.base, cfg.flat)
    timings["pretrain"] = time.perf_counter() - t

    tcfg = TrainConfig(**train_overrides(cfg, base, out))
    eval_kw = dict(sampling=SamplingConfig(), per_prompt=cfg.eval_per_prompt, seed=tcfg.eval_seed, val_seed=tcfg.val_seed,
                   limit=tcfg.eval_limit or None, progress=progress)

    t = time.perf_counter()
    evaluation.evaluate_model(load_model(str(base)), "all", out=out / "eval_before", **eval_kw)
    timings["eval_before"] = time.perf_counter() - t

    t = time.perf_counter()

    # The judge's lead per tag: the base's reward on its own GenEval samples against their exact verdicts.
    write_scores(out / SCORES, score_folder(load_model(str(base)), out / SCORES.parent, progress=progress))
    timings["score_before"] = time.perf_counter() - t

    t = time.perf_counter()
    final = Trainer(tcfg).train(progress=progress)
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    evaluation.evaluate_model(load_model(str(final)), "all", out=out / "eval_after", **eval_kw)
    timings["eval_after"] = time.perf_counter() - t

    t = time.perf_counter()

    # On the base, as the paper's Fig. 8: which descriptors the untrained judge is sensitive to.
    sens = {"per_prompt": 1 if cfg.quick else 2, "prompts_per_tag": 4 if cfg.quick else 40}
    run_sensitivity(load_model(str(base)), out / "sensitivity", **sens)
    timings["sensitivity"] = time.perf_counter() - t

    peak_rss_mib = process_peak_rss_mib()  # the whole demo process so far, across the trainer's phase resets
    return write_report(out, demo=dataclasses.asdict(cfg), base_dir=str(base), train_dir=str(tcfg.output_dir),
                        timings=timings, peak_rss_mib=peak_rss_mib, settings={
                            "evaluation": {"per_prompt": cfg.eval_per_prompt, "limit": tcfg.eval_limit or None,
                                           "seed": tcfg.eval_seed},
                            "sensitivity": sens, "train_config": str(Path(tcfg.output_dir) / "config.yaml")})


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
