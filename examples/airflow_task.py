"""Provisioning from an orchestrator: an Airflow-style task around the Python API.

The function below is what a ``PythonOperator`` (or a Dagster op, a Prefect task) calls.
Wire it up in a DAG file, for instance::

    from airflow import DAG
    from airflow.operators.python import PythonOperator

    with DAG("braze_send_ids", schedule="@daily", catchup=False, max_active_runs=1) as dag:
        PythonOperator(
            task_id="provision",
            python_callable=provision_campaigns,
            op_kwargs={"manifest": "/data/campaigns.csv", "out_dir": "/data/out/{{ ds }}"},
        )

The API key comes from the worker's environment (``BRAZE_API_KEY``, e.g. from a
connection or a secrets backend), never from the DAG's arguments.
"""

from __future__ import annotations

from provisioner import ExitCode, ProvisionerError, build_settings, run


class ProvisioningIncomplete(Exception):
    """Raised so the orchestrator marks the task failed (and retries it per its policy)."""


def provision_campaigns(manifest: str, out_dir: str, quota: int | None = None) -> dict[str, int]:
    """Provision ``manifest`` into ``out_dir``; return the counts (pushed to XCom by Airflow).

    Deferred rows (quota spent) are not a failure: the next scheduled run picks them up
    from the state store, so the task succeeds and reports them.
    """
    try:
        # No log set-up here: the run logs through stdlib logging, i.e. the task's log.
        settings = build_settings(manifest=manifest, out_dir=out_dir, cli={"quota": quota})
        result = run(settings)
    except ProvisionerError as exc:  # bad manifest, config, output folder or state store
        raise ProvisioningIncomplete(f"nothing was sent: {exc}") from exc
    if result.exit_code in (ExitCode.ROWS_FAILED, ExitCode.KEY_REFUSED):
        raise ProvisioningIncomplete(
            f"run {result.run_id} ended with exit code {result.exit_code}: "
            f"see {out_dir}/failures.jsonl; counts {result.counts}"
        )
    return result.counts
