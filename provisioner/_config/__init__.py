"""Settings: the frozen ``Settings`` a run is given, the API key and base URL, workspaces.

Seam: ``settings.Settings`` (built by ``settings.load_settings``); the layers above read it,
none of them parses configuration themselves.
"""

from __future__ import annotations
