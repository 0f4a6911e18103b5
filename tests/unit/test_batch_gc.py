"""The collector's tuning while runs are under way: raised, then restored exactly."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from provisioner._pipeline.pool import _BatchGC


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    """Whatever a test does, the next one finds the collector as it was."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    gc.unfreeze()
    if enabled:
        gc.enable()


def test_a_run_raises_the_young_threshold_and_restores_it() -> None:
    """During a run young objects are collected less often and older ones are frozen;
    afterwards the thresholds are the application's again and nothing stays frozen."""
    gc.set_threshold(700, 10, 10)
    tuning = _BatchGC()
    with tuning.during_run():
        assert gc.get_threshold() == (_BatchGC.YOUNG, 10, 10)
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_overlapping_runs_restore_after_the_last_one() -> None:
    """Two runs in one process: the first to end leaves the tuning to the other."""
    gc.set_threshold(500, 5, 5)
    tuning = _BatchGC()
    first, second = tuning.during_run(), tuning.during_run()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert gc.get_threshold() == (_BatchGC.YOUNG, 5, 5)
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (500, 5, 5)
    assert gc.get_freeze_count() == 0


def test_a_disabled_collector_is_left_alone() -> None:
    """An application that turned the collector off keeps it off and untuned."""
    gc.set_threshold(700, 10, 10)
    gc.disable()
    with _BatchGC().during_run():
        assert gc.get_threshold() == (700, 10, 10)
        assert not gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_an_error_in_the_run_still_restores() -> None:
    """A run that raises leaves the collector as it found it."""
    gc.set_threshold(700, 10, 10)
    with pytest.raises(RuntimeError), _BatchGC().during_run():
        raise RuntimeError("boom")
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_objects_the_application_froze_stay_frozen() -> None:
    """A process that froze its objects itself (say before forking) finds them frozen
    after a run: the run neither freezes more nor unfreezes them."""
    gc.freeze()
    frozen = gc.get_freeze_count()
    with _BatchGC().during_run():
        assert gc.get_threshold()[0] == _BatchGC.YOUNG
    assert gc.get_freeze_count() == frozen


def test_a_higher_threshold_of_the_application_is_kept() -> None:
    """The tuning only raises the young threshold: a higher one the program set stays."""
    gc.set_threshold(10 * _BatchGC.YOUNG, 10, 10)
    with _BatchGC().during_run():
        assert gc.get_threshold() == (10 * _BatchGC.YOUNG, 10, 10)
    assert gc.get_threshold() == (10 * _BatchGC.YOUNG, 10, 10)
