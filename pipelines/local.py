"""Run a fine-tune on this machine: its segments one after another through kfp.local (the default) or in-process.

Both engines run the chain the cluster runs: each segment ends with the same exit step (`finish_segment`) and the
same decision function, and the next segment starts when it says so. On a cluster the exit task submits the next
KFP run itself; here this driver starts it.
"""

import builtins
import contextlib
import re
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from dgrpo_pipelines.errors import ANSI, own_last_error
from dgrpo_pipelines.progress import pipeline_order
from dgrpo_pipelines.swaps import failed_swap, own_error_clause, record_own_error, swapped_task_names
from dgrpo_pipelines.training import build_pipeline
from google.protobuf import json_format
from kfp import local

from dgrpo.config import RunConfig
from dgrpo.runs.commits import trained_state
from dgrpo.runs.evaluations import event_keys, read_event_at
from dgrpo.runs.keys import validate_run_id
from dgrpo.runs.ownership import OwnershipError
from dgrpo.runs.records import ChainRecord, SegmentRecord
from dgrpo.runs.segments import last_segment, segment_count
from dgrpo.runtime import fine_tune
from dgrpo.runtime import segment as seg
from dgrpo.runtime.chain import Decision
from dgrpo.runtime.engine import check_inprocess, run_chain, segment_inprocess
from dgrpo.runtime.plan import training_plan
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import ArtifactStore, open_store

ENGINES = ("kfp", "inprocess")
_STARTED = re.compile(r"Executing task '(?P<task>[^']+)'$")
_FAILED = re.compile(r"Task '(?P<task>[^']+)' finished with status FAILURE$")


class EventWatcher(threading.Thread):
    """Polls the fine-tune's event records and reports each finished stage: the progress display.

    `report(done, total, event)` counts stage events over the whole fine-tune (all its segments);
    `event["fine_tune"]` adds its rounds done and rounds in total."""

    def __init__(self, ctx: StageContext, report: Callable[[int, int, dict], None], interval: float = 0.5):
        super().__init__(daemon=True)
        self.ctx, self.report, self.interval = ctx, report, interval
        self.total = sum(t.shards for t in training_plan(ctx.config))
        self.seen: set[str] = set(event_keys(ctx.store, ctx.run_id))  # a resumed fine-tune's rounds
        self.rounds_done = trained_state(ctx.store, ctx.run_id).next_round
        self.done = threading.Event()

    def poll(self) -> None:
        # one poll may find several stages done: report them in the order they ran, not the keys' order
        for key in sorted(event_keys(self.ctx.store, self.ctx.run_id), key=pipeline_order):
            if key not in self.seen:
                self.seen.add(key)
                event = read_event_at(self.ctx.store, key)
                if event.stage == "update":
                    self.rounds_done = trained_state(self.ctx.store, self.ctx.run_id).next_round
                shown = event.to_json() | {"fine_tune": {"rounds_done": self.rounds_done,
                                                          "rounds_total": self.ctx.config.rounds}}
                self.report(min(len(self.seen), self.total), self.total, shown)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.poll()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.poll()


def run_pipeline(ctx: StageContext, store_uri: str, work_dir: Path, engine: str = "kfp",
                 progress: Callable[[int, int, dict], None] | None = None, resume_from: str = "") -> seg.SegmentEnd:
    """Start (or resume) fine-tune `ctx.run_id` and run its segments until the chain ends; returns how the last
    segment ended. kfp.local task logs go to work_dir/kfp.log."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "inprocess":
        check_inprocess(ctx.config)
    record = fine_tune.start(ctx.store, ctx.config, ctx.run_id, resume_from)  # claims the run id, or checks it
    watcher = EventWatcher(ctx, progress or (lambda *_: None))
    watcher.start()
    try:
        if engine == "inprocess":
            return run_chain(lambda: segment_inprocess(ctx.store, ctx.run_id, record.config_sha256))
        segment_run = KfpLocalSegments(ctx.config, ctx.store, store_uri, record, work_dir)
        return run_chain(segment_run)
    finally:
        watcher.stop()


class KfpLocalSegments:
    """Runs one segment through kfp.local per call (the pipeline compiled once), and reads how it ended from the
    records its exit task wrote."""

    def __init__(self, config: RunConfig, store: ArtifactStore, store_uri: str, chain_record: ChainRecord,
                 work_dir: Path):
        work_dir.mkdir(parents=True, exist_ok=True)
        self.store, self.log_path = store, work_dir / "kfp.log"
        self.params = fine_tune.segment_parameters(store, chain_record) | {"store_uri": store_uri}
        self.pipeline = build_pipeline(config)
        self.ir = json_format.MessageToDict(self.pipeline.pipeline_spec)
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work_dir / "pipeline_root"))

    def __call__(self) -> tuple[seg.SegmentEnd, BaseException | None]:
        run_id = self.params["run_id"]
        before = segment_count(self.store, run_id)
        errors_before = len(seg.errors(self.store, run_id))
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        failure: BaseException | None = None
        saved_print = builtins.print  # kfp.local leaks indenting print wrappers from its loop threads
        try:
            with open(self.log_path, "a") as log, contextlib.redirect_stdout(log), warnings.catch_warnings():
                # kfp.local warns that images and display names are not used locally: expected, and noise here.
                warnings.filterwarnings("ignore", message=".*(local runner|non-Python base image).*")
                self.pipeline(**self.params)
        except RuntimeError as exc:
            failure = RuntimeError(f"{exc} (task logs: {self.log_path})")
        finally:
            builtins.print = saved_print
        new_errors = seg.errors(self.store, run_id)[errors_before:]
        if segment_count(self.store, run_id) == before:  # refused (another segment holds it), or nothing to train
            refused = [e.error for e in new_errors if e.segment is None]
            if refused:
                failure = OwnershipError(refused[-1]) if "OwnershipError" in refused[-1] else RuntimeError(refused[-1])
            return seg.SegmentEnd(None, refused[-1] if refused else ""), failure
        record = last_segment(self.store, run_id)
        ended = record.ended
        if ended is None:
            raise RuntimeError(f"segment {record.segment} of {run_id} ended without its exit step "
                               f"(task logs: {self.log_path})") from failure
        own = self.own_error(record, log_start)
        if failure is not None and record.error:
            failure = RuntimeError(f"{record.error}{own} (task logs: {self.log_path})")
        return (seg.SegmentEnd(Decision(ended.action, ended.reason + own), (record.error or "") + own, record.segment),
                failure)

    def own_error(self, record: SegmentRecord, log_start: int) -> str:
        """When a swapped component stopped segment `record`: the last line of its own error, from its task's
        output in this segment's part of kfp.log, kept in the store (`swaps.record_own_error`) and returned as the
        clause the chain's message ends with; else ""."""
        found = failed_swap(record)
        if found is None:
            return ""
        with open(self.log_path, errors="replace") as log:
            log.seek(log_start)
            lines = failed_task_output(log.read(), swapped_task_names(self.ir, found[0]))
        line = own_last_error(lines)
        if not line:
            return ""
        return own_error_clause(record_own_error(self.store, self.params["run_id"], record, line), "task logs")


def failed_task_output(log: str, names: set[str]) -> list[str]:
    """The output of the first task named in `names` that failed in kfp.local's log `log`: the lines between its
    "Executing task" and its "finished with status FAILURE" (kfp/local/task_dispatcher.py writes both)."""
    started: dict[str, int] = {}
    lines = ANSI.sub("", log).splitlines()
    for i, line in enumerate(lines):
        if (begun := _STARTED.search(line)) is not None:
            started[begun["task"]] = i
        elif (failed := _FAILED.search(line)) is not None and failed["task"] in names and failed["task"] in started:
            return lines[started[failed["task"]] + 1:i]
    return []


def new_run_id(config: RunConfig) -> str:
    """name-timestamp, with the characters a run id may not hold replaced by '-'."""
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in config.name).strip("._-") or "run"
    return validate_run_id(f"{name[:80]}-{time.strftime('%Y%m%d-%H%M%S')}")


def open_context(config: RunConfig, store_uri: str, run_id: str) -> StageContext:
    return StageContext(config, open_store(store_uri), validate_run_id(run_id))
