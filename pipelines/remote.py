"""Submitting the compiled pipeline to a Kubeflow Pipelines cluster with the kfp Client: one-off and recurring runs.

A recurring run continues one fine-tune: its run id is fixed and it resumes itself (`resume_from` = run id), so
each scheduled KFP run trains the next `rounds` rounds after the last committed one.
"""

import tempfile
from pathlib import Path

from dgrpo_pipelines.training import compile_pipeline
from kfp import Client

from dgrpo.config import RunConfig
from dgrpo.store import check_store_uri


def _parameters(store_uri: str, run_id: str, resume_from: str) -> dict[str, str]:
    """The run parameters the KFP API stores in its run records: the store URI passes the one check first (no
    credentials, a scheme the pods can reach)."""
    check_store_uri(store_uri, "--store", require_scheme=True)
    return {"store_uri": store_uri, "run_id": run_id, "resume_from": resume_from}


def submit(client: Client, config: RunConfig, store_uri: str, run_id: str, resume_from: str = "",
           experiment: str = "dgrpo", service_account: str | None = None) -> str:
    """Compile and submit one run of `config.rounds` rounds; returns the KFP run id."""
    params = _parameters(store_uri, run_id, resume_from)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(config, Path(tmp) / "pipeline.yaml")
        result = client.create_run_from_pipeline_package(
            str(package), arguments=params, run_name=f"{run_id}" + (f" (resumes {resume_from})" if resume_from
                                                                    else ""),
            experiment_name=experiment, enable_caching=None, service_account=service_account)
    return result.run_id


def schedule(client: Client, config: RunConfig, store_uri: str, run_id: str, cron: str, experiment: str = "dgrpo",
             service_account: str | None = None, enabled: bool = True) -> str:
    """Create a recurring run that continues fine-tune `run_id` on the `cron` schedule; returns its id."""
    if len(cron.split()) != 6:
        raise ValueError(f"--cron {cron!r}: KFP cron has 6 fields (seconds first), e.g. '0 0 2 * * *' for 02:00 "
                         "daily")
    params = _parameters(store_uri, run_id, run_id)
    exp = client.create_experiment(experiment)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(config, Path(tmp) / "pipeline.yaml")
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id, job_name=f"{run_id} nightly", cron_expression=cron,
            description=f"continues dgrpo fine-tune {run_id}, {config.rounds} rounds per run",
            max_concurrency=1, no_catchup=True, params=params, pipeline_package_path=str(package),
            enabled=enabled, service_account=service_account)
    return job.recurring_run_id
