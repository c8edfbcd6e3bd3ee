"""X-Omni's language model written for the transformers gvu installs (>= 5.22), reading the published checkpoint's
weights under their own names. X-Omni's modelling code (the checkpoint's `modeling_xomni.py`) is written for
transformers 4.51.3: its decoder layer unpacks a tuple from `Qwen2DecoderLayer` (a tensor since 5.0) and its model
skips `Qwen2Model.__init__` (no `has_sliding_layers`), so under 5.x it stops on the first forward. Why gvu carries
this file instead of a second environment: docs/real-models.md ("X-Omni's code and transformers").

The checkpoint's structure, kept name for name:

- `model.lm_embed_tokens` embeds text ids (< vocab_size), `model.mm_embed_tokens` multimodal ids (vocab_size + k:
  the image codes, then <SOM>, <EOM>, <IMAGE> and spares);
- `model.layers`: Qwen2 decoder layers; the first `num_mm_adap_layers` and the last `num_mm_head_layers` update the
  multimodal positions only (text positions pass through them unchanged), the others every position;
- `model.lm_norm` / `model.mm_norm`: the final norm of text / multimodal positions;
- `lm_head` scores text, `mm_head` the multimodal ids; `set_generation_mode` picks which range of the logits is
  filled (the rest holds the dtype's lowest value), as the checkpoint's forward does.

The multimodal mask rides in the hidden state, concatenated after it on the last dimension (the checkpoint's own
convention), so `Qwen2Model.forward` builds the attention masks, the cache and the rotary embeddings unchanged.
The vision parts (image tokenizer, FLUX decoder) are the checkpoint's own code: gvu.models.adapters.xomni sets them up.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import GenerationMixin, Qwen2Config
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import (Qwen2DecoderLayer, Qwen2Model, Qwen2PreTrainedModel,
                                                      Qwen2RMSNorm)

# transformers renamed the KV-cache argument from past_key_values to cache during 5.x
CACHE_ARG = "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"


class XOmniConfig(Qwen2Config):
    model_type = "x-omni"

    def __init__(self, num_mm_adap_layers: int = 4, num_mm_head_layers: int = 4, mm_vocab_size: int = 16448,
                 image_vocab_size: int = 16384, mm_special_tokens=("<SOM>", "<EOM>", "<IMAGE>"), **kwargs):
        self.num_mm_adap_layers = num_mm_adap_layers
        self.num_mm_head_layers = num_mm_head_layers
        self.mm_vocab_size = mm_vocab_size
        self.image_vocab_size = image_vocab_size
        self.mm_special_tokens = list(mm_special_tokens)
        super().__init__(**kwargs)


class XOmniDecoderLayer(Qwen2DecoderLayer):
    """Takes and returns [hidden, multimodal mask]; a multimodal-only layer keeps text positions unchanged."""

    def __init__(self, config: XOmniConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.updates_text = config.num_mm_adap_layers <= layer_idx < config.num_hidden_layers - config.num_mm_head_layers

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h, mm = hidden_states.chunk(2, dim=-1)
        out = super().forward(h, *args, **kwargs)
        out = out[0] if isinstance(out, tuple) else out  # a tensor on every transformers gvu supports
        if not self.updates_text:
            out = torch.where(mm.bool(), out, h)
        return torch.cat([out, mm], dim=-1)


class XOmniModel(Qwen2Model):
    config_class = XOmniConfig

    def __init__(self, config: XOmniConfig):
        super().__init__(config)  # rotary embedding, sliding-window flag, checkpointing flag
        del self.embed_tokens, self.norm  # replaced by the two-table embedding and the two norms below
        self.layers = nn.ModuleList([XOmniDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.lm_embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.mm_embed_tokens = nn.Embedding(config.mm_vocab_size, config.hidden_size)
        self.lm_norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mm_norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.lm_embed_tokens

    def set_input_embeddings(self, value):
        self.lm_embed_tokens = value

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Called by Qwen2Model.forward: [embedding, multimodal mask] on the last dimension."""
        V = self.config.vocab_size
        mm = (input_ids >= V)[..., None]
        h = torch.where(mm, self.mm_embed_tokens((input_ids - V).clamp(min=0)),
                        self.lm_embed_tokens(input_ids.clamp(max=V - 1)))
        return torch.cat([h, mm.to(h.dtype).expand_as(h)], dim=-1)

    def norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Called by Qwen2Model.forward last: drops the mask, normalises each position with its own norm."""
        h, mm = hidden_states.chunk(2, dim=-1)
        return torch.where(mm.bool(), self.mm_norm(h), self.lm_norm(h))


class XOmniForCausalLM(Qwen2PreTrainedModel, GenerationMixin):
    config_class = XOmniConfig
    checkpoint_code = None  # the checkpoint's own XOmniForCausalLM class, set at load: its vision methods

    def __init__(self, config: XOmniConfig):
        super().__init__(config)
        self.model = XOmniModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.mm_head = nn.Linear(config.hidden_size, config.mm_vocab_size, bias=False)
        self.generation_mode = "text"
        self.post_init()

    def get_input_embeddings(self):
        return self.model.lm_embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def set_generation_mode(self, mode: str) -> None:
        if mode not in ("text", "image"):
            raise ValueError(f"generation mode {mode!r}: 'text' or 'image'")
        self.generation_mode = mode

    def init_vision(self, flux_path: str) -> None:
        """The checkpoint's own init_vision, run on this model: it reads config.vision_config and the files next to
        the weights, and builds `image_tokenizer` and `decoder_pipe` on the model's current device."""
        self._checkpoint_method("init_vision")(self, flux_path)

    def detokenize_image(self, texts, images, token_ids, shape):
        """The checkpoint's own decoder call (one prompt, no earlier images, codes as a list) -> one PIL image."""
        return self._checkpoint_method("detokenize_image")(self, texts, images, token_ids, shape)

    def _checkpoint_method(self, name: str):
        fn = getattr(self.checkpoint_code, name, None)
        if fn is None:
            raise ValueError(f"X-Omni's {name} comes from the checkpoint's own modelling code, which was not found "
                             "(its modelling files next to config.json and an auto_map entry)")
        return fn

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, num_logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        """`cache`: the KV cache under the name transformers gives it since the rename (`past_key_values` is
        deprecated and goes in 5.40); a caller still passing `past_key_values` reaches Qwen2Model.forward through
        **kwargs and gets transformers' own deprecation warning there."""
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("X-Omni's forward needs input_ids (its layers tell image codes from text by id), "
                             "not inputs_embeds")
        if CACHE_ARG == "past_key_values":  # a transformers from before the rename: only the old name exists
            cache = kwargs.pop("past_key_values", cache)
        if cache is not None:
            kwargs[CACHE_ARG] = cache
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=use_cache, **kwargs)
        h = out.last_hidden_state[:, -num_logits_to_keep:]
        V, C = self.config.vocab_size, self.config.image_vocab_size
        logits = h.new_full((*h.shape[:-1], V + self.config.mm_vocab_size), torch.finfo(h.dtype).min)
        if self.generation_mode == "text":
            logits[..., :V] = self.lm_head(h)
        else:
            logits[..., V:V + C] = self.mm_head(h)[..., :C]
        kv = getattr(out, "cache", None) if CACHE_ARG == "cache" else out.past_key_values
        return CausalLMOutputWithPast(logits=logits.float(), **{CACHE_ARG: kv})
