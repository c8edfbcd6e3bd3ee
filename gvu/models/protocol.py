"""The one interface every model is driven through (docs/design.md, "The model interface"), so the trainer never
knows which model it holds: the built-in shapes-world model, a shared-vocabulary transformers model (X-Omni, Emu3)
or a decoupled one (Janus-Pro).

Letters: N rows (prompts x group size), T image tokens per image, L prompt tokens, H x W pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

DEFAULT_INSTRUCTION = "Describe the image in detail."
"""The understanding instruction every model reads an image under when scoring or captioning it: part of the
contract, so the built-in tokenizer's vocabulary and every adapter's understanding prefix share one text."""


@dataclass(frozen=True)
class SamplingConfig:
    """How the generation branch turns logits into a distribution over image codes.

    Applied in this order: classifier-free guidance -> temperature -> top-k -> top-p -> min-p, each mask
    renormalising what is left (see gvu.models.sampling.filter_logits). The teacher-forced pass applies the SAME
    steps, so the log-probs recorded at sampling time and the recomputed ones describe one distribution. The
    published GvU run samples at temperature 1.0 with min_p 0.03 and no guidance."""

    temperature: float = 1.0
    """Divides the (guided) logits. Must be > 0; greedy decoding has no log-probs worth training on."""
    top_k: int = 0
    """Keep only the k most likely codes. 0 turns it off."""
    top_p: float = 1.0
    """Keep the smallest set of codes whose probability reaches top_p (nucleus sampling). 1.0 turns it off."""
    min_p: float = 0.0
    """Drop codes whose probability is below min_p times the most likely code's. 0.0 turns it off."""
    guidance: float = 1.0
    """Classifier-free guidance scale: logits = uncond + guidance * (cond - uncond), where the unconditional
    branch sees the empty prompt. 1.0 turns it off (and saves the second half of the batch)."""

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}; for near-greedy sampling use a "
                             "small temperature such as 0.1, or top_k=1")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 turns it off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1] (1.0 turns it off), got {self.top_p!r}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min_p must lie in [0, 1) (0.0 turns it off), got {self.min_p!r}")
        if not self.guidance >= 0.0:
            raise ValueError(f"guidance must be >= 0 (1.0 turns classifier-free guidance off), got "
                             f"{self.guidance!r}")

    @property
    def uses_guidance(self) -> bool:
        return self.guidance != 1.0


@dataclass
class Rollout:
    """One sampling call's output. Row i * group_size + g is sample g of prompt i."""

    image_tokens_NT: torch.Tensor
    """LongTensor of image CODES (0..num_codes-1), not vocabulary ids."""
    logp_NT: torch.Tensor
    """FloatTensor: the exact log-probs of the drawn codes under the distribution the sampler drew from (after
    guidance, temperature and masks). GRPO's pi_old."""
    prompt_index_N: torch.Tensor
    """LongTensor: which of `prompts` each row answers."""
    prompts: list[str]
    """The distinct prompts, in the order given to `sample`."""
    pixels: np.ndarray | None = None
    """uint8 [N, H, W, 3] when the caller decoded them; samplers leave it None so decoding is timed apart."""

    @property
    def group_size(self) -> int:
        return self.image_tokens_NT.shape[0] // max(len(self.prompts), 1)

    def row_prompts(self) -> list[str]:
        """The prompt text of every row, [N]."""
        return [self.prompts[i] for i in self.prompt_index_N.tolist()]


@runtime_checkable
class UnifiedModel(Protocol):
    """A unified multimodal model seen by GvU: a generation branch that writes image tokens and an understanding
    branch that reads images and scores text. Everything the trainer, the reward and the evaluation use is here,
    so no caller needs to know the concrete class."""

    module: torch.nn.Module
    """Every trainable weight (for the optimizer, LoRA, DDP/FSDP2 and checkpoints); may be replaced by a PEFT
    wrapper of itself."""
    tokenizer: object
    """encode(text) -> ids without special tokens, decode(ids) -> text (the prompt vocabulary check uses it)."""
    kind: str
    """What gvu.json records and load_model dispatches on: builtin, janus, emu3, causal-lm, xomni."""
    world: str | None
    """'shapes' when images are shapes-world renders (the exact judge applies), None for natural images."""
    supports_fsdp2: bool
    """Whether every pass goes through the root module's forward (what FSDP2's hooks need)."""
    lora_scope: str
    """Module path of the language model: LoRA targets are matched inside it only."""
    reads_pixels: bool
    """Whether the understanding branch reads pixels (the trainer then hands the reward the decoded images)."""

    @property
    def device(self) -> torch.device: ...

    def save_pretrained(self, directory, extra: dict | None = None):
        """Write the model (a LoRA adapter or full weights) with a gvu.json that load_model reads back; `extra`
        goes into gvu.json."""
        ...

    def sample(self, prompts: list[str], group_size: int, sampling: SamplingConfig,
               generator) -> Rollout:
        """group_size images per prompt, reproducible from `generator`; no grad. `generator` is one
        torch.Generator, or one per prompt (gvu.models.sampling.draw), so that a prompt's images do not depend
        on the rest of the batch."""
        ...

    def image_logprobs(self, prompts_N: list[str], image_tokens_NT: torch.Tensor,
                       sampling: SamplingConfig) -> torch.Tensor:
        """Teacher-forced log-probs [N, T] of the given codes, WITH grad, under the same distribution `sample`
        draws from with this `sampling` (so exp(logp - rollout.logp_NT) == 1 at step 0)."""
        ...

    def prompt_logprobs(self, images: torch.Tensor | np.ndarray, prompts: list[str],
                        instruction: str = DEFAULT_INSTRUCTION) -> tuple[torch.Tensor, torch.Tensor]:
        """Understanding branch, one batched pass: log p(x_j | instruction, image, x_<j) for each prompt token,
        as (logp_NL, mask_NL) with mask_NL True on real tokens of ragged prompts. `images` are image codes
        [N, T] or uint8 pixels [N, H, W, 3]."""
        ...

    def decode(self, image_tokens_NT: torch.Tensor | np.ndarray, prompts: list[str] | None = None,
               seeds: list[int] | None = None) -> np.ndarray:
        """Image codes -> uint8 pixels [N, H, W, 3]. Decoders that are generative models themselves (X-Omni's
        diffusion decoder) are conditioned on each row's prompt and draw with each row's seed; the others ignore
        both."""
        ...

    def encode(self, pixels_NHW3: np.ndarray) -> torch.Tensor:
        """uint8 pixels -> image codes [N, T]. Models that cannot re-encode raise NotImplementedError (the
        reward then reads tokens, not pixels)."""
        ...


def check_sample_args(prompts, group_size: int) -> None:
    """The argument checks every sampler makes before any compute."""
    if group_size < 1 or not prompts:
        raise ValueError(f"need at least one prompt and group_size >= 1 (got {len(prompts)} prompts, "
                         f"group_size={group_size})")


def checked_codes(prompts_N, image_tokens_NT: torch.Tensor, num_image_tokens: int, num_codes: int,
                  device) -> torch.Tensor:
    """The image codes of a teacher-forced pass as a long tensor on `device`, after the checks every model makes:
    one prompt per row, `num_image_tokens` codes per image, codes (not vocabulary ids) in range."""
    N, T = image_tokens_NT.shape
    if len(prompts_N) != N:
        raise ValueError(f"{len(prompts_N)} prompts for {N} images; pass one prompt per row (Rollout.row_prompts())")
    if T != num_image_tokens:
        raise ValueError(f"expected {num_image_tokens} image tokens per image, got {T}")
    codes_NT = image_tokens_NT.to(device=device, dtype=torch.long)
    if codes_NT.numel() and (codes_NT.min() < 0 or codes_NT.max() >= num_codes):
        raise ValueError(f"image codes must lie in 0..{num_codes - 1} (codes, not vocabulary ids)")
    return codes_NT
