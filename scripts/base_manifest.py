"""Measure a pretrained base and write its manifest (BASE/manifest.json), as the shipped bases under bases/ carry.

    python scripts/base_manifest.py bases/regular --command "gvu pretrain --preset regular --threads 1 \
        --out bases/regular" --seconds 1500 --commit 5c4870b [--work runs/manifest-regular | --demo RUN]

Measured here, each with the settings the README's tables use (8 images per prompt, seed 1234, guidance of the
model's default sampling): GenEval-shapes and GenEval++-shapes (exact judge), the understanding benchmark (image-text
matching per perturbation, caption truthfulness, the sign of a two-object relation per relation), and the
reward's AUC against the exact verdicts on the base's own GenEval-shapes samples, per tag (the judge's lead).
The first logged losses of pretraining are copied from the base's pretrain_log.jsonl: rerunning the command must
reproduce them (tests/test_bases.py). A base continued from another (`init=DIR`, docs/bases.md) also records, under
"parent", the command that built DIR and DIR's first losses, which the test replays from scratch. Generated images
go to --work (default runs/manifest-NAME), never into the base's folder. `--demo RUN` takes the numbers from a `gvu demo` run that started from BASE instead, whose "before" evaluation
and scoring are these same measurements of the same model (8 images per prompt, seed 1234).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch


def first_losses(base: Path) -> list[dict]:
    from gvu.models.builtin.pretrain import FIRST_LOGGED, LOG_FILE

    rows = [json.loads(line) for line in (base / LOG_FILE).read_text().splitlines() if line.strip()]
    first = [{"step": r["step"], "loss": r["loss"]} for r in rows if r["step"] <= FIRST_LOGGED]
    if len(first) < FIRST_LOGGED:
        raise SystemExit(f"{base / LOG_FILE} logs {len(first)} of the first {FIRST_LOGGED} steps; pretrain the base "
                         "with a gvu that logs them (every step up to FIRST_LOGGED)")
    return first


def measure(base: Path, work: Path) -> tuple[dict, list[dict]]:
    from gvu.analysis.score import score_folder
    from gvu.eval.evaluate import evaluate_model
    from gvu.models.load import load_model
    from gvu.models.protocol import SamplingConfig

    model = load_model(str(base))
    summary = evaluate_model(model, "all", sampling=SamplingConfig(), per_prompt=8, seed=1234, out=work)
    print(summary.pop("table"))
    return summary, score_folder(model, work / "geneval", progress=True)


def from_demo(run: Path, base: Path) -> tuple[dict, list[dict]]:
    from gvu.analysis.lead import SCORES

    demo = json.loads((run / "demo.json").read_text())
    if Path(demo["base_dir"]).resolve() != base.resolve():
        raise SystemExit(f"{run} started from {demo['base_dir']}, not {base}")
    settings = demo["settings"]["evaluation"]
    if (settings["per_prompt"], settings["seed"], settings["limit"]) != (8, 1234, None):
        raise SystemExit(f"{run} evaluated with {settings}; the manifest's numbers are 8 per prompt, seed 1234, all")
    summary = json.loads((run / "eval_before" / "summary.json").read_text())
    return summary, [json.loads(line) for line in (run / SCORES).read_text().splitlines() if line.strip()]


def benchmarks(summary: dict, records: list[dict]) -> dict:
    from gvu.analysis.score import summarise_scores

    scores = summarise_scores(records)
    u = summary["understanding"]
    return {
        "geneval": {"overall": summary["geneval"]["overall"], "tags": summary["geneval"]["tags"]},
        "genevalpp": {"overall": summary["genevalpp"]["overall"], "tags": summary["genevalpp"]["tags"]},
        "understanding": {"matching": u["overall"], "by_perturbation": u["by_perturbation"],
                          "caption_truthfulness": u["caption_truthfulness"], "relation_sign": u["relation_sign"]},
        "reward_auc": {"overall": scores["auc"], "within_prompt": scores["within_prompt_auc"],
                       "tags": {t: v["auc"] for t, v in scores["tags"].items()},
                       "tags_strict": {t: v.get("auc_strict") for t, v in scores["tags"].items()},
                       "tags_well_formed": {t: v.get("auc_well_formed") for t, v in scores["tags"].items()},
                       "wrapped_fraction": scores.get("wrapped_fraction")},
        "settings": "8 images per prompt, seed 1234, default sampling; AUC on the base's own GenEval-shapes samples",
    }


def _parent(command: str, parent: list[str] | None) -> dict:
    """The manifest's record of the base a continued pretraining started from (its `init=` folder)."""
    init = [w.removeprefix("init=") for w in shlex.split(command) if w.startswith("init=")]
    if not parent or len(init) != 1:
        raise SystemExit("a base continued from another needs exactly one init=DIR in --command and --parent "
                         "COMMAND SECONDS COMMIT (the command that built DIR)")
    words = shlex.split(parent[0])
    out = words[words.index("--out") + 1] if "--out" in words[:-1] else None
    if words[:2] != ["gvu", "pretrain"] or out != init[0]:
        raise SystemExit(f"--parent must be the gvu pretrain command that wrote {init[0]} (its --out)")
    return {"command": parent[0], "pretraining_seconds": round(float(parent[1])), "commit": parent[2],
            "first_losses": first_losses(Path(init[0]))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="a finished base folder (gvu pretrain --out)")
    p.add_argument("--command", required=True, help="the exact gvu pretrain command that built it")
    p.add_argument("--seconds", type=float, required=True, help="its wall-clock pretraining time")
    p.add_argument("--commit", required=True, help="the commit it was pretrained at")
    p.add_argument("--work", help="folder for the evaluation's images (default runs/manifest-NAME)")
    p.add_argument("--demo", help="take the numbers from the before-evaluation of this `gvu demo` run from BASE")
    p.add_argument("--note", help="how the pretraining was timed (e.g. beside another run)")
    p.add_argument("--parent", nargs=3, metavar=("COMMAND", "SECONDS", "COMMIT"),
                   help="a base continued from another (`init=DIR` in --command): the command that built DIR, its "
                        "time and commit; DIR's first losses go in the manifest for the replay test")
    a = p.parse_args(argv)
    base = Path(a.base)
    if not a.command.startswith("gvu pretrain "):
        raise SystemExit(f"--command must be the gvu pretrain command line, got {a.command!r}")
    shlex.split(a.command)  # refuses unbalanced quotes now rather than in the test that replays it
    torch.set_num_threads(1)
    parent = _parent(a.command, a.parent) if a.parent or "init=" in a.command else None
    work = Path(a.work or f"runs/manifest-{base.name}")
    manifest = {
        "command": a.command,
        "commit": a.commit,
        "pretraining_seconds": round(a.seconds),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), "
                   + ("a GPU" if torch.cuda.is_available() else "no GPU") + (f"; {a.note}" if a.note else ""),
        "torch": torch.__version__,
        "first_losses": first_losses(base),
        "pretrain": json.loads((base / "gvu.json").read_text()).get("pretrain"),
        **({"parent": parent} if parent else {}),
        "benchmarks": benchmarks(*(from_demo(Path(a.demo), base) if a.demo else measure(base, work))),
    }
    (base / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {base / 'manifest.json'}")


if __name__ == "__main__":
    sys.exit(main())
