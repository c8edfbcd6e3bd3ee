"""The GvU intrinsic reward: the model's own geometric-mean probability of the prompt given the image it drew.

    r = exp( (1/L) * sum_j log p(x_j | instruction, image, x_<j) )

computed in log space from ONE teacher-forced pass per micro-batch (the published code runs a full forward
pass per prompt token, one image at a time, and multiplies raw probabilities, which underflows on long
prompts). Variants, each an option measured against the plain geometric mean:

- `content`: average only over the tokens after the constant template prefix ("a photo of"), which
  otherwise dilutes the words that carry the prompt's facts;
- `contrastive`: the probability of the true prompt among itself and hard negatives built through the
  grammar (one fact changed: a colour, a count, a relation, an object; and two objects' colours swapped), i.e.
  softmax over total log-probs;
- `blend`: geomean^(1 - w) x contrastive^w, the plain reward weighed with how far the true prompt stands above its
  hard negatives (w = `blend_weight`; docs/results.md, "A reward that reads distinctions").

Also here: TRL-style reward functions `f(prompts, images, **metadata) -> list[float | None]` (the intrinsic reward
as one, for TRL's `reward_funcs`) and the shapes world's oracle rewards from the exact judge (the yardstick).

Letters: N images, L prompt tokens, K candidates (true prompt + negatives).
"""

from __future__ import annotations

import contextlib
import copy
import math
import zlib
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from gvu.models.forward import eval_mode
from gvu.models.protocol import DEFAULT_INSTRUCTION
from gvu.world import spec
from gvu.world.detect import detect
from gvu.world.grammar import render_prompt
from gvu.world.judge import evaluate
from gvu.world.kinds import scene_key, swap_colours
from gvu.world.render import decode

VARIANTS = ("geomean", "content", "contrastive", "blend")
SCORERS = ("policy", "reference")
IMAGE_PATHS = ("tokens", "pixels")
TEMPLATE_PREFIX = "a photo of"


@dataclass(frozen=True)
class RewardConfig:
    instruction: str = DEFAULT_INSTRUCTION
    """The understanding instruction placed after the image."""
    variant: str = "geomean"
    """'geomean' (the paper), 'content' (drop the template prefix), 'contrastive' (vs hard negatives) or 'blend'
    (geomean^(1 - blend_weight) x contrastive^blend_weight)."""
    blend_weight: float = 0.25
    """The contrastive factor's exponent w in the blend variant, in (0, 1)."""
    scorer: str = "policy"
    """Which model scores: the current 'policy' (teacher and student evolve together) or the frozen 'reference'.
    Read by the caller that picks the model (the trainer, `gvu score`); the functions here score with whatever
    model they are given."""
    image_path: str = "tokens"
    """'tokens': the understanding branch reads the generated codes; 'pixels': decode then re-encode, as the
    published code does. Images passed as uint8 pixels are always re-encoded."""
    micro_batch: int = 128
    """Images per forward pass; bounds activation memory."""

    def __post_init__(self):
        for name, allowed in (("variant", VARIANTS), ("scorer", SCORERS), ("image_path", IMAGE_PATHS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"reward {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if isinstance(self.blend_weight, bool) or not isinstance(self.blend_weight, (int, float)) or \
                not 0.0 < self.blend_weight < 1.0:
            raise ValueError(f"reward blend_weight must be a number in (0, 1) (the contrastive factor's exponent; "
                             f"0 and 1 are the geomean and contrastive variants), got {self.blend_weight!r}")
        if not isinstance(self.instruction, str):
            raise ValueError(f"reward instruction must be a string, got {type(self.instruction).__name__}")
        if isinstance(self.micro_batch, bool) or not isinstance(self.micro_batch, int) or self.micro_batch < 1:
            raise ValueError(f"reward micro_batch must be an integer >= 1 (images per forward pass), got "
                             f"{self.micro_batch!r}")


@dataclass
class RewardOutput:
    reward_N: torch.Tensor
    logp_NL: torch.Tensor  # per prompt-token log-probs (zeros where mask is 0)
    mask_NL: torch.Tensor


def is_pixels(images) -> bool:
    """uint8 [N, H, W, 3] (numpy or torch) rather than image codes [N, T]."""
    return images.dtype in (np.uint8, torch.uint8) and images.ndim == 4


def _images_for(model, images, path: str):
    if path == "tokens" or is_pixels(images):
        return images  # pixels given: prompt_logprobs re-encodes them whatever the path says
    return model.decode(images)  # prompt_logprobs re-encodes pixels


def _eval_mode(model):
    """Score with dropout off even when called between training steps (the built-in model has none; real UMMs
    may), and put the module back as it was."""
    module = getattr(model, "module", None)
    return eval_mode(module) if isinstance(module, torch.nn.Module) else contextlib.nullcontext()


def prompt_token_logprobs(model, image_tokens_NT, prompts: list[str], cfg: RewardConfig = RewardConfig(),
                          grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L] log-probs of each prompt's tokens given its image, and the mask, in micro-batches. Images are codes
    [N, T] or uint8 pixels [N, H, W, 3]. `grad`: keep the graph (a caller that backpropagates through them)."""
    if len(prompts) == 0:
        return torch.zeros(0, 0), torch.zeros(0, 0)
    logps, masks = [], []
    with _eval_mode(model), torch.set_grad_enabled(grad):
        for s in range(0, len(prompts), cfg.micro_batch):
            images = _images_for(model, image_tokens_NT[s:s + cfg.micro_batch], cfg.image_path)
            logp, mask = model.prompt_logprobs(images, prompts[s:s + cfg.micro_batch], cfg.instruction)
            logps.append(logp.float())
            masks.append(mask.float())
    L = max(x.shape[1] for x in logps)
    pad = lambda x: torch.nn.functional.pad(x, (0, L - x.shape[1]))  # noqa: E731
    return torch.cat([pad(x) for x in logps]), torch.cat([pad(m) for m in masks])


def _prefix_len(model, prompts: list[str]) -> list[int]:
    """Tokens of the template prefix at the start of each prompt (0 where it is not there)."""
    pre = model.tokenizer.encode(TEMPLATE_PREFIX)
    out = []
    for p in prompts:
        ids = model.tokenizer.encode(p)
        out.append(len(pre) if ids[:len(pre)] == pre and len(ids) > len(pre) else 0)
    return out


def geomean(logp_NL: torch.Tensor, mask_NL: torch.Tensor) -> torch.Tensor:
    return ((logp_NL * mask_NL).sum(-1) / mask_NL.sum(-1).clamp(min=1)).exp()


def intrinsic_reward(model, image_tokens_NT: torch.Tensor, prompts: list[str], cfg: RewardConfig = RewardConfig(),
                     rows: list[dict] | None = None, rng: np.random.Generator | None = None,
                     grad: bool = False) -> RewardOutput:
    """The GvU reward of each image (codes [N, T] or uint8 pixels [N, H, W, 3]) for its prompt. `rows`
    (metadata) is needed by the contrastive variant. `grad`: the returned logp_NL keeps its graph (the reward
    itself never has one)."""
    if len(prompts) != len(image_tokens_NT):
        raise ValueError(f"{len(prompts)} prompts for {image_tokens_NT.shape[0]} images")
    logp_with_graph, mask_NL = prompt_token_logprobs(model, image_tokens_NT, prompts, cfg, grad=grad)
    logp_NL = logp_with_graph.detach()
    if cfg.variant == "geomean":
        reward = geomean(logp_NL, mask_NL)
    elif cfg.variant == "content":
        keep = mask_NL.clone()
        for i, k in enumerate(_prefix_len(model, prompts)):
            keep[i, :k] = 0
        reward = geomean(logp_NL, keep)
    else:
        if rows is None or len(rows) != len(prompts):
            raise ValueError(f"the {cfg.variant} reward needs each prompt's metadata row (rows=..., one per image)")
        reward = contrastive_reward(model, image_tokens_NT, rows, logp_NL, mask_NL, cfg, rng)
        if cfg.variant == "blend":
            w = cfg.blend_weight
            reward = geomean(logp_NL, mask_NL).pow(1.0 - w) * reward.pow(w)
    return RewardOutput(reward, logp_with_graph, mask_NL)


def hard_negatives(row: dict, rng: np.random.Generator, classes: tuple[str, ...] | None = None) -> list[dict]:
    """One-fact changes of a row, through the grammar: colour, count, relation/region/size, object; and, where two
    objects carry different colours, the two colours swapped (the binding negative)."""
    classes = classes or spec.SHAPES
    flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
            "left": "right", "right": "left", "larger": "smaller", "smaller": "larger"}
    negs = []
    same = {row.get("prompt"), render_prompt(row)}  # a metadata file's own text may differ in form
    i = int(rng.integers(len(row["include"])))
    it = row["include"][i]

    def add(change: Callable[[dict], None]):
        neg = copy.deepcopy(row)
        change(neg)
        if neg["tag"] == "counting":
            neg["exclude"] = [{"class": neg["include"][0]["class"], "count": neg["include"][0]["count"] + 1}]
        neg["prompt"] = render_prompt(neg)
        if neg["prompt"] not in same and scene_key(neg) != scene_key(row):  # a negative must be another scene
            negs.append(neg)

    if "color" in it:
        others = [c for c in spec.COLORS if c != it["color"]]
        add(lambda n: n["include"][i].__setitem__("color", others[rng.integers(len(others))]))
    if it["count"] > 1 or row["tag"] in ("counting", "spatial_count_attr", "color_count_attr",
                                         "multi_object_count_attr"):
        add(lambda n: n["include"][i].__setitem__("count", it["count"] + (1 if it["count"] == 1 or rng.random() < 0.5 else -1)))
    for j, item in enumerate(row["include"]):
        if "position" in item:
            add(lambda n: n["include"][j].__setitem__("position", [flip[item["position"][0]], item["position"][1]]))
            break
        if "region" in item:
            add(lambda n: n["include"][j].__setitem__("region", flip[item["region"]]))
            break
    used = {x["class"] for x in row["include"]}
    others = [c for c in classes if c not in used]
    if others:
        add(lambda n: n["include"][i].__setitem__("class", others[rng.integers(len(others))]))
    swapped = swap_colours(row, rng)  # the binding negative: no word changed that a bag-of-words reader would see
    if swapped is not None:
        add(lambda n: n.__setitem__("include", swapped["include"]))
    return negs


def contrastive_reward(model, image_tokens_NT, rows, logp_NL, mask_NL, cfg, rng=None) -> torch.Tensor:
    # One draw from `rng`, then each prompt's negatives from (that draw, the prompt): the images of a group are
    # weighed against the same negatives, and a row's negatives do not depend on the other rows of the batch (so a
    # run split over processes draws what one process draws).
    base = int((rng or np.random.default_rng(0)).integers(2 ** 63))
    true_lp = (logp_NL * mask_NL).sum(-1)
    idx, prompts, drawn = [], [], {}
    for n, row in enumerate(rows):
        if row["prompt"] not in drawn:
            key = zlib.crc32(row["prompt"].encode())
            drawn[row["prompt"]] = hard_negatives(row, np.random.default_rng([base, key]))
        for neg in drawn[row["prompt"]]:
            idx.append(n)
            prompts.append(neg["prompt"])
    if not prompts:
        return torch.ones_like(true_lp)
    nlp, nmask = prompt_token_logprobs(model, image_tokens_NT[idx], prompts, cfg)
    neg_lp = (nlp * nmask).sum(-1).to(true_lp.device)
    # Candidates [N, K]: the true prompt in column 0, each image's negatives after it, -inf where it has fewer.
    slot = [0] * len(idx)  # negatives of one image are consecutive in idx
    for k in range(1, len(idx)):
        slot[k] = slot[k - 1] + 1 if idx[k] == idx[k - 1] else 0
    cand_NK = torch.full((len(rows), 2 + max(slot)), -math.inf, device=true_lp.device)
    cand_NK[:, 0] = true_lp
    cand_NK[torch.tensor(idx, device=true_lp.device), 1 + torch.tensor(slot, device=true_lp.device)] = neg_lp
    return (true_lp - torch.logsumexp(cand_NK, dim=-1)).exp()


# ------------------------------------------------------------------------------------------- reward functions

class RewardFunction(Protocol):
    """TRL's reward-function shape: one float (or None: no opinion) per completion."""

    def __call__(self, prompts: list[str], images, **metadata) -> list[float | None]: ...


def intrinsic_reward_function(model, cfg: RewardConfig = RewardConfig()) -> RewardFunction:
    """The GvU reward as a TRL-style function over image tokens [N, T]."""
    def f(prompts, images, rows=None, **_):
        if not isinstance(images, torch.Tensor):
            images = np.asarray(images)
        return intrinsic_reward(model, images, list(prompts), cfg, rows=rows).reward_N.tolist()
    return f


ORACLES = ("binary", "strict", "partial")


def oracle_reward_function(kind: str = "binary") -> RewardFunction:
    """The exact judge as a reward (shapes world): 1/0 in geneval or strict mode, or partial credit: 1.0 when the
    whole row passes in strict mode, else 0.9 x the fraction of its separate checks that pass (one per include
    item, judged alone without its position, and one per exclude), so a near miss never ties a full pass.
    Images are uint8 pixels [N, H, W, 3] or image codes [N, T] (rendered first)."""
    if kind not in ORACLES:
        raise ValueError(f"oracle kind must be one of {ORACLES}, got {kind!r}")

    def f(prompts, images, rows=None, **_):
        if rows is None or len(rows) != len(images):
            raise ValueError("the oracle reward needs each image's metadata row (rows=..., one per image)")
        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        images = np.asarray(images)
        if images.ndim == 2:  # image codes
            images = decode(images)
        out = []
        for img, row in zip(images, rows):
            dets = detect(img)
            if kind == "binary":
                out.append(float(evaluate(dets, row, "geneval").correct))
            elif kind == "strict":
                out.append(float(evaluate(dets, row, "strict").correct))
            else:
                checks = [{**row, "include": [it if "position" not in it else {k: v for k, v in it.items() if k != "position"}],
                           "exclude": []} for it in row["include"]] + [{**row, "include": [], "exclude": [ex]} for ex in row.get("exclude", [])]
                passed = [evaluate(dets, c, "strict").correct for c in checks]
                full = evaluate(dets, row, "strict").correct
                out.append(1.0 if full else float(np.mean(passed)) * 0.9)
        return out

    return f
