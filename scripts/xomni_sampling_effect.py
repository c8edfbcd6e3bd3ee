"""What two sampling choices of configs/gvu-xomni.yaml do, measured on the tiny X-Omni of tests/_tiny_xomni.py:

- top_k: X-Omni's official sampler (transformers' generate, GenerationConfig without top_k) gets transformers'
  default top_k = 50, applied after temperature and before min_p; the recipe sets top_k: 50 to match. Printed:
  the share of sampling steps at which top_k 50 removes codes that min_p 0.03 alone keeps, and the mean
  probability mass it removes there.
- the log-probs GRPO uses: gvu records the log-prob of each drawn code under the distribution it was drawn
  from (filtered, then renormalised), the official trainer the raw softmax over the codes. Printed: the mean and
  largest per-code difference (filtered minus raw = minus the log of the mass the filters keep) and the sum
  over an image.

    python scripts/xomni_sampling_effect.py            # in gvu's environment; a few seconds on one CPU core
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _tiny_xomni import write_tiny_xomni  # noqa: E402
from gvu.models.load import load_model  # noqa: E402
from gvu.models.protocol import SamplingConfig  # noqa: E402

PROMPTS = ["a photo of a cat", "two red squares", "a dog on a bench", "a blue vase", "three apples",
           "a train at night", "a green umbrella", "a bowl of soup"]


def main(grid: str = "6x6", group: int = 2, seed: int = 0) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(f"xomni:{write_tiny_xomni(Path(tmp) / 'tiny')}?device=cpu&dtype=float32&grid={grid}")
        recipe = SamplingConfig(temperature=1.0, top_k=50, min_p=0.03)
        min_p_only = SamplingConfig(temperature=1.0, min_p=0.03)
        raw = SamplingConfig(temperature=1.0)
        r = model.sample(PROMPTS, group, recipe, torch.Generator().manual_seed(seed))
        prompts, codes = r.row_prompts(), r.image_tokens_NT
        with torch.no_grad():
            lp_raw = model.image_logprobs(prompts, codes, raw)
            lp_min_p = model.image_logprobs(prompts, codes, min_p_only)
        filtered_minus_raw = r.logp_NT - lp_raw
        top_k_cut = r.logp_NT - lp_min_p  # = -log(mass top_k keeps of what min_p kept)
        binds = top_k_cut > 1e-6
        removed = 1 - torch.exp(-top_k_cut[binds])
        print(f"tiny X-Omni: {model.layout.num_codes} codes, grid {grid}, {len(prompts)} images x "
              f"{codes.shape[1]} codes, seed {seed}")
        print(f"top_k 50 after min_p 0.03: binds at {binds.float().mean().item():.3f} of steps, removing "
              f"{removed.mean().item() if binds.any() else 0.0:.4f} of the probability mass there (mean)")
        print(f"filtered - raw log-prob per code: mean {filtered_minus_raw.mean().item():.4f}, max "
              f"{filtered_minus_raw.max().item():.4f}, min {filtered_minus_raw.min().item():.4f} nats; per image "
              f"(sum) mean {filtered_minus_raw.sum(1).mean().item():.3f} nats")
        alone = lp_min_p - lp_raw
        print(f"min_p 0.03 alone (top_k 0), the same codes: filtered - raw mean {alone.mean().item():.4f}, max "
              f"{alone.max().item():.4f} nats")


if __name__ == "__main__":
    main()
