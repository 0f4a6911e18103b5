"""A circuit breaker per workspace: stop hammering Braze while it is down.

After ``threshold`` consecutive failures (5xx or connection errors) the breaker opens:
nothing is sent for that workspace; after a cool-down (1 s, doubling up to 30 s) a single
probe request goes; its success closes the breaker, its failure re-opens it. If the
outage lasts longer than ``max_wait`` the breaker gives up and the workspace's remaining
rows are deferred (reason ``outage``): they are not failures, the next run sends them.

Written here rather than taken from a library: the breaker must share the run's
``Deferred`` signal and an injectable clock, and it is small.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from provisioner._braze.quota import sleep_unless
from provisioner._core.logs import get_logger
from provisioner._core.vocab import DeferReason
from provisioner.errors import Deferred

log = get_logger(__name__)

FIRST_COOL_DOWN = 1.0
MAX_COOL_DOWN = 30.0


class Breaker:
    """Closed (sending), open (waiting), half-open (one probe in flight)."""

    def __init__(
        self,
        *,
        workspace: str,
        threshold: int = 5,
        max_wait: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.workspace = workspace
        self.threshold = threshold
        self.max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self.failures = 0
        self.opened_at: float | None = None
        self.retry_at = 0.0
        self.cool_down = FIRST_COOL_DOWN
        self.probing = False
        self.deferred: Deferred | None = None
        self.opened = 0  # how many times it opened in this run
        self.last_error: str | None = None  # what the latest failure was, for the message
        self._changed = asyncio.Event()

    @property
    def is_open(self) -> bool:
        """Whether requests are held back."""
        return self.opened_at is not None

    async def allow(self) -> bool:
        """Wait until a request may go. True when it is the probe. Raises ``Deferred``
        when the outage has outlasted ``max_wait``."""
        while True:
            if self.deferred is not None:
                raise self.deferred
            if self.opened_at is None:
                return False
            now = self._clock()
            deadline = self.opened_at + self.max_wait
            if now >= deadline:
                self.deferred = Deferred(DeferReason.OUTAGE, None)
                log.warning(
                    "outage_deferred",
                    workspace=self.workspace,
                    down_s=round(now - self.opened_at, 1),
                    max_wait_s=self.max_wait,
                    last_error=self.last_error,
                )
                self._wake()
                raise self.deferred
            if now >= self.retry_at and not self.probing:
                self.probing = True
                return True
            self._changed.clear()
            wait = max(0.0, self.retry_at - now) if not self.probing else self.cool_down
            # Wake at max_wait too, not only at the next probe: with cool-downs up to 30 s
            # the rows would otherwise be deferred up to 30 s late.
            wait = min(wait, deadline - now)
            # Woken early by any change (a probe's answer, an interrupt): the quota's
            # interruptible sleep, with the change as its stop event.
            await sleep_unless(self._sleep, wait, self._changed)

    @property
    def passing(self) -> bool:
        """Closed and not deferred: ``allow`` would return False (no probe) at once."""
        return self.opened_at is None and self.deferred is None

    def success(self, probe: bool = False) -> None:
        """A request got an answer that is not a server failure."""
        self.failures = 0
        if self.opened_at is None and not probe:
            # Closed: nothing changed that a waiter in allow() could be waiting for (the
            # close that let it go already woke it), so the wake-up is skipped.
            return
        if self.opened_at is not None and (probe or not self.probing):
            log.info(
                "breaker_closed",
                workspace=self.workspace,
                down_s=round(self._clock() - self.opened_at, 1),
            )
            self.opened_at = None
            self.cool_down = FIRST_COOL_DOWN
        self.probing = False if probe else self.probing
        self._wake()

    def failure(self, probe: bool = False, error: str | None = None) -> None:
        """A request failed with a 5xx or a connection error (``error`` says which)."""
        self.failures += 1
        self.last_error = error or self.last_error
        now = self._clock()
        if probe:
            self.probing = False
            self.cool_down = min(MAX_COOL_DOWN, self.cool_down * 2)
            self.retry_at = now + self.cool_down
        elif self.opened_at is None and self.failures >= self.threshold:
            self.opened_at = now
            self.retry_at = now + self.cool_down
            self.opened += 1
            log.warning(
                "breaker_opened",
                workspace=self.workspace,
                failures=self.failures,
                probe_in_s=self.cool_down,
            )
        self._wake()

    def outage_message(self) -> str | None:
        """What a person reads when the outage deferred the rows (None if it did not)."""
        if self.deferred is None or self.deferred.reason != DeferReason.OUTAGE:
            return None
        # A base URL with a typo (DNS), a closed port or a plain-http server behind an
        # https URL look like an outage too: the last error tells them apart.
        return (
            f"Braze did not answer for longer than --max-wait ({self.max_wait:g} s); last "
            f"error: {self.last_error or 'unknown'}; run again later, and if it persists check "
            f"base_url"
        )

    def interrupt(self, reason: str) -> None:
        """Stop waiting for the outage to end (a signal): waiters raise ``Deferred``."""
        if self.deferred is None:
            self.deferred = Deferred(reason, None)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
