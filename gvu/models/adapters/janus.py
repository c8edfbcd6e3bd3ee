"""Janus / Janus-Pro (`transformers.JanusForConditionalGeneration`) as a UnifiedModel: a DECOUPLED model.

Generation writes VQ codes: text embeddings for the prompt, then each code goes back in through the generation
path (`prepare_embeddings_for_image_generation`: generation_embeddings + generation_aligner) and the next code's
logits come from `generation_head` on the language model's last hidden state (not from lm_head). Understanding
reads pixels: VQ-decode the codes, the image processor (SigLIP preprocessing), the vision encoder + aligner whose
features replace the <image_placeholder> tokens, and lm_head scores the text. So the reward always goes through
pixels, whatever `reward_image_path` says.

Guidance is built the way Janus builds it (transformers' JanusForConditionalGeneration.generate and the official
repository): the unconditional row is the conditional row with every token except BOS and <begin_of_image>
replaced by the pad token, same length, attention on. Both rows ride in one batch of 2N. We do not call
`generate`: it falls back to guidance 5 when none is given and returns processed scores, and we need the exact
log-probs of what was drawn (gvu.models.sampling.filter_logits, shared with the teacher-forced pass).

Prompts follow Janus's "deepseek" conversation format (what the official code builds and what transformers'
JanusProcessor renders with its chat template): "<|User|>: {prompt}\\n\\n<|Assistant|>:<begin_of_image>" for
generation (no system prompt) and "{system prompt}\\n\\n<|User|>: <image>\\n{instruction}\\n\\n<|Assistant|>:"
+ " {prompt}" for the reward, the image expanded to <begin_of_image>, 576 placeholders, <end_of_image>. A chat
template on the tokenizer or processor is used when there is one; tests/test_janus_format.py checks both token for
token against the processor.

Letters: N rows, B batch rows (2N with guidance), S prefix length, T image codes, C codes, L answer tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gvu.models.forward import cache_kwarg, cache_of, eval_mode, pad_batch, positions, span_logprobs
from gvu.models.hf import (base_model, finish_loading, flag, load_options, load_pretrained, PlainTokenizer,
                           save_transformers_model, tiny_byte_tokenizer)
from gvu.models.protocol import check_sample_args, checked_codes, DEFAULT_INSTRUCTION, Rollout, SamplingConfig
from gvu.models.sampling import draw, guided_logprobs

BOI, EOI, IMAGE = "<begin_of_image>", "<end_of_image>", "<image_placeholder>"
SYSTEM_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the visual content that "
                 "the user provides, and assist the user with a variety of tasks using natural language.")


@dataclass(frozen=True)
class JanusFormat:
    """Janus's conversation format, used when the tokenizer has no chat template (or use_chat_template=False)."""

    turn: str = "<|User|>: {content}\n\n<|Assistant|>:"
    """One user turn and the assistant's cue."""
    system_prompt: str = SYSTEM_PROMPT
    """Prepended, with a blank line, to the UNDERSTANDING prompt only, as Janus's processors do (the official
    VLChatProcessor's default system prompt; transformers' JanusProcessor prepends the same text in text mode).
    Generation prompts have none (the official generation code passes an empty one)."""
    answer: str = " {prompt}"
    """The text the reward scores after the assistant's cue."""
    use_chat_template: bool = True


class _WithImages:
    """Lets span_logprobs (which calls lm(input_ids=..., ...)) drive a forward that also takes pixel_values."""

    def __init__(self, lm, **extra):
        self.lm, self.extra = lm, extra

    def parameters(self):
        return self.lm.parameters()

    def __call__(self, **kw):
        return self.lm(**kw, **self.extra)


class JanusUMM:
    """`lm`: a JanusForConditionalGeneration (or a PEFT wrapper of it); `hf_tokenizer` its tokenizer;
    `image_processor` its image processor (JanusImageProcessor or JanusImageProcessorPil)."""

    kind = "janus"
    world: str | None = None
    lora_scope = "model.language_model"
    reads_pixels = True  # understanding goes through SigLIP on decoded pixels
    supports_fsdp2 = False  # the passes call submodules (language model, generation head, VQ) directly

    def __init__(self, lm, hf_tokenizer, image_processor, fmt: JanusFormat = JanusFormat(),
                 chat_template: str | None = None):
        self.lm = lm
        self.tokenizer = PlainTokenizer(hf_tokenizer)
        self.image_processor = image_processor
        self.fmt = fmt
        self.chat_template = (chat_template or getattr(hf_tokenizer, "chat_template", None)) \
            if fmt.use_chat_template else None
        janus = base_model(lm)
        cfg = janus.config
        self.image_token_id = int(cfg.image_token_id)
        ids = {t: hf_tokenizer.convert_tokens_to_ids(t) for t in (BOI, EOI)}
        if any(i is None or i == hf_tokenizer.unk_token_id for i in ids.values()):
            raise ValueError(f"the tokenizer lacks Janus's {BOI} / {EOI} tokens")
        self.boi_id, self.eoi_id = ids[BOI], ids[EOI]
        self.image_token = hf_tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.bos_id = hf_tokenizer.bos_token_id
        # the unconditional rows are made of the pad token Janus's own generate uses (its generation config's)
        gen_cfg = getattr(janus, "generation_config", None)
        pads = (getattr(gen_cfg, "pad_token_id", None), hf_tokenizer.pad_token_id, hf_tokenizer.eos_token_id)
        self.pad_id = next(int(p) for p in pads if p is not None)
        self._keep = {self.bos_id, getattr(gen_cfg, "bos_token_id", None), self.boi_id} - {None}
        self.num_codes = int(cfg.vq_config.num_embeddings)
        self.num_image_tokens = math.prod(janus.model.vqmodel.quantize.quant_state_dims)
        vc = cfg.vision_config
        self.num_vision_tokens = (vc.image_size // vc.patch_size) ** 2
        self._cache_arg = cache_kwarg(janus.model.language_model)
        self.source, self.options = None, {}
        self._memo: dict = {}

    @property
    def module(self) -> torch.nn.Module:
        return self.lm

    @module.setter
    def module(self, lm: torch.nn.Module):
        self.lm = lm

    @property
    def janus(self):
        return base_model(self.lm)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    # ------------------------------------------------------------------------------------------- text layout

    def _render(self, parts: list[dict], system: bool = False) -> str:
        """One user turn with the assistant cue; an image part renders as the image token (expanded later). With
        `system`, the system prompt and a blank line go first (as the processors prepend it, outside the chat
        template)."""
        head = self.fmt.system_prompt + "\n\n" if system and self.fmt.system_prompt else ""
        if self.chat_template:
            return head + self.tokenizer.hf.apply_chat_template(
                [{"role": "user", "content": parts}], chat_template=self.chat_template, tokenize=False,
                add_generation_prompt=True)
        content = "\n".join(self.image_token if p["type"] == "image" else p["text"] for p in parts)
        return head + self.fmt.turn.format(content=content)

    def _with_bos(self, text: str) -> list[int]:
        ids = list(self.tokenizer.hf.encode(text, add_special_tokens=True))
        if self.bos_id is not None:
            while ids[:2] == [self.bos_id, self.bos_id]:  # a template that writes BOS itself
                ids = ids[1:]
            if ids[:1] != [self.bos_id]:
                ids = [self.bos_id] + ids
        return ids

    def generation_prefix(self, prompt: str) -> list[int]:
        key = ("gen", prompt)
        if key not in self._memo:
            text = self._render([{"type": "text", "text": prompt}])
            self._memo[key] = self._with_bos(text) + [self.boi_id]
        return self._memo[key]

    def unconditional(self, ids: list[int]) -> list[int]:
        return [t if t in self._keep else self.pad_id for t in ids]

    def understanding_prefix(self, instruction: str) -> list[int]:
        key = ("und", instruction)
        if key not in self._memo:
            text = self._render([{"type": "image"}, {"type": "text", "text": instruction}], system=True)
            if text.count(self.image_token) != 1:
                raise ValueError(f"the chat template rendered {text.count(self.image_token)} image tokens, expected 1")
            a, b = text.split(self.image_token)
            self._memo[key] = (self._with_bos(a) + [self.boi_id] + [self.image_token_id] * self.num_vision_tokens
                               + [self.eoi_id] + self.tokenizer.encode(b))
        return self._memo[key]

    def answer_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(self.fmt.answer.format(prompt=prompt))

    # ------------------------------------------------------------------------------------------- generation

    def _generation_batch(self, prompts_N: list[str], guided: bool):
        seqs = [self.generation_prefix(p) for p in prompts_N]
        if guided:
            seqs += [self.unconditional(s) for s in seqs]
        return pad_batch(seqs, self.pad_id, "left", self.device)

    _step_logprobs = staticmethod(guided_logprobs)

    @torch.no_grad()
    def sample(self, prompts: list[str], group_size: int, sampling: SamplingConfig,
               generator) -> Rollout:
        check_sample_args(prompts, group_size)
        P, G, T = len(prompts), group_size, self.num_image_tokens
        N, guided, device, janus = P * G, sampling.uses_guidance, self.device, self.janus
        ids_BS, mask_BS = self._generation_batch([p for p in prompts for _ in range(G)], guided)
        pos_BS = positions(mask_BS)
        text_model = janus.model.language_model
        codes_NT = torch.empty((N, T), dtype=torch.long, device=device)
        logp_NT = torch.empty((N, T), dtype=torch.float32, device=device)
        with eval_mode(self.lm):
            out = text_model(inputs_embeds=janus.get_input_embeddings()(ids_BS), attention_mask=mask_BS,
                             position_ids=pos_BS, use_cache=True)
            for t in range(T):
                logits_BC = janus.model.generation_head(out.last_hidden_state[:, -1])
                logp_NC = self._step_logprobs(logits_BC, N, sampling)
                codes_N = draw(logp_NC.exp(), generator, G).to(device)
                codes_NT[:, t] = codes_N
                logp_NT[:, t] = logp_NC.gather(1, codes_N[:, None])[:, 0]
                if t + 1 == T:
                    break
                embeds_B1D = janus.prepare_embeddings_for_image_generation(codes_N.repeat(2 if guided else 1)[:, None])
                mask_BS = torch.cat([mask_BS, mask_BS.new_ones((mask_BS.shape[0], 1))], dim=1)
                pos_BS = pos_BS[:, -1:] + 1
                out = text_model(inputs_embeds=embeds_B1D, attention_mask=mask_BS, position_ids=pos_BS,
                                 use_cache=True, **{self._cache_arg: cache_of(out)})
        return Rollout(image_tokens_NT=codes_NT, logp_NT=logp_NT,
                       prompt_index_N=torch.arange(P, device=device).repeat_interleave(G), prompts=list(prompts))

    def image_logprobs(self, prompts_N: list[str], image_tokens_NT: torch.Tensor,
                       sampling: SamplingConfig) -> torch.Tensor:
        """One teacher-forced forward: prompt text embeddings, then codes[:-1] through the generation embedding
        path, logits from the generation head at the last T positions; with grad; same guidance rows."""
        N, T = image_tokens_NT.shape
        janus, guided = self.janus, sampling.uses_guidance
        codes_NT = checked_codes(prompts_N, image_tokens_NT, self.num_image_tokens, self.num_codes, self.device)
        ids_BS, pmask_BS = self._generation_batch(list(prompts_N), guided)
        text_BSD = janus.get_input_embeddings()(ids_BS)
        img_BTD = janus.prepare_embeddings_for_image_generation(codes_NT[:, :-1].repeat(2 if guided else 1, 1))
        embeds = torch.cat([text_BSD, img_BTD.to(text_BSD.dtype)], dim=1)
        mask_BS = torch.cat([pmask_BS, pmask_BS.new_ones((pmask_BS.shape[0], T - 1))], dim=1)
        out = janus.model.language_model(inputs_embeds=embeds, attention_mask=mask_BS,
                                         position_ids=positions(mask_BS), use_cache=False)
        logits_BTC = janus.model.generation_head(out.last_hidden_state[:, -T:])
        C = logits_BTC.shape[-1]
        logp_QC = self._step_logprobs(logits_BTC.reshape(-1, C), N * T, sampling)
        return logp_QC.gather(1, codes_NT.reshape(-1, 1)).reshape(N, T)

    # ------------------------------------------------------------------------------------------ understanding

    def _as_pixels(self, images) -> np.ndarray:
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        images = np.asarray(images)
        if images.ndim == 4 and images.dtype == np.uint8:
            return images
        if images.ndim == 2 and np.issubdtype(images.dtype, np.integer):
            return self.decode(images)
        raise ValueError(f"images must be image codes [N, {self.num_image_tokens}] or uint8 pixels [N, H, W, 3]; "
                         f"got {images.dtype} {images.shape}")

    def pixel_values(self, pixels_NHW3: np.ndarray) -> torch.Tensor:
        """SigLIP input through the model's own image processor (resize, pad to square, normalise)."""
        pv = self.image_processor(images=list(pixels_NHW3), return_tensors="pt")["pixel_values"]
        vision = self.janus.model.vision_model
        return pv.to(device=self.device, dtype=next(vision.parameters()).dtype)

    def prompt_logprobs(self, images, prompts: list[str],
                        instruction: str = DEFAULT_INSTRUCTION) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self._as_pixels(images)
        if len(prompts) != len(pixels):
            raise ValueError(f"{len(prompts)} prompts for {len(pixels)} images")
        prefix = self.understanding_prefix(instruction)
        seqs, spans = [], []
        for p in prompts:
            ans = self.answer_ids(p)
            seqs.append(prefix + ans)
            spans.append((len(prefix), len(prefix) + len(ans)))
        return span_logprobs(_WithImages(self.lm, pixel_values=self.pixel_values(pixels)), seqs, spans, self.pad_id)

    # ------------------------------------------------------------------------------------------------ pixels

    @torch.no_grad()
    def decode(self, image_tokens_NT, prompts: list[str] | None = None, seeds: list[int] | None = None) -> np.ndarray:
        """VQ decode, then the image processor's postprocess (which wants channels first) -> uint8 [N, H, W, 3]."""
        vq = self.janus.model.vqmodel
        codes = torch.as_tensor(np.asarray(image_tokens_NT.detach().cpu() if isinstance(image_tokens_NT, torch.Tensor)
                                           else image_tokens_NT), dtype=torch.long, device=self.device)
        x_N3HW = vq.decode(codes).float().cpu()
        out = self.image_processor.postprocess(list(x_N3HW), return_tensors=None)["pixel_values"]
        arr = np.stack([np.asarray(o.cpu() if isinstance(o, torch.Tensor) else o) for o in out])
        return np.ascontiguousarray(arr.transpose(0, 2, 3, 1)).astype(np.uint8)

    @torch.no_grad()
    def encode(self, pixels_NHW3) -> torch.Tensor:
        """uint8 pixels -> VQ codes (normalised as the processor does; pixels must be the decoder's size)."""
        ip, vq = self.image_processor, self.janus.model.vqmodel
        px = np.asarray(pixels_NHW3.cpu() if isinstance(pixels_NHW3, torch.Tensor) else pixels_NHW3)
        x = (px.astype(np.float32) * ip.rescale_factor - np.asarray(ip.image_mean, np.float32)) / \
            np.asarray(ip.image_std, np.float32)
        x_N3HW = torch.as_tensor(x.transpose(0, 3, 1, 2).copy(), device=self.device,
                                 dtype=next(vq.parameters()).dtype)
        return vq.encode(x_N3HW, return_dict=True).image_tokens.view(len(px), -1).cpu()

    def save_pretrained(self, directory, extra: dict | None = None) -> Path:
        def files(tmp: Path):
            self.tokenizer.hf.save_pretrained(tmp)
            self.image_processor.save_pretrained(tmp)
        return save_transformers_model(self, directory, extra, files)


def load_janus(name: str, device=None, dtype="auto", gradient_checkpointing=False,
               attn_implementation: str | None = None, use_chat_template=True) -> JanusUMM:
    """A Janus / Janus-Pro checkpoint in transformers format, from a local folder or the hub
    (deepseek-community/Janus-Pro-1B, deepseek-community/Janus-Pro-7B)."""
    try:
        from transformers import AutoImageProcessor, AutoTokenizer, JanusForConditionalGeneration
    except ImportError as err:
        raise ImportError(f"Janus needs transformers >= 5.22 (pip install -U 'transformers>=5.22'): {err}")
    lm = load_pretrained(JanusForConditionalGeneration, name, "janus", dtype, attn_implementation)
    tok, ip = load_pretrained(AutoTokenizer, name, "janus"), load_pretrained(AutoImageProcessor, name, "janus")
    template = getattr(tok, "chat_template", None)
    if template is None and flag(use_chat_template):
        try:  # Janus keeps its chat template with the processor
            from transformers import AutoProcessor

            template = AutoProcessor.from_pretrained(name).chat_template
        except Exception:
            template = None
    for p in lm.model.vqmodel.parameters():  # the VQ is frozen in Janus
        p.requires_grad_(False)
    lm = finish_loading(lm, device, flag(gradient_checkpointing))
    umm = JanusUMM(lm, tok, ip, JanusFormat(use_chat_template=flag(use_chat_template)), chat_template=template)
    umm.source = str(name)
    umm.options = load_options(dtype, attn_implementation,
                               use_chat_template=None if flag(use_chat_template) else "0")
    return umm


# ------------------------------------------------------------------------------------------ tiny random model

TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}{{ '\n\n' }}"
    "{%- else -%}<|User|>: {% for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image_placeholder>{%- if not loop.last -%}{{ '\n' }}{%- endif -%}"
    "{%- else -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}{{ '\n\n' }}{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|Assistant|>:{%- endif -%}")


def tiny_janus_parts(seed: int = 0, chat_template: bool = True, sharpen: float = 4.0):
    """(model, tokenizer, image processor) of a tiny random Janus: byte-level tokenizer with Janus's special
    tokens, a 2-layer Llama, a 1-layer SigLIP on 16x16 images (16 patches), and a VQ with 64 codes on a 4x4 grid
    that decodes to 16x16 pixels. At the default init std the code distribution is almost uniform, which would let
    a wrong mask or guidance row go unnoticed in tests, so the weights outside the VQ are scaled by `sharpen`."""
    from transformers import JanusConfig, JanusForConditionalGeneration
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    tok = tiny_byte_tokenizer(["<pad>", "<bos>", "<eos>", BOI, EOI, IMAGE, "<|User|>", "<|Assistant|>"],
                              bos="<bos>", eos="<eos>", pad="<pad>",
                              chat_template=TINY_CHAT_TEMPLATE if chat_template else None)
    hidden = 32
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=hidden, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = dict(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=4,
                  projection_dim=hidden, num_image_tokens=16, mlp_ratio=2.0)
    vq = dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32, channel_multiplier=[1, 1, 2],
              num_res_blocks=1, projection_dim=hidden, image_token_embed_dim=hidden, num_hidden_layers=2)
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                         image_token_id=tok.convert_tokens_to_ids(IMAGE))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = JanusForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.dim() >= 2 and "vqmodel" not in name:
                p.mul_(sharpen)
        for p in (lm.model.generation_head.proj_out.weight, lm.model.generation_head.vision_head.weight):
            p.mul_(sharpen)
    ip = JanusImageProcessorPil(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                min_size=4)
    return lm.eval(), tok, ip


def build_tiny_janus(seed: int = 0, chat_template: bool = True) -> JanusUMM:
    lm, tok, ip = tiny_janus_parts(seed, chat_template)
    for p in lm.model.vqmodel.parameters():
        p.requires_grad_(False)
    return JanusUMM(finish_loading(lm, "cpu", False), tok, ip)
