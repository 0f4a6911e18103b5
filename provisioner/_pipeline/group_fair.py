"""Fairness across workspaces for a group's workers (``run --group``, issue 17 item 5).

A worker claims a chunk when its reader reaches it, so in manifest order: with the
manifest sorted by workspace, every worker would be on the first workspace's chunks
(each paced by that workspace's quota and concurrency) while the others' chunks wait.

Instead a worker holds at most ``FAIR_CHUNKS`` unfinished chunks of one workspace while
chunks of another workspace are waiting (pending, or left by a dead worker): the reader
passes the rest of that workspace's chunks by (they stay pending, for another worker or
this one's next pass) and claims the next workspace's. Its lanes therefore work side by
side, and between workers the claims spread across workspaces. When no other workspace
has chunks waiting, a worker claims as before: nothing is held back for nobody.

A lane's queue is widened to hold those chunks (``group.py``), so the reader does not
wait on one workspace's queue (its pace, a spent quota) before it reaches the next's.

The chunks' workspaces come from a survey of the manifest when the worker starts (one
more read, rows validated but not identified), made only by a worker with several
workspaces; a chunk whose rows go to several workspaces is claimed as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from provisioner._core.models import Row, RowError
from provisioner._manifest.feed import feed_for
from provisioner._manifest.reader import Manifest
from provisioner._manifest.rules import validate

#: Chunks of one workspace a worker holds unfinished while another's wait: one being
#: sent, one read ahead, so that its lane never waits on the reader.
FAIR_CHUNKS = 2
#: How old the list of waiting chunks may be when the reader consults it.
WAITING_TTL_S = 1.0


async def survey(
    manifest: Manifest, size: int, lane_of: Callable[[Row], str | None]
) -> dict[int, str]:
    """Each chunk whose valid rows all go to one workspace: chunk -> that workspace's lane
    (``lane_of``: None for a row no lane takes). Chunks of several workspaces are left out."""
    found: dict[int, str | None] = {}  # None: rows of several workspaces
    feed = feed_for(manifest)
    try:
        while True:
            items, more = await feed.take(4096)
            if not items:
                if more:
                    continue
                break
            for item in items:
                row = item if isinstance(item, RowError) else validate(item)
                lane = None if isinstance(row, RowError) else lane_of(row)
                if lane is None:
                    continue
                c = (item.line - 1) // size
                if c not in found:
                    found[c] = lane
                elif found[c] != lane:
                    found[c] = None
    finally:
        feed.close()
    return {c: lane for c, lane in found.items() if lane is not None}


class Fairness:
    """One worker's claim policy across its workspaces (see the module doc)."""

    def __init__(self, lanes_of: dict[int, str]) -> None:
        self.lanes_of = lanes_of
        self.waiting: set[int] = set()  # chunks claimable in the group, as last read
        self.read_at = float("-inf")

    @property
    def active(self) -> bool:
        return bool(self.lanes_of)

    def stale(self) -> bool:
        return time.monotonic() - self.read_at > WAITING_TTL_S

    def saw(self, claimable: Iterable[int]) -> None:
        """The group's claimable chunks (those this run has not tried), just read."""
        self.waiting = set(claimable)
        self.read_at = time.monotonic()

    def pick(self, chunks: Iterable[int], unfinished: Iterable[int]) -> list[int]:
        """Of ``chunks`` (reached by the reader, in order), those to claim now, given this
        worker's ``unfinished`` claims."""
        held: dict[str, int] = {}
        for c in unfinished:
            lane = self.lanes_of.get(c)
            if lane is not None:
                held[lane] = held.get(lane, 0) + 1
        picked = []
        for c in chunks:
            lane = self.lanes_of.get(c)
            if lane is None or held.get(lane, 0) < FAIR_CHUNKS or not self._others_wait(lane):
                picked.append(c)
                if lane is not None:
                    held[lane] = held.get(lane, 0) + 1
        return picked

    def _others_wait(self, lane: str) -> bool:
        """Whether another workspace has chunks waiting (pending or left by a dead worker)."""
        return any(self.lanes_of.get(c, lane) != lane for c in self.waiting)
