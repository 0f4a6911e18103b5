"""The runner's process-wide settings while a reader runs (no sockets)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from provisioner import runner


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """The collector's thresholds, restored after the test whatever it did."""
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)


def test_readers_raise_the_collector_threshold_and_the_last_restores_it(
    thresholds: tuple[int, int, int],
) -> None:
    """While readers run, the first threshold is at least _GC_FIRST_THRESHOLD (a higher
    one set by the program is kept); the last reader to end restores the thresholds."""
    gc.set_threshold(700, 11, 12)
    with runner._fewer_collections():
        assert gc.get_threshold() == (runner._GC_FIRST_THRESHOLD, 11, 12)
        with runner._fewer_collections():  # a second run in the same process
            assert gc.get_threshold()[0] == runner._GC_FIRST_THRESHOLD
        assert gc.get_threshold()[0] == runner._GC_FIRST_THRESHOLD  # the first still reads
    assert gc.get_threshold() == (700, 11, 12)
    gc.set_threshold(10 * runner._GC_FIRST_THRESHOLD, 10, 10)
    with runner._fewer_collections():
        assert gc.get_threshold()[0] == 10 * runner._GC_FIRST_THRESHOLD  # never lowered
    with pytest.raises(ValueError, match="boom"), runner._fewer_collections():
        raise ValueError("boom")
    assert gc.get_threshold() == (10 * runner._GC_FIRST_THRESHOLD, 10, 10)
