"""The intrinsic reward: our one batched pass vs the published per-token loop, prompt lengths 8/16/32, batches 1/16/64
(and a tiny random Janus when gvu.models.janus is there).

    python benchmarks/bench_reward.py [--quick] [--out runs/bench/reward.json] [--threads N]
"""

import sys

if __package__:
    from .common import main
else:
    from common import main

if __name__ == "__main__":
    sys.exit(main(("reward",)))
