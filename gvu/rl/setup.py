"""What a training run is set up from, apart from the loop: the prompts (checked before any compute), LoRA on the
language model or a frozen reference copy, FSDP2 sharding, and the loop's plumbing (stopping after a step on Ctrl-C,
dropping log lines past a resumed checkpoint, tensorboard when installed, padding gathered rows)."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import signal
import sys
import threading
import types
from pathlib import Path

import torch

from gvu.eval.metadata import read_metadata
from gvu.eval.prompts import build_train
from gvu.rl import distributed as D
from gvu.rl.config import TrainConfig


def load_prompt_rows(cfg: TrainConfig, tokenizer) -> list[dict]:
    """The training prompts, each checked against the model's vocabulary before any compute."""
    if cfg.prompts == "train":
        rows, where = build_train("shapes", seed=cfg.seed, n=cfg.num_prompts,
                                  weights=cfg.mix or None), "built-in training set"
    else:
        rows, where = read_metadata(cfg.prompts), cfg.prompts
    if not rows:  # e.g. num_prompts=0: the data order below would divide by zero at the first step
        raise ValueError(f"{where}: no training prompts")
    # read_metadata skips blank lines, so row k is not file line k: name the file's own line numbers
    lines: range | list[int] = range(1, len(rows) + 1)
    if cfg.prompts != "train":
        with open(cfg.prompts, encoding="utf-8") as fp:  # split exactly as read_metadata does
            lines = [i for i, text in enumerate(fp, start=1) if text.strip()]
    for line, row in zip(lines, rows):
        try:
            tokenizer.encode(row["prompt"])
        except ValueError as err:
            raise ValueError(f"{where}:{line}: {err}; the model can only read prompts in its vocabulary") from None
    try:  # the instruction is read at every reward: check it before any compute too
        tokenizer.encode(cfg.instruction)
    except ValueError as err:
        raise ValueError(f"instruction: {err}") from None
    return rows


def lora_targets(policy, names) -> str:
    """A PEFT target pattern: the named linear layers inside the model's language model only (`lora_scope`, a
    module path), so a vision encoder or VQ model whose layers share the names (SigLIP's q_proj) gets no adapter
    that would never train."""
    alt = "|".join(re.escape(n) for n in names)
    scope = getattr(policy, "lora_scope", "")
    return rf"{re.escape(scope)}\..*\.(?:{alt})" if scope else rf"(?:.*\.)?(?:{alt})"


def wrap_lora(policy, cfg: TrainConfig) -> None:
    """The config's LoRA adapters on the policy's language model (in place)."""
    from peft import LoraConfig, get_peft_model  # optional at import time: only LoRA runs need it

    policy.module = get_peft_model(policy.module, LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=lora_targets(policy, cfg.lora_target_modules), bias="none"))


def attach_training(policy, cfg: TrainConfig, dist):
    """LoRA on the policy's language model (its reference: the adapter disabled), or a frozen copy as the
    reference when the run needs one; FSDP2 sharding under several processes. Returns the reference copy or None."""
    reference = None
    if hasattr(policy, "share_prefix"):  # the shared-vocabulary models' teacher-forced pass (and the copy's)
        policy.share_prefix = cfg.share_prompt_prefix
    if cfg.use_lora:
        wrap_lora(policy, cfg)
    elif cfg.needs_reference():
        reference = copy.deepcopy(policy)
        for p in reference.module.parameters():
            p.requires_grad_(False)
    if cfg.freeze_embeddings:
        freeze_embeddings(policy.module)
    if dist.fsdp:
        if not policy.supports_fsdp2:
            raise ValueError(f"strategy fsdp2 needs a model whose passes all go through its root module "
                             f"(the built-in and causal-lm adapters); {type(policy).__name__} calls "
                             "submodules directly: use strategy: ddp")
        D.shard_fsdp2(policy.module)
        if reference is not None:
            D.shard_fsdp2(reference.module)
    return reference


def freeze_embeddings(module: torch.nn.Module) -> None:
    """Stop the token embeddings, the output head (tied to them in the built-in model) and the built-in 2-D reader's
    row/column tables from training."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    for table in (base.get_input_embeddings(), base.get_output_embeddings(), getattr(base, "row_embed", None),
                  getattr(base, "col_embed", None)):
        if table is not None:
            table.requires_grad_(False)


def pad_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate [n_i, L_i] tensors along dim 0, right-padding each with zeros to the largest L."""
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


@contextlib.contextmanager
def stop_after_step():
    """While active, the first Ctrl-C (SIGINT) only sets `.requested`; a second one interrupts at once. Signals
    reach only the main thread, so elsewhere this does nothing."""
    stop = types.SimpleNamespace(requested=False)
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to stop now, unsaved)",
              file=sys.stderr)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def drop_log_after(path: Path, step: int) -> None:
    """On resume, drop log lines past the checkpoint's step (written after it by a run that then died), so the
    resumed run does not log those steps twice; a torn last line goes too. At step 0 the only line is the initial
    evaluation, which the resumed run writes again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            logged = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if logged < step or logged == step > 0:
            kept.append(line if line.endswith("\n") else line + "\n")
    path.write_text("".join(kept))


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional; the JSONL log is always written
        return None
    return SummaryWriter(str(out / "tensorboard"))


class RunLog:
    """log.jsonl (appended, flushed per line) and, when tensorboard is installed, its scalars."""

    def __init__(self, out: Path):
        self.file = open(out / "log.jsonl", "a")
        self.tb = tensorboard_writer(out)

    def write(self, m: dict) -> None:
        self.file.write(json.dumps(m) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in m.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, m["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
