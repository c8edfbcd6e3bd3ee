"""Run folders that own themselves (gvu.rl.runfolder): a lock with the process id, a fresh run refused over another
run's files, `--resume` writing where the folder now is, no silent model switch on resume, leftover checkpoint
writes removed, and the same ownership for `gvu pretrain --out`, `gvu demo --out` and `gvu generate --outdir`;
damaged checkpoint files named with the checkpoint to resume from instead. Commands run in-process through
gvu.cli.main on a two-step tiny base (a few seconds in all)."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gvu.eval.metadata import write_metadata
from gvu.eval.prompts import build_geneval
from gvu.cli import main
from gvu.rl import runfolder

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
SMALL = ["max_steps=2", "prompts_per_step=2", "num_generations=2", "minibatch_size=4", "num_prompts=16",
         "eval_steps=0", "save_steps=1", "threads=1"]


def gvu(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.err + out.out


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny base and a finished two-step run with checkpoints 1 and 2."""
    w = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", "--size", "tiny", "--steps", "2", "--num-scenes", "50", "--batch-size", "8",
                 "--threads", "1", "--out", str(w / "base")]) == 0
    assert main(["train", "--config", str(TINY), f"model={w / 'base'}", f"output_dir={w / 'A'}", *SMALL]) == 0
    return w


def test_resume_of_a_copied_run_writes_into_the_copy(run, tmp_path, capsys):
    original = digest(run / "A")
    copy = tmp_path / "copy"
    shutil.copytree(run / "A", copy)
    (copy / ".checkpoint-tmp-abc").mkdir()  # a kill during a checkpoint write left this
    rc, text = gvu(capsys, "train", "--resume", copy, "max_steps=3")
    assert rc == 0, text
    assert digest(run / "A") == original  # the original run is untouched
    assert [json.loads(x)["step"] for x in (copy / "log.jsonl").read_text().splitlines()][-1] == 3
    assert (copy / "final").is_dir() and (copy / "checkpoint-3").is_dir()
    assert not (copy / ".checkpoint-tmp-abc").exists() and "unfinished checkpoint write" in text
    assert not (copy / runfolder.LOCK).exists()  # released at the end


def test_a_fresh_run_into_another_runs_folder_is_refused_or_replaced_on_request(run, tmp_path, capsys):
    original = digest(run / "A")
    rc, text = gvu(capsys, "train", "--config", TINY, f"model={run / 'base'}", f"output_dir={run / 'A'}", *SMALL)
    assert rc == 2 and "--resume" in text and "--overwrite" in text and "Traceback" not in text
    assert digest(run / "A") == original
    other = tmp_path / "other"
    shutil.copytree(run / "A", other)
    (other / "notes.txt").write_text("mine")
    rc, text = gvu(capsys, "train", "--config", TINY, f"model={run / 'base'}", f"output_dir={other}", *SMALL,
                   "max_steps=1", "--overwrite")
    assert rc == 0, text
    assert [json.loads(x)["step"] for x in (other / "log.jsonl").read_text().splitlines()] == [1]
    assert not (other / "checkpoint-2").exists() and (other / "notes.txt").read_text() == "mine"


def test_a_live_lock_refuses_and_a_dead_ones_is_taken_over(tmp_path, capsys):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        tmp_path.joinpath(runfolder.LOCK).write_text(f"{live.pid}\n")
        with pytest.raises(ValueError, match=f"in use by process {live.pid}"):
            runfolder.take(tmp_path, resumed=False, overwrite=False)
        with pytest.raises(ValueError, match=f"in use by process {live.pid}"):
            runfolder.check_run(tmp_path, resumed=True, overwrite=False)
    finally:
        live.kill()
        live.wait()
    lock = runfolder.take(tmp_path, resumed=False, overwrite=False)  # its process is gone now
    assert f"process {live.pid}, which is no longer running" in capsys.readouterr().err
    import os

    assert lock.read_text().strip() == str(os.getpid())
    runfolder.release(lock)
    assert not lock.exists()


def test_resume_refuses_a_new_model_unless_asked(run, capsys):
    rc, text = gvu(capsys, "train", "--resume", run / "A", f"model={run / 'elsewhere'}")
    assert rc == 2 and "--new-model" in text and str(run / "base") in text
    rc, text = gvu(capsys, "train", "--resume", run / "A", f"output_dir={run / 'B'}")
    assert rc == 2 and "copy the folder" in text


def test_an_empty_output_dir_is_refused(run, capsys):
    rc, text = gvu(capsys, "train", "--config", TINY, f"model={run / 'base'}", "output_dir=", *SMALL)
    assert rc == 2 and "output_dir is empty" in text


@pytest.mark.parametrize("damage, name", [
    (lambda c: (c / "trainer_state.json").write_text('{"step": 2, "con'), "trainer_state.json"),
    (lambda c: (c / "trainable.pt").write_bytes((c / "trainable.pt").read_bytes()[:500]), "trainable.pt"),
])
def test_a_damaged_checkpoint_names_the_file_and_the_one_before_it(run, tmp_path, capsys, damage, name):
    copy = tmp_path / "copy"
    shutil.copytree(run / "A", copy)
    damage(copy / "checkpoint-2")
    rc, text = gvu(capsys, "train", "--resume", copy)
    assert rc == 2 and "Traceback" not in text, text
    assert str(copy / "checkpoint-2" / name) in text and f"--resume {copy / 'checkpoint-1'}" in text


def test_pretrain_never_replaces_a_finished_base_without_overwrite(run, capsys):
    before = digest(run / "base")
    rc, text = gvu(capsys, "pretrain", "--size", "tiny", "--steps", "3", "--out", run / "base")
    assert rc == 2 and "--overwrite" in text and "finished base" in text
    assert digest(run / "base") == before


def test_demo_refuses_an_earlier_demos_folder(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "report.json").write_text("{}")
    rc, text = gvu(capsys, "demo", "--quick", "--out", tmp_path / "demo", "--cache", tmp_path / "cache")
    assert rc == 2 and "--overwrite" in text
    assert not (tmp_path / "cache").exists()  # refused before pretraining anything


def test_generate_refuses_a_non_empty_folder_and_clears_it_only_with_overwrite(run, tmp_path, capsys):
    meta = tmp_path / "m.jsonl"
    write_metadata(meta, build_geneval("shapes")[:2])
    out = tmp_path / "out"
    (out / "00005" / "samples").mkdir(parents=True)  # a prompt folder of an earlier, longer run
    args = ["generate", "--model", run / "base", "--metadata", meta, "--outdir", out, "--per-prompt", "1"]
    rc, text = gvu(capsys, *args)
    assert rc == 2 and "--overwrite" in text and (out / "00005").is_dir()
    rc, text = gvu(capsys, *args, "--overwrite")
    assert rc == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001"]
