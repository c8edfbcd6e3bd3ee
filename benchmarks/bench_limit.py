"""The limit: matmul GFLOP/s at the model's shapes and the MFU of pretraining and of the update phase (which
needs the RL step, so it runs that too).

    python benchmarks/bench_limit.py [--quick] [--out runs/bench/limit.json] [--threads N]
"""

import sys

if __package__:
    from .common import main
else:
    from common import main

if __name__ == "__main__":
    sys.exit(main(("step", "limit")))
