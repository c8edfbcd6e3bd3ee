"""Image-token sampling: our KV-cached sampler vs transformers' generate (unbatched CFG processor), batches
16/64, guidance off and 3.

    python benchmarks/bench_rollout.py [--quick] [--out runs/bench/rollout.json] [--threads N]
"""

import sys

if __package__:
    from .common import main
else:
    from common import main

if __name__ == "__main__":
    sys.exit(main(("rollout",)))
