"""Shared-vocabulary transformers models (`causal-lm:PATH`): any causal LM whose vocabulary holds the image codes
as one contiguous id range, declared by a small adapter file in the model folder (X-Omni-style models, or a
custom UMM). Emu3 (gvu.models.emu3) is the same machinery with Emu3's own layout.

An image is a grid of `rows x cols` codes. Some models write fixed tokens inside the image (Emu3: an end-of-line
token after every row, then end-of-frame and end-of-image). Those positions allow exactly one token, so under the
per-position vocabulary mask (codes inside a row, the row-end token at a row end) they have probability 1: the
sampler feeds them without drawing and neither path reports a log-prob for them (log 1 = 0, no gradient). At code
positions both the sampler and the teacher-forced pass softmax over the code range only (`_code_logits`), then
`filter_logits`; that is the same renormalisation, so `exp(logp - old_logp) == 1` at step 0.

Also here, the plumbing every transformers adapter shares (Janus, Emu3, causal-lm): a tokenizer view that never
adds special tokens, dropout off, gradient checkpointing, and saving the trained model (LoRA adapter or full
weights) with a gvu.json that `gvu.models.load.load_model` reads back.

Letters: P prompts, G group size, N rows, B batch rows (2N with guidance), S sequence length, T image codes,
C codes, K tokens fed in one cached step.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from gvu.models.protocol import Rollout, SamplingConfig, check_sample_args, checked_codes
from gvu.models.sampling import draw
from gvu.models.shared_vocab import SharedVocabLayout, SharedVocabUMM, _cache_of, eval_mode, pad_batch, positions

GVU_FILE = "gvu.json"
ADAPTER_FILES = ("gvu_causal_lm.yaml", "gvu_causal_lm.yml", "gvu_causal_lm.json")
DTYPES = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------ shared plumbing

class PlainTokenizer:
    """A transformers tokenizer seen as SharedVocabUMM's TextTokenizer: `encode` never adds special tokens (the
    sequence layouts place BOS and friends themselves). `hf` is the tokenizer itself."""

    def __init__(self, hf):
        self.hf = hf

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)


def base_model(lm: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers are injected in place, so they stay active)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


def resolve_dtype(dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype is None:
        return dtype or "auto"
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def dtype_kwargs(dtype) -> dict:
    """from_pretrained's dtype argument: `dtype` on transformers >= 4.56, `torch_dtype` before (older versions
    reject `dtype`)."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def dtype_name(dtype) -> str:
    """What to write in gvu.json so resolve_dtype reads it back ('bfloat16', not 'torch.bfloat16')."""
    return str(dtype or "auto").removeprefix("torch.")


def resolve_device(device) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def disable_dropout(model: torch.nn.Module):
    """GRPO's ratio compares the update pass with the sampler, so nothing random may sit between them (TRL's
    disable_dropout does the same). Attention dropout in transformers is a float attribute, not a module."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def finish_loading(model: torch.nn.Module, device, gradient_checkpointing: bool) -> torch.nn.Module:
    """Dropout off, on the device, and either eval mode or (with gradient checkpointing) train mode: transformers
    only checkpoints in train mode, and with dropout off train mode changes nothing else. The samplers and the
    reward switch to eval mode themselves."""
    disable_dropout(model)
    model.to(resolve_device(device))
    if gradient_checkpointing:
        # non-reentrant: gradients reach LoRA weights even though the (frozen) embeddings need no grad.
        # transformers >= 5.x renames it activation checkpointing; older versions only have the first name.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.train()
    else:
        model.eval()
    return model


def flag(value) -> bool:
    """Spec options arrive as strings: '1', 'true', 'yes' are true."""
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")


def save_transformers_model(umm, directory: str | os.PathLike, extra: dict | None = None,
                            save_files: Callable[[Path], None] | None = None) -> Path:
    """Write a trained transformers-adapter model atomically: the LoRA adapter only (PEFT save_pretrained) when
    `umm.lm` holds one, else the full weights plus `save_files(folder)` (tokenizer, processor, adapter file).
    gvu.json records the kind, the base model and its load options so load_model can rebuild it."""
    target = Path(directory).resolve()
    if target.exists() and any(target.iterdir()) and not (target / GVU_FILE).is_file():
        raise FileExistsError(f"{target} exists and is not a gvu model directory; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        lora = hasattr(umm.lm, "peft_config")
        umm.lm.save_pretrained(tmp)
        if not lora and save_files is not None:
            save_files(tmp)
        info = {"kind": umm.kind, "format": 1, "weights": "lora" if lora else "full", "base": umm.source,
                "options": {k: v for k, v in umm.options.items() if k not in ("device", "gradient_checkpointing")},
                **(extra or {})}
        (tmp / GVU_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")
        from gvu.models.builtin import replace_dir

        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def import_callable(spec: str, search_dir: str | os.PathLike | None = None) -> Callable:
    """'module:function' -> the function. A module file `module.py` inside `search_dir` (the model folder) is
    found first, so a decoder can ship next to the weights."""
    mod_name, sep, fn_name = spec.partition(":")
    if not sep or not mod_name or not fn_name:
        raise ValueError(f"expected 'module:function', got {spec!r}")
    local = Path(search_dir) / (mod_name.replace(".", "/") + ".py") if search_dir else None
    if local is not None and local.is_file():
        unique = f"gvu_adapter_{abs(hash(str(local.resolve())))}_{mod_name.replace('.', '_')}"
        mod = sys.modules.get(unique)
        if mod is None:
            loader = importlib.util.spec_from_file_location(unique, local)
            mod = importlib.util.module_from_spec(loader)
            sys.modules[unique] = mod
            loader.loader.exec_module(mod)
    else:
        mod = importlib.import_module(mod_name)
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{spec!r}: {mod_name} has no callable {fn_name!r}")
    return fn


# ------------------------------------------------------------------------------------------ grids with row ends

@dataclass(frozen=True)
class GridLayout(SharedVocabLayout):
    """SharedVocabLayout for images written as rows: `row_end` ids follow every row of `row_width` codes (Emu3's
    end-of-line), the last row included. Empty `row_end`: a flat sequence of codes, as in SharedVocabLayout."""

    row_width: int = 0
    row_end: tuple[int, ...] = ()

    def image_ids(self, codes) -> list[int]:
        ids = [self.image_token_offset + int(c) for c in codes]
        if not self.row_end:
            return ids
        out = []
        for r in range(0, len(ids), self.row_width):
            out += ids[r:r + self.row_width] + list(self.row_end)
        return out

    def code_positions(self, T: int) -> torch.Tensor:
        """Index of each code inside `image_ids`: t + (rows before it) x len(row_end)."""
        t = torch.arange(T)
        return t + (t // self.row_width) * len(self.row_end) if self.row_end else t


class GridSharedVocabUMM(SharedVocabUMM):
    """SharedVocabUMM with row-end tokens, a template for the answer the reward scores (chat models put a space
    after "ASSISTANT:") and a configurable unconditional prompt for guidance (a negative prompt, or empty)."""

    def __init__(self, lm, tokenizer, layout: GridLayout, answer_template: str = "{prompt}",
                 unconditional_prompt: str = ""):
        super().__init__(lm, tokenizer, layout)
        if layout.row_end and layout.num_image_tokens % layout.row_width:
            raise ValueError(f"{layout.num_image_tokens} image tokens do not fill rows of {layout.row_width}")
        self.answer_template = answer_template
        self.uncond_ids = list(tokenizer.encode(unconditional_prompt)) if unconditional_prompt else []
        self.kind, self.source, self.options = "causal-lm", None, {}
        self.logits_chunk = 0  # > 0: image_logprobs computes code logits this many positions at a time

    def _generation_prefixes(self, prompt_ids: list[list[int]], guided: bool) -> list[list[int]]:
        seqs = [self.layout.generation_prefix(ids) for ids in prompt_ids]
        if guided:
            seqs += [self.layout.generation_prefix(self.uncond_ids)] * len(prompt_ids)
        return seqs

    @torch.no_grad()
    def sample(self, prompts: list[str], group_size: int, sampling: SamplingConfig,
               generator) -> Rollout:
        check_sample_args(prompts, group_size)
        lay = self.layout
        P, G, T = len(prompts), group_size, lay.num_image_tokens
        N, guided, device = P * G, sampling.uses_guidance, self.device
        prompt_ids = [ids for ids in self._encode_prompts(list(prompts)) for _ in range(G)]
        ids_BS, mask_BS = pad_batch(self._generation_prefixes(prompt_ids, guided), lay.pad_id, "left", device)
        B, S = ids_BS.shape
        pos_BK = positions(mask_BS)
        row_end_BR = torch.tensor(lay.row_end, dtype=torch.long, device=device).expand(B, -1)
        L = S + T + (T // lay.row_width) * len(lay.row_end)  # every position the loop can feed
        mask_BL = torch.cat([mask_BS, mask_BS.new_ones((B, L - S))], dim=1)
        cache = self._static_cache(L)
        codes_NT = torch.empty((N, T), dtype=torch.long, device=device)
        logp_NT = torch.empty((N, T), dtype=torch.float32, device=device)
        with eval_mode(self.lm):
            out = self._forward(input_ids=ids_BS, attention_mask=mask_BS, position_ids=pos_BK, use_cache=True,
                          logits_to_keep=1, cache_position=torch.arange(S, device=device),
                          **({} if cache is None else {self._cache_arg: cache}))
            seen = S
            for t in range(T):
                logp_NC = self._step_logprobs(self._code_logits(out.logits[:, -1]), N, sampling)
                codes_N = draw(logp_NC.exp(), generator, G).to(device)
                codes_NT[:, t] = codes_N
                logp_NT[:, t] = logp_NC.gather(1, codes_N[:, None])[:, 0]
                if t + 1 == T:
                    break
                step_BK = (codes_N + lay.image_token_offset).repeat(2 if guided else 1)[:, None]
                if lay.row_end and (t + 1) % lay.row_width == 0:  # forced: the only token the mask allows
                    step_BK = torch.cat([step_BK, row_end_BR], dim=1)
                K = step_BK.shape[1]
                pos_BK = pos_BK[:, -1:] + torch.arange(1, K + 1, device=device)
                out = self._forward(input_ids=step_BK, attention_mask=mask_BL[:, :seen + K], position_ids=pos_BK,
                              use_cache=True, logits_to_keep=1,
                              cache_position=torch.arange(seen, seen + K, device=device),
                              **{self._cache_arg: _cache_of(out)})
                seen += K
        return Rollout(image_tokens_NT=codes_NT, logp_NT=logp_NT,
                       prompt_index_N=torch.arange(P, device=device).repeat_interleave(G), prompts=list(prompts))

    def image_logprobs(self, prompts_N: list[str], image_tokens_NT: torch.Tensor,
                       sampling: SamplingConfig) -> torch.Tensor:
        """One teacher-forced forward over [prefix, image block up to the last code], with grad; logits are read
        at the code positions only (row ends are forced, see the module docstring)."""
        lay = self.layout
        N, T = image_tokens_NT.shape
        device, guided = self.device, sampling.uses_guidance
        codes_NT = checked_codes(prompts_N, image_tokens_NT, lay.num_image_tokens, lay.num_codes, self.device)
        prefix_BS, pmask_BS = pad_batch(self._generation_prefixes(self._encode_prompts(list(prompts_N)), guided),
                                        lay.pad_id, "left", device)
        block_NI = codes_NT + lay.image_token_offset
        if lay.row_end:
            ends = torch.tensor(lay.row_end, dtype=torch.long, device=device)
            block_NI = torch.cat([block_NI.view(N, -1, lay.row_width),
                                  ends.expand(N, T // lay.row_width, -1)], dim=2).reshape(N, -1)
        pos_T = lay.code_positions(T).to(device)
        block_BI = block_NI[:, :int(pos_T[-1])].repeat(2 if guided else 1, 1)  # nothing follows the last code
        ids_BS = torch.cat([prefix_BS, block_BI], dim=1)
        mask_BS = torch.cat([pmask_BS, torch.ones_like(block_BI)], dim=1)
        if self.logits_chunk:
            return self._chunked_logprobs(ids_BS, mask_BS, pos_T, block_BI.shape[1] + 1, codes_NT, sampling)
        out = self._forward(input_ids=ids_BS, attention_mask=mask_BS, position_ids=positions(mask_BS), use_cache=False,
                            logits_to_keep=block_BI.shape[1] + 1)
        logits_BTC = self._code_logits(out.logits[:, pos_T])  # kept logit k predicts block token k
        C = logits_BTC.shape[-1]
        logp_QC = self._step_logprobs(logits_BTC.reshape(-1, C), N * T, sampling)
        return logp_QC.gather(1, codes_NT.reshape(-1, 1)).reshape(N, T)

    def _chunked_logprobs(self, ids_BS, mask_BS, pos_T, keep: int, codes_NT, sampling) -> torch.Tensor:
        """image_logprobs for large vocabularies: the decoder's hidden states once, then the code rows of the
        output head only (C of V columns), `logits_chunk` positions at a time, each chunk recomputed in the
        backward pass rather than stored, so no [B, T, V] (or [B, T, C]) logits tensor is ever held."""
        from torch.utils.checkpoint import checkpoint

        N, T = codes_NT.shape
        base = base_model(self.lm)
        hidden_BSD = base.model(input_ids=ids_BS, attention_mask=mask_BS, position_ids=positions(mask_BS),
                                use_cache=False).last_hidden_state
        h_BTD = hidden_BSD[:, -keep:][:, pos_T]
        head = base.get_output_embeddings()
        off, C = self.layout.image_token_offset, self.layout.num_codes
        w_CD = head.weight[off:off + C]
        b_C = head.bias[off:off + C] if getattr(head, "bias", None) is not None else None

        def chunk(h_BtD, codes_Nt):
            logits_BtC = torch.nn.functional.linear(h_BtD, w_CD, b_C)
            t = codes_Nt.shape[1]
            logp_QC = self._step_logprobs(logits_BtC.reshape(-1, C), N * t, sampling)
            return logp_QC.gather(1, codes_Nt.reshape(-1, 1)).reshape(N, t)

        step = self.logits_chunk
        return torch.cat([checkpoint(chunk, h_BTD[:, s:s + step], codes_NT[:, s:s + step], use_reentrant=False)
                          for s in range(0, T, step)], dim=1)

    def _answer_ids(self, prompts: list[str]) -> list[list[int]]:
        return [list(self.tokenizer.encode(self.answer_template.format(prompt=p))) for p in prompts]

    def save_pretrained(self, directory, extra: dict | None = None) -> Path:
        src = Path(self.source) if self.source else None

        def files(tmp: Path):
            import yaml

            self.tokenizer.hf.save_pretrained(tmp)
            adapter_file = find_adapter_file(src) if src is not None and src.is_dir() else None
            if adapter_file is None:
                raise ValueError("this model was not loaded from an adapter folder, so there is no adapter file to "
                                 "save with the full weights; train with use_lora or write the file by hand")
            data = yaml.safe_load(adapter_file.read_text()) or {}
            data.pop("model", None)  # the weights now live in this folder
            (tmp / ADAPTER_FILES[0]).write_text(yaml.safe_dump(data, sort_keys=False))
            for f in src.glob("*.py"):  # a decoder module kept next to the weights
                shutil.copy2(f, tmp / f.name)
        return save_transformers_model(self, directory, extra, files)


# ------------------------------------------------------------------------------------------ templates -> layout

@dataclass(frozen=True)
class SequenceFormat:
    """How prompts, images and instructions become token sequences, as text templates. Each piece is tokenized
    on its own without special tokens; {bos} and {eos} stand for the tokenizer's tokens, {rows} and {cols} for
    the grid. Generation: generation(prompt) + image_prefix + codes; understanding: understanding with {image} =
    image_prefix + codes (with row_end after each row) + image_suffix, then answer(prompt) + answer_end."""

    generation: str = "{bos}{prompt}"
    """Must contain {prompt}; the image follows."""
    image_prefix: str = ""
    """Tokens before the first code (begin-of-image, size tokens)."""
    row_end: str = ""
    """Tokens after every row of codes (Emu3: '<|extra_200|>'); empty for a flat sequence."""
    image_suffix: str = ""
    """Tokens after the image (end-of-image)."""
    understanding: str = "{bos}{image}{instruction}"
    """Must contain {image} then {instruction}; the scored answer follows."""
    answer: str = "{prompt}"
    """The text the reward scores (e.g. ' {prompt}' after 'ASSISTANT:')."""
    answer_end: str = "{eos}"
    """After the answer (only for building training sequences)."""
    unconditional_prompt: str = ""
    """Replaces the prompt in the guidance rows (a negative prompt, or empty)."""


def _split(template: str, name: str, where: str) -> tuple[str, str]:
    key = "{" + name + "}"
    if template.count(key) != 1:
        raise ValueError(f"{where} template {template!r} must contain {key} exactly once")
    a, b = template.split(key)
    return a, b


def build_grid_layout(hf_tokenizer, fmt: SequenceFormat, *, image_token_offset: int, num_codes: int,
                      grid: tuple[int, int], decoder, encoder=None, pad_id: int | None = None) -> GridLayout:
    rows, cols = (int(x) for x in grid)
    subs = {"bos": hf_tokenizer.bos_token or "", "eos": hf_tokenizer.eos_token or "", "rows": rows, "cols": cols}
    for key, tok in (("bos", hf_tokenizer.bos_token), ("eos", hf_tokenizer.eos_token)):
        if tok is None and any("{" + key + "}" in t for t in dataclasses.astuple(fmt)):
            raise ValueError(f"a template uses {{{key}}} but the tokenizer has no {key} token")

    def ids(text: str) -> tuple[int, ...]:
        for k, v in subs.items():
            text = text.replace("{" + k + "}", str(v))
        return tuple(hf_tokenizer.encode(text, add_special_tokens=False)) if text else ()

    gen_a, gen_b = _split(fmt.generation, "prompt", "generation")
    und_a, rest = _split(fmt.understanding, "image", "understanding")
    und_b, und_c = _split(rest, "instruction", "understanding (after {image})")
    _split(fmt.answer, "prompt", "answer")
    eos = hf_tokenizer.eos_token_id
    pad = pad_id if pad_id is not None else hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set pad_token in the adapter file")
    vocab = len(hf_tokenizer)
    return GridLayout(
        image_token_offset=int(image_token_offset), num_codes=int(num_codes), num_image_tokens=rows * cols,
        pad_id=int(pad), eos_id=int(eos if eos is not None else pad),
        gen_prefix=ids(gen_a), gen_suffix=ids(gen_b + fmt.image_prefix), gen_end=ids(fmt.image_suffix),
        und_prefix=ids(und_a + fmt.image_prefix), und_after_image=ids(fmt.image_suffix + und_b),
        und_before_answer=ids(und_c), und_suffix=ids(fmt.answer_end),
        caption_ids=tuple(i for i in range(vocab) if not image_token_offset <= i < image_token_offset + num_codes),
        decoder=decoder, encoder=encoder, row_width=cols, row_end=ids(fmt.row_end))


# ------------------------------------------------------------------------------------------ the adapter file

@dataclass(frozen=True)
class CausalLMAdapter:
    """The adapter file (gvu_causal_lm.yaml or .json in the model folder): where the codes live, the grid, the
    sequence templates (SequenceFormat's keys, at the top level of the file) and the pixel decoder."""

    image_token_offset: int
    """Vocabulary id of image code 0; codes 0..num_codes-1 are ids image_token_offset + code."""
    num_codes: int
    """Size of the image codebook."""
    grid: tuple[int, int]
    """[rows, cols] of codes per image; T = rows * cols."""
    decoder: str
    """'module:function' turning codes [N, T] (numpy int) into uint8 pixels [N, H, W, 3]; a module file in the
    model folder is found first."""
    encoder: str = ""
    """Optional 'module:function' pixels -> codes, for the reward via pixels."""
    model: str = ""
    """Weights to load (folder or hub name); empty: the folder holding this file."""
    trust_remote_code: bool = False
    """Passed to from_pretrained (models with their own modelling code, such as X-Omni)."""
    pad_token: str = ""
    """Padding token text; empty: the tokenizer's pad token, else its eos token."""
    format: SequenceFormat = field(default_factory=SequenceFormat)


def read_adapter_file(path: Path) -> CausalLMAdapter:
    import yaml

    data = yaml.safe_load(path.read_text()) or {}  # YAML reads JSON too
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of adapter keys")
    own = {f.name for f in dataclasses.fields(CausalLMAdapter)} - {"format"}
    fmt_keys = {f.name for f in dataclasses.fields(SequenceFormat)}
    unknown = sorted(set(data) - own - fmt_keys)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known keys: {', '.join(sorted(own | fmt_keys))}")
    missing = [k for k in ("image_token_offset", "num_codes", "grid", "decoder") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing} (see docs/real-models.md)")
    grid = data["grid"]
    if not (isinstance(grid, (list, tuple)) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
        raise ValueError(f"{path}: grid must be [rows, cols] of positive integers, got {grid!r}")
    fmt = SequenceFormat(**{k: str(v) for k, v in data.items() if k in fmt_keys})
    return CausalLMAdapter(**{k: v for k, v in data.items() if k in own and k != "grid"}, grid=tuple(grid),
                           format=fmt)


def find_adapter_file(folder: Path) -> Path | None:
    return next((folder / n for n in ADAPTER_FILES if (folder / n).is_file()), None)


def load_causal_lm(path: str | os.PathLike, device=None, dtype="auto", gradient_checkpointing=False,
                   attn_implementation: str | None = None, logits_chunk=0) -> GridSharedVocabUMM:
    """A GridSharedVocabUMM from a folder holding an adapter file (and usually the weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    adapter_file = find_adapter_file(folder) if folder.is_dir() else None
    if adapter_file is None:
        why = "is not a folder" if not folder.is_dir() else f"holds no adapter file ({' or '.join(ADAPTER_FILES)})"
        raise FileNotFoundError(f"causal-lm:{path}: {folder} {why}; the folder must declare where the image codes "
                                "live (see docs/real-models.md)")
    ad = read_adapter_file(adapter_file)
    src = ad.model or str(folder)
    kw = dict(trust_remote_code=ad.trust_remote_code)
    tok = AutoTokenizer.from_pretrained(src, **kw)
    lm = AutoModelForCausalLM.from_pretrained(src, **dtype_kwargs(resolve_dtype(dtype)), **kw,
                                              **({"attn_implementation": attn_implementation} if attn_implementation
                                                 else {}))
    vocab = lm.get_output_embeddings().weight.shape[0]
    if ad.image_token_offset + ad.num_codes > vocab:
        raise ValueError(f"{adapter_file}: codes {ad.image_token_offset}..{ad.image_token_offset + ad.num_codes - 1}"
                         f" lie beyond the model's vocabulary ({vocab})")
    pad_id = tok.convert_tokens_to_ids(ad.pad_token) if ad.pad_token else None
    layout = build_grid_layout(tok, ad.format, image_token_offset=ad.image_token_offset, num_codes=ad.num_codes,
                               grid=ad.grid, decoder=import_callable(ad.decoder, folder),
                               encoder=import_callable(ad.encoder, folder) if ad.encoder else None, pad_id=pad_id)
    umm = GridSharedVocabUMM(finish_loading(lm, device, flag(gradient_checkpointing)), PlainTokenizer(tok), layout,
                             answer_template=ad.format.answer, unconditional_prompt=ad.format.unconditional_prompt)
    umm.source = str(folder)
    umm.logits_chunk = int(logits_chunk)
    umm.options = {"dtype": dtype_name(dtype), **({"attn_implementation": attn_implementation} if attn_implementation
                                          else {}), **({"logits_chunk": str(umm.logits_chunk)} if umm.logits_chunk
                                                       else {})}
    return umm


# ------------------------------------------------------------------------------------------ tiny test models

def tiny_byte_tokenizer(special_tokens: list[str], bos: str | None = None, eos: str | None = None,
                        pad: str | None = None, chat_template: str | None = None):
    """A byte-level BPE tokenizer with no merges (one token per byte, ids 0..255) plus `special_tokens` at ids
    256, 257, ... in order, for tiny random models in tests and demos (real tokenizers are byte-level BPE too).
    Adds `bos` at the start when encoding with special tokens, like Llama-family tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(list(special_tokens))
    if bos is not None:
        bos_id = tk.token_to_id(bos)
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                          special_tokens=[(bos, bos_id)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad)
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf
