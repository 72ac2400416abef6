"""Run the training pipeline on this machine: through kfp.local (the default) or in-process."""

import contextlib
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from dgrpo_pipelines.training import build_pipeline
from kfp import local

from dgrpo.config import RunConfig
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.plan import training_plan
from dgrpo.stages.shared.commits import start_point
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import open_store

ENGINES = ("kfp", "inprocess")


class EventWatcher(threading.Thread):
    """Polls the run's event records and reports each finished stage: the progress display."""

    def __init__(self, ctx: StageContext, report: Callable[[int, int, dict], None], interval: float = 0.5):
        super().__init__(daemon=True)
        self.ctx, self.report, self.interval = ctx, report, interval
        self.total = sum(t.shards for t in training_plan(ctx.config))
        self.seen: set[str] = set(ctx.store.list(f"runs/{ctx.run_id}/events"))  # a resumed run's earlier rounds
        self.done = threading.Event()

    def poll(self) -> None:
        for key in self.ctx.store.list(f"runs/{self.ctx.run_id}/events"):
            if key not in self.seen:
                self.seen.add(key)
                self.report(len(self.seen), self.total, self.ctx.store.get_json(key))

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.poll()

    def stop(self) -> None:
        self.done.set()
        self.join()
        self.poll()


def run_pipeline(ctx: StageContext, store_uri: str, work_dir: Path, engine: str = "kfp",
                 progress: Callable[[int, int, dict], None] | None = None, resume_from: str = "") -> None:
    """Run the whole training pipeline for `ctx` (continuing `resume_from`'s last committed round, if given);
    kfp.local task logs go to work_dir/kfp.log."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    start_point(ctx, resume_from)  # a run that cannot start or resume fails here, not inside its first task
    watcher = EventWatcher(ctx, progress or (lambda *_: None))
    watcher.start()
    try:
        if engine == "inprocess":
            run_inprocess(ctx, resume_from)
        else:
            _run_kfp_local(ctx.config, store_uri, ctx.run_id, work_dir, resume_from)
    finally:
        watcher.stop()


def _run_kfp_local(config: RunConfig, store_uri: str, run_id: str, work_dir: Path, resume_from: str = "") -> None:
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "kfp.log"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work_dir / "pipeline_root"))
    pipeline = build_pipeline(config)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), warnings.catch_warnings():
        # kfp.local warns that images and display names are not used locally: expected, and noise here.
        warnings.filterwarnings("ignore", message=".*(local runner|non-Python base image).*")
        try:
            pipeline(store_uri=store_uri, run_id=run_id, resume_from=resume_from)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} (task logs: {log_path})") from exc


def new_run_id(config: RunConfig) -> str:
    return f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_context(config: RunConfig, store_uri: str, run_id: str) -> StageContext:
    return StageContext(config, open_store(store_uri), run_id)
