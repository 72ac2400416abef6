"""Fault injection for the reliability tests: continue a run in this process and SIGKILL it at a chosen point.

    python tests/fault_harness.py CONFIG_JSON STORE_URI RUN_ID ROUNDS POINT

continues RUN_ID (after its last committed round, or from round 0) for ROUNDS rounds with the in-process engine
and kills itself with SIGKILL, the signal nothing can catch or clean up after, at POINT (`none`: no fault):

- `after:<stage>`: once the stage (rollout, reward, cluster, update, evaluate) has returned, i.e. between stages;
- `before-commit`: the update has written its adapter and optimizer state, the commit record not yet;
- `rename:<key part>`: a store write has its complete temp file on disk, not yet renamed into place;
- `fsync:<key part>`: a store write has written its temp file, not yet flushed or renamed.

The point lives here, in the test harness, by wrapping library functions; the library has no fault hooks. The
tests start `main` in a process forked from a multiprocessing forkserver that has imported this module once, so
eight crashes in a row pay for one import of torch and diffusers, not eight.
"""

import os
import signal
import sys
import types
from pathlib import Path

import dgrpo.runtime.fused as fused
import dgrpo.runtime.rounds as rounds
import dgrpo.stages.update as update
from dgrpo.config import config_from_json
from dgrpo.runs.commits import last_commit
from dgrpo.runtime.engine import run_inprocess
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import open_store


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after(stage: str) -> None:
    """Kill once `stage` has returned: a round step (`dgrpo.runtime.rounds.STEP_CALLS`) or an evaluation."""
    module, name = (fused.review, "evaluate") if stage == "evaluate" else (None, stage)
    real = getattr(module, name) if module else rounds.STEP_CALLS[stage]

    def wrapped(*args, **kwargs):
        result = real(*args, **kwargs)
        die()
        return result

    if module:
        setattr(module, name, wrapped)
    else:
        rounds.STEP_CALLS[stage] = wrapped


def kill_in_os_call(call: str, key_part: str) -> None:
    """Kill inside LocalStore's write when the file being written matches `key_part`: the temp file is written and
    synced in `dgrpo.files`, and moved into place in `dgrpo.store.local`."""
    import dgrpo.files as files
    import dgrpo.store.local as local

    real_replace, real_fsync, real_fdopen, real_link = os.replace, os.fsync, os.fdopen, os.link
    current: dict[int, str] = {}

    def fdopen(fd, *args, **kwargs):
        current[fd] = os.readlink(f"/proc/self/fd/{fd}")
        return real_fdopen(fd, *args, **kwargs)

    def fsync(fd):
        if call == "fsync" and key_part in current.get(fd, ""):
            die()
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        if call == "rename" and key_part in str(dst):
            die()
        return real_replace(src, dst, *args, **kwargs)

    def link(src, dst, *args, **kwargs):  # create-if-absent records (commits, claims) are linked into place
        if call == "rename" and key_part in str(dst):
            die()
        return real_link(src, dst, *args, **kwargs)

    shim = types.ModuleType("os")
    shim.__dict__.update(os.__dict__)
    shim.fdopen, shim.fsync, shim.replace, shim.link = fdopen, fsync, replace, link
    files.os = local.os = shim


def main(config_path: str, store_uri: str, run_id: str, rounds: str, point: str,
         env: dict[str, str] | None = None) -> None:
    os.environ.update(env or {})
    config = config_from_json(Path(config_path).read_text())
    config.rounds = int(rounds)
    kind, _, arg = point.partition(":")
    if kind == "none":
        pass
    elif kind == "after":
        kill_after(arg)
    elif kind == "before-commit":
        update.commit_round = lambda *a, **k: die()
    elif kind in ("rename", "fsync"):
        kill_in_os_call(kind, arg)
    else:
        raise SystemExit(f"unknown fault point {point!r}")
    ctx = StageContext(config, open_store(store_uri), run_id)
    run_inprocess(ctx, resume_from=run_id if last_commit(ctx.store, run_id) else "")
    print("finished" + ("" if kind == "none" else " without reaching the fault point"), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:6])
