"""Corruption does not stick, a store can move, no secret leaves through a URI, and S3 that never answers cannot
block a stage for long."""

import shutil
import socket
import threading
import time
from dataclasses import replace

import pytest
from dgrpo_pipelines.main import main
from reliability_helpers import tiny_config
from support import S3_BUCKET, event_output

from dgrpo.runs import lineage
from dgrpo.runs.commits import last_commit
from dgrpo.runs.keys import lineage_key
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.verify import verify_run
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore, StoreError, check_store_uri, open_store, redact
from dgrpo.store.s3 import S3Settings, S3Store


def _cfg(**overrides):
    return tiny_config(**overrides)


@pytest.fixture(scope="module")
def one_round(tmp_path_factory):
    """A run of one committed round in a local store; tests copy it before they damage it."""
    root = tmp_path_factory.mktemp("one-round") / "store"
    run_inprocess(StageContext(_cfg(rounds=1), LocalStore(root), "ft"))
    return root


@pytest.fixture
def store(one_round, tmp_path):
    shutil.copytree(one_round, tmp_path / "store")
    return LocalStore(tmp_path / "store")


# --- corruption: verified before trusted, healed on rewrite ------------------------------------------------------

def test_a_truncated_object_is_rewritten_by_the_next_identical_put(tmp_path):
    store = LocalStore(tmp_path / "s")
    ref = store.put(b"x" * 1000, kind="blob")
    path = store.local_path(ref)
    path.write_bytes(b"x" * 10)  # a truncated copy (a disk error, a tool writing in place)
    with pytest.raises(StoreError, match="content hash .* does not match"):
        store.get(ref)
    assert store.put(b"x" * 1000, kind="blob") == ref
    assert store.get(ref) == b"x" * 1000
    path.write_bytes(b"y" * 1000)  # same size, other bytes: the hash, not the size, decides
    store.put(b"x" * 1000, kind="blob")
    assert store.get(ref) == b"x" * 1000


def test_a_tampered_s3_object_is_rewritten_by_the_next_identical_put(s3_store, s3_server):
    ref = s3_store.put(b"payload" * 100, kind="blob")
    s3_server.client().put_object(Bucket=S3_BUCKET, Key=ref.uri.removeprefix(f"s3://{S3_BUCKET}/"), Body=b"bad")
    with pytest.raises(StoreError, match="does not match"):
        s3_store.get(ref)
    s3_store.put(b"payload" * 100, kind="blob")
    assert s3_store.get(ref) == b"payload" * 100


def test_an_identical_rerun_heals_a_corrupt_stage_output(store):
    """Before: `put` skipped the write because the key existed, and every rerun failed on the same object."""
    rollouts = event_output(store, "r0000-rollout", "rollouts")
    store.local_path(rollouts).write_bytes(b"PAR1 truncated")
    record = lineage_key(rollouts.sha256)
    store._write(record, b'{"sha256": "trunc')  # and its lineage record half-written
    run_inprocess(StageContext(_cfg(rounds=1), store, "rerun"))
    assert store.check_object(rollouts) is None
    assert lineage.read_record(store, rollouts.sha256).stage == "rollout"


def test_dgrpo_lineage_flags_a_chain_through_a_corrupt_object(store, capsys):
    adapter = last_commit(store, "ft").adapter
    assert main(["lineage", adapter.sha256, "--store", str(store.root), "--verify"]) == 0
    assert "!!" not in capsys.readouterr().out
    scores = event_output(store, "r0000-cluster", "scores")
    store.local_path(scores).write_bytes(store.local_path(scores).read_bytes()[:-50])
    assert main(["lineage", adapter.sha256, "--store", str(store.root)]) == 0  # hashes nothing unless --verify
    assert main(["lineage", adapter.sha256, "--store", str(store.root), "--verify"]) == 1
    out, err = capsys.readouterr()
    flagged = [line for line in out.splitlines() if "!!" in line]
    assert len(flagged) == 1 and f"scores {scores.sha256[:12]}" in flagged[0] and "corrupt" in flagged[0]
    assert err.strip() == (f"error: the chain of {adapter.sha256[:12]} passes through 1 corrupt or missing objects "
                           "(marked !!); `dgrpo verify` checks a whole run")
    assert main(["lineage", adapter.sha256, "--store", str(store.root), "--no-verify"]) == 0
    assert main(["lineage", adapter.sha256[:12].upper(), "--store", str(store.root), "--no-verify"]) == 0
    assert f"lora_adapter {adapter.sha256[:12]} <- update" in capsys.readouterr().out


def test_dgrpo_verify_checks_every_object_of_a_run(store, capsys):
    result = verify_run(store, "ft")
    assert result.problems == [] and result.objects >= 9 and result.external == 1  # the base weights
    assert main(["verify", "ft", "--store", str(store.root)]) == 0
    assert capsys.readouterr().out.startswith("ok: run ft:")

    grid = event_output(store, "r0001-evaluate", "grid")
    store.local_path(grid).write_bytes(b"\x89PNG tampered")
    metrics = event_output(store, "r0000-update", "metrics")
    store.delete(lineage_key(metrics.sha256))
    assert main(["verify", "ft", "--store", str(store.root)]) == 1
    out, err = capsys.readouterr()
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2, out
    assert any(f"eval_grid artifact {grid.sha256[:12]}: corrupt" in p and grid.sha256 in p for p in problems)
    assert any(f"no lineage record for artifact {metrics.sha256}" in p for p in problems)
    assert err.startswith("error: run ft:") and err.strip().endswith("2 problems")
    assert main(["verify", "nosuchrun", "--store", str(store.root)]) == 1
    assert "run 'nosuchrun': no records under runs/nosuchrun/" in capsys.readouterr().err


def test_dgrpo_verify_finds_a_commit_that_does_not_extend_the_chain(store):
    """A commit for round 1 naming round 0's adapter (a stale or forged record): not the update of round 1, and not
    trained from round 0's committed adapter."""
    first = store.get_json("runs/ft/commits/r000000.json")
    store.put_json("runs/ft/commits/r000001.json", first | {"round": 1})
    problems = verify_run(store, "ft").problems
    assert len(problems) == 2, problems
    assert "r000001.json: its adapter" in problems[0] and "update round 1, not by the update of round 2" in problems[0]
    assert "round 2's adapter was trained from no adapter, not from round 1's committed adapter" in problems[1]


# --- a store can move: references resolve by content, not by where the store was ----------------------------------

def test_a_moved_local_store_resumes_to_the_bytes_of_an_uninterrupted_run(one_round, tmp_path):
    whole = run_inprocess(StageContext(_cfg(rounds=2), LocalStore(tmp_path / "whole"), "ft"))
    moved = tmp_path / "elsewhere" / "mounted-store"
    shutil.copytree(one_round, moved)  # another pod mounts the volume at another path
    store = LocalStore(moved)
    commit = store.get_json("runs/ft/commits/r000000.json")
    assert not commit["adapter"]["uri"].startswith(store.uri)  # the commit names the old location
    resumed = run_inprocess(StageContext(_cfg(rounds=2), store, "ft"), resume_from="ft")
    assert resumed["adapter"].sha256 == whole["adapter"].sha256
    assert verify_run(store, "ft").problems == []


def test_a_reference_resolves_only_to_its_own_object(store):
    ref = event_output(store, "r0000-update", "adapter")
    for uri in ("file:///etc/passwd", f"{store.uri}/runs/ft/commits/r000000.json",
                ref.uri.replace(ref.sha256[:2] + "/", "zz/")):
        with pytest.raises(StoreError, match="not an object of a dgrpo store"):
            store.get(replace(ref, uri=uri))
    with pytest.raises(StoreError, match="not an object"):
        store.get(replace(ref, sha256="0" * 64))


# --- secrets: one URI check, every message redacted ---------------------------------------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"


@pytest.mark.parametrize("uri, message", [
    (f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/p", "credentials do not belong in the store URI"),
    ("s3://token@bucket/p", "credentials do not belong"),
    (f"file://user:{SECRET}@/tmp/x", "credentials do not belong"),
    ("s3://bucket/p?X-Amz-Signature=abc", "no query or fragment"),
    ("gs://bucket/p", "unsupported scheme 'gs'"),
    ("file://host/tmp/x", "a file:// URI names a path on this machine"),
    ("s3://b/p", "bucket name 'b' must have 3 to 63 characters"),
    ("s3://bucket/a//b", "empty path segment"),
    (" s3://bucket/p", "leading or trailing spaces"),
    ("", "must not be empty"),
])
def test_every_bad_store_uri_is_refused_with_its_secret_redacted(uri, message):
    with pytest.raises(StoreError, match=message) as err:
        open_store(uri, "--store")
    assert SECRET not in str(err.value) and "AKIAIOSFODNN7EXAMPLE" not in str(err.value)
    assert str(err.value).startswith("--store")


def test_store_uris_people_write_are_accepted(tmp_path):
    for uri in ("s3://bucket", "s3://my.bucket-1/a/b", "s3://bucket/prefix@2024", f"file://{tmp_path}/x",
                str(tmp_path / "y"), "relative/store"):
        assert check_store_uri(uri) == uri
    assert open_store(f"file://{tmp_path}/with%20space").root == tmp_path / "with space"


def test_redaction_covers_userinfo_with_slashes_and_signatures():
    text = (f"cannot reach s3://AKIA:{SECRET}@bucket/p and https://user:pw@host:9000/x?X-Amz-Signature=deadbeef&a=1 "
            "but s3://bucket/prefix@2024 is fine")
    assert redact(text) == ("cannot reach s3://***@bucket/p and https://***@host:9000/x?X-Amz-Signature=***&a=1 "
                            "but s3://bucket/prefix@2024 is fine")


def test_an_s3_endpoint_with_credentials_is_refused_and_redacted(monkeypatch):
    monkeypatch.setenv("DGRPO_S3_ENDPOINT_URL", f"http://admin:{SECRET}@seaweedfs:8333")
    with pytest.raises(StoreError, match=r"DGRPO_S3_ENDPOINT_URL='http://\*\*\*@seaweedfs:8333': credentials do "
                                         r"not belong .*kubernetes\.\*\.secrets") as err:
        S3Settings.from_env()
    assert SECRET not in str(err.value)


# --- S3 that never answers ----------------------------------------------------------------------------------------

class BlackHole:
    """A server that accepts every connection and never answers: what a hung proxy or a wedged gateway does."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_s3_that_never_answers_blocks_one_request_for_a_bounded_time(monkeypatch):
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    hole = BlackHole()
    try:
        settings = S3Settings(endpoint_url=hole.url, region="us-east-1", addressing_style="path", max_attempts=20,
                              connect_timeout_s=1, read_timeout_s=1, request_deadline_s=3)
        store = S3Store("s3://bucket/p", settings)
        start = time.monotonic()
        with pytest.raises(StoreError, match=r"writing s3://bucket/p/runs/x\.json: ReadTimeoutError \(no answer from "
                                             r"the S3 endpoint: retried for up to DGRPO_S3_REQUEST_DEADLINE_S=3s"):
            store.put_json("runs/x.json", {})
        elapsed = time.monotonic() - start
        # Without the deadline: 20 attempts x 1 s plus backoff (up to 20 s each). The bound is the deadline, one
        # more attempt and one backoff sleep; the attempts counted by the server show the deadline stopped them.
        assert elapsed <= settings.max_block_s()
        assert 2 <= len(hole.accepted) < 20
    finally:
        hole.close()
    defaults = S3Settings()
    assert defaults.max_block_s() <= 240 < defaults.max_attempts * defaults.read_timeout_s


@pytest.mark.parametrize("name, value, message", [
    ("DGRPO_S3_MAX_ATTEMPTS", "1000", "must be between 1 and 100"),
    ("DGRPO_S3_READ_TIMEOUT_S", "0", "must be between 1 and 3600"),
    ("DGRPO_S3_REQUEST_DEADLINE_S", "soon", "expected an integer"),
    ("DGRPO_S3_MULTIPART_CHUNK_MB", "4", "must be between 5 and 5120"),
])
def test_s3_settings_from_the_environment_are_bounded(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(StoreError, match=f"environment variable {name}={value!r}: {message}"):
        S3Settings.from_env()
