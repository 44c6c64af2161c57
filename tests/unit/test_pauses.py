"""PauseWatch: orders fetched before a pause of the chunkserver are void (vstore/chunkserver/pauses.py)."""

import pytest

from vstore.chunkserver.pauses import PauseWatch


def test_regular_ticks_are_no_pause_and_orders_stay_good() -> None:
    watch = PauseWatch(0.0, pause_s=2.0)
    for n in range(1, 40):
        assert watch.tick(n * 0.25) == 0.0
    assert not watch.paused_since(5.0, 9.8)
    assert watch.longest_s == 0.0


def test_a_gap_between_ticks_voids_orders_fetched_before_it_ended() -> None:
    watch = PauseWatch(0.0, pause_s=2.0)
    watch.tick(0.25)
    fetched = 0.3
    # the process stops at 0.4 and runs again at 12.0: the order loop may run before the tick
    assert watch.paused_since(fetched, 12.0), "ticks stopped: a pause is going on"
    assert watch.tick(12.0) == pytest.approx(11.75)
    assert watch.paused_since(fetched, 12.1)
    assert watch.longest_s == pytest.approx(11.75)
    # a poll sent after the pause was seen brings good orders
    assert not watch.paused_since(12.05, 12.2)
    watch.tick(12.25)
    assert not watch.paused_since(12.05, 12.3)


def test_a_poll_sent_on_waking_before_the_tick_noticed_is_refused_too() -> None:
    """Conservative: the order loop polled at 12.01 after waking, the tick came at 12.02."""
    watch = PauseWatch(0.0, pause_s=2.0)
    watch.tick(0.25)
    watch.tick(12.02)
    assert watch.paused_since(12.01, 12.5)


def test_the_pause_length_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PauseWatch(0.0, pause_s=0)
