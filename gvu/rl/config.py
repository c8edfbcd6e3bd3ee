"""The GvU training configuration: one dataclass, TRL's names where the concept is the same, mirrored by YAML.

`load_config(path, overrides)` reads a YAML file, applies `key=value` overrides (values parsed as YAML), and
rejects unknown keys with the list of known ones. Validation lives in __post_init__ and says how to fix.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gvu.reward import RewardConfig
from gvu.rl.grpo import LOSS_AGGREGATIONS, SCALE_REWARDS
from gvu.world.kinds import check_weights

REWARDS = ("intrinsic", "oracle_binary", "oracle_strict", "oracle_partial")
SKILLS_MIX = {"position": 4.0, "color_attr": 1.0, "color_attr_pp": 1.0, "color_spatial_attr": 1.0,
              **{k: 0.5 for k in ("two_object", "colors", "spatial_count_attr", "color_count_attr",
                                  "multi_object_count_attr", "size_spatial_attr", "single_object", "counting",
                                  "counting_pp")}}
"""The default mix of the built-in training set (TrainConfig.prompt_weights): the horizontal side and the binding of
colours are what the base draws least, so their kinds weigh most (docs/rl-defaults.md, "The mix")."""


@dataclass
class TrainConfig:
    # ------------------------------------------------------------------ what to train, on what, where
    model: str = ""
    """The starting policy: a folder written by `gvu pretrain` (or `gvu train`'s `final/`)."""
    output_dir: str = "runs/train"
    """Where the log, checkpoints, evaluation grids and `final/` go."""
    prompts: str = "train"
    """A GenEval-format metadata file, or 'train' (built-in shapes-world training set, no test overlap)."""
    num_prompts: int = 50_000
    """Size of the built-in training set when `prompts` is 'train'."""
    prompt_weights: dict[str, float] | None = None
    """Mix of the built-in training set: prompt kind -> relative weight (kinds not named get 0); unset: SKILLS_MIX
    (position at 4, the three colour-binding kinds at 1, the other nine at 0.5: docs/rl-defaults.md); `{}`: the
    thirteen GenEval/GenEval++ kinds equally. Kinds: those of `gvu prompts` plus 'color_counting'. With the
    curriculum, which draws by tag, it is also the curriculum's prior: each tag's share is its weight (the sum of
    its kinds') times its signal, so the mix asked for is the mix drawn while every tag carries the same signal."""
    max_steps: int = 120
    """Training steps (one rollout each; with the defaults on the built-in model about 4 s each alone on two CPU
    cores with the intrinsic reward: docs/rl-defaults.md, docs/performance.md)."""
    seed: int = 0
    """Seeds prompt order, sampling and initialisation of adapters."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""

    # ------------------------------------------------------------------ rollout
    prompts_per_step: int = 32
    """Prompts per step; each gets `num_generations` images. Many prompts per optimizer step are what make the
    update teach skills rather than the batch's prompts; 32 for 120 steps draws as many images as 64 for 60 and
    teaches the horizontal side that 60 steps do not (docs/rl-defaults.md)."""
    num_generations: int = 8
    """Group size G (the published run uses 2)."""
    dynamic_sampling: bool = True
    """DAPO's dynamic sampling: drop the groups whose rewards are all equal (zero advantage) and draw more prompts
    until `prompts_per_step` groups carry a signal, or `max_sampling_rounds` rollouts were drawn."""
    max_sampling_rounds: int = 4
    """With dynamic_sampling: the most rollouts drawn for one step."""
    curriculum: bool = True
    """Draw each prompt's kind in proportion to the learning signal its groups carried lately (the running mean of
    the within-group reward std per kind; no labels, so the same for every reward): gvu.rl.curriculum. Measured on
    the regular base: the intrinsic reward's GenEval-shapes gain doubles and the oracle's grows by a fifth
    (docs/rl-defaults.md)."""
    curriculum_floor: float = 0.25
    """With curriculum: the share of the mix spread equally over the kinds, so none starves."""
    curriculum_decay: float = 0.5
    """With curriculum: the weight of each new draw in a kind's running signal."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_k: int = 0
    """Top-k filter (0: off)."""
    top_p: float = 1.0
    """Nucleus filter (1.0: off)."""
    min_p: float = 0.0
    """Min-p filter (0.0: off; the published run uses 0.03)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance in the rollout (1.0: off; the published run uses none)."""

    # ------------------------------------------------------------------ reward
    reward: str = "intrinsic"
    """'intrinsic' (GvU) or an oracle from the exact judge: 'oracle_binary', 'oracle_strict', 'oracle_partial'."""
    reward_variant: str | None = None
    """'geomean' (the paper), 'content', 'contrastive', 'blend'; unset: 'blend' on the built-in training set (its
    rows carry the facts the hard negatives are built from; docs/rl-defaults.md), 'geomean' for a prompt file."""
    reward_blend_weight: float = 0.25
    """The blend variant's contrastive exponent w: reward = geomean^(1 - w) x contrastive^w."""
    reward_scorer: str = "policy"
    """Who scores the intrinsic reward: the current 'policy' or the frozen 'reference'."""
    reward_image_path: str = "tokens"
    """'tokens' (read the generated codes) or 'pixels' (decode, re-encode, as the published code does)."""
    instruction: str = "Describe the image in detail."
    """Understanding instruction placed after the image."""
    scale_rewards: str = "group"
    """Advantage scaling: 'group' std (GRPO), 'batch' std, or 'none' (Dr. GRPO)."""

    # ------------------------------------------------------------------ policy update
    learning_rate: float = 3e-4
    """Peak learning rate (the published LoRA run on a 7B model uses 1e-6)."""
    lr_scheduler_type: str = "constant"
    """'constant', 'linear' or 'cosine' decay after warm-up."""
    warmup_steps: int = 5
    """Linear warm-up, in optimizer steps. Adam's first step moves every weight with a gradient by the full learning
    rate whatever the gradient's size; the warm-up keeps that first step small."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0: off)."""
    beta: float = 0.02
    """KL weight against the reference policy (k3 estimator); with beta = 0 and beta_understanding = 0 no
    reference is loaded unless the scorer needs it."""
    beta_understanding: float = 1.0
    """KL weight that leashes the understanding branch to the reference: k3 KL of the prompt's token
    log-probs given the rollout's own images (no external data). Guards the judge against erosion by the
    generation-only objective when weights are shared (measured: it halves the matching-accuracy drop in the
    first 20 steps); 0 turns it off, as in the paper."""
    epsilon: float = 0.2
    """Lower clipping range: ratios below 1 - epsilon are clipped."""
    epsilon_high: float | None = None
    """Upper clipping range (None: same as epsilon; DAPO uses a larger one)."""
    loss_type: str = "grpo"
    """Loss aggregation: 'grpo', 'bnpo', 'dr_grpo', 'dapo' (see gvu.rl.grpo)."""
    num_iterations: int = 1
    """Passes over each rollout (1: the published setting, where the ratio is always 1)."""
    minibatch_size: int = 0
    """Rows (images) per optimizer step; 0: the whole rollout, one optimizer step per pass (measured best on the
    shapes world: docs/rl-defaults.md). Otherwise it must divide prompts_per_step * num_generations."""
    old_logp_source: str = "sampler"
    """Old log-probs: recorded by the 'sampler', or a teacher-forced 'replay' before the update."""
    reuse_reward_pass: bool = True
    """Where the update's understanding leash needs exactly the policy's prompt log-probs that the reward has just
    computed (the policy scores, on image tokens, one optimizer step per rollout, one process, no dropout, and every
    drawn group kept), the reward's forward keeps its graph and the update backpropagates through it instead of
    running that forward again: the same numbers up to float rounding, one forward less per step. false: always
    recompute (the step before this option)."""
    share_prompt_prefix: bool = True
    """The teacher-forced passes over generation sequences (the update's, the reference's, a replay's) run each
    distinct prompt prefix once and give its KV cache to the group's images (SharedVocabUMM._block_logits): the
    same log-probs and gradients up to float rounding, the prompt's share of the work divided by the group size.
    false: every row's whole sequence (the step before this option)."""

    # ------------------------------------------------------------------ parameters
    freeze_embeddings: bool = False
    """Keep the token embeddings (tied to the output head in the built-in model) and any 2-D reader tables
    frozen: the update moves the transformer blocks only."""
    use_lora: bool = False
    """Train LoRA adapters (PEFT) instead of all weights; the reference is then the adapter disabled."""
    lora_r: int = 8
    """LoRA rank (published: 8)."""
    lora_alpha: int = 32
    """LoRA alpha (published: 32)."""
    lora_dropout: float = 0.0
    """LoRA dropout; keep 0 so the update's log-probs match the sampler's."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                     "gate_proj", "up_proj", "down_proj"])
    """Modules that get adapters."""

    # ------------------------------------------------------------------ several processes
    strategy: str = "ddp"
    """Under `torchrun` / `accelerate launch` with several processes: 'ddp' (replicated weights) or 'fsdp2'
    (weights, gradients and optimizer state sharded per transformer block). No effect in one process.
    prompts_per_step and minibatch_size must be multiples of the number of processes."""

    # ------------------------------------------------------------------ evaluation, logging, checkpoints
    eval_steps: int = 0
    """Evaluate every this many steps (and at the start and end); 0: never. A logging choice only (own generators:
    the same trained weights, tests/test_trainer.py); a glance beside the demo's before/after and `gvu curve`."""
    eval_benchmarks: list[str] = field(default_factory=lambda: ["geneval", "genevalpp", "dpg", "val_geneval",
                                                                "val_genevalpp", "understanding"])
    """Held-out benchmarks evaluated during training: the test ones (dpg: DPG-shapes, dense prompts,
    gvu.eval.dpg_shapes), the validation ones (read choices from these: docs/protocol.md) and understanding."""
    eval_per_prompt: int = 2
    """Images per prompt in evaluation."""
    eval_limit: int = 0
    """Use only the first N prompts of each benchmark (0: all); for quick runs."""
    eval_understanding_limit: int = 200
    """Images of the understanding benchmark's matching part evaluated during training, spread over its tags (0:
    all 591; the smaller of this and eval_limit where both are set). Its image-text pairs cost more than the
    generation benchmarks together; `gvu eval` and the demo's before/after read the whole set."""
    eval_seed: int = 1234
    """Fixed evaluation seed of the test benchmarks: every evaluation draws with the same generators."""
    val_seed: int = 4321
    """Fixed evaluation seed of the validation benchmarks (their own, not the test benchmarks')."""
    monitor: str = "auto"
    """What the trainer watches (gvu.rl.monitor): 'shapes' (the exact shapes-world judge every step, accuracy
    and reward AUC; shapes-world benchmarks at eval_steps), 'reward' (reward statistics every step; at eval_steps
    the images of eval_prompts in GenEval's layout, a grid, and eval_command), 'auto': shapes for the built-in
    model, reward for every other."""
    monitor_images: int = 128
    """'shapes' monitor: images judged per step, drawn at random (seeded by seed and step) from the kept ones; the
    log's `monitor_images` says how many, so `accuracy` and `reward_auc` are estimates with a known sample size.
    0: every kept image (the judge is about a tenth of a default step)."""
    eval_prompts: str = ""
    """'reward' monitor: a GenEval metadata file of fixed evaluation prompts (default: GenEval's own), eval_limit
    of them (default 16) spread over the tags."""
    eval_command: str = ""
    """'reward' monitor: a shell command run on each evaluation folder ({dir} is replaced by its path), e.g.
    GenEval's evaluate_images.py; its output is kept in eval_command.log there, its exit code logged."""
    logging_steps: int = 1
    """Write a log line every this many steps."""
    save_steps: int = 20
    """Write a resumable checkpoint every this many steps (0: only at the end and on Ctrl-C)."""
    save_total_limit: int = 2
    """Keep at most this many step checkpoints."""

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(msg)

        for f in dataclasses.fields(self):  # .inf / .nan parse as YAML floats; one NaN step would end the run
            v = getattr(self, f.name)
            need(not isinstance(v, float) or math.isfinite(v), f"{f.name} must be a finite number, got {v}")
        need(bool(self.output_dir.strip()), "output_dir is empty; give the folder to write the run into "
             "(e.g. output_dir=runs/my-run)")
        need(self.threads >= 0, f"threads must be >= 0 (0 keeps torch's default), got {self.threads}")
        need(self.num_generations >= 2, f"num_generations must be >= 2 (got {self.num_generations}): group-relative "
             "advantages need at least two images per prompt")
        need(self.prompts_per_step >= 1, "prompts_per_step must be >= 1")
        rows = self.prompts_per_step * self.num_generations
        need(self.minibatch_size == 0 or (self.minibatch_size >= 1 and rows % self.minibatch_size == 0),
             f"minibatch_size ({self.minibatch_size}) must divide prompts_per_step * num_generations ({rows}); "
             f"try 0 (the whole rollout), {rows} or a divisor of it")
        need(self.strategy in ("ddp", "fsdp2"), f"strategy must be 'ddp' or 'fsdp2', got {self.strategy!r}")
        need(self.max_steps >= 1, "max_steps must be >= 1")
        need(0.0 <= self.curriculum_floor <= 1.0, f"curriculum_floor must be in [0, 1], got {self.curriculum_floor}")
        need(0.0 < self.curriculum_decay <= 1.0, f"curriculum_decay must be in (0, 1], got {self.curriculum_decay}")
        if self.prompt_weights:
            check_weights(self.prompt_weights, "prompt_weights")
        need(not self.prompt_weights or self.prompts == "train",
             "prompt_weights mixes the built-in training set; leave it empty when `prompts` is a file")
        need(self.num_iterations >= 1, "num_iterations must be >= 1")
        need(self.max_sampling_rounds >= 1, f"max_sampling_rounds must be >= 1, got {self.max_sampling_rounds}")
        need(self.reward in REWARDS, f"reward must be one of {REWARDS}, got {self.reward!r}")
        need(self.scale_rewards in SCALE_REWARDS, f"scale_rewards must be one of {SCALE_REWARDS}")
        need(self.loss_type in LOSS_AGGREGATIONS, f"loss_type must be one of {sorted(LOSS_AGGREGATIONS)}")
        need(self.old_logp_source in ("sampler", "replay"), "old_logp_source must be 'sampler' or 'replay'")
        need(self.lr_scheduler_type in ("constant", "linear", "cosine"),
             "lr_scheduler_type must be 'constant', 'linear' or 'cosine'")
        need(self.learning_rate > 0, "learning_rate must be > 0")
        # The loop takes `step % logging_steps` (and eval/save steps when non-zero): 0 or negative would crash or
        # misbehave only after the first rollout, so refuse them here.
        need(self.logging_steps >= 1, f"logging_steps must be >= 1 (got {self.logging_steps})")
        for name in ("eval_steps", "save_steps", "warmup_steps"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0 (0 turns it off), got {getattr(self, name)}")
        need(self.beta >= 0, "beta must be >= 0 (0 turns the KL term off)")
        need(self.beta_understanding >= 0, "beta_understanding must be >= 0 (0 turns it off)")
        need(0 < self.epsilon < 1, f"epsilon must be in (0, 1), got {self.epsilon}")
        need(self.epsilon_high is None or self.epsilon_high >= self.epsilon,
             f"epsilon_high ({self.epsilon_high}) must be >= epsilon ({self.epsilon}): it widens the upper clip "
             "range (DAPO's clip-higher); leave it null for the same range as epsilon")
        _ = self.reward_config  # RewardConfig checks the reward's settings as it is built
        need(self.monitor_images >= 0, f"monitor_images must be >= 0 (0: every kept image), got {self.monitor_images}")
        need(self.monitor in ("auto", "shapes", "reward"),
             f"monitor must be auto, shapes or reward, got {self.monitor!r}")
        need(not self.eval_command or "{dir}" in self.eval_command,
             f"eval_command must contain {{dir}} (the evaluation folder), got {self.eval_command!r}")
        known = ("geneval", "genevalpp", "dpg", "val_geneval", "val_genevalpp", "understanding")
        unknown = set(self.eval_benchmarks) - set(known)
        need(not unknown, f"unknown eval_benchmarks {sorted(unknown)}; use {', '.join(known)}")

    @property
    def mix(self) -> dict[str, float]:
        """The training set's mix as drawn: prompt_weights, or SKILLS_MIX when unset on the built-in set (a prompt
        file has no mix: {})."""
        if self.prompt_weights is None:
            return dict(SKILLS_MIX) if self.prompts == "train" else {}
        return self.prompt_weights

    @property
    def variant(self) -> str:
        """reward_variant, or when unset 'blend' on the built-in set and 'geomean' for a prompt file."""
        if self.reward_variant is None:
            return "blend" if self.prompts == "train" else "geomean"
        return self.reward_variant

    @property
    def reward_config(self) -> RewardConfig:
        return RewardConfig(instruction=self.instruction, variant=self.variant, scorer=self.reward_scorer,
                            image_path=self.reward_image_path, blend_weight=self.reward_blend_weight)

    @property
    def rows_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def minibatch_rows(self) -> int:
        """Rows per optimizer step (minibatch_size, or the whole rollout for 0)."""
        return self.minibatch_size or self.rows_per_step

    def needs_reference(self) -> bool:
        # The intrinsic reward is computed every step even when an oracle is the training reward (it is logged,
        # with its AUC against the judge), so a 'reference' scorer needs the reference whatever `reward` is.
        return self.beta > 0 or self.beta_understanding > 0 or self.reward_scorer == "reference"


KNOWN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _check_keys(d: dict, where: str):
    unknown = [k for k in d if k not in KNOWN_KEYS]
    if unknown:
        raise ValueError(f"{where}: unknown config key(s) {unknown}; known keys: {', '.join(KNOWN_KEYS)}")


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-6` (no dot) is a STRING; YAML 1.2 and every reader of a config file take
    it as a float, and learning rates are written that way. This loader reads it as a float."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _type_ok(v, t) -> bool:
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if t in (str, bool):
        return isinstance(v, t)
    if typing.get_origin(t) is dict:
        kt, vt = typing.get_args(t)
        return isinstance(v, dict) and all(_type_ok(a, kt) and _type_ok(b, vt) for a, b in v.items())
    if typing.get_origin(t) is list:
        return isinstance(v, list) and all(_type_ok(x, typing.get_args(t)[0]) for x in v)
    if typing.get_args(t):  # X | None
        return any(v is None if a is type(None) else _type_ok(v, a) for a in typing.get_args(t))
    return True


def _check_types(d: dict):
    """A wrong type would otherwise fail later with a TypeError about '<' between str and int, or not at all."""
    hints = typing.get_type_hints(TrainConfig)
    for k, v in d.items():
        if k in hints and not _type_ok(v, hints[k]):
            want = getattr(hints[k], "__name__", str(hints[k])) if not typing.get_args(hints[k]) else str(hints[k])
            raise ValueError(f"bad config: {k} must be {want}, got {v!r} ({type(v).__name__})")


def parse_overrides(items: list[str], known: tuple[str, ...] | None = None) -> dict:
    """key=value strings -> a dict of YAML values; keys are checked against `known` (default: TrainConfig's)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = _yaml(v) if v.strip() else ""
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML: {err}") from None
    if known is None:
        _check_keys(out, "command line")
    elif unknown := [k for k in out if k not in known]:
        raise ValueError(f"command line: unknown key(s) {unknown}; known keys: {', '.join(known)}")
    return out


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> TrainConfig:
    data: dict = {}
    if path is not None:
        text = Path(path).read_text()
        try:
            data = _yaml(text)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
        if data is None:
            raise ValueError(f"{path} is empty; write the config keys in it (see configs/tiny.yaml)")
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        _check_keys(data, str(path))
    data.update(overrides if isinstance(overrides, dict) else parse_overrides(overrides or []))
    _check_keys(data, "config")
    _check_types(data)
    try:
        return TrainConfig(**data)
    except TypeError as err:
        raise ValueError(f"bad config: {err}") from None


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
