"""Run files are read as data only (gvu/datafile.py): a checkpoint's optimizer state and random states and a
pretraining run's state that were replaced by a pickle whose loading would write a file are refused with a message
naming the file, and the file is never written. Genuine runs resume exactly as before (tests/test_trainer.py,
tests/test_pretrain.py, tests/test_runfolder.py). Commands run in-process through gvu.cli.main on a two-step tiny
base (a few seconds in all)."""

import shutil
from pathlib import Path

import pytest
import torch

from gvu.cli import main
from gvu.datafile import load_data, NotData

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"
PRETRAIN = ["pretrain", "--size", "tiny", "--steps", "2", "--num-scenes", "50", "--batch-size", "8", "--threads", "1"]


class WritesAFile:
    """Unpickled by a reader that runs code, this opens (so creates) `path`: what a hostile file would do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def gvu(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.err + out.out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny base and a finished two-step run with checkpoints 1 and 2."""
    w = tmp_path_factory.mktemp("runs")
    assert main([*PRETRAIN, "--out", str(w / "base")]) == 0
    assert main(["train", "--config", str(TINY), f"model={w / 'base'}", f"output_dir={w / 'A'}", "max_steps=2",
                 "prompts_per_step=2", "num_generations=2", "minibatch_size=4", "num_prompts=16", "eval_steps=0",
                 "save_steps=1", "threads=1"]) == 0
    return w


@pytest.mark.parametrize("name, genuine_keys", [("optim.pt", {"optimizer", "scheduler"}),
                                                ("rng.pt", {"update", "torch"})])
def test_a_checkpoint_file_that_would_run_code_is_refused_and_nothing_runs(run, tmp_path, capsys, name,
                                                                           genuine_keys):
    copy = tmp_path / "copy"
    shutil.copytree(run / "A", copy)
    assert set(load_data(copy / "checkpoint-2" / name)) == genuine_keys  # what gvu writes reads as data
    marker = tmp_path / "written-by-the-pickle"
    torch.save({k: WritesAFile(marker) for k in genuine_keys}, copy / "checkpoint-2" / name)
    rc, text = gvu(capsys, "train", "--resume", copy)
    assert rc == 2 and "Traceback" not in text, text
    assert f"{copy / 'checkpoint-2' / name} holds more than data (its pickle calls io.open)" in text
    assert "ran none of it" in text and f"--resume {copy / 'checkpoint-1'}" in text
    assert not marker.exists()


def test_a_pretraining_state_that_would_run_code_is_refused_and_nothing_runs(tmp_path, capsys):
    state = tmp_path / ".base.pretrain" / "pretrain_state.pt"
    state.parent.mkdir()
    marker = tmp_path / "written-by-the-pickle"
    torch.save({"model": {}, "opt": WritesAFile(marker), "step": 1}, state)
    rc, text = gvu(capsys, *PRETRAIN, "--out", tmp_path / "base")
    assert rc == 2 and "Traceback" not in text, text
    assert f"{state} holds more than data (its pickle calls io.open)" in text and "pretrain from the start" in text
    assert not marker.exists() and not (tmp_path / "base").exists()


def test_the_reader_names_what_a_file_asked_for(tmp_path):
    marker = tmp_path / "written"
    torch.save([1, WritesAFile(marker)], tmp_path / "x.pt")
    with pytest.raises(NotData, match=r"x\.pt holds more than data \(its pickle calls io\.open\)") as err:
        load_data(tmp_path / "x.pt")
    assert "weights_only=False" not in str(err.value)  # torch's advice to load it anyway is not passed on
    assert not marker.exists()
    torch.save({"w": torch.ones(2), "rng": {"state": {"state": 2 ** 100, "inc": 3}}, "kinds": ("a", "b"),
                "none": None}, tmp_path / "y.pt")
    assert load_data(tmp_path / "y.pt")["rng"]["state"]["state"] == 2 ** 100  # numpy's generator state: data
