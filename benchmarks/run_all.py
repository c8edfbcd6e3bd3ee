"""Every benchmark, as `gvu bench` runs them: prints a table and writes one JSON with the headline numbers
(reward_speedup, rollout_speedup_cfg, rollout_speedup_nocfg, update_mfu, pretrain_mfu, peak_rss_mib).

    python benchmarks/run_all.py [--quick] [--out runs/bench/all.json] [--threads N]
"""

import sys

if __package__:
    from .common import main
else:
    from common import main

if __name__ == "__main__":
    sys.exit(main(("reward", "rollout", "step", "limit")))
