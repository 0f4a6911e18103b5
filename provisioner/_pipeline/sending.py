"""Sending one row: the attempts, retries, pauses and doubts the policy allows.

``Run`` (``runner.py``) takes rows off a lane's queue; this is what happens to one row
from there: wait for the breaker, the quota budget, the even pace and the pacer, record the
intent right before the request leaves, then classify the answer, retry what is worth
retrying, and stop the lane when the answer says the workspace cannot be used. A mixin of
``Run``, kept apart so that each file reads as one stage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from provisioner._braze.client import Reply, ReplyKind, may_have_created, redirect_message
from provisioner._braze.retry import RetryBudget, RetryPolicy
from provisioner._core.logs import get_logger
from provisioner._core.models import Outcome
from provisioner._core.vocab import DeferReason, ExitCode
from provisioner._outputs.summary import RunStats
from provisioner._pipeline.outcomes import deferred, failed_in_doubt, final_outcome
from provisioner._pipeline.workspace_lane import Job, Lane
from provisioner._state.interface import RunStore
from provisioner.errors import CertificateRejected, Deferred, InDoubt, Transient, TransportError

log = get_logger(__name__)


class Sending:
    """What a worker does with one row (``provision``); ``Run`` provides the state."""

    # Set by ``Run.__init__``.
    store: RunStore
    stats: RunStats
    policy: RetryPolicy
    retry_budget: RetryBudget
    run_id: str
    stop_reason: str | None
    _sleep: Callable[[float], Awaitable[None]]

    async def provision(self, lane: Lane, job: Job) -> Outcome:
        """Create one send id, with the retries, pauses and doubts the policy allows."""
        attempts = [0]
        try:
            try:
                reply = await self.attempt(lane, job, attempts)
            except Transient as first:
                reply = await self._retry(lane, job, attempts, first)
        except (Deferred, Transient) as exc:
            # Out of retries, or the breaker gave up: a host that never answered is a
            # wrong base URL (exit 4), not failed rows or an outage.
            final = not isinstance(exc, Deferred) or exc.reason == "outage"
            message = lane.unreachable(None, final=True) if final else None
            if message is not None:
                await self._stop_lane(
                    lane, DeferReason.UNREACHABLE, "base_url_unreachable", message
                )
                return deferred(job.row, job.send_id, DeferReason.UNREACHABLE)
            if isinstance(exc, Deferred):
                return deferred(job.row, job.send_id, exc.reason)
            return final_outcome(job.row, job.send_id, attempts[0], None, exc)
        except InDoubt as exc:
            return failed_in_doubt(job.row, attempts=attempts[0], detail=str(exc))
        except CertificateRejected as exc:
            # Nothing was sent and no retry can help: stop like a refused key.
            await self._stop_lane(
                lane, DeferReason.CERTIFICATE_FAILED, "certificate_rejected", str(exc)
            )
            return deferred(job.row, job.send_id, DeferReason.CERTIFICATE_FAILED)
        if reply.kind is ReplyKind.KEY_REFUSED:
            hint = _KEY_HINTS.get(reply.status, "")
            await self._stop_lane(
                lane, DeferReason.KEY_REFUSED, "key_refused", reply.message,
                http_status=reply.status, hint=hint,
            )  # fmt: skip
            return deferred(job.row, job.send_id, DeferReason.KEY_REFUSED)
        if reply.kind is ReplyKind.REDIRECTED:
            # The base URL is not the API (moved, a proxy, a login page): a misconfiguration
            # for the whole workspace, and following it would send the key elsewhere.
            message = redirect_message(reply.status, reply.location, lane.client.url)
            await self._stop_lane(
                lane,
                DeferReason.REDIRECTED,
                "base_url_redirected",
                message,
                http_status=reply.status,
            )
            return deferred(job.row, job.send_id, DeferReason.REDIRECTED)
        return final_outcome(job.row, job.send_id, attempts[0], reply, None)

    async def _stop_lane(
        self, lane: Lane, reason: str, event: str, message: str, **fields: object
    ) -> None:
        """Stop a workspace whose configuration is wrong (exit 4); the rest is deferred with
        ``reason``. Logged once, by the first request that found out."""
        first = lane.stop_reason is None
        lane.stop(reason, ExitCode.KEY_REFUSED, message)
        lane.interrupt(reason)
        await lane.budget.defer(reason)
        if first:
            log.error(event, workspace=lane.label, name=lane.name, message=message, **fields)

    async def _retry(self, lane: Lane, job: Job, attempts: list[int], first: Transient) -> Reply:
        pending: Transient | None = first
        async for attempt in self.policy.retrying(self.retry_budget, sleep=self._sleep):
            with attempt:
                if pending is not None:
                    exc, pending = pending, None
                    raise exc
                sent = attempts[0]
                try:
                    return await self.attempt(lane, job, attempts)
                finally:
                    # Counted once it went out: a retry held back by the breaker or a stop
                    # and then deferred was never sent.
                    if attempts[0] > sent:
                        self.stats.retries += 1
                        lane.stats.retries += 1
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def attempt(self, lane: Lane, job: Job, attempts: list[int]) -> Reply:
        """Send one request for the job; 429s pause and resend here, not as retries."""
        breaker = lane.breaker
        while True:
            probe = await breaker.allow() if not breaker.passing else False
            await lane.budget.acquire()
            gate = lane.gate
            if gate is not None and not await gate.admit(lane.budget):
                # The workers of a group have spent the window together: wait for the next.
                await lane.budget.cancel()
                lane.budget.exhaust()
                continue
            window = lane.budget.reset_at  # the window this request's unit came from
            if lane.spreader is not None:
                # After acquire: the window is known by then (the probe has answered).
                await lane.spreader.wait()
            await lane.pacer.wait()
            if lane.stop_reason is not None or self.stop_reason == DeferReason.KEY_REFUSED:
                _unused(lane, window)
                await lane.budget.cancel()
                raise Deferred(lane.stop_reason or DeferReason.KEY_REFUSED, None)
            if gate is not None and not await gate.spend(window, lane.budget):
                # No unit could be armed (the worker's lease lapsed, its reservation was
                # taken back): this request must not leave. Wait as for a spent window.
                _unused(lane, window)
                await lane.budget.cancel()
                lane.budget.exhaust()
                continue
            if not attempts[0]:
                # The intent is recorded here, after every wait (breaker, quota, even pace,
                # pacer), right before the request leaves: a kill while a row waits must
                # not leave it in doubt, since it never reached Braze (issue 18 item 4).
                # Only a row without a send_id needs it on disk first (it could otherwise
                # be created twice); a known send_id is safe to resend.
                await self.store.intent(
                    self.run_id, lane.label, job.key, job.send_id, job.row.line,
                    wait=job.send_id is None,
                )  # fmt: skip
            else:
                # A retry (or a resend after a 429) records no intent, but must not leave
                # from a run whose store has stopped: say a PostgreSQL lease that lapsed
                # while this row waited out its backoff (throttle raises then).
                await self.store.throttle()
            attempts[0] += 1
            self.stats.requests += 1
            lane.stats.requests += 1
            self.retry_budget.note_request()
            try:
                reply = await lane.client.create(job.row.campaign_id, job.send_id)
            except CertificateRejected:
                _unused(lane, window, sent=True)
                await lane.budget.cancel()  # never sent; not a server failure either
                raise
            except TransportError as exc:
                breaker.failure(probe, str(exc))
                if isinstance(exc, InDoubt):
                    await lane.budget.settle_unknown()
                    if job.send_id is None:
                        raise  # resending could create a second id
                else:  # ConnectFailed: never reached the server, spent nothing
                    _unused(lane, window, sent=True)
                    await lane.budget.cancel()
                message = lane.unreachable(exc)
                if message is not None:
                    await self._stop_lane(
                        lane, DeferReason.UNREACHABLE, "base_url_unreachable", message
                    )
                    raise Deferred(DeferReason.UNREACHABLE, None) from exc
                raise Transient(error=exc) from exc
            lane.answered = True
            self.stats.note_status(reply.status)
            lane.stats.note_status(reply.status)
            self.stats.latency.add(reply.latency_ms)
            if reply.kind is ReplyKind.REDIRECTED:
                # Not the API answering: its headers say nothing of the quota.
                _unused(lane, window, sent=True)
                await lane.budget.cancel()
                breaker.success(probe)
                return reply
            limited = reply.kind is ReplyKind.RATE_LIMITED
            # A 5xx that may have created, for a row that cannot be resent: final, and
            # counted as spent (the cap stays safe; the next headers correct the rest).
            doubtful = (
                reply.kind is ReplyKind.SERVER_ERROR
                and job.send_id is None
                and may_have_created(reply.status)
            )
            if gate is not None and window is not None:
                await gate.landed(window, reply.rate_limit)
            await lane.budget.observe(
                reply.rate_limit,
                created=reply.kind in (ReplyKind.CREATED, ReplyKind.QUEUED) or doubtful,
                rate_limited=limited,
                retry_after=reply.retry_after,
            )
            if reply.kind is ReplyKind.SERVER_ERROR:
                breaker.failure(probe, f"{lane.client.url} answered {reply.status}")
                if doubtful:
                    return reply  # in doubt: never resent (final_outcome says so)
                raise Transient(reply=reply)
            breaker.success(probe)
            if limited:
                self.stats.http_429 += 1
                lane.stats.http_429 += 1
                _unused(lane, window, sent=True)  # a 429 created nothing
                continue
            return reply


def _unused(lane: Lane, window: float | None, *, sent: bool = False) -> None:
    """Give a group's shared unit (of ``window``) back to the lane: this request spent no
    quota (``sent``: it left, on an armed unit, which the lane may use again)."""
    if lane.gate is not None:
        lane.gate.unused(window, sent=sent)


_KEY_HINTS = {
    401: "the key is unknown or missing: check BRAZE_API_KEY and the instance's base URL; "
    "if the key has an IP allowlist, this host's address may not be on it",
    403: "the key lacks the sends.id.create permission, or the plan does not allow it, or "
    "the key's IP allowlist does not include this host (a new or ephemeral runner)",
    404: "the key is unknown to this instance: check the base URL (rest.iad-0N, fra-0N ...)",
}
