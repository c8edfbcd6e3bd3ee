"""The generic shared-vocabulary adapter (`causal-lm:PATH`) and the model-spec loader, on a tiny random Llama whose
vocabulary holds 32 image codes, declared by a gvu_causal_lm.yaml and a decoder module in the model folder."""

import json
import math

import pytest
import torch

from gvu.models.adapters.causal_lm import GridSharedVocabUMM
from gvu.models.hf import tiny_byte_tokenizer
from gvu.models.load import SPEC_FORMS, load_model
from gvu.models.protocol import DEFAULT_INSTRUCTION, UnifiedModel
from gvu.models.shared_vocab import SharedVocabLayout, SharedVocabUMM
from gvu.reward import RewardConfig, intrinsic_reward
from _adapters import PROMPTS, SAMPLINGS, grpo_steps

DECODER = '''
import numpy as np


def decode(codes):
    codes = np.asarray(codes).reshape(len(codes), 3, 4)
    return np.stack([codes * 8, 255 - codes * 8, codes * 4], -1).astype(np.uint8).repeat(2, 1).repeat(2, 2)

def encode(pixels):
    return (np.asarray(pixels)[:, ::2, ::2, 0] // 8).reshape(len(pixels), -1)
'''


def write_tiny_model(folder, row_end="<eol>", **overrides):
    """A tiny Llama + byte tokenizer with 32 image-code tokens, a decoder module and the adapter file."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_byte_tokenizer(["<pad>", "<s>", "</s>", "<boi>", "<eoi>", "<eol>"] + [f"<img_{i}>" for i in range(32)],
                              bos="<s>", eos="</s>", pad="<pad>")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lm = LlamaForCausalLM(config)
    with torch.no_grad():  # far from uniform, so a wrong mask cannot pass unnoticed
        for p in lm.parameters():
            if p.dim() >= 2:
                p.mul_(4)
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "tinydec.py").write_text(DECODER)
    adapter = dict(image_token_offset=tok.convert_tokens_to_ids("<img_0>"), num_codes=32, grid=[3, 4],
                   decoder="tinydec:decode", encoder="tinydec:encode", generation="{bos}{prompt}",
                   image_prefix="<boi>", row_end=row_end, image_suffix="<eoi>",
                   understanding="{bos}{image} Describe: {instruction} Answer:", answer=" {prompt}")
    adapter.update(overrides)
    (folder / "gvu_causal_lm.json").write_text(json.dumps(adapter))
    return folder


@pytest.fixture(scope="module", params=["rows", "flat"])
def folder(request, tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp(request.param), row_end="<eol>" if request.param == "rows" else "")


@pytest.fixture(scope="module")
def model(folder):
    return load_model(f"causal-lm:{folder}?device=cpu")


def sample(model, sampling, seed=0, group_size=2, prompts=PROMPTS):
    return model.sample(prompts, group_size, sampling, torch.Generator().manual_seed(seed))


def test_loads_as_a_unified_model(model):
    assert isinstance(model, GridSharedVocabUMM) and isinstance(model, UnifiedModel)
    lay, hf = model.layout, model.tokenizer.hf
    assert lay.num_image_tokens == 12 and lay.num_codes == 32
    seq, span = lay.understanding_sequence(range(12), model.tokenizer.encode("hi"), model._answer_ids(["a cat"])[0])
    rows = "".join("".join(f"<img_{r * 4 + c}>" for c in range(4)) + ("<eol>" if lay.row_end else "")
                   for r in range(3))
    assert hf.decode(seq) == f"<s><boi>{rows}<eoi> Describe: hi Answer: a cat</s>"
    assert hf.decode(seq[span[0]:span[1]]) == " a cat"


@pytest.mark.parametrize("name", list(SAMPLINGS))
def test_sampler_logprobs_match_teacher_forcing(model, name):
    sampling = SAMPLINGS[name]
    r = sample(model, sampling)
    logp_NT = model.image_logprobs(r.row_prompts(), r.image_tokens_NT, sampling)
    assert logp_NT.requires_grad and r.image_tokens_NT.shape == (6, 12)
    assert (logp_NT.detach() - r.logp_NT).abs().max().item() <= 1e-4


def test_flat_grid_is_exactly_shared_vocab_umm(model):
    if model.layout.row_end:
        pytest.skip("the flat variant only")
    plain = SharedVocabUMM(model.lm, model.tokenizer, SharedVocabLayout(
        **{k: getattr(model.layout, k) for k in SharedVocabLayout.__dataclass_fields__}))
    for name in ("plain", "filters-cfg"):
        a, b = sample(model, SAMPLINGS[name]), sample(plain, SAMPLINGS[name])
        assert torch.equal(a.image_tokens_NT, b.image_tokens_NT) and torch.equal(a.logp_NT, b.logp_NT)
        with torch.no_grad():
            assert torch.equal(model.image_logprobs(a.row_prompts(), a.image_tokens_NT, SAMPLINGS[name]),
                               plain.image_logprobs(a.row_prompts(), a.image_tokens_NT, SAMPLINGS[name]))


def test_reward_one_pass_equals_a_token_loop_and_pixels_round_trip(model):
    r = sample(model, SAMPLINGS["plain"], group_size=1)
    out = intrinsic_reward(model, r.image_tokens_NT, r.row_prompts(), RewardConfig(micro_batch=2))
    inst = model.tokenizer.encode(DEFAULT_INSTRUCTION)
    with torch.no_grad():
        for i, (codes, p) in enumerate(zip(r.image_tokens_NT.tolist(), r.row_prompts())):
            prefix, ans, total = model.layout.understanding_prefix(codes, inst), model._answer_ids([p])[0], 0.0
            for j, x in enumerate(ans):
                logits = model.lm(input_ids=torch.tensor([prefix + ans[:j]])).logits[0, -1]
                total += torch.log_softmax(logits.float(), -1)[x].item()
            assert abs(out.reward_N[i].item() - math.exp(total / len(ans))) <= 1e-5 * math.exp(total / len(ans))
    pixels = model.decode(r.image_tokens_NT)
    assert pixels.shape == (3, 6, 8, 3) and torch.equal(model.encode(pixels), r.image_tokens_NT)
    via = intrinsic_reward(model, r.image_tokens_NT, r.row_prompts(), RewardConfig(image_path="pixels"))
    assert torch.equal(via.reward_N, out.reward_N)


def test_two_grpo_steps_with_lora_change_only_adapters(model):
    model = load_model(f"causal-lm:{model.source}?device=cpu")  # a fresh copy: the fixture is shared
    changed = grpo_steps(model, targets=["q_proj", "v_proj"])
    assert changed and all("lora_" in k for k in changed)


def test_trainer_runs_and_saves_an_adapter_that_loads_back(tmp_path):
    # the whole Trainer on a causal-lm model (shapes-world prompts; the judge just finds nothing in these pixels)
    from gvu.rl.config import TrainConfig
    from gvu.rl.trainer import Trainer

    src = write_tiny_model(tmp_path / "base")
    cfg = TrainConfig(model=f"causal-lm:{src}?device=cpu", output_dir=str(tmp_path / "run"), num_prompts=20,
                      max_steps=2, prompts_per_step=2, num_generations=2, minibatch_size=4, num_iterations=1,
                      use_lora=True, lora_target_modules=["q_proj", "v_proj"], eval_steps=0, save_steps=0,
                      beta=0.03, learning_rate=1e-2, threads=1)
    trainer = Trainer(cfg)
    final = trainer.train(progress=False)
    info = json.loads((final / "gvu.json").read_text())
    assert info["kind"] == "causal-lm" and info["weights"] == "lora" and info["base"] == str(src)
    assert info["trained_from"] == cfg.model and (final / "adapter_config.json").is_file()
    reloaded = load_model(str(tmp_path / "run"))
    r = sample(trainer.policy, SAMPLINGS["cfg3"], prompts=PROMPTS[:2])
    with torch.no_grad():
        a = trainer.policy.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["cfg3"])
        b = reloaded.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["cfg3"])
    assert (a - b).abs().max().item() <= 1e-5


def test_full_weights_save_and_reload(tmp_path):
    src = write_tiny_model(tmp_path / "base", model="")
    model = load_model(f"causal-lm:{src}?device=cpu")
    with torch.no_grad():
        model.lm.model.layers[0].mlp.down_proj.weight.add_(0.1)  # stands in for a full fine-tuning step
    final = model.save_pretrained(tmp_path / "final")
    assert json.loads((final / "gvu.json").read_text())["weights"] == "full"
    assert (final / "gvu_causal_lm.yaml").is_file() and (final / "tinydec.py").is_file()
    reloaded = load_model(str(final))
    r = sample(model, SAMPLINGS["plain"], prompts=PROMPTS[:1])
    with torch.no_grad():
        assert torch.allclose(model.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["plain"]),
                              reloaded.image_logprobs(r.row_prompts(), r.image_tokens_NT, SAMPLINGS["plain"]))


# ------------------------------------------------------------------------------------------ spec errors

def accepted(msg: str) -> bool:
    return "accepted forms:" in msg and all(form in msg for form in SPEC_FORMS)


def test_unknown_kind_lists_the_accepted_forms():
    with pytest.raises(ValueError, match="unknown model kind 'llava'") as e:
        load_model("llava:some/model")
    assert accepted(str(e.value))


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_folder_without_a_model_lists_the_accepted_forms(tmp_path, make):
    path = tmp_path / "x"
    if make == "empty":
        path.mkdir()
        (path / "notes.txt").write_text("no model here")
    elif make == "file":
        path.write_text("not a folder")
    with pytest.raises(ValueError) as e:
        load_model(str(path))
    assert accepted(str(e.value)) and str(path) in str(e.value)


def test_kind_specific_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("no model here")
    with pytest.raises(FileNotFoundError, match="holds no adapter file"):
        load_model(f"causal-lm:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(f"janus:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(f"emu3:{tmp_path}")
    with pytest.raises(ValueError, match="unknown option"):
        load_model(f"janus:{tmp_path}?precision=bf16")
    with pytest.raises(ValueError, match="nothing after"):
        load_model("emu3:")
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(f"causal-lm:{write_tiny_model(tmp_path / 'm')}?dtype=float8")


@pytest.mark.parametrize("change, match", [({"colour": 1}, "unknown key"), ({"grid": [3]}, "grid must be"),
                                           ({"generation": "{bos}"}, "must contain {prompt}")])
def test_adapter_file_errors(tmp_path, change, match):
    folder = write_tiny_model(tmp_path / "m", **{k: v for k, v in change.items() if k != "grid"})
    if "grid" in change:
        data = json.loads((folder / "gvu_causal_lm.json").read_text())
        (folder / "gvu_causal_lm.json").write_text(json.dumps({**data, "grid": change["grid"]}))
    with pytest.raises(ValueError, match=match):
        load_model(f"causal-lm:{folder}")
