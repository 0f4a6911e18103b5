"""The ``--metrics-file`` observer: a run's figures in Prometheus text format.

The file is meant for node_exporter's textfile collector (``--collector.textfile.directory``;
the collector reads only files ending in ``.prom``). It is rewritten every ``interval``
seconds during the run and once more at the end: the text goes to a new temporary file
beside it (``.NAME.<random>.tmp``, which the collector ignores, created with ``O_EXCL |
O_NOFOLLOW`` so that a link planted in the folder is never written through; not
prometheus-client's ``write_to_textfile``, whose ``PATH.<pid>.<thread>`` is guessable) and
renamed over PATH, so a scrape never sees half a file.

Figures of a workspace (rows, requests, quota) carry a ``workspace`` label (``ws-`` + a
hash of its API key, never the key), one series per workspace of the run, each with that
workspace's own values; they add up to the run's totals in summary.json. Rows that name
no declared workspace (invalid rows, an unknown ``workspace`` value) count under the
default workspace, as the state store records them. The run's own figures (duration,
start, finished, exit code, last success, run info) are one series each, labelled
``workspaces``: the run's workspace labels, sorted and comma-separated (just the one
label without ``[[workspaces]]``). So the files of cron jobs for different workspaces can
sit in one collector folder without clashing (node_exporter refuses a series that two
files both hold). Two jobs for the same workspace need distinct files *and* would still
clash in the collector; run them from one manifest instead. The names are stable:

``provisioner_rows{workspace, status}``
    This run's rows by final status so far: ``created``, ``duplicate``, ``skipped``,
    ``failed``, ``deferred`` (all five always present).
``provisioner_requests{workspace, class}``
    HTTP requests sent by this run (retries included) by the class of the answer: ``2xx``,
    ``4xx`` (429 included), ``5xx`` always present, ``1xx``/``3xx`` when seen, and ``none``
    for requests that got no HTTP answer (connection failed or lost, read timeout), so the
    classes add up to ``requests`` in summary.json.
``provisioner_retries{workspace}``
    Requests that were retries of an earlier attempt (5xx, connection errors).
``provisioner_http_429{workspace}``
    429 answers received (pauses, never row failures).
``provisioner_workspace_info{workspace, name}``
    Always 1; ``name`` is the workspace's configured name (``default`` without
    ``[[workspaces]]``), to show names instead of labels on a dashboard.
``provisioner_run_duration_seconds{workspaces}``
    Seconds since the run started (the whole run once finished).
``provisioner_run_started_timestamp_seconds{workspaces}``
    When the run started, epoch seconds.
``provisioner_run_finished{workspaces}``
    0 while the run is going, 1 once its outputs are written.
``provisioner_run_exit_code{workspaces}``
    The run's exit code (README, "Exit codes"); absent until the run has finished.
``provisioner_last_success_timestamp_seconds{workspaces}``
    When the last run that ended with exit code 0 finished, epoch seconds. It outlives
    runs: until this run succeeds, the value is carried over from the file found at PATH
    when the first write happened (whatever its labels, so a rotated key keeps
    the history). Absent when no run has succeeded yet, or the old file was missing or
    unreadable. Alert on ``time() - provisioner_last_success_timestamp_seconds``; note that
    a run limited by quota ends with exit code 3, which is not a success.
``provisioner_quota_remaining{workspace}``, ``provisioner_quota_limit{workspace}``
    Creations left in, and allowed per, the workspace's current quota window as the server
    last reported them (or the configured default before the first answer); absent if unknown.
``provisioner_quota_reset_timestamp_seconds{workspace}``
    When the current quota window ends, epoch seconds; absent until known.
``provisioner_rows_per_second{workspace}``
    The workspace's rows sent (created or failed; not deferred, skipped or duplicate) per
    second of run time so far; absent before the first instant passes.
``provisioner_run_info{workspaces, run_id, manifest}``
    Always 1; the labels name the run (as in ``provisioner status``) and its manifest.

All figures are gauges, not counters, even those that only grow during a run: each file
describes one run, and the next run starts again from zero. Exposed as counters, that
reset would look like a process restart to ``rate()``/``increase()``, and the ``_total``
names would promise a monotonic series the file cannot keep across runs. Read them with
``max_over_time`` or as they are.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, exposition
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from provisioner._core.models import Status
from provisioner._core.safefile import create_temporary
from provisioner._outputs.observe import Snapshot, WorkspaceFigures
from provisioner.errors import OutputError

__all__ = ["LAST_SUCCESS", "MetricsFile", "check_metrics_path"]

#: The one metric read back from the previous file.
LAST_SUCCESS = "provisioner_last_success_timestamp_seconds"

# An old "metrics file" larger than this is not one of ours (a mistyped path?): it is not
# parsed, only replaced. Ours are well under 4 KiB.
_MAX_OLD_FILE = 1 << 20

_HTTP_CLASSES = ("2xx", "4xx", "5xx")


class MetricsFile:
    """Writes a run's figures to a Prometheus textfile at ``path`` (a ``RunObserver``)."""

    def __init__(
        self, path: Path, *, interval: float = 15.0, clock: Callable[[], float] = time.time
    ) -> None:
        """Name the file; nothing is read or written before the first ``update``/``close``.

        ``clock`` gives the time recorded as the last success when a run ends with 0.
        """
        self.path = Path(path)
        self.interval = interval
        self._clock = clock
        self._loaded = False
        self._last_success: float | None = None

    def update(self, snapshot: Snapshot) -> None:
        """Replace the file with the figures of ``snapshot`` (raises OSError if it cannot)."""
        self._write(snapshot)

    def close(self, snapshot: Snapshot) -> None:
        """The final write: finished, exit code and, on exit code 0, the last success time."""
        self._write(snapshot)

    def _write(self, snapshot: Snapshot) -> None:
        if not self._loaded:
            # Read before our first write replaces it: the previous run's file is the only
            # memory of the last success that survives between cron runs.
            self._last_success = read_last_success(self.path)
            self._loaded = True
        if snapshot.finished and snapshot.exit_code == 0:
            self._last_success = self._clock()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector(snapshot, self._last_success))
        _replace(self.path, exposition.generate_latest(registry))


def _replace(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` through a new temporary and a rename; on any error the
    temporary is removed and the error re-raised (the old file stays)."""
    fd, temporary = create_temporary(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def check_metrics_path(path: Path) -> None:
    """Raise ``OutputError`` unless a metrics file can be written at ``path``.

    Called before any request is sent, so a mistyped ``--metrics-file`` costs no quota.
    The folder must exist (it is not created: it is usually node_exporter's textfile
    folder, and a missing one means a wrong path) and accept new files, because every
    write creates a temporary file there and renames it.
    """
    path = Path(path)
    folder = path.parent
    fix = "create it or choose another --metrics-file"
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise OutputError(
            f"cannot write the metrics file {path}: the folder {folder} {what}; {fix}"
        )
    if path.is_dir():
        raise OutputError(
            f"cannot write the metrics file {path}: it is a folder; "
            "give a file name such as provisioner.prom"
        )
    try:
        # A real probe rather than os.access: ACLs, read-only mounts and root all make
        # the permission bits lie.
        fd, probe = tempfile.mkstemp(prefix=".provisioner-metrics-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"cannot write the metrics file {path}: the folder {folder} is not writable "
            f"({exc.strerror or exc}); fix its permissions or choose another --metrics-file"
        ) from None


def read_last_success(path: Path) -> float | None:
    """The last-success timestamp in the metrics file at ``path``, or None.

    None when the file is missing, unreadable, too large, not in the text format, or
    has no finite value for the metric: an old file must never stop a run.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_OLD_FILE + 1)
    except OSError:
        return None
    if len(data) > _MAX_OLD_FILE:
        return None
    try:
        families = list(text_string_to_metric_families(data.decode("utf-8")))
    # The parser's failures are not a documented set (ValueError, but IndexError too on
    # some garbage); any of them means "not a metrics file we can use".
    except Exception:
        return None
    values = [
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == LAST_SUCCESS and math.isfinite(sample.value)
    ]
    # Several samples (two workspace labels, say) can only come from a hand-edited file;
    # the latest success is the meaningful one.
    return max(values) if values else None


class _SnapshotCollector(Collector):
    """One snapshot as metric families, for a registry that lives for one write."""

    def __init__(self, snapshot: Snapshot, last_success: float | None) -> None:
        self._s = snapshot
        self._last_success = last_success

    def collect(self) -> Iterable[Metric]:
        s = self._s
        per_ws = _per_workspace(s)
        run = ",".join(sorted(per_ws))

        def families(
            name: str, doc: str, label: str | None, values: Callable[[WorkspaceFigures], object]
        ) -> GaugeMetricFamily | None:
            """One family with a sample per workspace (and per ``label`` value, when the
            figure is a list of pairs); None when no workspace knows the figure."""
            family = GaugeMetricFamily(
                name, doc, labels=["workspace", label] if label else ["workspace"]
            )
            for workspace, figures in per_ws.items():
                value = values(figures)
                if isinstance(value, list):
                    for key, v in value:
                        family.add_metric([workspace, key], v)
                elif isinstance(value, int | float):
                    family.add_metric([workspace], value)
            return family if family.samples else None

        def run_gauge(
            name: str, doc: str, value: float | None, **labels: str
        ) -> GaugeMetricFamily | None:
            if value is None:
                return None
            family = GaugeMetricFamily(name, doc, labels=["workspaces", *labels])
            family.add_metric([run, *labels.values()], value)
            return family

        def statuses(f: WorkspaceFigures) -> list[tuple[str, float]]:
            names = [st.value for st in Status]
            names += sorted(k for k in f.counts if k not in names)
            return [(st, f.counts.get(st, 0)) for st in names]

        def classes(f: WorkspaceFigures) -> list[tuple[str, float]]:
            names = list(_HTTP_CLASSES)
            names += sorted(k for k in f.http_by_class if k not in names)
            answered = sum(f.http_by_class.values())
            out: list[tuple[str, float]] = [(c, f.http_by_class.get(c, 0)) for c in names]
            return [*out, ("none", max(f.requests - answered, 0))]

        found = [
            families(
                "provisioner_rows",
                "This run's rows by final status so far, per workspace.",
                "status",
                statuses,
            ),
            families(
                "provisioner_requests",
                "HTTP requests sent by this run (retries included) by answer class, per "
                "workspace; none: no HTTP answer.",
                "class",
                classes,
            ),
            families(
                "provisioner_retries", "Retried requests in this run.", None, lambda f: f.retries
            ),
            families(
                "provisioner_http_429",
                "429 answers received in this run.",
                None,
                lambda f: f.http_429,
            ),
            families(
                "provisioner_workspace_info",
                "Always 1; the name label is the workspace's configured name.",
                "name",
                lambda f: [(f.name, 1)],
            ),
            run_gauge(
                "provisioner_run_duration_seconds",
                "Seconds since this run started (its whole length once finished).",
                s.elapsed_s,
            ),
            run_gauge(
                "provisioner_run_started_timestamp_seconds",
                "When this run started, epoch seconds.",
                s.started_at,
            ),
            run_gauge(
                "provisioner_run_finished",
                "1 once this run has finished and written its outputs, else 0.",
                1 if s.finished else 0,
            ),
            run_gauge(
                "provisioner_run_exit_code",
                "This run's exit code (absent until it has finished).",
                s.exit_code if s.finished else None,
            ),
            run_gauge(
                LAST_SUCCESS,
                "When the last run with exit code 0 finished, epoch seconds.",
                self._last_success,
            ),
            families(
                "provisioner_quota_remaining",
                "Creations left in the workspace's current quota window.",
                None,
                lambda f: f.quota_remaining,
            ),
            families(
                "provisioner_quota_limit",
                "Creations allowed per quota window in the workspace.",
                None,
                lambda f: f.quota_limit,
            ),
            families(
                "provisioner_quota_reset_timestamp_seconds",
                "When the workspace's current quota window ends, epoch seconds.",
                None,
                lambda f: f.quota_reset_at,
            ),
            families(
                "provisioner_rows_per_second",
                "Rows sent (created or failed) per second of this run so far, per workspace.",
                None,
                lambda f: f.rows_per_s,
            ),
            run_gauge(
                "provisioner_run_info",
                "Always 1; the labels name this run and its manifest.",
                1,
                run_id=s.run_id,
                manifest=s.manifest,
            ),
        ]
        yield from (family for family in found if family is not None)


def _per_workspace(s: Snapshot) -> dict[str, WorkspaceFigures]:
    """The snapshot's workspaces; one made of its totals when it has none (a snapshot
    built by hand, as the tests and older callers do)."""
    if s.by_workspace:
        return s.by_workspace
    return {
        s.workspace: WorkspaceFigures(
            name=s.workspace,
            counts=s.counts,
            requests=s.requests,
            retries=s.retries,
            http_429=s.http_429,
            http_by_class=s.http_by_class,
            rows_per_s=s.rows_per_s,
            quota_limit=s.quota_limit,
            quota_remaining=s.quota_remaining,
            quota_reset_at=s.quota_reset_at,
        )
    }
