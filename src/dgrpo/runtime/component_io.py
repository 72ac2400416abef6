"""Glue between orchestrator-provided artifact files and the stage functions.

A Kubeflow component hands the stage file paths (and metadata dicts) of its input and output artifacts; these
helpers read and write artifact references there without importing kfp, so the glue is tested here.
"""

import base64
from pathlib import Path
from typing import Any, Protocol

from dgrpo import lineage
from dgrpo.config import config_from_json
from dgrpo.runtime.report import evaluation_markdown, render_html
from dgrpo.stages.shared.commits import StartPoint
from dgrpo.stages.shared.context import StageContext, StageResult
from dgrpo.store import ArtifactRef, open_store


class FileArtifact(Protocol):
    """What a KFP Input/Output artifact offers: a local path and a metadata dict."""

    path: str
    metadata: dict[str, Any]


class MetricsSink(Protocol):
    def log_metric(self, metric: str, value: float) -> None: ...


def context(config_json: str, store_uri: str, run_id: str) -> StageContext:
    if not run_id:
        raise ValueError("pipeline parameter 'run_id' must not be empty")
    if not store_uri:
        raise ValueError("pipeline parameter 'store_uri' must not be empty")
    return StageContext(config_from_json(config_json), open_store(store_uri, "pipeline parameter 'store_uri'"), run_id)


def read_ref(artifact: FileArtifact | None) -> ArtifactRef | None:
    """The artifact reference an upstream stage wrote into its output file (None for an absent input)."""
    if artifact is None:
        return None
    return ArtifactRef.from_json(Path(artifact.path).read_text(), source=f"input artifact {artifact.path}")


def read_refs(artifacts: list[FileArtifact]) -> list[ArtifactRef]:
    """The references of a collected fan-out (dsl.Collected): one per shard."""
    return [read_ref(a) for a in artifacts]


def write_text(artifact: FileArtifact, text: str) -> None:
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def round_state(start: FileArtifact, round_index: int, adapter: FileArtifact | None = None,
                optimizer_state: FileArtifact | None = None) -> tuple[int, ArtifactRef | None, ArtifactRef | None]:
    """The absolute round of a task at `round_index` within its pipeline run, and the state it trains from.

    Tasks of the run's first round get no adapter input; theirs is the start point's (a resumed run's)."""
    point = StartPoint.from_json(Path(start.path).read_text(), source=f"start artifact {start.path}")
    if round_index == 0:
        return point.round, read_ref(adapter) or point.adapter, read_ref(optimizer_state) or point.optimizer_state
    if adapter is None:
        raise ValueError(f"round {round_index} of the run has no adapter input: the pipeline wiring is broken")
    return point.round + round_index, read_ref(adapter), read_ref(optimizer_state)


def publish(ctx: StageContext, result: StageResult, outputs: dict[str, FileArtifact],
            metrics: MetricsSink | None = None) -> None:
    """Write each output's reference to its file and its lineage into the artifact's metadata."""
    for name, artifact in outputs.items():
        ref = result.outputs[name]
        path = Path(artifact.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ref.to_json())
        artifact.metadata.update(lineage_metadata(lineage.read_record(ctx.store, ref.sha256)))
    if metrics is not None:
        for key, value in result.metrics.items():
            metrics.log_metric(key, float(value))


def lineage_metadata(rec: lineage.LineageRecord) -> dict[str, Any]:
    """The lineage record as KFP artifact metadata, shown in the KFP UI beside the artifact."""
    return {"dgrpo_uri": rec.uri, "sha256": rec.sha256, "kind": rec.kind, "stage": rec.stage, "run_id": rec.run_id,
            "round": rec.round, "image": rec.image, "config_sha256": rec.config_sha256,
            "code_version": rec.code_version, "inputs": rec.inputs, "input_kinds": rec.input_kinds,
            "seeds": rec.seeds, "created_at": rec.created_at}


def write_grid_html(ctx: StageContext, grid: ArtifactRef, path: str) -> None:
    """An HTML page embedding the evaluation grid, which the KFP UI renders inline."""
    data = base64.b64encode(ctx.store.get(grid)).decode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(f'<html><body><p>{grid.uri}</p><img src="data:image/png;base64,{data}" '
                          f'style="image-rendering: pixelated"/></body></html>')


def write_evaluation_markdown(ctx: StageContext, round_index: int, artifact: FileArtifact) -> None:
    """The evaluation of `round_index` as Markdown, which the KFP UI shows as the task's visualisation."""
    record = ctx.store.get_json(f"runs/{ctx.run_id}/eval/r{round_index:04d}.json")
    write_text(artifact, evaluation_markdown(record))


def write_run_report(ctx: StageContext, artifact: FileArtifact) -> None:
    """The run's HTML report (`dgrpo.runtime.report.render_html`) into a KFP HTML output: the pipeline's last task
    publishes it, and the KFP UI shows it inline. Also kept in the store beside the markdown report."""
    text = render_html(ctx.store, [ctx.run_id])
    ctx.store.put_text(f"runs/{ctx.run_id}/report.html", text)
    write_text(artifact, text)
