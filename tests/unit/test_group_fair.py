"""Fairness across workspaces (``_pipeline/group_fair.py``): which of the chunks a group
worker's reader reaches it claims now."""

from __future__ import annotations

from provisioner._pipeline.group_fair import FAIR_CHUNKS, Fairness

#: Chunks 0-5 are us's, 6-9 eu's, 10 has rows of both (absent from the survey).
LANES = {**dict.fromkeys(range(6), "us"), **dict.fromkeys(range(6, 10), "eu")}


def fairness(waiting: set[int]) -> Fairness:
    fair = Fairness(LANES)
    fair.saw(waiting)
    return fair


def test_a_workspace_holds_two_chunks_while_another_waits() -> None:
    """With eu's chunks waiting, us gets FAIR_CHUNKS unfinished at most, in manifest
    order; the chunks of eu the reader reaches are claimed as well, two of them."""
    fair = fairness(set(range(11)))
    assert FAIR_CHUNKS == 2
    assert fair.pick(range(11), unfinished=[]) == [0, 1, 6, 7, 10]
    assert fair.pick([2, 3, 8], unfinished=[1, 7]) == [2, 8]  # one slot each left


def test_alone_a_workspace_is_claimed_in_manifest_order() -> None:
    """No other workspace's chunk waiting (eu's all claimed or done): us claims on."""
    fair = fairness({2, 3, 4, 5})
    assert fair.pick([2, 3, 4, 5], unfinished=[0, 1]) == [2, 3, 4, 5]


def test_without_a_survey_everything_is_claimed() -> None:
    """A worker with one workspace surveys nothing: every chunk reached is claimed."""
    fair = Fairness({})
    fair.saw({1, 2, 3})
    assert not fair.active
    assert fair.pick([1, 2, 3], unfinished=[0]) == [1, 2, 3]
