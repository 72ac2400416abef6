"""Starting a fine-tune on a Kubeflow Pipelines cluster through the v2beta1 REST API (`dgrpo.runtime.kfp_rest`).

`submit` stores the config and the compiled segment pipeline in the artifact store, claims (or checks) the
fine-tune and creates its first segment run; every segment's exit task then submits the next until the chain
ends. `schedule` creates a recurring run instead (max concurrency 1, no catch-up): each scheduled run is one
segment, and once the fine-tune is complete the runs end at once. A resume, and every scheduled run, first breaks
a lease whose holder's KFP run has finished (its exit task never ran), so a low-frequency schedule is a watchdog.
`team_error` reads what a crashed team container wrote from its pod's log, which the exit task cannot.
"""

import collections
import json
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from dgrpo_pipelines.errors import one_line, own_last_error
from dgrpo_pipelines.kubernetes import check_cluster_images
from dgrpo_pipelines.swaps import (
    failed_swap,
    own_error_clause,
    record_own_error,
    recorded_own_error,
    swapped_task_names,
)
from dgrpo_pipelines.training import compile_pipeline

from dgrpo.config import RunConfig
from dgrpo.runs.records import ChainRecord
from dgrpo.runs.segments import last_segment, read_chain
from dgrpo.runtime import fine_tune, kfp_rest
from dgrpo.store import ArtifactStore, check_store_uri, open_store

LOG_TAIL_LINES = 2000
"""How much of a pod's log is kept to find its last error: the end is what counts, and a log may be large."""


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


def team_error(client: kfp_rest.KfpClient, store: ArtifactStore, run_id: str) -> str:
    """When a swapped component stopped fine-tune `run_id`'s last segment: the clause that adds the last line of
    its own error, read from its pod's log through the KFP API, kept in the store once (`swaps.record_own_error`);
    else "". A log that cannot be read (no permission, a pod and an archive gone) is said in the clause: this is
    only a diagnosis, so it never raises."""
    record = last_segment(store, run_id)
    found = failed_swap(record)
    if found is None or not record.kfp_run_id:
        return ""
    where = f"the pod log of KFP run {record.kfp_run_id}"
    if (kept := recorded_own_error(store, run_id, record)) is not None:
        return own_error_clause(kept, where)
    try:
        chain = read_chain(store, run_id)
        if chain is None or not (chain.kfp or {}).get("pipeline_sha256"):
            return f"; its own error could not be read from {where} (the chain record names no stored pipeline)"
        ir, _ = kfp_rest.get_pipeline(store, chain.kfp["pipeline_sha256"])
        names = swapped_task_names(ir, found[0])
        details = (client.get_run(record.kfp_run_id).get("run_details") or {}).get("task_details") or []
        pods = [child["pod_name"] for task in details if task.get("display_name") in names
                and task.get("state") == "FAILED" for child in task.get("child_tasks") or [] if child.get("pod_name")]
        why = "KFP lists no failed pod of it"
        for pod in pods:
            if line := own_last_error(read_pod_log(client, record.kfp_run_id, pod)):
                return own_error_clause(record_own_error(store, run_id, record, line), where)
            why = f"pod {pod}'s log holds no line of its own"
    except Exception as exc:  # noqa: BLE001 - a diagnosis that fails must not fail the command that asked for it
        why = one_line(f"{type(exc).__name__}: {exc}", 200)
    return f"; its own error could not be read from {where} ({why})"


def read_pod_log(client: kfp_rest.KfpClient, kfp_run_id: str, node_id: str) -> list[str]:
    """The last lines of the `main` container's log of Argo node `node_id` (a task detail's `child_tasks[].pod_name`)
    of run `kfp_run_id`, from the API server's log endpoint with the client's token: it reads the pod, else the log
    archive. The server writes HTTP 200 before it reads (run_log_server.go), so a failure is a JSON body holding
    `error_message`, alone or after the part of the log it streamed. KfpApiError when it cannot be read."""
    run, node = urllib.parse.quote(kfp_run_id, safe=""), urllib.parse.quote(node_id, safe="")
    url = f"{client.endpoint}/apis/v1alpha1/runs/{run}/nodes/{node}/log"
    headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=client.timeout_s) as resp:
            if "html" in resp.headers.get("Content-Type", ""):
                raise kfp_rest.KfpAuthError("answered with a login page, not the KFP API")
            lines = collections.deque((raw.decode(errors="replace") for raw in resp), maxlen=LOG_TAIL_LINES)
    except urllib.error.HTTPError as exc:
        raise kfp_rest.KfpApiError(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise kfp_rest.KfpUnavailable(str(getattr(exc, "reason", exc))) from exc
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and lines[-1].lstrip().startswith('{"error_message"'):
        try:
            message = json.loads(lines.pop())["error_message"]
        except (ValueError, KeyError, TypeError):
            message = "an error the server did not explain"
        if not lines:
            raise kfp_rest.KfpApiError(one_line(str(message), 200))
    return list(lines)
