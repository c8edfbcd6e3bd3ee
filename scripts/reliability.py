"""Reliability probes: every careless or hostile use of issues 18, 27, 39, 41 and 44 run against the `gvu` command
line, one table row each (probe, exit code, first line of the message, verdict).

  OK      the command did what it should: a refusal with a one-line message that names the flag, file or line
          and what to do, or (where the use is legitimate) a success that wrote where it should
  SILENT  the bad input was accepted, or failed with a traceback or a message that names neither flag nor file
          (or a hostile file's code ran: the file it would write is there)
  LOSS    files of another run (or a finished model) were changed or removed

Commands run in this process through `gvu.cli.main` (one torch import; a run a probe kills or interrupts is a
fork of this process, so the whole table takes about a minute on one CPU thread) on a tiny base pretrained for two
steps in a temporary folder, and on the tiny X-Omni
the tests write (tests/_tiny_xomni.py), whose Python files each write a marker when they run.

    python scripts/reliability.py            # prints the table; exit 1 if any row is not OK
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from gvu.eval.metadata import write_metadata
from gvu.eval.prompts import build_geneval, build_train
from gvu.cli import main as gvu_main

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


TIMEOUT = 60  # seconds per command: every probe here should end in a second or two


class _TimedOut(BaseException):
    pass


def _alarm(signum, frame):
    raise _TimedOut


def gvu(*args) -> tuple[int, str]:
    """(exit code, stderr + stdout) of one command, in this process; 124 if it still computes after TIMEOUT s."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = gvu_main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
        except _TimedOut:
            rc, _ = 124, err.write(f"still computing after {TIMEOUT} s: no check before compute\n")
        except BaseException:  # an uncaught exception is a traceback for the user
            rc, _ = 1, err.write("Traceback (most recent call last):\n" + traceback.format_exc())
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    return rc, err.getvalue() + out.getvalue()


class spawn:
    """`gvu ARGS` in a forked copy of this process (torch already imported, so no start-up), its output into `log`:
    a run to kill or interrupt from here, as a user would its process."""

    def __init__(self, *args, log: Path):
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid, self.returncode = os.fork(), None
        if self.pid == 0:  # the child: the command, then out without running the parent's clean-ups
            rc = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                rc = gvu_main([str(a) for a in args])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)

    def done(self) -> bool:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode is not None

    def signal(self, sig: int) -> int:
        """Send `sig` if it still runs; wait for its end; its exit code (-N: killed by signal N)."""
        if not self.done():
            os.kill(self.pid, sig)
        deadline = time.monotonic() + TIMEOUT
        while not self.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.done():
            os.kill(self.pid, signal.SIGKILL)
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".gvu.lock"}


def first_line(text: str) -> str:
    """The error line if there is one, else the last line the command printed (progress bars left out)."""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines()
             if ln.strip() and "%|" not in ln and not ln.startswith("note:")]
    if any(ln.startswith("Traceback") for ln in lines):
        return "Traceback: " + lines[-1][:100]
    errors = [ln for ln in lines if "error:" in ln]
    return (errors[0] if errors else lines[-1] if lines else "(no message)")[:140]


class Table:
    def __init__(self):
        self.rows: list[tuple[str, int, str, str]] = []

    def refuse(self, name: str, result: tuple[int, str], *needles: str, keep: dict[Path, dict] | None = None,
               absent: Path | None = None):
        """A refusal: non-zero exit, no traceback, the message holding every needle; `keep` unchanged; `absent`
        (the file a hostile file's code would write) not there."""
        rc, text = result
        msg = first_line(text)
        ok = rc not in (0, 1, 124) and not msg.startswith("Traceback") and all(n in text for n in needles)
        if absent is not None and absent.exists():
            ok, msg = False, f"(its code ran: {absent.name} was written) {msg}"[:140]
        self.add(name, rc, msg, ok, keep)

    def add(self, name: str, rc: int, msg: str, ok: bool, keep: dict[Path, dict] | None = None):
        lost = any(digest(folder) != before for folder, before in (keep or {}).items())
        self.rows.append((name, rc, msg, "LOSS" if lost else "OK" if ok else "SILENT"))

    def print(self) -> None:
        w = max(len(r[0]) for r in self.rows)
        print(f"{'probe':<{w}}  exit  verdict  message")
        for name, rc, msg, verdict in self.rows:
            print(f"{name:<{w}}  {rc:>4}  {verdict:<7}  {msg}")
        counts = {v: sum(r[3] == v for r in self.rows) for v in ("OK", "SILENT", "LOSS")}
        print(f"{len(self.rows)} probes: " + ", ".join(f"{n} {v}" for v, n in counts.items()))


def setup(w: Path) -> dict:
    """A tiny base, a two-step training run with checkpoints, metadata files good and bad."""
    base = w / "base"
    assert gvu("pretrain", "--size", "tiny", "--steps", 2, "--num-scenes", 50, "--batch-size", 8, "--threads", 1,
               "--out", base)[0] == 0
    cfg = w / "tiny.yaml"
    cfg.write_text((ROOT / "configs" / "tiny.yaml").read_text() + "\nthreads: 1\n")
    common = [f"model={base}", "max_steps=2", "prompts_per_step=2", "num_generations=2", "minibatch_size=4",
              "num_prompts=16", "eval_steps=0", "save_steps=1"]
    rc, text = gvu("train", "--config", cfg, f"output_dir={w / 'A'}", *common)
    assert rc == 0, text
    good = build_geneval("shapes")[:2]
    write_metadata(w / "good.jsonl", good)
    big = build_train("shapes", seed=0, n=5000)
    big[4999] = {**big[4999], "prompt": big[4999]["prompt"] + " sparkly"}
    (w / "big.jsonl").write_text("".join(json.dumps(r) + "\n" for r in big))
    one = good[0]
    bad = {"tag": {**one, "tag": "bogus_tag"},
           "contradiction": {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "blue"}],
                             "prompt": "a photo of a red circle"},
           "count": {"tag": "counting", "include": [{"class": "circle", "count": 1000}],
                     "prompt": "a photo of many circles"},
           "colour": {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "teal"}],
                      "prompt": "a photo of a teal circle"},
           "object": {"tag": "single_object", "include": [{"class": "unicorn", "count": 1}],
                      "prompt": "a photo of a unicorn"}}
    for name, row in bad.items():
        (w / f"{name}.jsonl").write_text(json.dumps(good[1]) + "\n" + json.dumps(row) + "\n")
    assert gvu("world", "render", "--metadata", w / "good.jsonl", "--outdir", w / "gt", "--per-prompt", 1)[0] == 0
    return {"base": base, "cfg": cfg, "common": common}


def judge_copy(w: Path, name: str, change) -> Path:
    """A copy of the ground-truth folder with its first image changed by `change(path)`."""
    d = w / name
    shutil.copytree(w / "gt", d)
    change(d / "00000" / "samples" / "0000.png")
    return d


def _save(path: Path, fmt: str, mode: str = "RGB", size: int | None = None, **kw):
    from PIL import Image

    img = Image.open(path).convert(mode)
    if size:
        img = img.resize((size, size))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    path.write_bytes(buf.getvalue())  # still named .png, as a careless export would leave it


def run_folder_probes(t: Table, w: Path, s: dict) -> None:
    A, cfg, common = w / "A", s["cfg"], s["common"]
    keep = {A: digest(A)}
    B = w / "B"  # a copied run, with a stale lock (a killed run) and an unfinished checkpoint write in it
    shutil.copytree(A, B)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (B / ".gvu.lock").write_text(f"{dead.pid}\n")
    (B / ".checkpoint-tmp-killed").mkdir()
    rc, text = gvu("train", "--resume", B, "max_steps=3")
    steps = [json.loads(x)["step"] for x in (B / "log.jsonl").read_text().splitlines()]
    t.add("train --resume COPY writes into the copy", rc, first_line(text) or "(no message)",
          rc == 0 and steps[-1] == 3 and (B / "final").is_dir(), keep)
    note = next((ln for ln in text.splitlines() if "no longer running" in ln), "(no message)")
    t.add("stale lock of a killed run: reported, taken over", rc, note[:140], "no longer running" in text)
    t.add("leftover .checkpoint-tmp-* removed on the next start", rc,
          next((ln for ln in text.splitlines() if "checkpoint-tmp" in ln), "(no message)")[:140],
          not (B / ".checkpoint-tmp-killed").exists())
    t.refuse("train: fresh run into another run's folder", gvu("train", "--config", cfg, f"output_dir={A}", *common),
             "--resume", "--overwrite", keep=keep)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (w / "C").mkdir()
        (w / "C" / ".gvu.lock").write_text(f"{live.pid}\n")
        t.refuse("train: two runs at once into one folder", gvu("train", "--config", cfg, f"output_dir={w / 'C'}",
                                                                 *common), str(live.pid))
    finally:
        live.kill()
        live.wait()
    t.refuse("train --resume DIR model=OTHER", gvu("train", "--resume", A, f"model={w / 'other'}"), "--new-model",
             keep=keep)
    t.refuse("train output_dir= (empty)", gvu("train", "--config", cfg, "output_dir=", *common), "output_dir")
    F = w / "F"
    shutil.copytree(A, F)
    (F / "checkpoint-2" / "trainer_state.json").write_text('{"step": 2, "conf')
    t.refuse("train --resume, corrupt trainer_state.json", gvu("train", "--resume", F), "trainer_state.json",
             "checkpoint-1")
    G = w / "G"
    shutil.copytree(A, G)
    pt = G / "checkpoint-2" / "trainable.pt"
    pt.write_bytes(pt.read_bytes()[:1000])
    t.refuse("train --resume, truncated trainable.pt", gvu("train", "--resume", G), "trainable.pt", "checkpoint-1")
    keep_base = {s["base"]: digest(s["base"])}
    t.refuse("pretrain --out EXISTING_BASE (other options)", gvu("pretrain", "--size", "tiny", "--steps", 3,
                                                                 "--out", s["base"]), "--overwrite", keep=keep_base)
    D = w / "D"
    D.mkdir()
    for f in ("demo.json", "report.json", "report.md"):
        (D / f).write_text("{}\n")
    t.refuse("demo --out EARLIER_DEMO (no record of its options)", gvu("demo", "--quick", "--out", D, "--cache",
                                                                     w / "cache"), "--overwrite", "demo.json",
             keep={D: digest(D)})


def demo_numbers(run: Path) -> tuple:
    """What a resumed demo must reproduce: the report's before/after scores, reward trend, sensitivity, weights."""
    r = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
    weights = run / "train" / "final" / "model.safetensors"
    return (r.get("comparison"), r.get("reward"), r.get("sensitivity"), weights.is_file() and weights.read_bytes())


def demo_probes(t: Table, w: Path, s: dict) -> None:
    """`gvu demo` killed (kill -9) in training, run again, stopped there with Ctrl-C, run again, ends with the
    numbers of an uninterrupted run; a finished one run again computes nothing; other options are refused, named."""
    demo = ["demo", "--quick", "--model", s["base"], "--threads", 1, "--per-prompt", 1, "max_steps=4",  # the pipeline
            "eval_steps=0", "eval_limit=4", "prompts_per_step=2", "num_generations=2", "minibatch_size=4"]  # at its least
    U = w / "DU"
    rc, text = gvu(*demo, "--out", U)
    assert rc == 0, text
    keep = {U: digest(U)}
    rc, text = gvu(*demo, "--out", U)
    t.add("demo run again on its finished folder: shown, nothing computed", rc, first_line(text),
          rc == 0 and "report:" in text and "nothing to compute" in text, keep)
    t.refuse("demo run again with another --seed", gvu(*demo, "--seed", 1, "--out", U), "seed: 0 there, 1 now",
             "--overwrite", keep=keep)

    K = w / "DK"
    killed = spawn(*demo, "--out", K, log=w / "DK.log")
    while not killed.done() and not (K / "train" / "checkpoint-1" / "trainer_state.json").is_file():
        time.sleep(0.01)
    killed.signal(signal.SIGKILL)
    before = digest(K / "eval_before") if (K / "eval_before").is_dir() else None
    # run again, and press Ctrl-C once the resumed training has logged a step of its own
    again = spawn(*demo, "--out", K, log=w / "DK-again.log")
    log = K / "train" / "log.jsonl"
    while not again.done() and not ((K / ".gvu.lock").is_file() and str(again.pid) in (K / ".gvu.lock").read_text()
                                    and log.is_file() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.01)
    again.signal(signal.SIGINT)
    text = (w / "DK-again.log").read_text()
    t.add("demo killed (kill -9) in training, run again: resumed (then Ctrl-C)", again.returncode, next(
        (ln for ln in text.splitlines() if "training resumes" in ln), first_line(text))[:140],
        killed.returncode == -signal.SIGKILL and "training resumes from" in text and before is not None
        and digest(K / "eval_before") == before)
    first = (again.returncode, text)
    rc, text = gvu(*demo, "--out", K)
    t.add("demo stopped with Ctrl-C in training, run again: uninterrupted numbers", rc, next(
        (ln for ln in first[1].splitlines() if ln.startswith("interrupted during")), first_line(first[1]))[:140],
        first[0] == 130 and "run the same command again" in first[1] and rc == 0 and "resuming the demo" in text
        and json.loads((K / "demo.json").read_text())["resumptions"][0].get("train_from_step") == 1
        and demo_numbers(K) == demo_numbers(U))


def generate_probes(t: Table, w: Path, s: dict) -> None:
    base, good = s["base"], w / "good.jsonl"
    E = w / "E"
    shutil.copytree(w / "gt", E)
    shutil.copytree(E / "00000", E / "00007")  # a prompt folder of an earlier, longer run
    t.refuse("generate into a folder of older prompt folders", gvu("generate", "--model", base, "--metadata", good,
                                                                   "--outdir", E, "--per-prompt", 1), "--overwrite")
    rc, text = gvu("generate", "--model", base, "--metadata", good, "--outdir", E, "--per-prompt", 1, "--overwrite")
    t.add("generate --overwrite clears the old prompt folders", rc, first_line(text), rc == 0 and not
          (E / "00007").exists() and (E / "00001").is_dir())
    shutil.copytree(w / "gt", w / "EV" / "file")  # the images of an earlier evaluation of a metadata file
    t.refuse("eval into a folder of an earlier evaluation", gvu("eval", "--model", base, "--benchmark", good, "--out",
                                                                w / "EV", "--per-prompt", 1), "--overwrite",
             keep={w / "EV": digest(w / "EV")})
    for cmd in (("generate", "--model", base, "--outdir", w / "G1"), ("eval", "--model", base, "--out", w / "G2"),
                ("train", "--config", s["cfg"], f"output_dir={w / 'G3'}", *s["common"])):
        meta = ("--benchmark" if cmd[0] == "eval" else "--metadata", w / "big.jsonl")
        args = (*cmd, f"prompts={w / 'big.jsonl'}") if cmd[0] == "train" else (*cmd, *meta)
        t.refuse(f"{cmd[0]}: unknown word on line 5000", gvu(*args), "big.jsonl:5000", "sparkly")
    for flag, cmd in (("--per-prompt", "generate"), ("--batch", "generate"), ("--per-prompt", "eval")):
        extra = ("--metadata", good, "--outdir", w / "G4") if cmd == "generate" else ("--benchmark", good)
        t.refuse(f"{cmd} {flag} 0", gvu(cmd, "--model", base, *extra, flag, 0), flag)
    t.refuse("world render --per-prompt 0", gvu("world", "render", "--metadata", good, "--outdir", w / "G5",
                                                "--per-prompt", 0), "--per-prompt")
    t.refuse("score --seed -1", gvu("score", w / "gt", "--model", base, "--seed", -1), "--seed")
    if os.geteuid() == 0:  # root writes through permission bits: a folder on a read-only file system instead
        ro = Path("/sys/gvu-probe")
    else:
        (w / "ro").mkdir()
        os.chmod(w / "ro", 0o555)
        ro = w / "ro" / "out"
    t.refuse("generate into a read-only folder", gvu("generate", "--model", base, "--metadata", good, "--outdir", ro,
                                                     "--per-prompt", 1), str(ro))


def metadata_probes(t: Table, w: Path, s: dict) -> None:
    for name, needle in (("tag", "bogus_tag"), ("contradiction", "does not say"), ("count", "1000"),
                         ("colour", "teal"), ("object", "unicorn")):
        f = w / f"{name}.jsonl"
        t.refuse(f"world render: {name} on line 2", gvu("world", "render", "--metadata", f, "--outdir",
                                                        w / f"R-{name}"), f"{f}:2", needle)
    t.refuse("generate: unknown tag", gvu("generate", "--model", s["base"], "--metadata", w / "tag.jsonl", "--outdir",
                                          w / "R-gen"), "tag.jsonl:2", "bogus_tag")
    t.refuse("train: contradicting include in prompts", gvu("train", "--config", s["cfg"], f"output_dir={w / 'R-tr'}",
                                                            *s["common"], f"prompts={w / 'contradiction.jsonl'}"),
             "contradiction.jsonl:2")
    bogus = judge_copy(w, "J-tag", lambda p: None)
    meta = bogus / "00000" / "metadata.jsonl"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "tag": "bogus_tag"}) + "\n")
    t.refuse("judge: unknown tag in a prompt folder", gvu("judge", bogus), str(meta), "bogus_tag")
    t.refuse("score: unknown tag in a prompt folder", gvu("score", bogus, "--model", s["base"]), "bogus_tag")
    cfg, common = s["cfg"], s["common"]
    for name, extra, needle in (("learning_rate: .inf", ["learning_rate=.inf"], "learning_rate"),
                                ("threads=-1", ["threads=-1"], "threads"),
                                ("epsilon_high < epsilon", ["epsilon=0.2", "epsilon_high=0.1"], "epsilon_high")):
        t.refuse(f"train {name}", gvu("train", "--config", cfg, f"output_dir={w / 'T'}", *common, *extra), needle)
    (w / "empty.yaml").write_text("")
    t.refuse("train --config EMPTY.yaml", gvu("train", "--config", w / "empty.yaml"), "empty.yaml")
    t.refuse("pretrain --threads -1", gvu("pretrain", "--size", "tiny", "--out", w / "P", "--threads", -1), "--threads")


def judge_probes(t: Table, w: Path) -> None:
    d = judge_copy(w, "J-trunc", lambda p: p.write_bytes(p.read_bytes()[:200]))
    t.refuse("judge: truncated PNG", gvu("judge", d), "0000.png")
    d = judge_copy(w, "J-jpeg", lambda p: _save(p, "JPEG", quality=90))
    t.refuse("judge: JPEG bytes", gvu("judge", d), "0000.png", "not a clean render")
    rc, text = gvu("judge", d, "--unclean", "report")
    t.add("judge --unclean report: counted apart", rc, [ln for ln in text.splitlines() if "clean" in ln][-1:][0][:140]
          if "clean" in text else first_line(text), rc == 0 and "1 images not a clean render" in text)
    d = judge_copy(w, "J-gray", lambda p: _save(p, "PNG", mode="L"))
    t.refuse("judge: grayscale PNG", gvu("judge", d), "0000.png", "not a clean render")
    d = judge_copy(w, "J-128", lambda p: _save(p, "PNG", size=128))
    t.refuse("judge: 128x128 image", gvu("judge", d), "0000.png", "128x128")


def phrasing_probes(t: Table, w: Path, s: dict) -> None:
    """A prompt file worded as GenEval's metadata words positions, through every command that checks metadata."""
    base, cfg, common = s["base"], s["cfg"], s["common"]
    row = {"tag": "position", "include": [{"class": "star", "count": 1},
                                          {"class": "circle", "count": 1, "position": ["right of", 0]}]}
    write_metadata(w / "geneval-phrased.jsonl", [{**row, "prompt": "a photo of a circle right of a star"}] * 2)
    write_metadata(w / "geneval-wrong.jsonl", [{**row, "prompt": "a photo of a circle left of a star"}])
    gp, gt = w / "geneval-phrased.jsonl", w / "GP-gt"
    for args, out in ((["world", "render", "--metadata", gp, "--outdir", gt, "--per-prompt", 1], gt / "00001"),
                      (["judge", gt], None), (["score", gt, "--model", base], None),
                      (["generate", "--model", base, "--metadata", gp, "--outdir", w / "GP-gen", "--per-prompt", 1],
                       w / "GP-gen" / "00001"),
                      (["eval", "--model", base, "--benchmark", gp, "--per-prompt", 1, "--out", w / "GP-ev"],
                       w / "GP-ev" / "summary.json"),
                      (["train", "--config", cfg, f"output_dir={w / 'GP-tr'}", *common, f"prompts={gp}"],
                       w / "GP-tr" / "final")):
        rc, text = gvu(*args)
        name = "world render" if args[0] == "world" else args[0]
        t.add(f"{name}: GenEval's phrasing 'a circle right of a star'", rc, first_line(text),
              rc == 0 and (out is None or out.exists()))
    t.refuse("world render: GenEval's phrasing contradicting include", gvu(
        "world", "render", "--metadata", w / "geneval-wrong.jsonl", "--outdir", w / "GP-x"), "geneval-wrong.jsonl:1",
        "does not say")


def pretrain_probes(t: Table, w: Path) -> None:
    """One pretraining per folder: a live one refuses a second, a killed one is taken over and resumed; every size."""
    pre = ["pretrain", "--size", "tiny", "--steps", 400, "--batch-size", 4, "--num-scenes", 40, "--threads", 1]
    held = w / "PL"
    live = subprocess.Popen([sys.executable, "-m", "gvu.cli", *map(str, pre), "--out", str(held), "save_every=50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = w / ".PL.pretrain" / "pretrain_state.pt"
    while not state.exists() and live.poll() is None:
        time.sleep(0.02)
    if live.poll() is None:
        os.kill(live.pid, signal.SIGSTOP)  # a pretraining under way, holding its folder
    t.refuse("pretrain: two pretrainings at once into one folder", gvu(*pre, "--out", held, "save_every=50"),
             str(live.pid), str(held))
    live.kill()
    live.wait()
    rc, text = gvu(*pre, "--out", held, "save_every=50")
    steps = [json.loads(x)["step"] for x in (held / "pretrain_log.jsonl").read_text().splitlines()] if rc == 0 else []
    t.add("pretrain: a killed pretraining taken over, resumed", rc, next(
        (ln for ln in text.splitlines() if "no longer running" in ln), first_line(text))[:140],
        rc == 0 and f"process {live.pid}" in text and steps[:11] == [*range(1, 11), 50] and steps.count(50) == 1)
    rc, text = gvu("pretrain", "--size", "large", "--steps", 1, "--batch-size", 2, "--num-scenes", 20, "--out",
                   w / "PL-large")
    t.add("pretrain --size large (every size the code defines)", rc, first_line(text),
          rc == 0 and '"size": "large"' in (w / "PL-large" / "gvu.json").read_text())


class WritesAFile:
    """A pickled object whose unpickling by a reader that runs code opens (so creates) `path`."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def code_probes(t: Table, w: Path, s: dict) -> None:
    """Run files are data (a pickle that would run code is refused); a checkpoint's own Python runs only with
    trust_remote_code=1 in the model spec, never because a folder says so."""
    from _tiny_xomni import write_flux_folder, write_tiny_xomni

    A = w / "A"
    for name in ("optim.pt", "rng.pt"):
        H = w / f"H-{name.split('.')[0]}"
        shutil.copytree(A, H)
        marker = w / f"ran-{name}"
        torch.save({"optimizer": WritesAFile(marker), "update": WritesAFile(marker)}, H / "checkpoint-2" / name)
        t.refuse(f"train --resume, {name} a pickle that would write a file", gvu("train", "--resume", H),
                 str(H / "checkpoint-2" / name), "more than data", "checkpoint-1", absent=marker)
    state = w / ".PH.pretrain" / "pretrain_state.pt"
    state.parent.mkdir()
    marker = w / "ran-pretrain_state.pt"
    torch.save({"model": {}, "opt": WritesAFile(marker), "step": 1}, state)
    t.refuse("pretrain resumed from a state pickle that would write a file", gvu(
        "pretrain", "--size", "tiny", "--steps", 2, "--num-scenes", 20, "--batch-size", 4, "--out", w / "PH"),
        str(state), "more than data", absent=marker)
    flux = write_flux_folder(w / "FLUX.1-dev")

    def double(name: str, extra: str = "") -> tuple[Path, str, Path]:
        """A tiny X-Omni of its own (a module imported once does not run again), its spec with flux (and
        `extra`), and the marker its code writes."""
        marker = w / f"ran-{name}"
        tiny = write_tiny_xomni(w / name, marker=marker)
        return tiny, f"xomni:{tiny}?device=cpu&dtype=float32&grid=4x4&code_pixels=2&flux={flux}{extra}", marker

    gen = ("--metadata", w / "good.jsonl", "--per-prompt", 1)
    _, spec, marker = double("X1")
    t.refuse("generate xomni:...&flux= without trust_remote_code=1", gvu("generate", "--model", spec, *gen,
                                                                          "--outdir", w / "X1-out"),
             "trust_remote_code=1", "init_vision", absent=marker)
    _, spec, marker = double("X2", "&code=remote")
    t.refuse("generate xomni:...&code=remote without trust_remote_code=1", gvu("generate", "--model", spec, *gen,
                                                                                "--outdir", w / "X2-out"),
             "trust_remote_code=1", "code=remote", absent=marker)
    saved, _, marker = double("X3")  # a model folder whose gvu.json claims the consent for the user
    (saved / "gvu.json").write_text(json.dumps({"kind": "xomni", "weights": "full", "options": {
        "dtype": "float32", "device": "cpu", "grid": "4x4", "code_pixels": "2", "flux": str(flux),
        "trust_remote_code": "1"}}))
    t.refuse("generate --model DIR whose gvu.json says trust_remote_code", gvu("generate", "--model", saved, *gen,
                                                                               "--outdir", w / "X3-out"),
             "trust_remote_code=1", absent=marker)
    _, spec, marker = double("X4", "&trust_remote_code=1")
    rc, text = gvu("generate", "--model", spec, *gen, "--outdir", w / "X4-out")
    t.add("generate xomni:...&flux=...&trust_remote_code=1 runs it", rc, first_line(text),
          rc == 0 and (w / "X4-out" / "00001" / "samples" / "0000.png").is_file() and marker.exists())


def dpg_probes(t: Table, w: Path, s: dict) -> None:
    """DPG-Bench's files (its question file, its prompts) and layout, and dense rows."""
    base, d = s["base"], w / "DPG"
    rc, text = gvu("prompts", "dpg", "--world", "shapes", "-n", 3, "--out", d)
    t.add("prompts dpg --world shapes: a DPG-shapes set", rc, first_line(text),
          rc == 0 and (d / "dpg_bench.csv").is_file() and len(list((d / "prompts").glob("*.txt"))) == 3)
    header = (d / "dpg_bench.csv").read_text().splitlines()[0]
    (w / "nodep.csv").write_text((d / "dpg_bench.csv").read_text().replace(header, header.replace(",dependency,", ",")
                                 .replace(",category_broad", ",dependency_broad"), 1))
    t.refuse("prompts dpg --csv without a column", gvu("prompts", "dpg", "--world", "coco", "--csv", w / "nodep.csv",
                                                       "--out", w / "DPG-c"), "nodep.csv", "'dependency'")
    t.refuse("prompts dpg --csv of other items", gvu("prompts", "dpg", "--world", "coco", "--csv", d / "dpg_bench.csv",
                                                     "--out", w / "DPG-c"), "dpg_bench.csv", "no prompt file")
    t.refuse("prompts dpg --csv NO_SUCH_FILE", gvu("prompts", "dpg", "--world", "coco", "--csv", w / "no.csv",
                                                   "--out", w / "DPG-c"), "no.csv")
    t.refuse("prompts dpg --world coco -n 5", gvu("prompts", "dpg", "--world", "coco", "-n", 5, "--out", w / "DPG-c"),
             "-n")
    t.refuse("prompts dpg --world shapes --csv", gvu("prompts", "dpg", "--csv", w / "nodep.csv", "--out", w / "DPG-c"),
             "--csv")
    t.refuse("prompts geneval --csv", gvu("prompts", "geneval", "--csv", w / "nodep.csv", "--out", w / "DPG-c"), "--csv")
    gen = ("generate", "--model", base, "--dpg", d / "prompts", "--outdir")
    rc, text = gvu(*gen, w / "DPG-g")
    t.add("generate --dpg: DPG-Bench's 2x2 layout", rc, first_line(text),
          rc == 0 and sorted(p.name for p in (w / "DPG-g").iterdir()) == [f"shapes_0000{i}.png" for i in range(3)])
    t.refuse("generate --dpg into a folder of older grids", gvu(*gen, w / "DPG-g"), "--overwrite",
             keep={w / "DPG-g": digest(w / "DPG-g")})
    t.refuse("generate --dpg --per-prompt 2", gvu(*gen, w / "DPG-g2", "--per-prompt", 2), "--per-prompt")
    t.refuse("generate --dpg and --metadata", gvu(*gen, w / "DPG-g2", "--metadata", w / "good.jsonl"), "--metadata")
    shutil.copytree(ROOT / "gvu" / "eval" / "data" / "dpg" / "prompts", w / "DPG-coco")
    t.refuse("generate --dpg DPG-Bench's prompts, built-in model", gvu(*gen[:4], w / "DPG-coco", "--outdir",
                                                                        w / "DPG-g3"), "0.txt", "vocabulary")
    rows = [json.loads(x) for x in (d / "evaluation_metadata.jsonl").read_text().splitlines()]
    twice = dict(rows[1], include=rows[1]["include"] + [rows[1]["include"][0]])
    (w / "dpg-twice.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(twice) + "\n")
    t.refuse("world render: dense row naming a shape twice", gvu("world", "render", "--metadata", w / "dpg-twice.jsonl",
                                                                 "--outdir", w / "DPG-r"), "dpg-twice.jsonl:2", "once")
    assert gvu("world", "render", "--metadata", d / "evaluation_metadata.jsonl", "--outdir", w / "DPG-gt",
               "--per-prompt", 1)[0] == 0
    shutil.copytree(w / "gt" / "00000", w / "DPG-gt" / "00003")  # a GenEval prompt folder among dense ones
    t.refuse("judge: dense and GenEval prompts in one folder", gvu("judge", w / "DPG-gt"), "mixes")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="keep the probes' files here (default: a temporary folder, removed)")
    p.add_argument("--timeout", type=int, default=TIMEOUT, help=f"seconds per command (default {TIMEOUT})")
    a = p.parse_args(argv)
    globals()["TIMEOUT"] = a.timeout
    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(a.workdir or tmp)
        w.mkdir(parents=True, exist_ok=True)
        s = setup(w)
        t = Table()
        run_folder_probes(t, w, s)
        demo_probes(t, w, s)
        generate_probes(t, w, s)
        metadata_probes(t, w, s)
        judge_probes(t, w)
        phrasing_probes(t, w, s)
        pretrain_probes(t, w)
        code_probes(t, w, s)
        dpg_probes(t, w, s)
        t.print()
    return 0 if all(r[3] == "OK" for r in t.rows) else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
