"""Retry policy for transient failures: 5xx answers and connection errors.

Built on tenacity (a well-kept library) rather than a hand-written loop: full-jitter
exponential backoff (``wait_random_exponential``: sleep = random(0, min(cap, base * 2**n))),
capped in attempts and in total time. Two things are deliberately NOT retried here:

- a 429 or a spent quota window: that is a fixed window, not a transient error, and is
  handled by pausing the whole run (``quota.QuotaBudget``);
- a request that may have reached Braze for a row without a send_id (``InDoubt``, or a
  5xx other than 503: ``client.may_have_created``): resending could create a second id
  and spend quota, so the row is reported in doubt.

A retry budget keeps retries a bounded fraction of requests, so that an outage does not
multiply the load on Braze (Google SRE, "Handling Overload").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from provisioner._core.logs import get_logger
from provisioner.errors import Transient as Transient  # its old home; defined in errors

log = get_logger(__name__)


class RetryBudget:
    """Allow retries up to ``ratio`` of requests sent, plus ``floor`` to start with."""

    def __init__(self, ratio: float = 0.2, floor: int = 20) -> None:
        self.ratio = ratio
        self.floor = floor
        self.requests = 0
        self.retries = 0
        self.denied = 0

    def note_request(self) -> None:
        """Count one request sent (first attempts and retries alike)."""
        self.requests += 1

    def take(self) -> bool:
        """Spend one retry if the budget allows it."""
        if self.retries < self.floor + self.ratio * self.requests:
            self.retries += 1
            return True
        if not self.denied:
            log.warning(
                "retry_budget_spent",
                requests=self.requests,
                retries=self.retries,
                hint="Braze fails too often for every failure to be retried; the rows not "
                "retried fail as retryable: run again later",
            )
        self.denied += 1
        return False


class _BudgetStop(stop_base):
    """Stop retrying once the run's retry budget is spent."""

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        if self.budget.take():
            return False
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(failure, Transient):
            failure.budget_spent = True  # for the row's message
        return True


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long one row is retried."""

    attempts: int = 5
    max_time: float = 120.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0

    def retrying(
        self,
        budget: RetryBudget,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> AsyncRetrying:
        """A tenacity controller for one row. The caller makes the first attempt outside it
        (the hot path stays cheap) and replays that failure as the controller's attempt 1."""

        return AsyncRetrying(
            retry=retry_if_exception_type(Transient),
            # Order matters: the budget is only spent when no other cap stops the retry.
            stop=stop_any(
                stop_after_attempt(self.attempts),
                stop_after_delay(self.max_time),
                _BudgetStop(budget),
            ),
            wait=wait_random_exponential(multiplier=self.backoff_base, max=self.backoff_cap),
            sleep=sleep,
            reraise=True,
        )
