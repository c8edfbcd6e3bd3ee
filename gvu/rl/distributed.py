"""Several training processes on torch.distributed: launched by `torchrun` or `accelerate launch`, DDP or FSDP2.

We do not distribute anything ourselves. The launcher sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; `init_distributed` joins the process group (gloo on CPU, nccl on GPUs). The trainer then
- splits every step's prompts across ranks without overlap, each prompt's whole group on one rank, each drawn
  with the prompt's own generator (gvu.models.sampling.prompt_generators), so the images do not depend on the
  number of processes;
- gathers the rollout (tokens, log-probs, rewards) so group advantages and the minibatch order see the whole
  batch, exactly as one process would;
- splits every minibatch into equal shards, one per rank, and lets DDP (or FSDP2) average the gradients; the
  loss of a shard is normalised so that this average is the one-process gradient;
- writes logs, reports and checkpoints from rank 0 only, with full (consolidated) weights and optimizer state,
  so a run resumes on any number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

STRATEGIES = ("ddp", "fsdp2")


@dataclass
class Dist:
    """This process's place in the run. world == 1 means no process group: every helper is the identity."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    strategy: str = "ddp"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        return self.enabled and self.strategy == "fsdp2"

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (n must divide evenly; the config checks it)."""
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)

    def gather(self, obj):
        """Every rank's `obj`, in rank order (picklable objects; tensors come back on the CPU)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, _to_cpu(obj))
        return out

    def all_max(self, x: float) -> float:
        if not self.enabled:
            return x
        t = torch.tensor([float(x)], dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def mean_dict(self, d: dict[str, float]) -> dict[str, float]:
        """Average each value over ranks (the same keys on every rank)."""
        if not self.enabled:
            return d
        keys = sorted(d)
        t = torch.tensor([float(d[k]) for k in keys], dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(t)
        return dict(zip(keys, (t / self.world).tolist()))

    def sum_array(self, a):
        """Element-wise sum of a numpy array over ranks (the same shape on every rank)."""
        if not self.enabled:
            return a
        t = torch.as_tensor(a, dtype=torch.float64).to(self._device())
        torch.distributed.all_reduce(t)
        return t.cpu().numpy()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (e.g. a Ctrl-C seen by one process stops them all)."""
        return self.all_max(1.0 if flag else 0.0) > 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" \
            else torch.device("cpu")


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


def launched_world_size() -> int:
    """How many processes the launcher started (WORLD_SIZE; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_strategy(strategy: str, environ=os.environ) -> str:
    """The config's strategy, unless `accelerate launch` was given an FSDP config (then fsdp2). accelerate's
    DeepSpeed configs are refused: the trainer runs on torch's own DDP and FSDP2, and FSDP2 is ZeRO-3's sharding."""
    if environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ValueError("accelerate launch with a DeepSpeed config: gvu's trainer runs on torch's DDP and FSDP2, "
                         "not DeepSpeed; for ZeRO-2/3-style sharding launch with configs/accelerate/fsdp2.yaml "
                         "(or `strategy: fsdp2` under torchrun)")
    if environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        if environ.get("FSDP_VERSION", "1") != "2":
            raise ValueError("accelerate launch with an FSDP1 config: set `fsdp_version: 2` in its fsdp_config "
                             "(see configs/accelerate/fsdp2.yaml); gvu shards with FSDP2")
        return "fsdp2"
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    return strategy


def init_distributed(strategy: str) -> Dist:
    """Join the process group the launcher describes in the environment; a single process needs none."""
    world = launched_world_size()
    if world <= 1:
        return Dist(strategy=strategy)
    strategy = resolve_strategy(strategy)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, strategy=strategy)


def device_for(d: Dist) -> str | None:
    """The device this rank's model goes to: its own GPU under a multi-GPU launch, else the loader's default."""
    if d.enabled and torch.cuda.is_available():
        return f"cuda:{d.local_rank}"
    return None


def shard_fsdp2(lm: torch.nn.Module) -> None:
    """FSDP2 in place: each transformer block (the model's `_no_split_modules` classes) is its own unit, then the
    root holds the rest (embeddings, head). Works on CPU over gloo as on GPUs over nccl."""
    from torch.distributed.fsdp import fully_shard

    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    names = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in lm.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(base).__name__} names no transformer block class (_no_split_modules); FSDP2 "
                         "needs one to shard by; use strategy: ddp")
    for m in blocks:
        fully_shard(m)
    fully_shard(lm)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(lm: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The whole (unsharded) weights on the CPU, on every rank (a collective under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    names = {n for n, p in lm.named_parameters() if p.requires_grad} if trainable_only else None
    sd = get_model_state_dict(lm, options=_options(cpu_offload=False))
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().clone()
            for k, v in sd.items() if names is None or k in names}


def full_optimizer_state(lm: torch.nn.Module, optimizer) -> dict:
    """The optimizer state keyed by parameter names (not ids), unsharded: loadable by any number of processes."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(lm, optimizer, options=_options(cpu_offload=False))
    return _to_cpu(_full(sd))


def _full(obj):
    if hasattr(obj, "full_tensor"):
        return obj.full_tensor()
    if isinstance(obj, dict):
        return {k: _full(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_full(v) for v in obj]
    return obj


def load_model_state(lm: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(lm, weights, options=_options(strict=False))


def load_optimizer_state(lm: torch.nn.Module, optimizer, state: dict) -> None:
    """Name-keyed state (written by full_optimizer_state) on any number of processes; also the id-keyed
    `optimizer.state_dict()` of single-process checkpoints written before name-keyed ones existed."""
    if state.get("param_groups") and state["param_groups"][0]["params"] and \
            isinstance(state["param_groups"][0]["params"][0], int):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(lm, optimizer, state, options=_options())
