"""Run under torchrun by tests/test_distributed.py: builds a Trainer from a config file and overrides, then
writes (rank 0) the unsharded initial trainable weights and every rank's first rollout, to check that ranks
start from the same weights and draw different images for their different prompts."""

import sys

import torch

from gvu.models.sampling import prompt_generators
from gvu.rl import distributed as D
from gvu.rl.config import load_config
from gvu.rl.trainer import Trainer

out, config, *overrides = sys.argv[1:]
cfg = load_config(config, overrides)
t = Trainer(cfg)
init = D.full_model_state(t.policy.lm, trainable_only=True)
rows = t.next_rows()
mine = t.dist.shard(len(rows))
rollout = t.policy.sample([r["prompt"] for r in rows[mine]], cfg.num_generations, t.sampling,
                          prompt_generators(cfg.seed, range(mine.start, mine.stop)))
tokens = t.dist.gather(rollout.image_tokens_NT)
if t.dist.is_main:
    torch.save({"init": init, "tokens": tokens, "world": t.dist.world}, out)
torch.distributed.barrier()  # no rank tears gloo down while another still talks to it (a rare abort at exit)
torch.distributed.destroy_process_group()
