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


# The paper's run, as its code sets it (matrix0721/GvU at 0a3000a) or, where that sets nothing, as the defaults it
# gets (transformers 4.51.3): key -> (value, where). configs/gvu-xomni.yaml must hold each value and name its place
# in the key's comment (its line and the indented comment lines under it).
XOMNI_UPSTREAM = {
    "prompts_per_step": (8, ["RUN:8", "RUN:19", "RUN:20"]),  # 8 processes x 1 prompt, no gradient accumulation
    "num_generations": (2, ["RUN:21", "TR:289"]),
    "minibatch_size": (16, []),  # 8 x 2, one optimizer step
    "num_iterations": (1, ["TR:500"]),
    "dynamic_sampling": (False, ["TR:462-497"]),
    "temperature": (1.0, ["GRPO:101", "TR:288"]),
    "top_k": (50, ["GC:425"]),
    "top_p": (1.0, ["GRPO:100", "TR:291"]),
    "min_p": (0.03, ["GRPO:99", "TR:290"]),
    "guidance_scale": (1.0, ["GRPO:98", "TR:292"]),
    "scale_rewards": ("group", ["TR:491-497"]),
    "learning_rate": (1e-6, ["RUN:30"]),
    "lr_scheduler_type": ("linear", ["TA:911-912"]),
    "warmup_steps": (0, ["TA:926"]),
    "weight_decay": (0.0, ["TA:900"]),
    "max_grad_norm": (1.0, ["TA:904", "Z1:17"]),
    "beta": (0.03, ["RUN:22"]),
    "loss_type": ("grpo", ["TR:502"]),
    "use_lora": (True, ["RUN:34"]),
    "lora_r": (8, ["RUN:35"]),
    "lora_alpha": (32, ["RUN:36"]),
    "save_steps": (100, ["RUN:31"]),
}


def test_the_xomni_recipe_is_the_papers_run_value_for_value():
    path = next(p for p in CONFIGS if p.name == "gvu-xomni.yaml")
    cfg, lines = load_config(path), path.read_text().splitlines()
    for key, (value, places) in XOMNI_UPSTREAM.items():
        assert getattr(cfg, key) == value, key
        i = next(i for i, line in enumerate(lines) if line.startswith(key + ":"))
        comment = lines[i] + " ".join(line for line in lines[i + 1:i + 4] if line.startswith(" ") and "#" in line)
        assert all(place in comment for place in places), (key, places)
    assert cfg.rows_per_step == 8 * 2 and cfg.minibatch_rows == cfg.rows_per_step  # 16 images, one update
    assert not cfg.curriculum and cfg.beta_understanding == 0.0
    assert "grid=36x36" in cfg.model and "dtype=bfloat16" in cfg.model and "gradient_checkpointing=1" in cfg.model
    assert cfg.max_steps == 4 * 50_000 // 8  # num_train_epochs 4 (RUN:28) over `gvu prompts train`'s 50,000
