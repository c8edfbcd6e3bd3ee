"""A tiny X-Omni, written by the tests into a folder, whose modelling code keeps the conventions of X-Omni's own
(the remote code the published checkpoint ships, as the official GvU repository carries it: matrix0721/GvU at
0a3000a, omni_r1/models/modeling_xomni.py, cited below as MX:LINE; configuration_xomni.py; modeling_siglip_tokenizer.py
as ST:LINE; modeling_siglip_flux.py as SF:LINE; modeling_vit.py as VT:LINE), and the loading paths of diffusers
0.34.0, X-Omni's pin (src/diffusers/configuration_utils.py as DC:LINE, src/diffusers/pipelines/pipeline_utils.py as
DP:LINE). Written for these tests, not copied. Where the adapter touches it, it is as unfriendly as the original:

- decoder layers carry [hidden, multimodal mask] in a doubled hidden state and unpack a tuple from
  Qwen2DecoderLayer (MX:31-41), and the model skips Qwen2Model.__init__ (MX:48-66), so, like the original, it
  runs under transformers 4.51.3 and stops on the first forward under 5.x (the version break shows in the suite);
- codes live beyond lm_head (mm_embed_tokens, mm_head; MX:104-105); the embedding is the original's own formula,
  the text and the multimodal ids gathered apart and scattered back through the mask (MX:74-88), so the stored
  reference checks gvu's embedding step independently; rope_theta is X-Omni's 1e6; the generation mode fills one
  range of the logits with the rest at the dtype's lowest value (MX:276-286); the forward takes
  num_logits_to_keep and no **kwargs, and passes `past_key_values` to the model (MX:241-273);
- the image tokenizer and the decoder pipeline exist only after init_vision(flux_path) (MX:116-149), which builds
  them on the model's device of the moment; neither is in the weights (MX:99). init_vision reads the tokenizer's
  weight files next to the model's name_or_path when that is a folder, else asks the hub by that name
  (MX:131-132); the tokenizer is a module WITH parameters (a patch embedding standing in for the SigLIP ViT, a
  1x1 quant_conv and the codebook: ST:204-223, 176-177, IBQ's embedding ST:74), trainable as built, loaded from
  those files (VT:694-695, ST:223); the FLUX pipeline is loaded from flux_path and its transformer from the
  X-Omni checkpoint by name_or_path and subfolder (MX:137-146), each as diffusers 0.34 loads: a folder is read,
  anything else goes to the hub with `proxies=` (DP:827-837 then 1485-1490; DC:375-403, also
  `local_dir_use_symlinks=`), through `hf_hub_download` below: the INSTALLED huggingface_hub's argument checks
  and signature, and no network. The pipeline is no nn.Module and moves only when its .to()
  is called (MX:149; the official trainer moves it itself, omni_r1/trainer/grpo_trainer.py:449); a variant of
  the folder leaves that call out;
- detokenize_image(texts, images, token_ids, shape) asserts one prompt and no earlier images (MX:220-221), makes
  the codes a tensor with torch.tensor (MX:223), decodes latents channels-first (MX:224, ST:230-231, 132-142),
  hands them to the pipeline as [1, H*W, C] with the config's cfg scales and an empty negative prompt
  (MX:226-236) and returns ONE PIL image; the pipeline asserts true CFG (a scale above 1 and a negative prompt,
  SF:670-688), draws from torch's global RNG and reads the prompt;
- variants of the folder: a vision file that imports flash_attn at the top, as VT:21 does; a
  generation_config.json.

For the consent tests (tests/test_remote_code.py) it can also ship its own tokenizer class (tokenizer_config.json's
auto_map, as a checkpoint whose tokenizer is its own code would) and have every one of its Python files append its
module name to a marker file when it runs, so a test sees whether any of the checkpoint's code ran.

Weights are filled from a generator seeded by each weight's name, not by transformers' initialisation, so the
same folder comes out under any transformers version (tests/data/xomni_reference.json was computed from it by
this code under transformers 4.51.3: scripts/xomni_reference.py).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

CONFIG_PY = '''
from transformers import Qwen2Config


class XOmniConfig(Qwen2Config):  # configuration_xomni.py
    model_type = "x-omni"

    def __init__(self, num_mm_adap_layers=1, num_mm_head_layers=1, mm_vocab_size=80, image_vocab_size=64,
                 mm_special_tokens=("<SOM>", "<EOM>", "<IMAGE>"), **kwargs):
        super().__init__(**kwargs)
        self.num_mm_adap_layers = num_mm_adap_layers
        self.num_mm_head_layers = num_mm_head_layers
        self.mm_vocab_size = mm_vocab_size
        self.image_vocab_size = image_vocab_size
        self.mm_special_tokens = mm_special_tokens
'''

VISION_PY = '''
import inspect
import json
import os
from types import SimpleNamespace

import huggingface_hub
import numpy as np
import torch
from PIL import Image
from torch import nn

_HUB_SIGNATURE = inspect.signature(inspect.unwrap(huggingface_hub.hf_hub_download))


def _no_network(repo_id, filename, **kwargs):
    _HUB_SIGNATURE.bind(repo_id, filename, **kwargs)  # what the installed function would take
    raise OSError(f"{repo_id}: {kwargs.get('subfolder') or ''}/{filename}: the tests reach no hub")


# the installed huggingface_hub.hf_hub_download without the network: its own argument checks first (from 1.0 on
# they drop the legacy proxies=, resume_download=, local_dir_use_symlinks= that diffusers 0.34 passes, with a
# warning), its signature next, then no file
hf_hub_download = huggingface_hub.utils.validate_hf_hub_args(_no_network)


class TinyImageTokenizer(nn.Module):
    # SiglipTokenizer (ST:204-231): encode(pixels in [-1, 1], [B, 3, H, W]) -> codes [B, h, w], the nearest
    # codebook entry of each patch (ST:191-195, 96-114); decode(codes, (B, h, w, C)) -> the codebook entries
    # channels first (ST:197-198, 132-142)

    def __init__(self, siglip_name, siglip_path, projector_path, z_channels, codebook_size, codebook_dim,
                 patch_size):
        super().__init__()
        self.vit = nn.Conv2d(3, z_channels, patch_size, stride=patch_size)  # in place of create_siglip_vit
        self.vit.load_state_dict(torch.load(siglip_path, map_location="cpu"), strict=False)  # VT:694-695
        self.vqproj = nn.ModuleDict({"quant_conv": nn.Conv2d(z_channels, codebook_dim, 1),
                                     "embedding": nn.Embedding(codebook_size, codebook_dim)})
        self.vqproj.load_state_dict(torch.load(projector_path, map_location="cpu"), strict=True)  # ST:223

    def encode(self, x):
        z = self.vqproj["quant_conv"](self.vit(x)).permute(0, 2, 3, 1)
        e = self.vqproj["embedding"].weight
        d = (z ** 2).sum(-1, keepdim=True) + (e ** 2).sum(-1) - 2 * z @ e.T
        return d.argmin(-1)

    def decode(self, tokens, bhwc):
        return self.vqproj["embedding"](tokens).view(bhwc).permute(0, 3, 1, 2).contiguous()


def _config_file(path, name, subfolder):
    # how diffusers 0.34 finds a model's config (DC:372-403): a file, a folder (its subfolder first), else the hub
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        for f in ([os.path.join(path, subfolder, name)] if subfolder is not None else []) + [os.path.join(path, name)]:
            if os.path.isfile(f):
                return f
        raise OSError(f"Error no file named {name} found in directory {path}.")
    return hf_hub_download(path, filename=name, cache_dir=None, force_download=False, proxies=None,
                           local_files_only=False, token=None, user_agent=None, subfolder=subfolder, revision=None,
                           local_dir=None, local_dir_use_symlinks="auto")


class TinyFluxTransformer(nn.Module):
    # FluxTransformer2DModelWithSigLIP (SF:27-63), loaded from the X-Omni checkpoint itself (MX:141-146)

    def __init__(self, tint, siglip_channels):
        super().__init__()
        self.register_buffer("tint", torch.tensor(float(tint)))
        self.siglip_channels = siglip_channels

    @classmethod
    def from_pretrained(cls, path, siglip_channels=None, torch_dtype=None, subfolder=None):
        with open(_config_file(str(path), "config.json", subfolder)) as f:
            return cls(json.load(f)["tint"], siglip_channels).to(torch_dtype)


class TinyFluxPipeline:
    # FluxPipelineWithSigLIP: a diffusers pipeline, so not an nn.Module; it is on the device its last .to() named,
    # and, like a module's weights, refuses latents on another device

    def __init__(self, folder):
        self.folder = folder
        self.device = torch.device("cpu")
        self.moves = []
        self.transformer = None

    @classmethod
    def from_pretrained(cls, folder, torch_dtype=None):
        folder = str(folder)
        if not os.path.isdir(folder):  # DP:827-837: downloaded first, model_index.json asked for with proxies=
            hf_hub_download(folder, filename="model_index.json", cache_dir=None, force_download=False,
                            proxies=None, local_files_only=False, token=None, revision=None)
        if not os.path.isfile(os.path.join(folder, "model_index.json")):
            raise OSError(f"{folder} holds no model_index.json (not a diffusers pipeline folder)")
        return cls(folder)

    def set_progress_bar_config(self, **kwargs):
        pass

    def to(self, device):
        self.device = torch.device(device)
        self.transformer.to(self.device)
        self.moves.append(str(self.device))
        return self

    def __call__(self, latents, prompt, negative_prompt=None, height=None, width=None, num_inference_steps=28,
                 guidance_scale=3.5, true_cfg_scale=1.0, true_cfg_scale_2=1.0):
        do_true_cfg = true_cfg_scale > 1 and negative_prompt is not None  # SF:670-673
        assert do_true_cfg  # SF:688
        if latents.device != self.device or self.transformer.tint.device != self.device:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found {latents.device} and "
                               f"{self.device}")
        rgb = latents[0].float().cpu()  # [h*w, 3]
        h = int(round((rgb.shape[0] * height / width) ** 0.5))
        img = rgb.view(h, -1, 3).repeat_interleave(height // h, 0).repeat_interleave(width // (rgb.shape[0] // h), 1)
        tint = float(self.transformer.tint) + (sum(map(ord, prompt[0])) % 5) / 500.0  # the decoder reads the prompt
        img = (img + 0.01 * torch.rand(img.shape) + tint).clamp(0, 1)  # and draws from torch's global RNG
        return SimpleNamespace(images=[Image.fromarray(np.asarray((img * 255).round().to(torch.uint8)))])
'''

FLASH_ATTN_IMPORT = "from flash_attn import flash_attn_func  # VT:21: imported whether or not it is called\n"

MODELING_PY = '''
import os
from types import SimpleNamespace

import torch
import torch.nn as nn
from transformers import Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import (Qwen2DecoderLayer, Qwen2Model, Qwen2PreTrainedModel,
                                                      Qwen2RMSNorm, Qwen2RotaryEmbedding)

from .configuration_tiny_xomni import XOmniConfig
from .vision_tiny_xomni import hf_hub_download, TinyFluxPipeline, TinyFluxTransformer, TinyImageTokenizer


class XOmniDecoderLayer(Qwen2DecoderLayer):  # MX:19-41
    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.is_lm_layer = (config.num_mm_adap_layers <= layer_idx
                            < config.num_hidden_layers - config.num_mm_head_layers)

    def forward(self, hidden_states, *args, **kwargs):
        hidden_states, multimodal_mask = torch.split(hidden_states, hidden_states.shape[-1] // 2, dim=-1)
        out, *others = super().forward(hidden_states, *args, **kwargs)  # a tuple under 4.51.3 (MX:33, 38)
        if not self.is_lm_layer:
            out = torch.where(multimodal_mask.bool(), out, hidden_states)
        return torch.cat([out, multimodal_mask], dim=-1), *others


class XOmniModel(Qwen2Model, Qwen2PreTrainedModel):  # MX:44-92
    config_class = XOmniConfig

    def __init__(self, config):
        Qwen2PreTrainedModel.__init__(self, config)  # not Qwen2Model.__init__ (MX:49)
        self.padding_idx = -1
        self.vocab_size = config.vocab_size
        self.lm_embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.mm_embed_tokens = nn.Embedding(config.mm_vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([XOmniDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self._attn_implementation = config._attn_implementation
        self.lm_norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mm_norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.lm_embed_tokens

    def set_input_embeddings(self, value):
        self.lm_embed_tokens = value

    def embed_tokens(self, input_ids):  # MX:74-88: gathered apart, scattered back through the mask
        (B, L), C = input_ids.shape, self.config.hidden_size
        mm = input_ids >= self.config.vocab_size
        lm_embeds = self.lm_embed_tokens(input_ids[~mm][None, :])
        mm_embeds = self.mm_embed_tokens(input_ids[mm][None, :] - self.config.vocab_size)
        out = lm_embeds.new_empty((B, L, C))
        mm = mm[:, :, None].expand_as(out)
        out[~mm] = lm_embeds.reshape(-1)
        out[mm] = mm_embeds.reshape(-1)
        return torch.cat([out, mm.to(out.dtype)], dim=-1)

    def norm(self, hidden_states):  # MX:90-92
        h, mm = torch.split(hidden_states, hidden_states.shape[-1] // 2, dim=-1)
        return torch.where(mm.bool(), self.mm_norm(h), self.lm_norm(h))


class XOmniForCausalLM(Qwen2ForCausalLM):  # MX:95-313
    config_class = XOmniConfig
    _keys_to_ignore_on_load_missing = r"image_tokenizer\\.*"  # MX:99: vision parts are not in the weights

    def __init__(self, config):
        super().__init__(config)
        self.model = XOmniModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.mm_head = nn.Linear(config.hidden_size, config.mm_vocab_size, bias=False)
        self.generation_mode = "text"
        self.post_init()

    @property
    def device(self):  # MX:111-114
        return next(iter(self.parameters())).device

    def init_vision(self, flux_pipe_path):  # MX:116-149
        self.som_token, self.eom_token, self.img_token = self.config.mm_special_tokens[:3]
        self.vision_config = SimpleNamespace(**self.config.vision_config)
        self.encoder_config = SimpleNamespace(**self.vision_config.encoder)
        self.decoder_config = SimpleNamespace(**self.vision_config.decoder)
        self.vision_dtype = {"float32": torch.float32, "float16": torch.float16,
                             "bfloat16": torch.bfloat16}[self.vision_config.dtype]
        for key in ("siglip_path", "projector_path"):  # MX:131-132
            f = getattr(self.encoder_config, key)
            setattr(self.encoder_config, key, os.path.join(self.name_or_path, f) if os.path.isdir(self.name_or_path)
                    else hf_hub_download(repo_id=self.name_or_path, filename=f))
        self.image_tokenizer = TinyImageTokenizer(**vars(self.encoder_config))  # MX:134
        self.image_tokenizer.to(self.device, self.vision_dtype)
        self.decoder_pipe = TinyFluxPipeline.from_pretrained(flux_pipe_path, torch_dtype=self.vision_dtype)
        self.decoder_pipe.transformer = TinyFluxTransformer.from_pretrained(
            self.name_or_path, siglip_channels=self.encoder_config.z_channels, torch_dtype=self.vision_dtype,
            subfolder=self.decoder_config.model_path)
        self.decoder_pipe.set_progress_bar_config(disable=True)
        self.decoder_pipe.to(self.device)  # MX:149, left out by a variant

    def set_generation_mode(self, mode):  # MX:151-153
        assert mode in ("text", "image"), f"Invalid generation mode: {mode}"
        self.generation_mode = mode

    @torch.no_grad()
    def detokenize_image(self, texts, images, token_ids, shape):  # MX:218-239
        assert hasattr(self, "image_tokenizer"), 'Please call "init_vision" before that.'
        assert len(texts) == 1 and len(images) == 0, "Only support one image per sample."
        H, W = shape
        tokens = torch.tensor(token_ids, device=self.device, dtype=torch.long)
        latents = self.image_tokenizer.decode(tokens, (1, H, W, self.encoder_config.codebook_dim))
        up = self.decoder_config.upscale_factor
        latents = latents.reshape(*latents.shape[:2], -1).transpose(1, 2).contiguous()
        return self.decoder_pipe(latents, [texts[0]], negative_prompt=[""], height=H * up, width=W * up,
                                 num_inference_steps=self.decoder_config.num_inference_steps, guidance_scale=1.0,
                                 true_cfg_scale=self.decoder_config.cfg_scale,
                                 true_cfg_scale_2=self.decoder_config.cfg_scale_2).images[0]

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None, num_logits_to_keep: int = 0):  # MX:241-313, no loss here
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             return_dict=True, cache_position=cache_position)
        hidden_states = outputs[0][:, -num_logits_to_keep:, :]
        V, C = self.config.vocab_size, self.config.image_vocab_size
        logits = hidden_states.new_full((*hidden_states.shape[:-1], V + self.config.mm_vocab_size),
                                        torch.finfo(hidden_states.dtype).min)
        if self.generation_mode == "text":
            logits[:, :, :V] = self.lm_head(hidden_states)
        else:
            logits[:, :, V:V + C] = self.mm_head(hidden_states)[:, :, :C]
        return CausalLMOutputWithPast(logits=logits.float(), past_key_values=outputs.past_key_values)
'''

TOKENIZATION_PY = '''
from transformers import PreTrainedTokenizerFast


class TinyXOmniTokenizer(PreTrainedTokenizerFast):  # a tokenizer that is the checkpoint's own code
    pass
'''

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXT_VOCAB = 259  # 256 bytes + <|endoftext|>, <|im_start|>, <|im_end|>


def tiny_config(num_codes: int = 64) -> dict:
    return {"model_type": "x-omni", "architectures": ["XOmniForCausalLM"],
            "auto_map": {"AutoConfig": "configuration_tiny_xomni.XOmniConfig",
                         "AutoModelForCausalLM": "modeling_tiny_xomni.XOmniForCausalLM"},
            "vocab_size": TEXT_VOCAB, "mm_vocab_size": num_codes + 16, "image_vocab_size": num_codes,
            "num_mm_adap_layers": 1, "num_mm_head_layers": 1, "mm_special_tokens": ["<SOM>", "<EOM>", "<IMAGE>"],
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
            "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": False,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "use_sliding_window": False,
            "attn_implementation": "eager",
            # encoder: SiglipTokenizer's arguments (MX:134) with the files' places relative to the checkpoint
            # (MX:131-132); decoder: the transformer's subfolder (MX:145) and the pipeline's true-CFG scales, which
            # must exceed 1 (SF:673, 688)
            "vision_config": {"dtype": "float32",
                              "encoder": {"siglip_name": "tiny", "siglip_path": "vision/siglip_tiny.pt",
                                          "projector_path": "vision/projector_tiny.pt", "z_channels": 3,
                                          "codebook_size": num_codes, "codebook_dim": 3, "patch_size": 2},
                              "decoder": {"model_path": "flux_transformer", "upscale_factor": 2,
                                          "num_inference_steps": 2, "cfg_scale": 1.5, "cfg_scale_2": 1.5}},
            "transformers_version": "4.51.3"}


def fill_by_name(state: dict) -> dict:
    """Every weight drawn from a generator seeded by its name: far from uniform (so a wrong mask or guidance row
    shows) and the same under any transformers version."""
    import numpy as np
    import torch

    out = {}
    for name, t in state.items():
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        x = rng.standard_normal(tuple(t.shape)).astype(np.float32)
        out[name] = torch.from_numpy(1.0 + 0.1 * x if name.endswith("norm.weight") else 0.08 * x)
    return out


def write_tiny_xomni(folder: Path, num_codes: int = 64, marker: Path | None = None, own_tokenizer: bool = False,
                     moves_pipeline: bool = True, imports_flash_attn: bool = False,
                     generation_config: dict | None = None) -> Path:
    """The modelling files, a config, name-seeded weights, the vision files init_vision reads (the tokenizer's two
    weight files, the FLUX transformer's subfolder) and a tokenizer with the chat template; the weights are written
    directly under the checkpoint's names, so writing needs no version of the modelling code.
    `marker`: every Python file of the checkpoint appends its module name to this file when it runs;
    `own_tokenizer`: the tokenizer is the checkpoint's own class (TOKENIZATION_PY), named by an auto_map.
    Variants: `moves_pipeline=False` leaves out init_vision's move of the pipeline (MX:149); `imports_flash_attn`
    makes the vision file import flash_attn at the top (VT:21); `generation_config` is written as
    generation_config.json."""
    import torch
    from safetensors.torch import save_file

    from gvu.models.hf import tiny_byte_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    mark = f"with open({str(marker)!r}, 'a') as _marker: _marker.write(__name__ + '\\n')\n" if marker else ""
    move = "        self.decoder_pipe.to(self.device)  # MX:149, left out by a variant\n"
    assert move in MODELING_PY
    code = {"configuration_tiny_xomni.py": CONFIG_PY,
            "vision_tiny_xomni.py": (FLASH_ATTN_IMPORT if imports_flash_attn else "") + VISION_PY,
            "modeling_tiny_xomni.py": MODELING_PY if moves_pipeline else MODELING_PY.replace(move, ""),
            **({"tokenization_tiny_xomni.py": TOKENIZATION_PY} if own_tokenizer else {})}
    for name, text in code.items():
        (folder / name).write_text(mark + text)
    text_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    mm = [f"<MM-Token-{k}>" for k in range(num_codes)] + ["<SOM>", "<EOM>", "<IMAGE>"]
    tok = tiny_byte_tokenizer(text_specials + mm, eos="<|im_end|>", pad="<|endoftext|>", chat_template=CHAT_TEMPLATE)
    assert tok.convert_tokens_to_ids("<MM-Token-0>") == TEXT_VOCAB
    tok.save_pretrained(folder)
    if own_tokenizer:
        tc = json.loads((folder / "tokenizer_config.json").read_text())
        tc.update(tokenizer_class="TinyXOmniTokenizer",
                  auto_map={"AutoTokenizer": [None, "tokenization_tiny_xomni.TinyXOmniTokenizer"]})
        (folder / "tokenizer_config.json").write_text(json.dumps(tc, indent=1))
    config = tiny_config(num_codes)
    config.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    if generation_config is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation_config, indent=1))
    save_file({k: v.contiguous() for k, v in fill_by_name(weight_shapes(config)).items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    enc, dec = config["vision_config"]["encoder"], config["vision_config"]["decoder"]
    (folder / "vision").mkdir(exist_ok=True)
    # the patch embedding averages each patch of (pixels + 1) / 2, channel by channel; quant_conv passes it on; the
    # codebook is a palette of colours, so the re-encoded decoder output gives back the codes
    p = enc["patch_size"]
    torch.save({"weight": torch.eye(3)[:, :, None, None].expand(3, 3, p, p) * (0.5 / (p * p)),
                "bias": torch.full((3,), 0.5)}, folder / enc["siglip_path"])
    palette = torch.rand(enc["codebook_size"], enc["codebook_dim"], generator=torch.Generator().manual_seed(0))
    torch.save({"quant_conv.weight": torch.eye(3)[:, :, None, None].clone(), "quant_conv.bias": torch.zeros(3),
                "embedding.weight": palette}, folder / enc["projector_path"])
    (folder / dec["model_path"]).mkdir(exist_ok=True)
    (folder / dec["model_path"] / "config.json").write_text(json.dumps({"tint": 0.01}))
    return folder


def weight_shapes(c: dict) -> dict:
    """The checkpoint's weight names and shapes (a Qwen2 layer stack plus X-Omni's two embeddings, norms, heads)."""
    import torch

    H, I, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = H // c["num_attention_heads"] * c["num_key_value_heads"]
    shapes = {"model.lm_embed_tokens.weight": (c["vocab_size"], H), "model.mm_embed_tokens.weight": (c["mm_vocab_size"], H),
              "model.lm_norm.weight": (H,), "model.mm_norm.weight": (H,), "lm_head.weight": (c["vocab_size"], H),
              "mm_head.weight": (c["mm_vocab_size"], H)}
    for i in range(n):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (H, H), p + "self_attn.q_proj.bias": (H,),
                       p + "self_attn.k_proj.weight": (kv, H), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.weight": (kv, H), p + "self_attn.v_proj.bias": (kv,),
                       p + "self_attn.o_proj.weight": (H, H), p + "mlp.gate_proj.weight": (I, H),
                       p + "mlp.up_proj.weight": (I, H), p + "mlp.down_proj.weight": (H, I),
                       p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)})
    return {k: torch.empty(v) for k, v in shapes.items()}


KEEP = 6  # logits kept per row: the last positions, across the text -> image boundary


def reference_batch(folder: Path):
    """Two rows of text + image prefix + codes, the second shorter and left-padded, with its positions."""
    import torch
    from tokenizers import Tokenizer  # the tokenizer file itself: readable by every transformers version

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    pad = json.loads((folder / "config.json").read_text())["pad_token_id"]
    rows = [tok.encode(p + "<SOM>4 4<IMAGE>" + "".join(f"<MM-Token-{k}>" for k in codes), add_special_tokens=False).ids
            for p, codes in (("a red cube", [3, 60, 17, 9]), ("two cats", [41, 5]))]
    S = max(map(len, rows))
    ids = torch.tensor([[pad] * (S - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (S - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def logits_both_modes(lm, ids, mask, pos) -> dict:
    import torch

    cfg = lm.config
    V, C = cfg.vocab_size, cfg.image_vocab_size
    out = {}
    with torch.no_grad():
        for mode, lo, hi in (("text", 0, V), ("image", V, V + C)):
            lm.set_generation_mode(mode)
            logits = lm(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
            out[mode] = logits[:, -KEEP:, lo:hi].double().round(decimals=5).tolist()
    lm.set_generation_mode("text")
    return out


def write_flux_folder(folder: Path) -> Path:
    """What the tiny pipeline reads from a FLUX folder: its model_index.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    return folder
