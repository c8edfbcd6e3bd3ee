"""The training config: YAML mirror, unknown keys, overrides, validation messages."""

from pathlib import Path

import pytest
import yaml

from gvu.rl.config import SKILLS_MIX, KNOWN_KEYS, TrainConfig, dump_config, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig(model="runs/base", output_dir="runs/x", beta=0.1, epsilon_high=0.28, use_lora=True,
                      lora_target_modules=["q_proj", "v_proj"], eval_benchmarks=["geneval"], loss_type="dapo",
                      scale_rewards="none", reward_scorer="reference", instruction="Describe the image.")
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(cfg))
    back = load_config(path)
    assert back == cfg
    assert dump_config(back) == dump_config(cfg)
    # every field is written, in declaration order
    assert list(yaml.safe_load(path.read_text())) == list(KNOWN_KEYS)


def test_defaults_round_trip(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(dump_config(TrainConfig()))
    assert load_config(path) == TrainConfig()


@pytest.mark.parametrize("name", ["tiny.yaml", "default.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    raw = yaml.safe_load((CONFIGS / name).read_text())
    for k, v in raw.items():
        assert getattr(cfg, k) == v


def test_unknown_key_in_file_lists_known_keys(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("max_steps: 3\nnum_generation: 4\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "'num_generation'" in msg
    assert "known keys:" in msg and "num_generations" in msg and "epsilon_high" in msg


def test_unknown_key_on_command_line(tmp_path):
    with pytest.raises(ValueError, match=r"command line: unknown config key\(s\) \['lr'\]; known keys: .*learning_rate"):
        load_config(CONFIGS / "tiny.yaml", ["lr=0.1"])
    with pytest.raises(ValueError, match="unknown config key"):
        parse_overrides(["max_steps=3", "bogus=1"])


def test_overrides_are_parsed_as_yaml():
    out = parse_overrides(["beta=0.5", "max_steps=7", "use_lora=true", "epsilon_high=null", "model=runs/a b",
                           "lora_target_modules=[q_proj, v_proj]", "instruction=", "learning_rate=1e-3",
                           "prompts=a=b.jsonl"])
    assert out == {"beta": 0.5, "max_steps": 7, "use_lora": True, "epsilon_high": None, "model": "runs/a b",
                   "lora_target_modules": ["q_proj", "v_proj"], "instruction": "", "learning_rate": 1e-3,
                   "prompts": "a=b.jsonl"}
    assert type(out["max_steps"]) is int and type(out["beta"]) is float


def test_overrides_win_over_the_file():
    cfg = load_config(CONFIGS / "tiny.yaml", ["max_steps=9", "beta=0", "output_dir=/tmp/x"])
    assert (cfg.max_steps, cfg.beta, cfg.output_dir) == (9, 0, "/tmp/x")
    assert cfg.num_generations == yaml.safe_load((CONFIGS / "tiny.yaml").read_text())["num_generations"]
    assert load_config(None, {"max_steps": 2}).max_steps == 2


def test_override_without_equals():
    with pytest.raises(ValueError, match="not key=value"):
        parse_overrides(["max_steps"])


def test_bad_yaml_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    seq = tmp_path / "seq.yaml"
    seq.write_text("- max_steps\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(seq)
    empty = tmp_path / "empty.yaml"
    for text in ("", "# only a comment\n"):  # an empty file would train every default (model "") silently
        empty.write_text(text)
        with pytest.raises(ValueError, match="empty.yaml is empty"):
            load_config(empty)


def test_exponent_floats_are_floats(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-6 as a string; the published learning rate is written exactly so
    assert load_config(None, ["learning_rate=1e-6"]).learning_rate == 1e-6
    path = tmp_path / "cfg.yaml"
    path.write_text("learning_rate: 3E-4\nbeta: 2e-2\nmodel: 1e3x\n")
    cfg = load_config(path)
    assert (cfg.learning_rate, cfg.beta, cfg.model) == (3e-4, 0.02, "1e3x")


@pytest.mark.parametrize("item,message", [
    ("max_steps=many", "bad config: max_steps must be int, got 'many' (str)"),
    ("max_steps=2.5", "bad config: max_steps must be int, got 2.5 (float)"),
    ("use_lora=1", "bad config: use_lora must be bool, got 1 (int)"),
    ("learning_rate=fast", "bad config: learning_rate must be float, got 'fast' (str)"),
    ("epsilon_high=wide", "bad config: epsilon_high must be float | None"),
    ("lora_target_modules=q_proj", "bad config: lora_target_modules must be list[str], got 'q_proj' (str)"),
    ("model=[a", "override 'model=[a': the value is not valid YAML"),
    ("prompt_weights=[1]", "bad config: prompt_weights must be dict[str, float] | None, got [1] (list)"),
    ("prompt_weights={colors: many}", "bad config: prompt_weights must be dict[str, float]"),
])
def test_wrong_types_are_named(item, message):
    with pytest.raises(ValueError) as err:
        load_config(None, [item])
    assert message in str(err.value)


def test_ints_are_accepted_for_floats():
    cfg = load_config(None, ["beta=0", "learning_rate=1"])
    assert cfg.beta == 0 and cfg.learning_rate == 1


@pytest.mark.parametrize("override,message", [
    ({"num_generations": 1}, "num_generations must be >= 2 (got 1): group-relative advantages need at least two"),
    ({"prompts_per_step": 0}, "prompts_per_step must be >= 1"),
    ({"prompts_per_step": 4, "num_generations": 4, "minibatch_size": 5},
     "minibatch_size (5) must divide prompts_per_step * num_generations (16); try 0 (the whole rollout), 16 or a "
     "divisor of it"),
    ({"minibatch_size": -1}, "minibatch_size (-1) must divide"),
    ({"max_sampling_rounds": 0}, "max_sampling_rounds must be >= 1"),
    ({"max_steps": 0}, "max_steps must be >= 1"),
    ({"num_iterations": 0}, "num_iterations must be >= 1"),
    ({"reward": "oracle"}, "reward must be one of ('intrinsic', 'oracle_binary', 'oracle_strict', 'oracle_partial')"),
    ({"scale_rewards": "std"}, "scale_rewards must be one of ('group', 'batch', 'none')"),
    ({"loss_type": "sum"}, "loss_type must be one of ['bnpo', 'dapo', 'dr_grpo', 'grpo']"),
    ({"old_logp_source": "cache"}, "old_logp_source must be 'sampler' or 'replay'"),
    ({"lr_scheduler_type": "step"}, "lr_scheduler_type must be 'constant', 'linear' or 'cosine'"),
    ({"learning_rate": 0}, "learning_rate must be > 0"),
    ({"beta": -0.1}, "beta must be >= 0"),
    ({"epsilon": 1.0}, "epsilon must be in (0, 1), got 1.0"),
    ({"epsilon": 0}, "epsilon must be in (0, 1), got 0"),
    ({"epsilon_high": 0}, "epsilon_high (0) must be >= epsilon (0.2)"),
    ({"epsilon_high": 0.1}, "epsilon_high (0.1) must be >= epsilon (0.2)"),
    ({"learning_rate": float("inf")}, "learning_rate must be a finite number, got inf"),
    ({"beta": float("nan")}, "beta must be a finite number, got nan"),
    ({"threads": -1}, "threads must be >= 0"),
    ({"output_dir": ""}, "output_dir is empty"),
    ({"reward_variant": "mean"}, "reward variant must be one of ('geomean', 'content', 'contrastive', 'blend'), got 'mean'"),
    ({"reward_blend_weight": 1.0}, "reward blend_weight must be a number in (0, 1)"),
    ({"reward_scorer": "judge"}, "reward scorer must be one of ('policy', 'reference'), got 'judge'"),
    ({"reward_image_path": "latents"}, "reward image_path must be one of ('tokens', 'pixels')"),
    ({"instruction": 3}, "reward instruction must be a string"),
    ({"eval_benchmarks": ["geneval", "mmlu"]}, "unknown eval_benchmarks ['mmlu']; use geneval, genevalpp, dpg, val_geneval, val_genevalpp, understanding"),
    ({"logging_steps": 0}, "logging_steps must be >= 1"),
    ({"eval_steps": -1}, "eval_steps must be >= 0"),
    ({"save_steps": -5}, "save_steps must be >= 0"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"prompt_weights": {"colour": 1.0}}, "prompt_weights: unknown kind(s) ['colour']; known: single_object,"),
    ({"prompt_weights": {"colors": 0.0}}, "prompt_weights must be >= 0 with at least one > 0"),
    ({"prompt_weights": {"colors": -1.0, "position": 1.0}}, "prompt_weights must be >= 0 with at least one > 0"),
    ({"prompt_weights": {"colors": 1.0}, "prompts": "p.jsonl"}, "prompt_weights mixes the built-in training set"),
])
def test_validation_messages(override, message):
    with pytest.raises(ValueError) as err:
        TrainConfig(**override)
    assert message in str(err.value)
    # and through load_config (the path the CLI takes), where a wrong type is caught first
    with pytest.raises(ValueError) as err:
        load_config(None, override)
    assert message in str(err.value) or f"bad config: {next(iter(override))} must be" in str(err.value)


def test_valid_edge_values(tmp_path):
    cfg = TrainConfig(num_generations=2, prompts_per_step=1, minibatch_size=1, epsilon_high=0.28, beta=0,
                      eval_steps=0, save_steps=0)
    assert (cfg.num_generations, cfg.prompts_per_step, cfg.minibatch_size, cfg.epsilon_high, cfg.beta) == \
        (2, 1, 1, 0.28, 0)
    (tmp_path / "edge.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "edge.yaml") == cfg  # the edge values survive a round trip through YAML


@pytest.mark.parametrize("kw,needs", [
    ({"beta": 0.02, "beta_understanding": 0.0}, True),
    ({"beta": 0.0, "beta_understanding": 0.0}, False),
    ({"beta": 0.0, "beta_understanding": 0.5}, True),  # the understanding leash needs the reference too
    ({"beta": 0.0, "beta_understanding": 0.0, "reward_scorer": "reference"}, True),
    # the intrinsic reward is logged (and scored by the chosen scorer) even when an oracle trains
    ({"beta": 0.0, "beta_understanding": 0.0, "reward_scorer": "reference", "reward": "oracle_binary"}, True),
    ({"beta": 0.0, "beta_understanding": 0.0, "reward": "oracle_binary"}, False),
])
def test_needs_reference(kw, needs):
    assert TrainConfig(**kw).needs_reference() is needs


def test_rows_per_step():
    assert TrainConfig(prompts_per_step=3, num_generations=4, minibatch_size=6).rows_per_step == 12



def test_prompt_weights_set_the_built_in_training_mix():
    from collections import Counter

    from gvu.eval.prompts import held_out_scenes
    from gvu.world.kinds import scene_key
    from gvu.models.builtin.tokenizer import WordTokenizer
    from gvu.rl.setup import load_prompt_rows

    weights = {"color_counting": 3.0, "position": 1.0}
    cfg = load_config(None, {"num_prompts": 400, "prompt_weights": weights})
    rows = load_prompt_rows(cfg, WordTokenizer())
    tags = Counter(r["tag"] for r in rows)
    assert set(tags) == {"counting", "position"} and tags["counting"] > 2 * tags["position"]
    counted = [r["include"] for r in rows if r["tag"] == "counting"]
    assert all(len(inc) == 1 and 2 <= inc[0]["count"] <= 7 and inc[0]["color"] for inc in counted)
    assert {inc[0]["count"] for inc in counted} == set(range(2, 8))
    assert not {scene_key(r) for r in rows} & held_out_scenes("shapes")
    # empty weights: the thirteen test kinds, none of the training-only one
    even = load_prompt_rows(load_config(None, {"num_prompts": 400, "prompt_weights": {}}), WordTokenizer())
    assert not [r for r in even if r["tag"] == "counting"]  # every plain counting prompt is a test prompt
    # unset: the skills mix, position at 4 of 11.5 (the curriculum's prior; the rows hold as many position scenes
    # as the held-out split leaves)
    cfg = load_config(None, {"num_prompts": 2000})
    assert cfg.prompt_weights is None and cfg.mix == SKILLS_MIX and sum(SKILLS_MIX.values()) == 11.5
    share = Counter(r["tag"] for r in load_prompt_rows(cfg, WordTokenizer()))["position"] / 2000
    even_share = Counter(r["tag"] for r in even)["position"] / 400
    assert share > 1.5 * even_share
    # a prompt file has no mix
    assert load_config(None, {"prompts": "p.jsonl"}).mix == {}


def test_the_reward_variant_is_the_blend_on_the_built_in_set_and_the_geometric_mean_for_a_prompt_file():
    cfg = load_config(None, {})
    assert cfg.reward_variant is None and cfg.variant == "blend" and cfg.reward_blend_weight == 0.25
    assert load_config(None, {"prompts": "p.jsonl"}).variant == "geomean"  # a file's rows carry no facts
    for v in ("geomean", "content", "contrastive", "blend"):
        assert load_config(None, {"reward_variant": v}).variant == v
        assert load_config(None, {"reward_variant": v, "prompts": "p.jsonl"}).variant == v
