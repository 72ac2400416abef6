"""Files that processes of one task pass through the store: the data-parallel update's request and result, the
reports of a run, the MLflow run it logs to, and the experiment's wall-clock record. Not records a segment reads
back, but under the run."""

from typing import Any

from dgrpo.runs import keys
from dgrpo.store import ArtifactStore


def put_update_request(store: ArtifactStore, run_id: str, round_index: int, request: dict[str, Any]) -> str:
    """Store the data-parallel update's inputs; the key its workers read."""
    key = keys.update_request_key(run_id, round_index)
    store.put_json(key, request)
    return key


def get_update_request(store: ArtifactStore, request_key: str) -> dict[str, Any]:
    return store.get_json(request_key)


def put_update_result(store: ArtifactStore, request_key: str, result: dict[str, Any]) -> None:
    store.put_json(keys.update_result_key(request_key), result)


def get_update_result(store: ArtifactStore, request_key: str) -> dict[str, Any] | None:
    key = keys.update_result_key(request_key)
    return store.get_json(key) if store.exists(key) else None


def put_report(store: ArtifactStore, run_id: str, *, data: dict, markdown: str) -> str:
    """Store the run's report as JSON and Markdown; the Markdown's key."""
    store.put_json(keys.report_key(run_id, "json"), data)
    store.put_text(keys.report_key(run_id, "md"), markdown)
    return keys.report_key(run_id, "md")


def put_report_html(store: ArtifactStore, run_id: str, text: str) -> None:
    store.put_text(keys.report_key(run_id, "html"), text)


def get_mlflow_record(store: ArtifactStore, run_id: str) -> dict[str, Any] | None:
    """Which MLflow run the fine-tune logs to (`dgrpo.runtime.tracking`), None before its first sync."""
    key = keys.mlflow_key(run_id)
    return store.get_json(key) if store.exists(key) else None


def put_mlflow_record(store: ArtifactStore, run_id: str, record: dict[str, Any]) -> None:
    store.put_json(keys.mlflow_key(run_id), record)


def get_notification(store: ArtifactStore, run_id: str, segment: int) -> dict[str, Any] | None:
    """The chain-end message of `segment` and whether the webhook took it (`dgrpo.runtime.notify`)."""
    key = keys.notified_key(run_id, segment)
    return store.get_json(key) if store.exists(key) else None


def put_notification(store: ArtifactStore, run_id: str, segment: int, record: dict[str, Any]) -> None:
    store.put_json(keys.notified_key(run_id, segment), record)


def put_experiment_wall(store: ArtifactStore, run_id: str, record: dict[str, Any]) -> None:
    store.put_json(keys.experiment_wall_key(run_id), record)


def experiment_wall_seconds(store: ArtifactStore, run_id: str) -> float | None:
    key = keys.experiment_wall_key(run_id)
    return float(store.get_json(key)["seconds"]) if store.exists(key) else None
