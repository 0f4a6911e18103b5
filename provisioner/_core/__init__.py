"""The bottom layer: records (models), identity helpers and logging set-up.

Everything else may import from here; nothing here imports from another provisioner package
except ``provisioner.errors``.
"""

from __future__ import annotations
