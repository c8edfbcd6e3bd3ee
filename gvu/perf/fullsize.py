"""One complete GvU training step of a full-size architecture on this machine, measured phase by phase.

`gvu bench --full-size janus-pro-1b` builds the Janus-Pro-1B architecture with its published configuration values
(deepseek-ai/Janus-Pro-1B: a 24-layer Llama of width 2048, SigLIP-L/16 at 384x384, the VQ-16 tokenizer with
16,384 codes on a 24x24 grid) and RANDOM weights (nothing is downloaded), in bf16 where the CPU computes bf16
natively (AVX512-BF16 or AMX) and float32 elsewhere (`dtype="auto"`; on a CPU without them a bf16 GEMM at the
update's shape runs about 6x and a bf16 3x3 convolution about 60x slower than float32), and saves it as a
transformers checkpoint with a byte-level tokenizer that has Janus's special tokens. Then the real training path
runs on it: `Trainer(load_config(None, overrides))` on
`janus:<folder>?dtype=<dtype>&device=cpu&gradient_checkpointing=1` and `Trainer.train()` for one step: 576-token
sampling with Janus's own guidance (scale 5, min_p 0.03, temperature 1), VQ decode to 384x384 pixels, the SigLIP
understanding pass that scores the reward, the reference pass (beta > 0: the LoRA adapter disabled), the LoRA
update, and the checkpoint writes (`save`: the resumable checkpoint, `save_final`: `final/`).

Measured: seconds and peak resident memory (MiB, VmHWM reset at the start of each phase) of every phase the
trainer logs (`time/<phase>`, `mem/<phase>`), of loading the model (`load`) and of the two writes; the whole wall
time and the process's peak RSS; the machine (with its load average: the timings share the CPU with whatever else
runs). Random weights draw near-uniform codes, so the times and memory are those of the architecture, not of the
released model's images or rewards; each phase runs once (no repeats). The checkpoint is built in a child process
so that its memory does not count (its own peak is `checkpoint.peak_rss_mib`). `arch="tiny"` runs the same path
on a scaled-down model, for tests.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gvu.eval.metadata import write_metadata
from gvu.models.adapters.janus import BOI, EOI, IMAGE, TINY_CHAT_TEMPLATE
from gvu.models.hf import base_model, tiny_byte_tokenizer
from gvu.perf.measure import cpuinfo, machine_info, write_json
from gvu.perf.step import matmul_gflops
from gvu.rl.config import load_config
from gvu.rl.monitor import PhaseClock, process_peak_rss_mib
from gvu.rl.trainer import Trainer

STEP_PHASES = ("sample", "decode", "reward", "reference", "update")
"""Phases of the training step that every run must report (the trainer may log more)."""
OWN_PHASES = ("load", "save", "save_final")
"""Phases timed here: loading the checkpoint (with the LoRA wrap), the resumable checkpoint, `final/`."""

# deepseek-ai/Janus-Pro-1B's config.json, in transformers' JanusConfig field names. The published checkpoint keeps
# a separate lm_head (4.18 GB of bf16 weights, ~2.09B parameters), hence tie_word_embeddings False.
ARCHS = {
    "janus-pro-1b": {
        "text": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                     num_key_value_heads=16, vocab_size=102400, max_position_embeddings=16384),
        "vision": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=16,
                       image_size=384, mlp_ratio=4.0, projection_dim=2048, depth=2, num_image_tokens=576),
        "vq": dict(embed_dim=8, num_embeddings=16384, base_channels=128, channel_multiplier=[1, 1, 2, 2, 4],
                   num_res_blocks=2, latent_channels=256, projection_dim=2048, image_token_embed_dim=2048,
                   num_hidden_layers=2),
        "image_min_size": 14,
    },
    "tiny": {  # the same code path in seconds: 16x16 images, 4x4 codes
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=2, vocab_size=300, max_position_embeddings=512),
        "vision": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=4, image_size=16,
                       mlp_ratio=2.0, projection_dim=32, depth=2, num_image_tokens=16),
        "vq": dict(embed_dim=8, num_embeddings=64, base_channels=32, channel_multiplier=[1, 1, 2], num_res_blocks=1,
                   latent_channels=32, projection_dim=32, image_token_embed_dim=32, num_hidden_layers=2),
        "image_min_size": 4,
    },
}

# The step: Janus's own guidance and filter, the published LoRA recipe, one prompt x a group of 2, one update;
# gradient checkpointing on, as in configs/janus-pro-1b.yaml (the model URI in train_one_step).
STEP_CONFIG = dict(use_lora=True, lora_r=8, lora_alpha=32, lora_dropout=0.0, eval_steps=0, max_steps=1, save_steps=1,
                   prompts_per_step=1, num_generations=2, minibatch_size=2, num_iterations=1, temperature=1.0,
                   top_k=0, top_p=1.0, min_p=0.03, guidance_scale=5.0, beta=0.03, beta_understanding=0.0,
                   learning_rate=1e-6, reward_image_path="pixels", seed=0)
DTYPES = ("auto", "bfloat16", "float32")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    return set((cpuinfo("flags") or "").split())


def resolve_dtype(dtype: str, flags: set[str] | None = None) -> tuple[str, str]:
    """(dtype, why): "auto" is bfloat16 where the CPU has a native bf16 instruction, float32 elsewhere."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype, "asked for"
    native = sorted(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    if native:
        return "bfloat16", f"auto: the CPU computes bf16 natively ({', '.join(native)})"
    return "float32", f"auto: the CPU has no native bf16 ({' or '.join(NATIVE_BF16_FLAGS)}), where bf16 is emulated"


PROMPT_ROW = {"tag": "single_object", "include": [{"class": "star", "count": 1}], "prompt": "a photo of a star"}


def janus_config(arch: str, tok):
    """transformers' JanusConfig of `arch`, with the tokenizer's special token ids."""
    from transformers import JanusConfig

    a = ARCHS[arch]
    if len(tok) > a["text"]["vocab_size"]:
        raise ValueError(f"{arch}: the tokenizer has {len(tok)} tokens, the vocabulary {a['text']['vocab_size']}")
    text = dict(model_type="llama", **a["text"], tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return JanusConfig(text_config=text, vision_config=dict(a["vision"]), vq_config=dict(a["vq"]),
                       image_token_id=tok.convert_tokens_to_ids(IMAGE), tie_word_embeddings=False)


def build_checkpoint(arch: str, folder: str, seed: int = 0, dtype: str = "bfloat16") -> dict:
    """Random weights (in `dtype`) of `arch` with a byte-level tokenizer and Janus's image processor, saved to `folder`
    as a transformers checkpoint. Returns the parameter count and the seconds taken."""
    import torch
    from transformers import JanusForConditionalGeneration
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    t = time.perf_counter()
    tok = tiny_byte_tokenizer(["<pad>", "<bos>", "<eos>", BOI, EOI, IMAGE, "<|User|>", "<|Assistant|>"],
                              bos="<bos>", eos="<eos>", pad="<pad>", chat_template=TINY_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # built in the dtype directly: no second copy
    try:
        lm = JanusForConditionalGeneration(janus_config(arch, tok)).eval()
    finally:
        torch.set_default_dtype(before)
    size = ARCHS[arch]["vision"]["image_size"]
    ip = JanusImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                min_size=ARCHS[arch]["image_min_size"])
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    ip.save_pretrained(folder)
    return {"parameters": sum(p.numel() for p in lm.parameters()),
            "dtype": str(next(lm.parameters()).dtype).removeprefix("torch."), "build_s": time.perf_counter() - t,
            "peak_rss_mib": process_peak_rss_mib()}  # of the child process that built it (of this one for `tiny`)


def _in_child(fn, *args):
    """fn(*args) in a fresh process (spawned: no copy of this one's memory), so its memory is not ours."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _timed_method(obj, name: str, clock: PhaseClock) -> None:
    """Wrap obj.<name> so that each call is a measured phase of that name."""
    inner = getattr(obj, name)

    def wrapped(*args, **kw):
        with clock(name):
            return inner(*args, **kw)
    setattr(obj, name, wrapped)


def _progress(trainer, every: int):
    """Log every `every` calls of the generation head (one per sampled code): a projection of the sampling time."""
    head = base_model(trainer.policy.lm).model.generation_head
    state = {"n": 0, "t": time.perf_counter()}

    def hook(module, args, out):
        state["n"] += 1
        if state["n"] % every == 0:
            _say(f"generation head call {state['n']}: {time.perf_counter() - state['t']:.0f} s since load")
    return head.register_forward_hook(hook)


def train_one_step(arch: str, folder: Path, threads: int, dtype: str) -> tuple[dict, dict, dict]:
    """(phase record, step metrics, config) of one `Trainer.train()` step on the checkpoint in `folder`."""
    write_metadata(folder / "prompts.jsonl", [PROMPT_ROW])
    overrides = dict(STEP_CONFIG, model=f"janus:{folder / 'model'}?dtype={dtype}&device=cpu&gradient_checkpointing=1",
                     output_dir=str(folder / "run"), prompts=str(folder / "prompts.jsonl"), threads=threads)
    clock = PhaseClock()  # the trainer's own clock: seconds and peak resident MiB per phase
    with clock("load"):
        trainer = Trainer(load_config(None, overrides))
    _say(f"loaded in {clock.values['time/load']:.0f} s; one step: sampling, decode, reward, reference, update, save")
    for name in ("save", "save_final"):
        _timed_method(trainer, name, clock)
    hook = _progress(trainer, every=48 if arch != "tiny" else 10 ** 9)
    try:
        trainer.train(progress=False)
    finally:
        hook.remove()
    lines = (folder / "run" / "log.jsonl").read_text().splitlines()
    metrics = next(m for m in map(json.loads, lines) if m.get("step") == 1)
    return clock.values, metrics, dict(overrides)


def phase_table(metrics: dict, record: dict) -> dict:
    """{phase: {"s": seconds, "peak_mib": MiB}} in the order the step runs them: load, the trainer's own phases
    as it logs them, then the writes. A step phase without its memory gets None (the trainer did not log it)."""
    order = ["load"] + [k.removeprefix("time/") for k in metrics if k.startswith("time/")] + ["save", "save_final"]
    both = {**metrics, **record}
    return {p: {"s": both.get(f"time/{p}"), "peak_mib": both.get(f"mem/{p}")} for p in order}


def missing_phases(phases: dict) -> list[str]:
    """Phases that must be there with a positive time and memory but are not."""
    def ok(v):
        return isinstance(v, (int, float)) and v > 0
    return [p for p in STEP_PHASES + OWN_PHASES
            if p not in phases or not (ok(phases[p]["s"]) and ok(phases[p]["peak_mib"]))]


def _matmul_rates(arch: str) -> dict:
    """GFLOP/s of the language model's MLP matmul (an nn.Linear's layout) at the sampling shape (4 rows) and the
    update shape, in bf16 and float32: CPUs without native bf16 (no AVX512-BF16/AMX) run bf16 GEMMs slower."""
    import torch

    h, i = ARCHS[arch]["text"]["hidden_size"], ARCHS[arch]["text"]["intermediate_size"]
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        before = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            for rows in (4, 1200):
                r = matmul_gflops((rows, h), (h, i), repeats=3, weight_layout=True)
                out[f"{str(dtype).removeprefix('torch.')} [{rows}x{h}]@[{h}x{i}]"] = round(r["gflops_per_s"], 2)
        finally:
            torch.set_default_dtype(before)
    return out


def run_fullsize(arch: str = "janus-pro-1b", out: str | os.PathLike | None = None, threads: int = 2,
                 keep: bool = False, workdir: str | os.PathLike | None = None, dtype: str = "auto") -> dict:
    """Build `arch` with random weights, run one GvU step on it through the trainer, and return (and write to
    `out`) the JSON: per-phase seconds and peak MiB, the config, the machine, the wall time and peak RSS.
    The checkpoint and the run go to a temporary folder under `workdir` (default runs/bench), removed unless
    `keep`. `dtype`: the weights' dtype, "auto" (see `resolve_dtype`), "bfloat16" or "float32"."""
    import torch

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    dtype, why = resolve_dtype(dtype)
    t0 = time.perf_counter()
    base = Path(workdir or "runs/bench")
    base.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"fullsize-{arch}-", dir=base))
    before = torch.get_num_threads()
    try:
        _say(f"building {arch} with random {dtype} weights ({why}) in {folder}")
        # the tiny model is built here: a child process would cost a test seconds of imports
        built = (_in_child if arch != "tiny" else lambda f, *a: f(*a))(build_checkpoint, arch, str(folder / "model"), 0,
                                                                     dtype)
        _say(f"built {built['parameters']:,} parameters in {built['build_s']:.0f} s")
        record, metrics, cfg = train_one_step(arch, folder, threads, dtype)
        rates = _matmul_rates(arch) if arch != "tiny" else {}
    finally:
        torch.set_num_threads(before)
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    phases = phase_table(metrics, record)
    res = {"arch": arch, "weights": "random (the architecture's published config values; nothing downloaded)",
           "architecture": ARCHS[arch], "checkpoint": built, "dtype_choice": why, "config": cfg, "prompt": PROMPT_ROW,
           "machine": machine_info(), "phases": phases,
           "step_s": metrics.get("step_time"), "wall_s": time.perf_counter() - t0,
           "peak_rss_mib": process_peak_rss_mib(), "matmul_gflops_per_s": rates,
           "step_metrics": {k: v for k, v in metrics.items() if not k.startswith(("time/", "mem/"))},
           "kept": str(folder) if keep else None, "missing_phases": missing_phases(phases)}
    if out:
        write_json(out, res)
    return res


def format_fullsize(res: dict) -> str:
    m = res["machine"]
    lines = [f"{res['arch']} ({res['checkpoint']['parameters']:,} parameters, {res['checkpoint']['dtype']}, random "
             f"weights); {m['cpu']} ({m['nproc']} cpus, {m['threads']} threads, load {m['load_average']})",
             f"{'phase':12s} {'seconds':>9s} {'peak MiB':>9s}"]
    for name, p in res["phases"].items():
        s = "-" if p["s"] is None else f"{p['s']:.1f}"
        mem = "-" if p["peak_mib"] is None else f"{p['peak_mib']:.0f}"
        lines.append(f"{name:12s} {s:>9s} {mem:>9s}")
    lines.append(f"step {res['step_s']:.1f} s; wall {res['wall_s']:.1f} s; peak RSS {res['peak_rss_mib']:.0f} MiB"
                 + (f"; MISSING phases: {', '.join(res['missing_phases'])}" if res["missing_phases"] else ""))
    return "\n".join(lines)
