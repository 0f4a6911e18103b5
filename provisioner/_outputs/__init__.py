"""What a run leaves behind: the output files, the summary, the report, metrics, display.

Seam: ``files.Outputs`` (the four output files, written atomically), ``stats.Stats`` (the
counts), ``observe.RunObserver`` (anything that watches a run without changing it).
"""

from __future__ import annotations
