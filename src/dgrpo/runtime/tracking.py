"""MLflow tracking: one MLflow run per fine-tune, which each segment brings up to date when it ends.

Platform teams look for results in MLflow, not in a content-addressed store. A fine-tune of hundreds of rounds is a
chain of segments (KFP runs, or in-process segments) that may be killed, retried and resumed, so the MLflow run is
found, never assumed: by the store's record of it (`read_record`), else by its tag `dgrpo.run_id` (a segment killed
after creating the run, before recording it, finds it on the next try), else it is the MLflow run that KFP 2.17's
MLflow plugin registered for this segment's KFP run (its tag `kfp.pipeline_run_id`; the task pod's MLFLOW_RUN_ID is
a nested run under it), else a new one. What is logged is derived from the store each time and compared with what
the run already holds, so a retried exit task or a resumed segment never adds a metric point twice: params (the
recipe, once), metrics (each stage's event metrics with the training round as step, 1-based; evaluations with the
rounds done as step, 0 the base model), the evaluation grids and the HTML report as artifacts, lineage and the best
adapter as tags, and the chain's state as the run's status.

`mlflow` (the `mlflow` extra, mlflow-skinny) is imported only here, and only when `tracking.mlflow.enabled`.
"""

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from dgrpo.config import ConfigError, RunConfig
from dgrpo.runs import keys
from dgrpo.runs.commits import trained_state
from dgrpo.runs.evaluations import events, read_best
from dgrpo.runs.exchange import get_mlflow_record, put_mlflow_record
from dgrpo.runs.lineage import code_version
from dgrpo.runs.records import Event
from dgrpo.runs.segments import read_status
from dgrpo.runtime.redaction import redact_secrets
from dgrpo.runtime.report import located_uri, render_html
from dgrpo.runtime.report.headline import flatten
from dgrpo.store import ArtifactRef, ArtifactStore

log = logging.getLogger(__name__)

RUN_TAG = "dgrpo.run_id"
"""The fine-tune id on its MLflow run: how a later segment finds the run."""
KFP_RUN_TAG = "kfp.pipeline_run_id"
"""Set by KFP's MLflow plugin (2.17, backend/src/apiserver/plugins/mlflow) on the MLflow run it creates per KFP run."""
PARENT_TAG = "mlflow.parentRunId"
"""The plugin's nested task run (the pod's MLFLOW_RUN_ID) points at its KFP run's MLflow run with this tag."""
LINK_TAG = "dgrpo.mlflow_run_id"
"""Set on a later segment's KFP MLflow run: the fine-tune's own MLflow run, which that segment logged into."""
PARAM_VALUE_LIMIT = 500
"""MLflow servers before 2.x refuse longer param values (newer ones 6000): longer recipe values are clipped, and the
whole config is logged as config.json."""
BATCH = 100
"""Params or tags per log_batch call (MLflow's limit)."""
METRIC_BATCH = 1000
"""Metrics per log_batch call (MLflow's limit)."""
SUMMED = ("samples", "nfe")
"""Shard metrics that add up over a round's shards; the others are averaged, weighted by samples."""
STATUS = {"done": "FINISHED", "stopped": "FINISHED", "failed": "FAILED"}
"""The chain's state (status.json) as the MLflow run's status; any other is RUNNING."""
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""MLflow's own defaults retry for minutes, while the exit task holds the fine-tune's lease; a value in the
environment wins."""


class TrackingError(RuntimeError):
    """MLflow tracking cannot run (the client is missing, no tracking URI)."""


def read_record(store: ArtifactStore, run_id: str) -> dict | None:
    """The fine-tune's MLflow record (tracking URI, experiment, MLflow run id, last error)."""
    return get_mlflow_record(store, run_id)


def write_record(store: ArtifactStore, run_id: str, record: dict) -> None:
    put_mlflow_record(store, run_id, record)


def log_segment(store: ArtifactStore, run_id: str, config: RunConfig) -> None:
    """Bring the fine-tune's MLflow run up to date, when `tracking.mlflow.enabled`. Never raises: a failure is one
    warning line and the record's `error`, and the next segment's call tries again."""
    if not config.tracking.mlflow.enabled:
        return
    try:
        sync(store, run_id, config)
    except Exception as exc:  # tracking never fails a fine-tune
        message = redact_secrets(f"{type(exc).__name__}: {exc}".strip().splitlines()[0])
        log.warning("fine-tune %s: MLflow tracking failed, the fine-tune goes on: %s", run_id, message)
        try:
            write_record(store, run_id, (read_record(store, run_id) or {}) | {"error": message, "at": keys.now()})
        except Exception as record_exc:
            log.warning("fine-tune %s: could not record the MLflow error: %s", run_id, record_exc)


def sync(store: ArtifactStore, run_id: str, config: RunConfig) -> str:
    """Log what the store holds and the MLflow run does not; returns the MLflow run id. Raises on any failure."""
    uri = tracking_uri(config)
    client = _client(uri)
    run = find_or_create_run(client, store, run_id, config, uri)
    mlflow_id = run.info.run_id
    _link_kfp_run(client, uri, mlflow_id)
    log_params(client, run, config)
    run_events = events(store, run_id)
    log_metrics(client, mlflow_id, run_events)
    log_artifacts(client, mlflow_id, store, run_id, config, run_events)
    recorded = read_status(store, run_id)
    status = recorded.to_json() if recorded is not None else {}
    _log(client, mlflow_id, tags=run_tags(store, run_id, config, status))
    client.update_run(mlflow_id, status=STATUS.get(status.get("state", ""), "RUNNING"))
    record = {"tracking_uri": _public(uri), "experiment_id": run.info.experiment_id, "mlflow_run_id": mlflow_id,
              "run_url": run_url(uri, run.info.experiment_id, mlflow_id), "at": keys.now()}
    write_record(store, run_id, record)
    log.info("fine-tune %s: logged to MLflow run %s", run_id, record["run_url"])
    return mlflow_id


def tracking_uri(config: RunConfig) -> str:
    """`tracking.mlflow.uri`, else $MLFLOW_TRACKING_URI (which KFP's MLflow plugin sets in its task pods)."""
    uri = config.tracking.mlflow.uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        raise ConfigError("config field 'tracking.mlflow.uri': not set, and neither is $MLFLOW_TRACKING_URI")
    return uri


def run_url(uri: str, experiment_id: str, mlflow_id: str) -> str:
    """The run's page in MLflow's UI (a tracking server over http(s); else the run's id)."""
    if not uri.startswith(("http://", "https://")):
        return f"mlflow run {mlflow_id}"
    return f"{_public(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{mlflow_id}"


def _public(uri: str) -> str:
    """`uri` without user info, as it may be stored and shown."""
    scheme, sep, rest = uri.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}" if sep else uri


def _client(uri: str) -> Any:
    for name, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackingError("tracking.mlflow.enabled needs the MLflow client: pip install 'dgrpo[mlflow]' "
                            "(the extra 'mlflow', mlflow-skinny)") from exc
    return MlflowClient(tracking_uri=uri)


def find_or_create_run(client: Any, store: ArtifactStore, run_id: str, config: RunConfig, uri: str) -> Any:
    """The fine-tune's MLflow run: recorded, else tagged, else the KFP plugin's run of this segment, else new."""
    record = read_record(store, run_id) or {}
    if record.get("mlflow_run_id") and record.get("tracking_uri") == _public(uri):
        run = _get_run(client, record["mlflow_run_id"])
        if run is not None and run.info.lifecycle_stage == "active":
            return run
    experiment = config.tracking.mlflow.experiment or config.name
    return (_tagged_run(client, run_id, experiment) or _adopt_kfp_run(client, uri, run_id)
            or _new_run(client, run_id, experiment))


def _get_run(client: Any, mlflow_id: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(mlflow_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _tagged_run(client: Any, run_id: str, experiment: str) -> Any | None:
    """The oldest active run tagged with the fine-tune id, in the config's experiment or the KFP plugin's."""
    ids = [e.experiment_id for e in [client.get_experiment_by_name(experiment)] if e is not None]
    ids += [os.environ["MLFLOW_EXPERIMENT_ID"]] if os.environ.get("MLFLOW_EXPERIMENT_ID") else []
    if not ids:
        return None
    runs = client.search_runs(sorted(set(ids)), filter_string=f"tags.`{RUN_TAG}` = '{keys.validate_run_id(run_id)}'",
                              order_by=["attributes.start_time ASC"], max_results=10)
    return runs[0] if runs else None


def _kfp_parent(client: Any, uri: str) -> str | None:
    """The MLflow run KFP's plugin registered for this task's KFP run: the parent of the task's nested run
    (MLFLOW_RUN_ID), when it is on the server we log to and carries the plugin's tag."""
    task_run = os.environ.get("MLFLOW_RUN_ID")
    if not task_run or _public(os.environ.get("MLFLOW_TRACKING_URI", "")) != _public(uri):
        return None
    task = _get_run(client, task_run)
    parent = task.data.tags.get(PARENT_TAG) if task is not None else None
    run = _get_run(client, parent) if parent else None
    return parent if run is not None and KFP_RUN_TAG in run.data.tags else None


def _adopt_kfp_run(client: Any, uri: str, run_id: str) -> Any | None:
    """The first segment's KFP run, registered in MLflow by KFP's plugin, becomes the fine-tune's run."""
    parent = _kfp_parent(client, uri)
    if parent is None:
        return None
    client.set_tag(parent, RUN_TAG, run_id)
    return client.get_run(parent)


def _link_kfp_run(client: Any, uri: str, mlflow_id: str) -> None:
    """A later segment's KFP run, registered by the plugin, points at the fine-tune's run it logged into."""
    parent = _kfp_parent(client, uri)
    if parent is not None and parent != mlflow_id:
        client.set_tag(parent, LINK_TAG, mlflow_id)


def _new_run(client: Any, run_id: str, experiment: str) -> Any:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            experiment_id = client.create_experiment(experiment)
        except MlflowException:  # created meanwhile by another fine-tune
            experiment_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        experiment_id = found.experiment_id
    return client.create_run(experiment_id, run_name=run_id, tags={RUN_TAG: run_id})


def recipe_params(config: RunConfig) -> dict[str, str]:
    """The recipe (what is trained) as dotted params, values clipped to PARAM_VALUE_LIMIT."""
    out = {}
    for key, value in flatten(config.recipe_dict()).items():
        text = value if isinstance(value, str) else json.dumps(value)
        out[key] = text if len(text) <= PARAM_VALUE_LIMIT else text[:PARAM_VALUE_LIMIT - 3] + "..."
    return out


def log_params(client: Any, run: Any, config: RunConfig) -> None:
    """The recipe params the run does not hold yet (params never change; the recipe of a fine-tune cannot)."""
    have = run.data.params
    _log(client, run.info.run_id, params={k: v for k, v in recipe_params(config).items() if k not in have})


def metric_points(run_events: Iterable[Event]) -> dict[tuple[str, int], tuple[float, int]]:
    """(metric key, step) -> (value, timestamp ms): `<stage>/<metric>` at step round + 1 for the training stages
    (shards combined), `eval/<metric>` at step rounds done for the evaluations."""
    groups: dict[tuple[str, int], list[Event]] = {}
    for e in run_events:
        step = e.round if e.stage == "evaluate" else e.round + 1
        groups.setdefault(("eval" if e.stage == "evaluate" else e.stage, step), []).append(e)
    points = {}
    for (prefix, step), group in groups.items():
        stamp = max(_millis(e.finished_at) for e in group)
        for name, value in _combine(group).items():
            if math.isfinite(value):
                points[(f"{prefix}/{name}", step)] = (value, stamp)
    return points


def _combine(group: list[Event]) -> dict[str, float]:
    """One round's shard events as one set of metrics: SUMMED ones added, the rest weighted by samples."""
    if len(group) == 1:
        return {k: float(v) for k, v in group[0].metrics.items() if isinstance(v, int | float)}
    weights = [float(e.metrics.get("samples", 1.0)) for e in group]
    names = sorted({k for e in group for k, v in e.metrics.items() if isinstance(v, int | float)})
    out = {}
    for name in names:
        pairs = [(float(e.metrics[name]), w) for e, w in zip(group, weights, strict=True) if name in e.metrics]
        out[name] = sum(v for v, _ in pairs) if name in SUMMED else \
            sum(v * w for v, w in pairs) / max(sum(w for _, w in pairs), 1e-12)
    return out


def _millis(stamp: str) -> int:
    import datetime

    try:
        return int(datetime.datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return 0


def log_metrics(client: Any, mlflow_id: str, run_events: Iterable[Event]) -> int:
    """Log the metric points the run's history lacks (MLflow appends, so a point logged twice would show twice);
    returns how many were logged."""
    from mlflow.entities import Metric

    points = metric_points(run_events)
    have = {(key, m.step) for key in {k for k, _ in points} for m in client.get_metric_history(mlflow_id, key)}
    todo = [Metric(key, value, stamp, step) for (key, step), (value, stamp) in sorted(points.items())
            if (key, step) not in have]
    for chunk in _chunks(todo, METRIC_BATCH):
        client.log_batch(mlflow_id, metrics=chunk)
    return len(todo)


def log_artifacts(client: Any, mlflow_id: str, store: ArtifactStore, run_id: str, config: RunConfig,
                  run_events: list[Event]) -> None:
    """Each evaluation's grid once (`grids/r<rounds done>.png`, r0000 the base model); the HTML report and the
    config, replaced each time."""
    have = {Path(a.path).name for a in client.list_artifacts(mlflow_id, "grids")}
    with tempfile.TemporaryDirectory(prefix="dgrpo-mlflow-") as tmp:
        grids = Path(tmp, "grids")
        grids.mkdir()
        for e in run_events:
            ref = e.output("grid") if e.stage == "evaluate" else None
            name = f"r{e.round:04d}.png"
            if ref is not None and name not in have:
                (grids / name).write_bytes(store.get(ref))
        if any(grids.iterdir()):
            client.log_artifacts(mlflow_id, str(grids), artifact_path="grids")
        report = Path(tmp, "report.html")
        report.write_text(render_html(store, [run_id]), encoding="utf-8")
        client.log_artifact(mlflow_id, str(report))
        config_file = Path(tmp, "config.json")
        config_file.write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
        client.log_artifact(mlflow_id, str(config_file))


def run_tags(store: ArtifactStore, run_id: str, config: RunConfig, status: dict) -> dict[str, str]:
    """Lineage (hashes, base model, code, images, store), progress, and the best and last adapters."""
    model = config.model
    tags = {RUN_TAG: run_id, "dgrpo.config_sha256": config.sha256(), "dgrpo.recipe_sha256": config.recipe_sha256(),
            "dgrpo.base_model": model.pretrained or f"{model.kind} (shipped checkpoint)",
            "dgrpo.code_version": code_version(), "dgrpo.store": store.uri, "dgrpo.rounds_total": str(config.rounds),
            "dgrpo.images": json.dumps(config.kubernetes.images, sort_keys=True)}
    if os.environ.get("DGRPO_IMAGE"):  # the image this exit task runs in
        tags["dgrpo.image"] = os.environ["DGRPO_IMAGE"]
    if model.revision:
        tags["dgrpo.base_model_revision"] = model.revision
    if status:
        tags |= {"dgrpo.state": status["state"], "dgrpo.reason": status.get("reason", ""),
                 "dgrpo.rounds_done": str(status["rounds_done"])}
    return tags | _adapter_tags(store, run_id)


def _adapter_tags(store: ArtifactStore, run_id: str) -> dict[str, str]:
    tags = {}
    best = read_best(store, run_id)
    if best is not None:
        tags |= {"dgrpo.best.metric": best.metric, "dgrpo.best.value": repr(best.value),
                 "dgrpo.best.round": str(best.round), "dgrpo.best.adapter_uri": _uri(store, best.adapter)}
    last = trained_state(store, run_id).adapter
    return tags | ({"dgrpo.last.adapter_uri": _uri(store, last)} if last is not None else {})


def _uri(store: ArtifactStore, ref: ArtifactRef | None) -> str:
    return "base model (no adapter)" if ref is None else located_uri(store, ref)


def _log(client: Any, mlflow_id: str, params: dict[str, str] | None = None,
         tags: dict[str, str] | None = None) -> None:
    from mlflow.entities import Param, RunTag

    for chunk in _chunks([Param(k, v) for k, v in sorted((params or {}).items())], BATCH):
        client.log_batch(mlflow_id, params=chunk)
    for chunk in _chunks([RunTag(k, v) for k, v in sorted((tags or {}).items())], BATCH):
        client.log_batch(mlflow_id, tags=chunk)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


__all__ = ["TrackingError", "find_or_create_run", "log_segment", "metric_points", "read_record", "recipe_params",
           "run_url", "sync", "tracking_uri", "write_record"]
