"""The process's peak resident memory survives the per-phase resets of the trainer's clock (gvu.rl.monitor):
on Linux, resetting VmHWM also resets ru_maxrss, so a report that read ru_maxrss after a training run would give
the peak of the last phase only."""

import sys

import numpy as np
import pytest

from gvu.rl.monitor import PhaseClock, peak_rss_since_reset, process_peak_rss_mib, reset_peak_rss

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")


def test_the_process_peak_survives_phase_resets():
    clock = PhaseClock()
    with clock("big"):
        block = np.ones(2 ** 27)  # 1 GiB of float64, touched
        block.sum()
        del block
    with clock("small"):
        pass
    assert clock.values["mem/big"] - clock.values["mem/small"] > 900  # the reset made the second phase small
    assert peak_rss_since_reset() < clock.values["mem/big"] - 900
    assert process_peak_rss_mib() >= clock.values["mem/big"]
    assert reset_peak_rss() and process_peak_rss_mib() >= clock.values["mem/big"]
