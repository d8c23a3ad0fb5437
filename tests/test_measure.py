"""measure.py: the one way the project times a block."""

import time

from protoad_lib.measure import stopwatch


def test_stopwatch_reads_live_inside_its_block_and_frozen_after_it():
    with stopwatch() as watch:
        time.sleep(0.01)
        assert watch.seconds >= 0.01  # live: a progress line can read it
    frozen = watch.seconds
    time.sleep(0.01)
    assert watch.seconds == frozen >= 0.01
