"""`gvu pretrain` as a run that owns its folder (gvu/rl/runfolder.py), and every size the code defines on offer.

A second pretraining into a folder that a live one is writing stops at once, naming that process; the lock of a
killed one (kill -9) is taken over and the run resumes from its saved state. Through subprocesses on the tiny
model, a few hundred steps of batch 4 (about 20 s together on one thread)."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from gvu.cli import build_parser
from gvu.models.builtin.model import PRESETS
from gvu.models.builtin.pretrain import STATE_FILE
from gvu.rl.runfolder import lock_beside

from test_cli import ENV, GVU, gvu

TINY = ["--size", "tiny", "--steps", 300, "--batch-size", 4, "--num-scenes", 40, "--threads", 1, "save_every=50"]


def test_size_offers_every_size_the_code_defines(capsys, tmp_path):
    for size in PRESETS:
        assert build_parser().parse_args(["pretrain", "--size", size, "--out", "D"]).size == size
    from gvu.cli import PRETRAIN_SIZES  # what the help lists, without importing torch

    assert set(PRETRAIN_SIZES) == set(PRESETS)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["pretrain", "--size", "huge", "--out", "D"])
    assert "invalid choice 'huge'" in capsys.readouterr().err
    helped = gvu("pretrain", "--help").stdout
    assert all(size in helped for size in PRESETS)
    # the largest size pretrains end to end
    gvu("pretrain", "--size", "large", "--steps", 1, "--batch-size", 2, "--num-scenes", 20, "--threads", 1,
        "--out", tmp_path / "L")
    assert json.loads((tmp_path / "L" / "gvu.json").read_text())["size"] == "large"


def _start(out) -> subprocess.Popen:
    return subprocess.Popen([*GVU, "pretrain", *map(str, TINY), "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(path, proc, timeout=120.0):
    t = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, f"the first pretraining ended (exit {proc.returncode}) before writing {path}"
        assert time.monotonic() - t < timeout, f"no {path} after {timeout} s"
        time.sleep(0.02)


def test_one_pretraining_per_folder_and_a_killed_one_resumes(tmp_path):
    out = tmp_path / "base"
    state = tmp_path / f".{out.name}.pretrain" / STATE_FILE
    first = _start(out)
    try:
        _wait_for(state, first)  # step 50 written: the run is under way
        os.kill(first.pid, signal.SIGSTOP)  # alive, and holding the folder, for as long as the test needs
        t = time.monotonic()
        second = gvu("pretrain", *TINY, "--out", out, check=False)
        assert second.returncode == 2 and f"in use by process {first.pid}" in second.stderr, second.stderr
        assert str(lock_beside(out)) in second.stderr and "Traceback" not in second.stderr
        assert time.monotonic() - t < 60  # stopped before any pretraining (about 3 s of imports)
        assert not out.exists()
        step = torch.load(state, weights_only=False)["step"]
        os.kill(first.pid, signal.SIGKILL)  # a killed run: its lock stays behind, naming a dead process
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert lock_beside(out).read_text().split()[0] == str(first.pid)

    third = gvu("pretrain", *TINY, "--out", out)
    assert f"left by process {first.pid}" in third.stderr and "taking the folder over" in third.stderr
    assert not lock_beside(out).exists() and not state.exists()
    assert json.loads((out / "gvu.json").read_text())["pretrain"]["steps"] == 300
    # resumed, not restarted: the steps up to the saved state are logged once (by the killed run), then the rest
    steps = [json.loads(line)["step"] for line in (out / "pretrain_log.jsonl").read_text().splitlines()]
    early = [s for s in steps if s <= step]
    assert step >= 50 and early == sorted(set(early)) and steps[-1] == 300, (step, steps)
