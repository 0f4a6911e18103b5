"""Talking to Braze: the HTTP client, the quota and pacing, the circuit breaker, retries.

Seam: ``sender.Sender`` (``client.BrazeClient`` is the real one) sends one request and
classifies its answer; ``quota`` (the server's window) and ``pacing`` (the even pace)
decide when the next request may go, ``breaker`` when to stop sending at all.
"""

from __future__ import annotations
