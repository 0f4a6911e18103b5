"""provisioner: create Braze send ids from a manifest, concurrently, within the quota."""

from __future__ import annotations

__version__ = "0.1.0"
