"""Every recipe file in configs/ loads and validates, and the published-recipe keys hold what the docs say."""

from pathlib import Path

import pytest

from gvu.rl.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_recipe_files_are_found():
    assert {"default.yaml", "tiny.yaml", "gvu-xomni.yaml", "janus-pro-1b.yaml", "janus-pro-7b.yaml"} <= \
        {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_loads(path):
    load_config(path)


@pytest.mark.parametrize("name,guidance", [("gvu-xomni.yaml", 1.0), ("janus-pro-1b.yaml", 5.0),
                                           ("janus-pro-7b.yaml", 5.0)])
def test_real_model_recipes(name, guidance):
    cfg = load_config(next(p for p in CONFIGS if p.name == name))
    assert (cfg.use_lora, cfg.lora_r, cfg.lora_alpha, cfg.beta, cfg.learning_rate, cfg.num_generations) == \
        (True, 8, 32, 0.03, 1e-6, 2)
    assert (cfg.min_p, cfg.temperature, cfg.num_iterations, cfg.beta_understanding) == (0.03, 1.0, 1, 0.0)
    assert cfg.minibatch_size == cfg.prompts_per_step * cfg.num_generations  # one optimizer step per rollout
    assert cfg.guidance_scale == guidance and cfg.monitor == "reward"
