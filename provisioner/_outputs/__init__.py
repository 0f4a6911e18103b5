"""What a run leaves behind: the output files, the summary, the report, metrics, progress.

Seam: ``files.ResultSink`` (the four output files, written atomically by ``FileSink``),
``summary.RunStats`` (the counts and summary.json's content), ``observe.RunObserver``
(anything that watches a run without changing it).
"""

from __future__ import annotations
