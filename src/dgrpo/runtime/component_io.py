"""Glue between orchestrator-provided artifact files and the stage functions.

A Kubeflow component hands the stage file paths (and metadata dicts) of its input and output artifacts; these
helpers read and write artifact references there without importing kfp, so the glue is tested here.
"""

import base64
import contextlib
import html
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from dgrpo.runs.evaluations import read_evaluation
from dgrpo.runs.exchange import put_report_html
from dgrpo.runs.keys import after_round, shown, validate_run_id
from dgrpo.runtime import segment
from dgrpo.runtime.gpu_check import check_gpus
from dgrpo.runtime.report import evaluation_markdown, render_html
from dgrpo.runtime.report.summary import load_events
from dgrpo.runtime.segment import RoundState
from dgrpo.runtime.termination import described, sigterm_raises, time_limit
from dgrpo.stages.shared.context import StageContext, StageResult
from dgrpo.store import ArtifactRef, ArtifactStore, open_store


class FileArtifact(Protocol):
    """What a KFP Input/Output artifact offers: a local path and a metadata dict."""

    path: str
    metadata: dict[str, Any]


class MetricsSink(Protocol):
    def log_metric(self, metric: str, value: float) -> None: ...


def open_task_store(store_uri: str, run_id: str) -> ArtifactStore:
    """The store of a task's run parameters, each checked with a message naming it."""
    validate_run_id(run_id, "pipeline parameter 'run_id'")
    if not store_uri:
        raise ValueError("pipeline parameter 'store_uri' must not be empty")
    return open_store(store_uri, "pipeline parameter 'store_uri'")


@contextlib.contextmanager
def task(store_uri: str, run_id: str, name: str, state: FileArtifact | None = None, round_index: int | None = None
         ) -> Iterator[tuple[StageContext | None, RoundState | None, ArtifactStore]]:
    """The body of a component: its store, and with a round-state input its context and state. A failure is
    recorded in the store (task, segment, round) before it propagates: on a cluster the exit task learns nothing
    about why a task failed, and `dgrpo status` shows the last error."""
    store = open_task_store(store_uri, run_id)
    round_state = None
    with sigterm_raises():  # an evicted or preempted pod records why it ended
        try:
            check_gpus()  # a task given GPUs refuses to fall back to the CPU (DGRPO_EXPECT_GPUS)
            round_state = None if state is None else read_state(state)
            ctx = None if round_state is None else segment.context(store, round_state)
            with time_limit(None if ctx is None else ctx.config.pipeline.stage_timeout_s, f"task {name}"):
                yield ctx, round_state, store
        except BaseException as exc:
            if round_index is None and round_state is not None and len(round_state.rounds) == 1:
                round_index = round_state.round
            exc = described(exc, name, round_index)
            with contextlib.suppress(Exception):  # the task's own error matters more than a failed record of it
                segment.record_error(store, run_id, name, exc, round_state.segment if round_state else None,
                                     round_index)
            raise exc


def train_fused(store_uri: str, run_id: str, segment_artifact: FileArtifact, base_due: bool,
                metrics: MetricsSink, summary: FileArtifact) -> None:
    """The fused task's body: train the segment's rounds in this pod (`dgrpo.runtime.fused`), logging each step,
    then publish every round's metrics and a Markdown table of them for the KFP UI (which shows a task's outputs
    once it ends; the log and `dgrpo status` follow it live). A failure is recorded by the training itself."""
    from dgrpo.runtime import fused

    store = open_task_store(store_uri, run_id)
    state = read_state(segment_artifact)
    try:
        check_gpus()  # the fused pod holds the update's GPUs: it must not train on the CPU (DGRPO_EXPECT_GPUS)
    except RuntimeError as exc:
        segment.record_error(store, run_id, "train_segment", exc, state.segment, None)
        raise
    rounds = f"{shown(state.rounds[0])}-{shown(state.rounds[-1])}" if state.rounds else "none"
    print(f"fused segment {state.segment} of {run_id}: rounds {rounds}", flush=True)
    if segment.context(store, state).config.train.num_processes > 1:
        fused.launch(store, state, base_due)
    else:
        fused.train_segment(store, state, base_due, on_step=lambda stage, r, shard: print(
            fused.step_label(stage, r, shard), flush=True))
    write_text(summary, segment_markdown(store, run_id, state, metrics))


def segment_markdown(store: ArtifactStore, run_id: str, state: RoundState, metrics: MetricsSink) -> str:
    """The segment's rounds as a Markdown table (one row per round, one column per stage metric), each value also
    logged to `metrics` as `r<round>.<stage>.<metric>`; then the segment's evaluations."""
    rows: dict[int, dict[str, float]] = {}
    for event in load_events(store, run_id):
        if event.round in state.rounds and event.stage != "evaluate" and event.shard is None:
            for name, value in event.metrics.items():
                rows.setdefault(event.round, {})[f"{event.stage}.{name}"] = float(value)
                metrics.log_metric(f"r{event.round:04d}.{event.stage}.{name}", float(value))
    names, done = sorted({c for row in rows.values() for c in row}), sorted(rows)
    lines = [f"## Segment {state.segment}: rounds {', '.join(str(shown(r)) for r in done) or 'none'}", "",
             "| metric | " + " | ".join(f"round {shown(r)}" for r in done) + " |", "|---|" + "---|" * len(done)]
    lines += [f"| {name} | " + " | ".join(f"{rows[r][name]:.4g}" if name in rows[r] else "-" for r in done) + " |"
              for name in names]
    for completed in sorted({r + 1 for r in state.rounds} | ({0} if state.round == 0 else set())):
        record = read_evaluation(store, run_id, completed)
        if record is not None:
            lines += ["", evaluation_markdown(record)]
    return "\n".join(lines) + "\n"


def read_state(artifact: FileArtifact) -> RoundState:
    return RoundState.from_json(Path(artifact.path).read_text(), source=f"state artifact {artifact.path}")


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


def publish(ctx: StageContext, result: StageResult, outputs: dict[str, FileArtifact],
            metrics: MetricsSink | None = None) -> None:
    """Write each output's reference to its file and its uri and sha256 into the artifact's KFP metadata."""
    for name, artifact in outputs.items():
        ref = result.outputs[name]
        path = Path(artifact.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ref.to_json())
        artifact.metadata.update(artifact_metadata(ref))
    if metrics is not None:
        for key, value in result.metrics.items():
            metrics.log_metric(key, float(value))


def artifact_metadata(ref: ArtifactRef) -> dict[str, Any]:
    """What KFP shows beside an output artifact: its store uri and sha256, nothing more. Argo keeps a copy of every
    input artifact's metadata in each consumer's pod-spec patch, three times a task (docs/kubernetes.md "Workflow
    size"); the lineage record stays in the store (`dgrpo lineage <uri or artifact file>`)."""
    return {"dgrpo_uri": ref.uri, "sha256": ref.sha256}


def write_grid_html(ctx: StageContext, grid: ArtifactRef, path: str) -> None:
    """An HTML page embedding the evaluation grid, which the KFP UI renders inline."""
    data = base64.b64encode(ctx.store.get(grid)).decode()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(f'<html><body><p>{grid.uri}</p><img src="data:image/png;base64,{data}" '
                          f'style="image-rendering: pixelated"/></body></html>')


def write_evaluation_markdown(ctx: StageContext, round_index: int, artifact: FileArtifact) -> None:
    """The evaluation of `round_index` as Markdown, which the KFP UI shows as the task's visualisation."""
    record = read_evaluation(ctx.store, ctx.run_id, round_index)
    if record is None:
        raise FileNotFoundError(f"run {ctx.run_id}: no evaluation record {after_round(round_index)} in {ctx.store.uri}")
    write_text(artifact, evaluation_markdown(record))


def write_run_report(store: ArtifactStore, run_id: str, status: str, artifact: FileArtifact) -> None:
    """The fine-tune's HTML report (`dgrpo.runtime.report.render_html`) into a KFP HTML output, after its status
    (`status`, the segment's outcome): the exit task publishes it, and the KFP UI shows it inline. Kept in the
    store beside the markdown report. Before any evaluation there is only the status."""
    head = f"<pre>{html.escape(status)}</pre>"
    try:
        page = render_html(store, [run_id])
    except ValueError:  # no evaluation recorded yet
        page = "<html><body></body></html>"
    text = page.replace("<body>", "<body>" + head, 1)
    put_report_html(store, run_id, text)
    write_text(artifact, text)
