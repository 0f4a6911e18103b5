"""The sender seam: what the run needs from whatever sends one create request.

``client.BrazeClient`` is the real one (aiohttp, one session per workspace);
``provisioner.testing.ScriptedSender`` is a fake that answers from a script, so that the
run's retries, 429 pauses, breaker and in-doubt handling are tested without sockets. The
run types against this Protocol only, never against the client class.
"""

from __future__ import annotations

from typing import Protocol

from provisioner._braze.client import Reply


class Sender(Protocol):
    """Sends one ``POST /sends/id/create`` and classifies its answer."""

    #: The endpoint's URL, named in messages (a redirect, an outage); never holds the key.
    url: str

    async def create(self, campaign_id: str, send_id: str | None) -> Reply:
        """One request. Returns the classified ``Reply``; raises ``ConnectFailed`` when
        the request certainly never reached the server, ``InDoubt`` when it may have."""
        ...
