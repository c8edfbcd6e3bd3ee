"""One GRPO step of the trainer on a random default model: time per phase, images/s, peak resident memory.

    python benchmarks/bench_step.py [--quick] [--out runs/bench/step.json] [--threads N]
"""

import sys

if __package__:
    from .common import main
else:
    from common import main

if __name__ == "__main__":
    sys.exit(main(("step",)))
