"""Starting a fine-tune on a Kubeflow Pipelines cluster through the v2beta1 REST API (`dgrpo.runtime.kfp_rest`).

`submit` stores the config and the compiled segment pipeline in the artifact store, claims (or checks) the
fine-tune and creates its first segment run; every segment's exit task then submits the next until the chain
ends. `schedule` creates a recurring run instead (max concurrency 1, no catch-up): each scheduled run is one
segment, and once the fine-tune is complete the runs end at once. A resume, and every scheduled run, first breaks
a lease whose holder's KFP run has finished (its exit task never ran), so a low-frequency schedule is a watchdog.
"""

import tempfile
from pathlib import Path

import yaml
from dgrpo_pipelines.kubernetes import check_cluster_images
from dgrpo_pipelines.training import compile_pipeline

from dgrpo.config import RunConfig
from dgrpo.runs.records import ChainRecord
from dgrpo.runs.segments import read_chain
from dgrpo.runtime import fine_tune, kfp_rest
from dgrpo.store import ArtifactStore, check_store_uri, open_store


def _store(store_uri: str) -> ArtifactStore:
    """The fine-tune's store: a URI the pods reach, without credentials (the KFP API keeps run parameters)."""
    return open_store(check_store_uri(store_uri, "--store", require_scheme=True), "--store")


def compiled(config: RunConfig) -> tuple[dict, dict | None]:
    """The segment pipeline's IR and its kfp-kubernetes platform spec (None without cluster settings)."""
    with tempfile.TemporaryDirectory() as tmp:
        docs = list(yaml.safe_load_all(compile_pipeline(config, Path(tmp) / "pipeline.yaml").read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else None)


def _chain(client: kfp_rest.KfpClient, store: ArtifactStore, config: RunConfig, run_id: str, resume_from: str,
           experiment: str, mode: str, watchdog_cron: str = "") -> tuple[ChainRecord, dict, dict | None]:
    check_cluster_images(config.kubernetes)  # before anything is stored or submitted
    spec, platform = compiled(config)
    experiment_id = client.experiment_id(experiment)
    earlier = fine_tune.chain_kfp(store, run_id)
    kfp = {"endpoint": config.kubernetes.kfp_endpoint, "experiment_id": experiment_id, "namespace": client.namespace,
           "service_account": config.kubernetes.service_account, "pipeline_root": config.kubernetes.pipeline_root,
           "pipeline_sha256": kfp_rest.put_pipeline(store, spec, platform).sha256}
    if watchdog_cron or earlier.get("watchdog_cron"):  # a watchdog schedule outlives resubmissions
        kfp["watchdog_cron"] = watchdog_cron or earlier["watchdog_cron"]
    record = fine_tune.start(store, config, run_id, resume_from, mode=mode, kfp=kfp,
                             holder_state=client.run_state)
    return record, spec, platform


def submit(client: kfp_rest.KfpClient, config: RunConfig, store_uri: str, run_id: str, resume_from: str = "",
           experiment: str = "dgrpo") -> str:
    """Start (or resume) the fine-tune and create its first segment run; returns the KFP run id."""
    store = _store(store_uri)
    record, spec, platform = _chain(client, store, config, run_id, resume_from, experiment, "kfp")
    body = kfp_rest.run_body(
        display_name=f"{run_id} segment" + (f" (resumes {resume_from})" if resume_from else ""),
        experiment_id=record.kfp["experiment_id"], spec=spec, platform=platform,
        parameters=fine_tune.segment_parameters(store, record), service_account=config.kubernetes.service_account,
        pipeline_root=config.kubernetes.pipeline_root,
        description=f"dgrpo fine-tune {run_id}: {config.rounds} rounds, {config.pipeline.rounds_per_run} per run")
    return client.create_run(body)


def schedule(client: kfp_rest.KfpClient, config: RunConfig, store_uri: str, run_id: str, cron: str,
             experiment: str = "dgrpo", enabled: bool = True) -> str:
    """Create a recurring run whose runs each train the next segment of fine-tune `run_id`; returns its id.

    On a fine-tune already submitted (a chain of runs that submit each other) the schedule is its watchdog: the
    chain keeps submitting itself, and each scheduled run breaks a lease whose holder's run finished and trains
    on, or ends at once while a segment is training."""
    kfp_rest.check_cron(cron)
    store = _store(store_uri)
    _refuse_a_second_schedule(client, experiment, run_id)
    claimed = fine_tune.read_claim(store, run_id) is not None
    chain = read_chain(store, run_id)
    submitted = chain is not None and chain.mode == "kfp"
    record, spec, platform = _chain(client, store, config, run_id, run_id if claimed else "", experiment,
                                    "kfp" if submitted else "schedule", watchdog_cron=cron if submitted else "")
    body = kfp_rest.recurring_run_body(
        display_name=f"{run_id} chain", experiment_id=record.kfp["experiment_id"], spec=spec,
        platform=platform, parameters=fine_tune.segment_parameters(store, record), cron=cron,
        service_account=config.kubernetes.service_account, enabled=enabled,
        pipeline_root=config.kubernetes.pipeline_root,
        description=f"continues dgrpo fine-tune {run_id}, {config.pipeline.rounds_per_run} rounds per run, until "
                    f"{config.rounds} rounds")
    return client.create_recurring_run(body)


def _refuse_a_second_schedule(client: kfp_rest.KfpClient, experiment: str, run_id: str) -> None:
    """One recurring run per fine-tune, found by its name ("<run id> chain") before anything is stored: a second
    would double the fine-tune's runs and, with another cron or config, leave two schedules nobody chose. Refused,
    not replaced: deleting a schedule someone may rely on is for a person to do."""
    name = f"{run_id} chain"
    live = [job for job in client.find_recurring_runs(client.experiment_id(experiment), name)
            if job.get("status") != "DISABLED"]
    if live:
        job = live[0]
        cron = (job.get("trigger") or {}).get("cron_schedule", {}).get("cron", "?")
        raise ValueError(f"fine-tune {run_id} is already scheduled: recurring run {job['recurring_run_id']} "
                         f"({name!r}, cron '{cron}') in experiment {experiment!r}; to change its schedule or "
                         "config, delete that recurring run (KFP UI, or `kfp recurring-run delete "
                         f"{job['recurring_run_id']}`) and schedule again")
