"""`gvu demo --quick` end to end through the CLI, on a base the demo's own pretraining step put into a
temporary cache, and every number of report.json recomputed from the files it claims to come from (the
evaluation summaries, the GenEval results rows, the training log).

The quick preset pretrains 300 steps, about half a minute on the shared CPU. So `run_demo` runs in-process
first with a wrapper around `pretrain` that changes only the step count and writes where the real quick
settings say (the cache key comes from them), and is stopped once the base exists; then the CLI run, as run.sh
runs it, must find and reuse that base. Everything after pretraining is the real quick pipeline, once; and once
more, killed with SIGKILL in training and run again, for the resume."""

import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import gvu.eval.evaluate as evaluate_module
from gvu.world.judge import COLOUR_OUTCOMES, RELATION_OUTCOMES
from gvu.models.load import load_model
from gvu.models.protocol import SamplingConfig
import gvu.models.builtin.pretrain as pretrain_module
from gvu.demo import DemoConfig, base_dir_for, pretrain_config, run_demo, train_overrides
from gvu.models.builtin.model import is_model_dir
from gvu.rl.config import TrainConfig

_EXE = Path(sys.executable).parent / "gvu"
GVU = [str(_EXE)] if _EXE.is_file() else [sys.executable, "-m", "gvu.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Stands for the directory a user runs `gvu demo` in: the default cache is runs/cache under it."""
    return tmp_path_factory.mktemp("demo")


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def cached_base(workdir):
    """run_demo in-process with an empty cache: it pretrains the base into the cache (shortened), then stops."""
    cfg = DemoConfig(quick=True, out=str(workdir / "run0"), cache=str(workdir / "runs" / "cache"), threads=1)
    real, calls = pretrain_module.pretrain, []

    def short_pretrain(pcfg, out, progress=True):
        calls.append((pcfg, Path(out)))
        return real(dataclasses.replace(pcfg, steps=20, warmup_steps=5, num_scenes=300), out, progress=progress)

    def stop(*args, **kwargs):
        raise _Stop

    with pytest.MonkeyPatch.context() as m:
        m.setattr(pretrain_module, "pretrain", short_pretrain)
        m.setattr(evaluate_module, "evaluate_model", stop)
        with pytest.raises(_Stop):
            run_demo(cfg, progress=False)
    assert calls == [(pretrain_config(cfg), base_dir_for(cfg))]  # the quick settings, into the cache
    assert is_model_dir(base_dir_for(cfg))
    return base_dir_for(cfg)


@pytest.fixture(scope="module")
def cli_run(cached_base, workdir):
    base = cached_base
    before, folder_mtime = snapshot(base), base.stat().st_mtime_ns
    # as run.sh runs it (`gvu demo "$@"`), from the folder whose runs/cache holds the base
    p = subprocess.run([*GVU, "demo", "--quick", "--out", "run", "--threads", "1"], cwd=workdir, env=ENV,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "report:" in p.stdout
    (workdir / "stdout.txt").write_text(p.stdout)
    return workdir / "run", before, folder_mtime


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def from_results(path: Path) -> tuple[float, dict, float]:
    """GenEval's summary from results rows: accuracy per tag, overall = unweighted mean of the tags, and the
    overall's standard error (the variance of a mean of independent 0/1 verdicts, per tag, then over tags)."""
    by_tag = defaultdict(list)
    for r in read_jsonl(path):
        by_tag[r["tag"]].append(bool(r["correct"]))
    tags = {t: sum(v) / len(v) for t, v in by_tag.items()}
    var = sum(np.var(np.array(v, dtype=float)) / len(v) for v in by_tag.values()) / len(tags) ** 2
    return sum(tags.values()) / len(tags), tags, float(np.sqrt(var))


def from_dpg_results(path: Path) -> tuple[float, dict, float]:
    """DPG-shapes' summary from results rows: the mean over prompts of their images' scores, each L1 category's
    share of raw yes answers over every image, and the overall's standard error from the within-prompt variance."""
    from gvu.world.dense import questions

    by_item, by_cat = defaultdict(list), defaultdict(list)
    for r in read_jsonl(path):
        by_item[r["item"]].append(r["score"])
        for q, a in zip(questions(json.loads(r["metadata"])), r["answers"]):
            by_cat[q.l1].append(a)
    var = sum(np.var(v, ddof=1) / len(v) for v in by_item.values())
    return (float(np.mean([np.mean(v) for v in by_item.values()])), {c: float(np.mean(v)) for c, v in by_cat.items()},
            float(np.sqrt(var) / len(by_item)))


def check_report(run: Path):
    """Every number of report.json against the files it is built from; the markdown and html agree with it."""
    for name in ("report.md", "report.html", "report.json"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    before = json.loads((run / "eval_before" / "summary.json").read_text())
    after = json.loads((run / "eval_after" / "summary.json").read_text())
    c = report["comparison"]
    assert set(c) == set(evaluate_module.BENCHMARKS)  # the test and validation benchmarks, and understanding
    approx = dict(rel=1e-12, abs=1e-12)
    for bench in (b for b in evaluate_module.BENCHMARKS if b not in ("understanding", "dpg")):  # dpg: below
        o = c[bench]["overall"]
        for stage, summary in (("before", before), ("after", after)):
            overall, tags, se = from_results(run / f"eval_{stage}" / bench / "results.jsonl")
            assert o[stage] == summary[bench]["overall"] == pytest.approx(overall, **approx)
            assert o[f"se_{stage}"] == pytest.approx(se, rel=1e-9, abs=1e-12)
            assert set(c[bench]["tags"]) == set(tags)
            for t, v in c[bench]["tags"].items():
                assert v[stage] == summary[bench]["tags"][t] == pytest.approx(tags[t], **approx)
            wrapped = [r["details"]["wrapped"] for r in read_jsonl(run / f"eval_{stage}" / bench / "results.jsonl")]
            assert c[bench]["wrapped_fraction"][stage] == summary[bench]["wrapped_fraction"] == np.mean(wrapped)
        b, a = o["before"], o["after"]
        assert o["relative"] == (None if b == 0 else pytest.approx((a - b) / b, **approx))
        assert o["gain"] == pytest.approx(a - b, **approx)
        assert o["gain_ci95_half_width"] == pytest.approx(1.96 * np.hypot(o["se_before"], o["se_after"]), rel=1e-9)
    d = c["dpg"]["overall"]  # DPG-shapes: overall, categories and the gain's interval from its results rows
    for stage, summary in (("before", before), ("after", after)):
        overall, cats, se = from_dpg_results(run / f"eval_{stage}" / "dpg" / "results.jsonl")
        assert d[stage] == summary["dpg"]["overall"] == pytest.approx(overall, **approx)
        assert d[f"se_{stage}"] == pytest.approx(se, rel=1e-9, abs=1e-12)
        assert set(summary["dpg"]["categories"]) == {"entity", "attribute", "relation", "global", "other"}
        for cat, v in c["dpg"]["categories"].items():
            assert v[stage] == summary["dpg"]["categories"][cat] == pytest.approx(cats.get(cat), **approx)
    assert d["gain_ci95_half_width"] == pytest.approx(1.96 * np.hypot(d["se_before"], d["se_after"]), rel=1e-9)
    u = c["understanding"]
    ub, ua = before["understanding"], after["understanding"]
    assert (u["overall"]["before"], u["overall"]["after"]) == (ub["overall"], ua["overall"])
    assert u["overall"]["change"] == pytest.approx(ua["overall"] - ub["overall"], **approx)
    assert u["by_perturbation"] == {k: {"before": v, "after": ua["by_perturbation"].get(k)}
                                    for k, v in ub["by_perturbation"].items()}
    assert u["caption_truthfulness"] == {"before": ub["caption_truthfulness"], "after": ua["caption_truthfulness"]}

    steps = [m for m in read_jsonl(run / "train" / "log.jsonl") if "reward" in m]
    w = max(1, len(steps) // 10)
    assert steps and report["reward"] == {
        "name": "intrinsic", "steps": len(steps), "window": w,
        "first": pytest.approx(np.mean([m["reward"] for m in steps[:w]])),
        "last": pytest.approx(np.mean([m["reward"] for m in steps[-w:]])),
        "intrinsic_first": pytest.approx(np.mean([m["intrinsic_reward"] for m in steps[:w]])),
        "intrinsic_last": pytest.approx(np.mean([m["intrinsic_reward"] for m in steps[-w:]]))}
    assert report["demo"] == json.loads((run / "demo.json").read_text())
    assert report["sensitivity"] == json.loads((run / "sensitivity" / "sensitivity.json").read_text())

    md = (run / "report.md").read_text()
    g = c["geneval"]["overall"]
    assert (f"| **overall** | **{g['before']:.3f}** ± {g['se_before']:.3f} | **{g['after']:.3f}** ± "
            f"{g['se_after']:.3f} (") in md
    assert f"Gain {g['gain']:+.3f}, 95% interval ± {g['gain_ci95_half_width']:.3f}" in md
    assert "## DPG-shapes (dense prompts)" in md and f"Gain {d['gain']:+.3f}, 95% interval ± " \
        f"{d['gain_ci95_half_width']:.3f}" in md
    assert any("eval_dpg" in m for m in read_jsonl(run / "train" / "log.jsonl"))  # the curves' third benchmark
    rels = c["geneval"]["relations"]  # each asked relation's outcomes, from the summaries
    assert set(rels) == set(before["geneval"]["relations"]) and rels  # the quick demo asks some of the four
    for rel, v in rels.items():
        assert v == {"before": before["geneval"]["relations"][rel], "after": after["geneval"]["relations"][rel]}
        assert sum(v["before"][k] for k in RELATION_OUTCOMES) == pytest.approx(1.0)
        assert (f"| {rel} | " + " | ".join(f"{v['before'][k]:.2f} -> {v['after'][k]:.2f}" for k in RELATION_OUTCOMES)) in md
    cp = c["geneval"]["colour_pairs"]  # the colour bindings' outcomes, from the summaries
    assert cp == {"before": before["geneval"]["colour_pairs"], "after": after["geneval"]["colour_pairs"]}
    assert ("| " + " | ".join(f"{cp['before'][k]:.2f} -> {cp['after'][k]:.2f}" for k in COLOUR_OUTCOMES)) in md
    w = c["geneval"]["wrapped_fraction"]
    assert f"half-drawn shape, which the detector reads as no object): {w['before']:.1%} before, {w['after']:.1%}" in md
    assert f"{report['reward']['first']:.4f} -> {report['reward']['last']:.4f}." in md
    pictures = [line for line in md.splitlines() if line.startswith("![")]
    for line in pictures:  # the markdown's pictures exist beside it
        assert (run / line[line.index("](") + 2:-1]).is_file(), line
    html = (run / "report.html").read_text()
    inlined = html.split("src='data:image/png;base64,")[1:]
    assert len(inlined) == len(pictures) >= 3  # curves, before/after grids, sensitivity
    for chunk in inlined:
        assert base64.b64decode(chunk.split("'")[0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert f"{g['before']:.3f}" in html


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_quick_demo_writes_a_report_whose_numbers_come_from_its_files(cli_run):
    run, _, _ = cli_run
    check_report(run)
    demo = json.loads((run / "demo.json").read_text())["demo"]
    assert demo == dataclasses.asdict(DemoConfig(quick=True, out="run", threads=1))
    assert (run / "train" / "final").is_dir() and (run / "eval_after" / "geneval").is_dir()


def test_a_second_run_reuses_the_cached_base(cached_base, cli_run, workdir):
    run, before, folder_mtime = cli_run
    base = cached_base
    assert (workdir / json.loads((run / "demo.json").read_text())["base_dir"]).resolve() == base.resolve()
    assert snapshot(base) == before and base.stat().st_mtime_ns == folder_mtime  # reused, untouched
    assert [p.name for p in base.parent.iterdir()] == [base.name]  # and no second base was made
    # "before" is the cached base: evaluating it here with the demo's evaluation settings gives the same rows
    cfg = DemoConfig(quick=True, out=str(run), threads=1)
    tcfg = TrainConfig(**train_overrides(cfg, base, run))
    evaluate_module.evaluate_model(load_model(str(base)), "geneval", sampling=SamplingConfig(), per_prompt=2,
                                   seed=tcfg.eval_seed, limit=tcfg.eval_limit, out=workdir / "check", progress=False)
    assert read_jsonl(workdir / "check" / "geneval" / "results.jsonl") == \
        read_jsonl(run / "eval_before" / "geneval" / "results.jsonl")


def test_report_against_an_oracle_run_gives_the_fraction_of_its_gain(cli_run, tmp_path):
    from gvu.analysis.report import oracle_fraction

    run, _, _ = cli_run
    ours = {"geneval": {"overall": {"before": 0.5, "after": 0.6}}, "genevalpp": {"overall": {"before": 0.1, "after": 0.1}}}
    oracle = {"geneval": {"overall": {"before": 0.5, "after": 0.7}}, "genevalpp": {"overall": {"before": 0.1, "after": 0.1}}}
    got = oracle_fraction(ours, oracle, "o")
    assert got["geneval"]["fraction"] == pytest.approx(0.5) and got["geneval"]["oracle_gain"] == pytest.approx(0.2)
    assert got["genevalpp"]["fraction"] is None  # the oracle gained nothing: no fraction
    with pytest.raises(ValueError, match="same base"):
        oracle_fraction(ours, {"geneval": {"overall": {"before": 0.4, "after": 0.7}}}, "o")
    # the CLI rebuilds the report from files; a run compared with itself reaches exactly its own gain
    r = subprocess.run([sys.executable, "-m", "gvu.cli", "report", str(run), "--oracle", str(run)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads((run / "report.json").read_text())
    for bench, v in report["oracle"].items():
        if bench != "run":
            c = report["comparison"][bench]["overall"]
            assert v["gain"] == pytest.approx(c["after"] - c["before"]) == pytest.approx(v["oracle_gain"])
    assert "## Against the oracle" in (run / "report.md").read_text()


def test_overall_standard_error_and_demo_evaluation_size():
    from gvu.analysis.report import overall_se

    # two tags: p=0.5 on 4 images, p=1.0 on 2 images -> sqrt(0.25/4 + 0) / 2
    assert overall_se({"tags": {"a": 0.5, "b": 1.0}, "images": {"a": 4, "b": 2}}) == pytest.approx(0.125)
    assert overall_se({"tags": {"a": 0.5}}) is None  # no image counts: no error bar rather than a wrong one
    assert DemoConfig().eval_per_prompt == 8
    with pytest.raises(ValueError, match="eval_per_prompt must be >= 1"):
        DemoConfig(eval_per_prompt=0)


def test_lead_joins_runs_from_their_files(cli_run, tmp_path):
    # per tag: the reward AUC from the base's own scored samples, and after - before from the two summaries
    from gvu.eval.quality import auc_by_tag

    run, _, _ = cli_run
    r = subprocess.run([sys.executable, "-m", "gvu.cli", "lead", str(run), str(run), "--label", "a", "--label", "b",
                        "--out", str(tmp_path / "lead")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "lead.png").is_file()
    leads = json.loads((tmp_path / "lead.json").read_text())
    assert set(leads) == {"a", "b"} and leads["a"] == leads["b"]
    before = json.loads((run / "eval_before" / "summary.json").read_text())["geneval"]["tags"]
    after = json.loads((run / "eval_after" / "summary.json").read_text())["geneval"]["tags"]
    scores = read_jsonl(run / "eval_before" / "geneval" / "scores.jsonl")
    auc = auc_by_tag([s["reward"] for s in scores], [s["correct"] for s in scores], [s["tag"] for s in scores])
    assert set(leads["a"]["tags"]) == set(before)
    for tag, t in leads["a"]["tags"].items():
        assert t["gain"] == pytest.approx(after[tag] - before[tag]) and t["auc"] == auc["tags"].get(tag)
    bad = subprocess.run([sys.executable, "-m", "gvu.cli", "lead", str(run), "--label", "a", "--label", "b"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--label" in bad.stderr


def test_the_quick_demo_tells_the_truth(cli_run, workdir, monkeypatch):
    """The terminal shows the before/after table and what the tiny model is for; the recorded evaluation size is
    the one used; the before/after grids carry their prompts."""
    import gvu.eval.plots as plots
    from gvu.analysis.report import QUICK_NOTE, _grid

    run, _, _ = cli_run
    report = json.loads((run / "report.json").read_text())
    stdout = (workdir / "stdout.txt").read_text()
    g = report["comparison"]["geneval"]
    assert "GenEval-shapes" in stdout and "before   after" in stdout
    assert f"{'overall':<{max(len(t) for t in g['tags'])}}  {g['overall']['before']:6.3f}" in stdout
    assert QUICK_NOTE in stdout and QUICK_NOTE in (run / "report.md").read_text()
    assert report["demo"]["demo"]["eval_per_prompt"] == 2
    assert report["demo"]["settings"]["evaluation"] == {"per_prompt": 2, "limit": 16, "seed": 1234}
    assert "Before/after evaluation: 2 images per prompt, 16 prompts of each benchmark" in \
        (run / "report.md").read_text()
    assert len(list((run / "eval_before" / "geneval" / "00000" / "samples").glob("*.png"))) == 2
    calls = []
    monkeypatch.setattr(plots, "image_grid", lambda imgs, path, **kw: calls.append(kw) or Path(path))
    _grid(run, "geneval", n=3)
    prompts = [json.loads((run / "eval_before" / "geneval" / f"{i:05d}" / "metadata.jsonl").read_text())["prompt"]
               for i in range(3)]
    assert calls and calls[0]["captions"] == prompts + prompts


def test_demo_records_the_evaluation_size_it_uses():
    assert DemoConfig(quick=True).eval_per_prompt == 2 and DemoConfig().eval_per_prompt == 8
    assert DemoConfig(quick=True, eval_per_prompt=3).eval_per_prompt == 3


def test_an_empty_panel_says_why(tmp_path):
    from PIL import Image

    from gvu.eval.plots import metrics_plot

    log = [{"step": s, "reward": 0.1 * s, "reward_auc": None} for s in range(1, 4)]
    a = metrics_plot(log, ["reward", "reward_auc"], tmp_path / "a.png", empty_notes={"reward_auc": "why A"})
    b = metrics_plot(log, ["reward", "reward_auc"], tmp_path / "b.png", empty_notes={"reward_auc": "a reason B"})
    pa, pb = np.array(Image.open(a)), np.array(Image.open(b))
    assert pa.shape == pb.shape and (pa != pb).any()  # the note is drawn into the panel


def test_full_demo_starts_from_the_shipped_base(monkeypatch, tmp_path):
    """Without --quick the demo pretrains nothing: it evaluates bases/BASE (or --model) first."""
    import gvu.demo as demo_module

    loaded = []

    def no_pretraining(*args, **kwargs):
        raise AssertionError("the full demo must start from a shipped base, not pretrain")

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(pretrain_module, "pretrain", no_pretraining)
    monkeypatch.setattr(evaluate_module, "evaluate_model", stop)
    monkeypatch.setattr(demo_module, "load_model", lambda path: loaded.append(path))
    for base, flat in (("regular", False), ("weak", False), ("regular", True)):  # the shipped ones (docs/bases.md)
        with pytest.raises(_Stop):
            run_demo(DemoConfig(base=base, flat=flat, out=str(tmp_path / f"{base}{flat}"), threads=1))
        assert loaded[-1] == str(demo_module.BASES / (base + ("-flat" if flat else "")))
    with pytest.raises(FileNotFoundError, match="--model"):
        run_demo(DemoConfig(out=str(tmp_path / "own"), model=str(tmp_path / "no-such-base"), threads=1))


def test_training_overrides_reach_the_run_and_the_demos_own_flags_are_refused(tmp_path):
    cfg = DemoConfig(out=str(tmp_path / "run"), train={"curriculum": True, "max_steps": 7})
    tcfg = TrainConfig(**train_overrides(cfg, tmp_path / "base", tmp_path / "run"))
    assert tcfg.curriculum and tcfg.max_steps == 7 and tcfg.model == str(tmp_path / "base")
    with pytest.raises(ValueError, match="--reward"):
        DemoConfig(train={"reward": "oracle_strict"})
    p = subprocess.run([*GVU, "demo", "--out", str(tmp_path / "x"), "curriculm=true"], env=ENV, capture_output=True,
                       text=True)
    assert p.returncode == 2 and "curriculm" in p.stderr and not (tmp_path / "x").exists()


MEASURED = ("time/", "mem/", "step_time")  # the training log's clock and memory readings: never equal across runs


def numbers(run: Path) -> dict:
    """What an interrupted demo must reproduce: the report's numbers (not the run's name, times or memory), every
    training step's metrics, and the trained weights."""
    report = json.loads((run / "report.json").read_text())
    log = [{k: v for k, v in m.items() if not k.startswith(MEASURED)} for m in read_jsonl(run / "train" / "log.jsonl")]
    return {"comparison": report["comparison"], "reward": report["reward"], "sensitivity": report["sensitivity"],
            "lead": {**report["lead"], "run": None}, "log": log,
            "weights": (run / "train" / "final" / "model.safetensors").read_bytes()}


def test_a_demo_killed_during_training_resumes_to_the_uninterrupted_numbers(cli_run, workdir, monkeypatch, capsys):
    """SIGKILL once training has written a checkpoint, then the same command (in this process, which saves a
    start-up): the lock is taken over, the evaluation before and the scores are kept as they were, training goes on
    from the checkpoint, and every number of the report, every step of the training log and the trained weights
    equal those of the uninterrupted run."""
    from gvu.cli import main

    run = cli_run[0]
    args = ["demo", "--quick", "--out", "killed", "--threads", "1"]
    out = workdir / "killed"
    p = subprocess.Popen([*GVU, *args], cwd=workdir, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while p.poll() is None and not list((out / "train").glob("checkpoint-[1-5]/trainer_state.json")):
            time.sleep(0.01)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == -signal.SIGKILL, "the demo ended before training wrote a checkpoint"
    assert not (out / "train" / "final").exists() and not (out / "eval_after").exists()
    step = max(int(c.parent.name.split("-")[1]) for c in (out / "train").glob("checkpoint-*/trainer_state.json"))
    kept = {**snapshot(out / "eval_before"), "log": (out / "train" / "log.jsonl").read_text().splitlines()[:step + 1]}

    monkeypatch.chdir(workdir)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert main(args) == 0
    r = capsys.readouterr()
    assert "no longer running" in r.err and "report: killed/report.md" in r.out
    assert "eval_before, score_before finished earlier, kept" in r.err
    assert f"training resumes from killed/train/checkpoint-{step} (step {step} of 6)" in r.err
    again = {**snapshot(out / "eval_before"), "log": (out / "train" / "log.jsonl").read_text().splitlines()[:step + 1]}
    assert again == kept  # not recomputed: the same bytes, the same modification times
    check_report(out)
    assert numbers(out) == numbers(run)
    demo = json.loads((out / "demo.json").read_text())
    assert demo["resumptions"] == [{"kept": ["eval_before", "score_before"], "threads": 1, "train_from_step": step}]
    assert list(demo["timings"]) == ["pretrain", "eval_before", "score_before", "train", "eval_after", "sensitivity"]
    assert f"training from its checkpoint of step {step}" in (out / "report.md").read_text()


def test_a_finished_demo_run_again_shows_its_report_and_computes_nothing(cli_run, workdir, monkeypatch, capsys):
    """`bash run.sh main` twice: the second prints the table and the report's path and exits 0."""
    import gvu.demo as demo_module
    from gvu.cli import main

    run = cli_run[0]
    before = snapshot(run)

    def computes(*args, **kwargs):
        raise AssertionError("a finished demo was computed again")

    for name in ("evaluate_model",):
        monkeypatch.setattr(evaluate_module, name, computes)
    for name in ("run_sensitivity", "score_folder", "write_report"):
        monkeypatch.setattr(demo_module, name, computes)
    monkeypatch.setattr(demo_module.Trainer, "train", computes)
    monkeypatch.chdir(workdir)
    assert main(["demo", "--quick", "--out", "run", "--threads", "2"]) == 0  # the thread count may change
    got = capsys.readouterr()
    assert "run holds this demo, finished; nothing to compute" in got.err
    assert got.out == (workdir / "stdout.txt").read_text()  # the same table and report path as the first time
    assert snapshot(run) == before


def test_a_demo_run_again_with_other_options_is_refused_naming_them(cli_run, workdir, monkeypatch, capsys):
    from gvu.cli import main

    run = cli_run[0]
    before = snapshot(run)
    monkeypatch.chdir(workdir)
    assert main(["demo", "--quick", "--out", "run", "--seed", "1", "--per-prompt", "3", "max_steps=7"]) == 2
    err = capsys.readouterr().err
    assert "run holds a demo run with other options (seed: 0 there, 1 now; eval_per_prompt: 2 there, 3 now; " \
           "train.max_steps: not set there, 7 now)" in err and "--overwrite" in err
    (workdir / "other" / "eval_before").mkdir(parents=True)  # another run's files, without a record of its options
    assert main(["demo", "--quick", "--out", "other"]) == 2
    assert "other holds another run's files (eval_before) but no record of its options (demo.json)" in \
        capsys.readouterr().err
    assert snapshot(run) == before


def test_an_interrupted_stage_runs_again_and_the_finished_ones_are_kept(cli_run, workdir, monkeypatch, capsys):
    """Ctrl-C in the evaluation after training (its folder half written): the message says how to go on; the
    rerun keeps the stages before it and gives the uninterrupted run's files."""
    import shutil

    run = cli_run[0]
    copy = workdir / "interrupted"
    shutil.copytree(run, copy)
    demo = json.loads((copy / "demo.json").read_text())
    for stage in ("eval_after", "sensitivity"):
        del demo["timings"][stage]
    (copy / "demo.json").write_text(json.dumps(demo))
    for name in ("report.md", "report.json", "report.html"):
        (copy / name).unlink()
    shutil.rmtree(copy / "eval_after" / "genevalpp")  # as a run killed in that benchmark leaves it
    (copy / "eval_after" / "summary.json").unlink()
    kept = snapshot(copy / "train")
    real = evaluate_module.evaluate_model

    def ctrl_c(model, benchmark, *, out, **kw):
        (Path(out) / "geneval" / "00000").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.chdir(workdir)
    monkeypatch.setattr(evaluate_module, "evaluate_model", ctrl_c)
    cfg = DemoConfig(quick=True, out="interrupted", threads=1)
    with pytest.raises(KeyboardInterrupt):
        run_demo(cfg, progress=False)
    assert "interrupted during eval_after; interrupted keeps the finished stages (eval_before, score_before, " \
           "train): run the same command again to go on from there" in capsys.readouterr().err
    assert not (copy / ".gvu.lock").exists()
    monkeypatch.setattr(evaluate_module, "evaluate_model", real)
    run_demo(cfg, progress=False)
    assert "finished earlier, kept; running eval_after, sensitivity" in capsys.readouterr().err
    assert snapshot(copy / "train") == kept
    assert numbers(copy) == numbers(run)
    assert snapshot(copy / "eval_after").keys() == snapshot(run / "eval_after").keys()


def test_a_rerun_may_change_only_what_leaves_the_experiment_alone():
    from gvu.demo import option_differences

    def recorded(cfg):
        return json.loads(json.dumps(dataclasses.asdict(cfg)))

    quick = recorded(DemoConfig(quick=True, out="a", threads=1, train={"save_steps": 2}))
    assert option_differences(quick, DemoConfig(quick=True, out="/elsewhere/a", threads=4, overwrite=True,
                                                train={"save_steps": 5, "save_total_limit": 3})) == []
    assert option_differences(quick, DemoConfig(quick=True, cache="c2", train={"beta": 0.1})) == [
        "cache: 'runs/cache' there, 'c2' now", "train.beta: not set there, 0.1 now"]
    full = recorded(DemoConfig())
    assert option_differences(full, DemoConfig(cache="c2")) == []  # the full demo never reads the cache
    del full["flat"]  # an option an older demo.json lacks
    assert option_differences(full, DemoConfig(reward="oracle_strict")) == [
        "reward: 'intrinsic' there, 'oracle_strict' now", "flat: not recorded there, False now"]
