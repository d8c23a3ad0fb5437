"""measure.py: the one way the project times a block."""

import time

from protoad_lib.measure import stopwatch


def test_stopwatch_reads_zero_inside_its_block_and_the_block_after_it():
    with stopwatch() as watch:
        assert watch.seconds == 0.0
        time.sleep(0.01)
    assert watch.seconds >= 0.01
