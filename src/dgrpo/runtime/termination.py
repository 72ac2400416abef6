"""Signals as errors a segment records: SIGTERM (a pod's eviction, a node drain, a spot preemption) and a stage's
time limit (SIGALRM).

Inside `sigterm_raises()` SIGTERM raises `Terminated` in the main thread wherever it is, which the task or the
fused segment records (stage, segment, round) like any failure and then lets end the process; store writes are
atomic, so an abandoned write leaves nothing behind. Exit code 143 (128 + SIGTERM), as an unhandled SIGTERM.
`time_limit()` raises `StageTimeout` the same way once a stage has run past `pipeline.stage_timeout_s`.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_CODE = 128 + signal.SIGTERM


class Terminated(RuntimeError):
    """The process received SIGTERM; the message says during which stage of which round."""


def _raise(signum: int, frame: object) -> None:
    raise Terminated("terminated by SIGTERM")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` for the block (in the main thread; elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StageTimeout(RuntimeError):
    """A stage ran past its time limit (pipeline.stage_timeout_s)."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Raise `StageTimeout` in the block once it has run `seconds` (None: no limit; only in the main thread, and
    only when the stage's code returns to Python: a call blocked inside C finishes first)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise StageTimeout(f"{what} ran past pipeline.stage_timeout_s ({seconds:g} s)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def described(exc: BaseException, task: str, round_index: int | None) -> BaseException:
    """`exc`, or for a SIGTERM a `Terminated` saying during which task (and round) it came."""
    if not isinstance(exc, Terminated):
        return exc
    where = task if round_index is None else f"{task} of round {round_index + 1}"
    return Terminated(f"terminated by SIGTERM during {where}")
