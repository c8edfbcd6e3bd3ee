"""A tiny X-Omni-SHAPED model, written by the tests into a folder and loaded with trust_remote_code, with the
interface quirks of X-Omni's own modelling code (read from its public inference code, not copied):

- a Qwen2 causal LM whose image codes live BEYOND lm_head: code k is id vocab_size + k, embedded by a separate
  mm_embed_tokens and scored by a separate mm_head; the multimodal specials <SOM>, <EOM>, <IMAGE> lie there too;
- a generation mode switched by set_generation_mode('text' | 'image'): logits are vocab_size + mm_vocab_size wide,
  filled with bf16's lowest value except the text range (text mode) or the code range (image mode);
- forward takes `num_logits_to_keep` (0 keeps every position) and no **kwargs;
- an image tokenizer (`image_tokenizer.encode`: normalised pixels [B, 3, H, W] -> codes [B, h, w]) and a decoder
  that is a generative model: `detokenize_image(texts, images, token_ids, shape)` draws from torch's global RNG
  (the caller seeds it) and depends on the prompt text.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_PY = '''
from transformers import Qwen2Config


class TinyXOmniConfig(Qwen2Config):
    model_type = "tiny-x-omni"

    def __init__(self, mm_vocab_size=80, image_vocab_size=64, patch_size=2, **kwargs):
        self.mm_vocab_size = mm_vocab_size
        self.image_vocab_size = image_vocab_size
        self.patch_size = patch_size
        super().__init__(**kwargs)
'''

MODELING_PY = '''
import numpy as np
import torch
from torch import nn
from transformers import Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tiny_xomni import TinyXOmniConfig


class TinyImageTokenizer(nn.Module):
    def __init__(self, config):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("palette", torch.rand(config.image_vocab_size, 3, generator=g))
        self.patch = config.patch_size

    def encode(self, x):
        p = nn.functional.avg_pool2d((x.float() + 1) / 2, self.patch)
        d = ((p.permute(0, 2, 3, 1)[..., None, :] - self.palette) ** 2).sum(-1)
        return d.argmin(-1)

    def decode(self, codes):
        return self.palette[codes]


class TinyXOmniForCausalLM(Qwen2ForCausalLM):
    config_class = TinyXOmniConfig

    def __init__(self, config):
        super().__init__(config)
        self.mm_embed_tokens = nn.Embedding(config.mm_vocab_size, config.hidden_size)
        self.mm_head = nn.Linear(config.hidden_size, config.mm_vocab_size, bias=False)
        self.image_tokenizer = TinyImageTokenizer(config)
        self.generation_mode = "text"
        self.post_init()

    def set_generation_mode(self, mode):
        assert mode in ("text", "image")
        self.generation_mode = mode

    def _embed(self, input_ids):
        V = self.config.vocab_size
        mm = input_ids >= V
        text = self.model.embed_tokens(input_ids.clamp(max=V - 1))
        image = self.mm_embed_tokens((input_ids - V).clamp(min=0))
        return torch.where(mm[..., None], image, text)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None, num_logits_to_keep=0):
        if inputs_embeds is None:
            inputs_embeds = self._embed(input_ids)
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, use_cache=use_cache, cache_position=cache_position)
        h = out.last_hidden_state[:, -num_logits_to_keep:]
        V, C = self.config.vocab_size, self.config.image_vocab_size
        logits = h.new_full((*h.shape[:2], V + self.config.mm_vocab_size), torch.finfo(torch.bfloat16).min)
        if self.generation_mode == "text":
            logits[..., :V] = self.lm_head(h)
        else:
            logits[..., V:V + C] = self.mm_head(h)[..., :C]
        return CausalLMOutputWithPast(logits=logits.float(), past_key_values=out.past_key_values)

    @torch.no_grad()
    def detokenize_image(self, texts, images, token_ids, shape):
        H, W = shape
        codes = torch.as_tensor(token_ids).view(-1, H, W)
        rgb = self.image_tokenizer.decode(codes.to(self.palette_device()))
        up = rgb.repeat_interleave(self.config.patch_size, 1).repeat_interleave(self.config.patch_size, 2)
        tint = (sum(map(ord, texts[0])) % 5) / 500.0
        px = (up + 0.01 * torch.rand(up.shape) + tint).clamp(0, 1) * 255
        return [np.asarray(p.round().to(torch.uint8).cpu()) for p in px]

    def palette_device(self):
        return self.image_tokenizer.palette.device
'''

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_tiny_xomni(folder: Path, seed: int = 0, num_codes: int = 64) -> Path:
    """The modelling files, a config, random weights (seeded) and a tokenizer with the chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gvu.models.hf import tiny_byte_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_tiny_xomni.py").write_text(CONFIG_PY)
    (folder / "modeling_tiny_xomni.py").write_text(MODELING_PY)
    text_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    mm = [f"<MM-Token-{k}>" for k in range(num_codes)] + ["<SOM>", "<EOM>", "<IMAGE>"]
    tok = tiny_byte_tokenizer(text_specials + mm, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHAT_TEMPLATE)
    vocab = 256 + len(text_specials)
    assert tok.convert_tokens_to_ids("<MM-Token-0>") == vocab
    config = {"model_type": "tiny-x-omni", "architectures": ["TinyXOmniForCausalLM"],
              "auto_map": {"AutoConfig": "configuration_tiny_xomni.TinyXOmniConfig",
                           "AutoModelForCausalLM": "modeling_tiny_xomni.TinyXOmniForCausalLM"},
              "vocab_size": vocab, "mm_vocab_size": num_codes + 16, "image_vocab_size": num_codes, "patch_size": 2,
              "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": False,
              "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "transformers_version": "4.51.3"}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    cfg = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
    with torch.no_grad():  # far from uniform, so a wrong mask or guidance row shows in the tests
        for name, p in lm.named_parameters():
            if p.dim() >= 2:
                p.mul_(4.0)
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config, indent=1))  # keep the auto_map and the pin as written
    return folder
