"""Turning what happened to a row into its final ``Outcome``, with messages for a person.

Every message says what happened, what it means and what to do. Error codes are stable
(scripts match on them): ``invalid_campaign_id``, ``invalid_request``, ``in_doubt``,
``queued``, ``bad_response``, ``send_id_mismatch``, ``server_error``, ``connection_failed``,
``unexpected_response``, plus the validation codes of ``rules.ERROR_CODES``.
"""

from __future__ import annotations

from provisioner._braze.client import Reply, ReplyKind, may_have_created
from provisioner._core.models import Outcome, Row, RowError, Status
from provisioner._core.times import iso
from provisioner._state.schema import Prior
from provisioner.errors import ConnectFailed, Transient

_IN_DOUBT_ADVICE = (
    "check in the Braze dashboard whether campaign {cid} got a send id at that time before "
    "sending it again; then rerun with --retry-in-doubt to send it anyway, or use "
    "--derive-send-ids so that a row can always be resent safely"
)


def failed_from_error(err: RowError) -> Outcome:
    """A malformed or invalid row: never sent."""
    return Outcome(
        line=err.line,
        status=Status.FAILED,
        campaign_id=err.campaign_id,
        send_id=err.send_id,
        columns=err.columns,
        error=err.error,
        message=err.message,
        field=err.field,
        retryable=False,
    )


def failed_in_doubt(
    row: Row, *, attempts: int = 0, detail: str | None = None, prior: Prior | None = None
) -> Outcome:
    """A row without a send_id whose request may have reached Braze: never resent blindly."""
    advice = _IN_DOUBT_ADVICE.format(cid=row.campaign_id)
    if prior is not None:
        message = (
            f"an earlier run ({prior.run_id}, {iso(prior.at)}) sent this row and stopped before "
            f"Braze's answer was recorded; {advice}"
        )
    else:
        message = f"{detail or 'no answer came back'}: Braze may have created a send id; {advice}"
    return Outcome(
        line=row.line,
        status=Status.FAILED,
        campaign_id=row.campaign_id,
        send_id=None,
        columns=row.columns,
        attempts=attempts,
        error="in_doubt",
        message=message,
        retryable=False,
    )


def deferred(row: Row, send_id: str | None, reason: str) -> Outcome:
    """A row not attempted, or told to wait: it goes to deferred.csv for the next run."""
    return Outcome(
        line=row.line,
        status=Status.DEFERRED,
        campaign_id=row.campaign_id,
        send_id=send_id,
        columns=row.columns,
        reason=reason,
    )


def skipped(row: Row, send_id: str | None, prior: Prior) -> Outcome:
    """A row an earlier run already created: nothing sent.

    The run itself hands skipped rows to the store and the sink a batch at a time, without
    this Outcome (``Run._emit_skipped``); what they write must equal what they write for it.
    """
    return Outcome(
        line=row.line,
        status=Status.SKIPPED,
        campaign_id=row.campaign_id,
        send_id=prior.send_id or send_id,
        columns=row.columns,
        created_run=prior.run_id,
        created_at=prior.at,
    )


def _failed(
    row: Row,
    send_id: str | None,
    attempts: int,
    reply: Reply | None,
    error: str,
    message: str,
    *,
    retryable: bool,
) -> Outcome:
    return Outcome(
        line=row.line,
        status=Status.FAILED,
        campaign_id=row.campaign_id,
        send_id=send_id,
        columns=row.columns,
        attempts=attempts,
        http_status=reply.status if reply else None,
        latency_ms=reply.latency_ms if reply else None,
        error=error,
        message=message,
        retryable=retryable,
    )


def final_outcome(
    row: Row, send_id: str | None, attempts: int, reply: Reply | None, gave_up: Transient | None
) -> Outcome:
    """The outcome of a row that got a final reply, or whose retries ran out."""
    if gave_up is not None:
        last = gave_up.reply
        # Without this a row the budget denied reads "on 1 attempts", as if no retry policy.
        budget = (
            " (not retried further: the run's retry budget is spent, because so many "
            "requests failed that retrying them all would multiply the load)"
            if gave_up.budget_spent
            else ""
        )
        if last is not None:
            # Only a row with a send_id gets here after a 5xx that may have created (it is
            # resent: the same combination); a row without one is in doubt at the first.
            after = (
                f"Braze may have created it; running again later is safe: it resends the "
                f"same send_id {send_id}"
                if send_id is not None and may_have_created(last.status)
                else "the row was not created and is safe to run again later"
            )
            msg = (
                f"Braze answered {last.status} ({last.message or 'server error'}) on "
                f"{attempts} attempts{budget}; {after}"
            )
            return _failed(row, send_id, attempts, last, "server_error", msg, retryable=True)
        code = (
            "connection_failed" if isinstance(gave_up.error, ConnectFailed) else "connection_lost"
        )
        msg = (
            f"{gave_up.error} (after {attempts} attempts){budget}; the row is safe to run "
            f"again later" + ("" if send_id is None else f" with the same send_id {send_id}")
        )
        return _failed(row, send_id, attempts, None, code, msg, retryable=True)
    assert reply is not None
    kind = reply.kind
    if kind is ReplyKind.CREATED and send_id is not None and reply.send_id != send_id:
        # Braze documents the requested id coming back; another one means the server did
        # something else than asked (or is not Braze): never a plain success.
        msg = (
            f"Braze answered success with send_id {reply.send_id!r}, not the requested "
            f"{send_id!r}: check in the Braze dashboard which send id campaign "
            f"{row.campaign_id} got before running this row again (a rerun sends it again)"
        )
        return _failed(row, send_id, attempts, reply, "send_id_mismatch", msg, retryable=False)
    if kind is ReplyKind.CREATED:
        return Outcome(
            line=row.line,
            status=Status.CREATED,
            campaign_id=row.campaign_id,
            send_id=reply.send_id,
            columns=row.columns,
            attempts=attempts,
            http_status=reply.status,
            latency_ms=reply.latency_ms,
        )
    if kind is ReplyKind.INVALID:
        about_campaign = "campaign" in reply.message.lower() or reply.status == 400
        code = "invalid_campaign_id" if about_campaign and send_id is None else "invalid_request"
        if about_campaign and "send" not in reply.message.lower():
            code = "invalid_campaign_id"
        msg = (
            f"Braze rejected the row ({reply.status}: {reply.message or 'no message'}); "
            f"check the campaign's API identifier in the Braze dashboard and fix the manifest"
        )
        return _failed(row, send_id, attempts, reply, code, msg, retryable=False)
    if kind is ReplyKind.SERVER_ERROR:
        # Returned as final only for a row without a send_id and a 5xx that may have
        # created (runner.attempt): in doubt, never resent.
        return _failed(
            row,
            None,
            attempts,
            reply,
            "in_doubt",
            f"Braze answered {reply.status} ({reply.message or 'server error'}), which comes "
            f"after the request reached the server or a gateway in front of it: Braze may "
            f"have created a send id; " + _IN_DOUBT_ADVICE.format(cid=row.campaign_id),
            retryable=False,
        )
    if kind in (ReplyKind.QUEUED, ReplyKind.BAD_RESPONSE):
        what = (
            "Braze queued the request (202, maintenance) and returned no send_id"
            if kind is ReplyKind.QUEUED
            else f"Braze answered {reply.status} without a usable send_id ({reply.message})"
        )
        if send_id is None:
            return _failed(
                row,
                None,
                attempts,
                reply,
                "in_doubt",
                f"{what}: Braze may have created a send id; "
                + _IN_DOUBT_ADVICE.format(cid=row.campaign_id),
                retryable=False,
            )
        code = "queued" if kind is ReplyKind.QUEUED else "bad_response"
        return _failed(
            row,
            send_id,
            attempts,
            reply,
            code,
            f"{what}; send_id {send_id} is known, so running again later is safe and confirms it",
            retryable=True,
        )
    # A redirect (3xx) never gets here: it stops the workspace (runner, reason "redirected").
    msg = f"unexpected answer {reply.status} ({reply.message}); report it with the run id"
    return _failed(row, send_id, attempts, reply, "unexpected_response", msg, retryable=False)


def unknown_workspace(row: Row, known: list[str]) -> Outcome:
    """A row naming a workspace the config does not declare: never sent."""
    return Outcome(
        line=row.line,
        status=Status.FAILED,
        campaign_id=row.campaign_id,
        send_id=row.send_id,
        columns=row.columns,
        error="unknown_workspace",
        field="workspace",
        message=f"workspace {row.workspace!r} is not declared in the config "
        f"(declared: {', '.join(known)}): fix the manifest or add a [[workspaces]] table",
    )


def duplicate(row: Row, send_id: str, first: int) -> Outcome:
    """A later copy of a pair already in this manifest: sent once, for the first copy."""
    return Outcome(
        line=row.line,
        status=Status.DUPLICATE,
        campaign_id=row.campaign_id,
        send_id=send_id,
        columns=row.columns,
        duplicate_of=first,
    )
