"""Fault injection: kill -9 at every stage boundary and in the middle of a write, a full disk, an S3 server that
dies and comes back, kill -9 in an S3 multipart upload and of a kfp-engine run. After each, the store holds only
whole objects and the run resumes to the bytes of a run nothing happened to."""

import errno
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from http.server import ThreadingHTTPServer
from pathlib import Path

import fault_harness
import pytest
import seaweedfs
from dgrpo_pipelines.main import main
from reliability_helpers import tiny_config
from support import S3_BUCKET
from test_s3store import _FlakyProxy

import dgrpo.files as files
from dgrpo.runs.commits import last_commit
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.verify import verify_run
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore, open_store
from dgrpo.store.s3 import S3Settings, S3Store

HARNESS = Path(__file__).with_name("fault_harness.py")
ROUNDS = 2


def _cfg(**overrides):
    return tiny_config(**overrides)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(_cfg(rounds=ROUNDS).to_json())
    return path


@pytest.fixture(scope="module")
def round_zero(tmp_path_factory) -> Path:
    """A store with round 0 of run "ft" committed: every fault below strikes in round 1."""
    root = tmp_path_factory.mktemp("round-zero") / "store"
    run_inprocess(StageContext(_cfg(rounds=1), LocalStore(root), "ft"))
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """The final adapter of the same two rounds with nothing going wrong."""
    store = LocalStore(tmp_path_factory.mktemp("reference") / "store")
    return run_inprocess(StageContext(_cfg(rounds=ROUNDS), store, "ft"))["adapter"].sha256


def _resume_to_the_end(store, run_id: str = "ft") -> str:
    """Resume after the last committed round until ROUNDS are done; the final adapter's sha256."""
    commit = last_commit(store, run_id)
    if commit is None or commit.round + 1 < ROUNDS:
        run_inprocess(StageContext(_cfg(rounds=ROUNDS), store, run_id), resume_from=run_id if commit else "")
    return last_commit(store, run_id).adapter.sha256


def _only_whole_objects(root: Path) -> None:
    """Every object under its final name holds the bytes its name promises; partial writes left only temp files."""
    for path in (root / "objects").rglob("*"):
        if path.is_file() and not path.name.endswith(".tmp"):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name.split(".")[0], path
    for path in (root / "lineage").rglob("*.json"):
        json.loads(path.read_text())
    for path in (root / "runs").rglob("*.json"):
        json.loads(path.read_text())


def _harness(config_file: Path, store_uri: str, point: str, rounds: int = ROUNDS, env: dict | None = None,
             wait_s: float | None = 600) -> multiprocessing.Process | int | None:
    """`fault_harness.main` in a process forked from a forkserver that imported it once; its exit code (or the
    process itself with `wait_s` None)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["fault_harness"])
    proc = context.Process(target=fault_harness.main, args=(str(config_file), store_uri, "ft", str(rounds), point, env))
    proc.start()
    if wait_s is None:
        return proc
    proc.join(wait_s)
    return proc.exitcode


CRASHES = ["rename:.parquet", "after:rollout", "after:reward", "after:cluster", "fsync:.safetensors",
           "before-commit", "rename:commits/r000001", "after:update"]
"""Every stage boundary of round 1, and writes cut short: a table object's and an adapter's temp file complete or
not yet flushed, and the commit record's, each never renamed into place."""


def test_kill_9_at_every_stage_boundary_and_mid_write_then_resume(config_file, round_zero, reference, tmp_path):
    """One store through eight kill -9s in a row, each run resuming the last: after each, only whole objects hold a
    final name and every record parses; the eighth run commits round 1 with the bytes of a run nothing happened to
    (and dies before its last evaluation)."""
    root = tmp_path / "store"
    shutil.copytree(round_zero, root)
    for point in CRASHES:
        assert _harness(config_file, str(root), point) == -signal.SIGKILL, point
        _only_whole_objects(root)
        assert (root / "runs/ft/commits/r000001.json").exists() == (point == "after:update"), point
    store = LocalStore(root)
    assert last_commit(store, "ft").adapter.sha256 == reference
    assert verify_run(store, "ft").problems == []
    assert list(root.rglob("*.tmp"))  # the writes cut short left their temp files, and nothing read them


class _FullDisk:
    """A file system that fills up in the middle of the first adapter write after round 0 is committed."""

    def __init__(self, root: Path):
        self.root, self.struck = root, False

    def fdopen(self, fd, *args, **kwargs):
        f = os.fdopen(fd, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}")
        committed = (self.root / "runs/ft/commits/r000000.json").exists()
        if self.struck or not committed or ".safetensors" not in target:
            return f
        self.struck = True
        real_write = f.write

        def write(data):
            real_write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        f.write = write
        return f


def test_a_full_disk_fails_in_one_line_leaves_no_partial_object_and_resumes(config_file, round_zero, reference,
                                                                           tmp_path, monkeypatch, capsys):
    root = tmp_path / "store"
    shutil.copytree(round_zero, root)
    disk = _FullDisk(root)
    shim = types.ModuleType("os")
    shim.__dict__.update(os.__dict__)
    shim.fdopen = disk.fdopen
    monkeypatch.setattr(files, "os", shim)  # where a store write opens its temp file
    # no retries: the first failed segment ends the chain (with retries, the next segment rides it out, below)
    code = main(["run", "--engine", "inprocess", "--config", str(config_file), "--store", str(root), "--resume",
                 "ft", "--set", "pipeline.max_retries=0", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert disk.struck and code == 1 and len(err) == 1, err
    assert err[0].startswith("error: fine-tune stopped: 1 segments in a row failed"), err[0]
    assert f"writing {LocalStore(root).uri}/objects/" in err[0] and "No space left on device" in err[0], err[0]
    assert not list(root.rglob("*.tmp"))  # the half-written temp file was removed
    assert not (root / "runs/ft/commits/r000001.json").exists()
    _only_whole_objects(root)
    monkeypatch.undo()
    assert _resume_to_the_end(LocalStore(root)) == reference


def test_kill_9_in_an_s3_multipart_upload_leaves_no_object_and_a_rerun_completes(s3_server, s3_store, tmp_path):
    """The upload is killed between its parts: S3 shows no object until CompleteMultipartUpload, so a reader sees
    none, and the rerun writes the whole object (the incomplete upload is for the bucket's lifecycle rule)."""
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    reached, release = threading.Event(), threading.Event()

    class HoldPartTwo(_FlakyProxy):
        def _handle(self):
            if "partNumber=2" in self.path:
                reached.set()
                release.wait(60)
                self.close_connection = True
                return
            super()._handle()

        do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

    handler = type("Proxy", (HoldPartTwo,), {"upstream": (host, int(port)), "seen": [], "faults": []})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    proxy.handle_error = lambda *_: None
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    size, seed = 12 * (1 << 20) + 7, 15
    script = (f"import random; from dgrpo.store.s3 import S3Store, S3Settings; "
              f"s = S3Settings.from_env(); S3Store({s3_store.uri!r}, s)"
              f".put(random.Random({seed}).randbytes({size}), kind='blob', suffix='.bin')")
    env = os.environ | {"DGRPO_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.server_port}",
                        "DGRPO_S3_MULTIPART_THRESHOLD_MB": "5", "DGRPO_S3_MULTIPART_CHUNK_MB": "5",
                        "DGRPO_S3_MAX_CONCURRENCY": "1"}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        assert reached.wait(120), "the upload never reached its second part"
        child.kill()
        assert child.wait(30) == -signal.SIGKILL
    finally:
        release.set()
        proxy.shutdown()
        proxy.server_close()
    data = random.Random(seed).randbytes(size)
    sha = hashlib.sha256(data).hexdigest()
    key = f"{s3_store.prefix}/objects/{sha[:2]}/{sha}.bin"
    admin = s3_server.client()
    assert admin.list_objects_v2(Bucket=S3_BUCKET, Prefix=key).get("KeyCount", 0) == 0
    uploads = admin.list_multipart_uploads(Bucket=S3_BUCKET, Prefix=s3_store.prefix).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [key]  # left to the bucket's AbortIncompleteMultipartUpload rule
    settings = S3Settings.from_env()
    store = S3Store(s3_store.uri, type(settings)(**{**settings.__dict__, "multipart_threshold_mb": 5,
                                                    "multipart_chunk_mb": 5}))
    ref = store.put(data, kind="blob", suffix=".bin")
    assert store.get(ref) == data


@pytest.fixture
def private_s3(tmp_path):
    """A SeaweedFS of this test's own, which it may kill and restart (the session's server is shared)."""
    server = seaweedfs.start(tmp_path / "seaweedfs")
    server.client().create_bucket(Bucket="restart")
    yield server
    server.stop()


def _restart_after(server, down_s: float):
    server.stop()
    time.sleep(down_s)
    return seaweedfs.start(server.root, ports=server.ports)


def _wait_for_commit(server, prefix: str, run_id: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    admin = server.client()
    deadline = time.monotonic() + timeout_s
    while admin.list_objects_v2(Bucket="restart", Prefix=f"{prefix}/runs/{run_id}/commits/").get("KeyCount", 0) == 0:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no round committed"
        time.sleep(0.2)


def _s3_env(server, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DGRPO_S3_"))}
    return env | server.env() | {f"DGRPO_S3_{k.upper()}": v for k, v in settings.items()}


def test_the_s3_server_restarting_mid_run_is_ridden_out(private_s3, config_file, reference, monkeypatch):
    """The server dies after round 0 is committed and is back 2 s later: the requests in between are retried within
    the deadline, and the run finishes with the same bytes."""
    uri = "s3://restart/ride"
    # the deadline outlasts SeaweedFS's restart on a loaded 2-core machine (over 60 s once, with two suites running)
    env = _s3_env(private_s3, request_deadline_s="240", connect_timeout_s="2", read_timeout_s="10")
    proc = subprocess.Popen([sys.executable, str(HARNESS), str(config_file), uri, "ft", str(ROUNDS), "none"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_commit(private_s3, "ride", "ft", proc)
        server = _restart_after(private_s3, 2.0)
        private_s3.process = server.process
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "finished" in out, err[-3000:]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = open_store(uri)
    assert _resume_to_the_end(store) == reference  # nothing left to train: the run's own final adapter
    assert verify_run(store, "ft").problems == []


def test_the_s3_server_down_longer_than_the_deadline_fails_in_one_line_and_resumes(private_s3, config_file,
                                                                                   reference, monkeypatch, tmp_path):
    uri = "s3://restart/fail"
    env = _s3_env(private_s3, request_deadline_s="2", connect_timeout_s="1", read_timeout_s="2")
    run = [sys.executable, "-m", "dgrpo_pipelines.main", "run", "--engine", "inprocess", "--config",
           str(config_file), "--store", uri, "--run-id", "ft", "--output", str(tmp_path / "out")]
    proc = subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_commit(private_s3, "fail", "ft", proc)
        private_s3.stop()
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning: ")]
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert "no answer from the S3 endpoint" in lines[0] or "Could not connect" in lines[0], lines[0]
    server = seaweedfs.start(private_s3.root, ports=private_s3.ports)
    private_s3.process = server.process
    # the resume gets the default deadline: a server just back may take a few seconds to serve its volumes
    for key, value in (env | {"DGRPO_S3_REQUEST_DEADLINE_S": "120", "DGRPO_S3_READ_TIMEOUT_S": "60"}).items():
        monkeypatch.setenv(key, value)
    store = open_store(uri)
    assert _resume_to_the_end(store) == reference
    assert verify_run(store, "ft").problems == []


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float) -> None:
    """Until `path` exists, polling every 10 ms (the rest of a tiny round takes ~0.15 s on an idle CPU, so a
    coarser poll misses the middle of the round); `proc` must not end first."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.e2e
@pytest.mark.parametrize(("execution", "killed_once"), [("staged", "commits/r000000.json"),
                                                         ("fused", "events/r0001-rollout.json")])
def test_kill_9_of_a_kfp_engine_run_then_resume(config_file, reference, tmp_path, execution, killed_once):
    """kill -9 of `dgrpo run --engine kfp` and all its task processes (staged: once round 0 is committed; fused: in
    the middle of round 1, its rollout written and its update not); `--resume` through kfp.local again finishes with
    the bytes of an uninterrupted run."""
    store = tmp_path / "store"
    base = [sys.executable, "-m", "dgrpo_pipelines.main", "run", "--engine", "kfp", "--config", str(config_file),
            "--store", str(store), "--output", str(tmp_path / "out"), "--set", f"pipeline.execution={execution}"]
    proc = subprocess.Popen(base + ["--run-id", "ft"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        _wait_for(store / "runs/ft" / killed_once, proc, seconds=900)
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and every kfp.local task it started
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _only_whole_objects(store)
    assert not (store / "runs/ft/commits/r000001.json").exists()
    resumed = subprocess.run(base + ["--resume", "ft"], capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert LocalStore(store).get_json("runs/ft/commits/r000001.json")["adapter"]["sha256"] == reference
    assert verify_run(LocalStore(store), "ft").problems == []


@pytest.mark.e2e
@pytest.mark.parametrize("after", ["events/r0001-rollout.json", "events/r0001-cluster.json"])
def test_sigterm_records_why_the_run_ended_and_the_run_resumes(config_file, reference, tmp_path, after):
    """SIGTERM (an eviction, a drain, a preemption) in the middle of round 1: the run exits 143 with one line saying
    during which stage of which round, the store records it and holds only whole objects, the lease is given back,
    and `--resume` finishes with the bytes of an uninterrupted run."""
    store = tmp_path / "store"
    base = [sys.executable, "-m", "dgrpo_pipelines.main", "run", "--engine", "inprocess", "--config",
            str(config_file), "--store", str(store), "--output", str(tmp_path / "out")]
    proc = subprocess.Popen(base + ["--run-id", "ft"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(store / "runs/ft" / after, proc, seconds=600)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output[-2000:]
    assert "terminated by SIGTERM during" in output and "of round 2" in output, output[-2000:]
    _only_whole_objects(store)
    errors = [json.loads(p.read_text()) for p in sorted((store / "runs/ft/errors").glob("*.json"))]
    assert errors[-1]["error"].startswith("Terminated: terminated by SIGTERM during") and errors[-1]["round"] == 1
    assert not (store / "runs/ft/lease.json").exists()
    assert not (store / "runs/ft/commits/r000001.json").exists()
    resumed = subprocess.run(base + ["--resume", "ft"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert LocalStore(store).get_json("runs/ft/commits/r000001.json")["adapter"]["sha256"] == reference
