"""The run itself: rows in, one decision per row, requests out, outcomes recorded.

Seam: ``runner.Run`` drives one manifest through the stages below it; ``workspace_lane``
isolates a workspace, ``outcomes`` turns an answer into a recorded status, ``validate`` is
the dry run.
"""

from __future__ import annotations
