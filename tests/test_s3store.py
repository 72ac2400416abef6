"""The S3 artifact store against a real S3 server (SeaweedFS on 127.0.0.1, see conftest.s3_server)."""

import http.client
import os
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest
from dgrpo_pipelines.cli import app
from support import S3_BUCKET
from typer.testing import CliRunner

from dgrpo import artifacts
from dgrpo.contracts import REWARDS
from dgrpo.runs import lineage
from dgrpo.runs.lineage import Provenance
from dgrpo.store import StoreError, open_store
from dgrpo.store.s3 import S3Settings, S3Store, parse_s3_uri


def _rewards(n=4):
    return pa.table({
        "sample_id": [f"s{i}" for i in range(n)], "group_id": ["g"] * n, "prompt": ["a red square"] * n,
        "reward": pa.array([0.25 * i for i in range(n)], pa.float64()),
        "components": pa.array([[("quality", 0.5)]] * n, REWARDS.schema.field("components").type),
    })


def _prov(stage, **inputs):
    return Provenance(stage=stage, run_id="s3-run", config_sha256="c" * 64, round=0, inputs=inputs)


def test_round_trip_of_objects_json_and_tables(s3_store, s3_server):
    assert isinstance(open_store(s3_store.uri), S3Store)
    ref = s3_store.put(b"hello", kind="blob")
    assert ref.uri == f"{s3_store.uri}/objects/2c/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert s3_store.get(ref) == b"hello" and s3_store.put(b"hello", kind="blob") == ref

    s3_store.put_json("runs/r/events/b.json", {"b": 2})
    s3_store.put_json("runs/r/events/a.json", {"a": 1})
    assert s3_store.list("runs/r/events") == ["runs/r/events/a.json", "runs/r/events/b.json"]
    assert s3_store.get_json("runs/r/events/a.json") == {"a": 1}
    assert s3_store.exists("runs/r/events/a.json") and not s3_store.exists("runs/r/events/c.json")
    assert s3_store.list("runs/none") == []

    table_ref = artifacts.write_table(s3_store, _rewards(), REWARDS, _prov("reward"))
    assert artifacts.read_table(s3_store, table_ref, REWARDS).column("reward").to_pylist() == [0, 0.25, 0.5, 0.75]
    # the objects are where the URI says, under the prefix, as plain Parquet
    key = table_ref.uri.removeprefix(f"s3://{S3_BUCKET}/")
    body = s3_server.client().get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
    assert body[:4] == b"PAR1" and len(body) == table_ref.size


def test_corrupted_object_detected_on_read(s3_store, s3_server):
    ref = s3_store.put(b"payload", kind="blob")
    s3_server.client().put_object(Bucket=S3_BUCKET, Key=ref.uri.removeprefix(f"s3://{S3_BUCKET}/"), Body=b"tampered")
    with pytest.raises(StoreError, match=r"blob artifact s3://.*: content hash .* does not match"):
        s3_store.get(ref)


def test_missing_object_and_missing_bucket_are_named(s3_store):
    ref = s3_store.put(b"x", kind="blob")
    absent = "0" * 64
    with pytest.raises(StoreError, match=r"blob artifact .*: not found"):
        s3_store.get(replace(ref, sha256=absent, uri=f"{s3_store.uri}/objects/00/{absent}"))
    with pytest.raises(StoreError, match=r"no-such-bucket.*NoSuchBucket \(bucket 'no-such-bucket' does not exist\)"):
        S3Store("s3://no-such-bucket/p").put_json("a.json", {})
    with pytest.raises(StoreError, match=r"listing s3://no-such-bucket/p/runs: NoSuchBucket"):
        S3Store("s3://no-such-bucket/p").list("runs")


def test_large_object_goes_up_in_parts(s3_store, s3_server):
    settings = replace(S3Settings.from_env(), multipart_threshold_mb=5, multipart_chunk_mb=5)
    store = S3Store(s3_store.uri, settings)
    data = os.urandom(12 * (1 << 20) + 123)
    ref = store.put(data, kind="blob", suffix=".bin")
    head = s3_server.client().head_object(Bucket=S3_BUCKET, Key=ref.uri.removeprefix(f"s3://{S3_BUCKET}/"))
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag counts its parts
    assert store.get(ref) == data
    leftovers = s3_server.client().list_multipart_uploads(Bucket=S3_BUCKET, Prefix=store.prefix).get("Uploads", [])
    assert leftovers == []


def test_lineage_chain_read_back_from_s3(s3_store):
    base = s3_store.put(b"weights", kind="base_model")
    lineage.record(s3_store, base, _prov("base_model"))
    rollouts = artifacts.write_table(s3_store, _rewards(), REWARDS, _prov("reward", base_model=base))
    adapter = s3_store.put(b"adapter", kind="lora_adapter")
    lineage.record(s3_store, adapter, _prov("update", rewards=rollouts, base_model=base))
    assert [(d, n, r.kind) for d, n, r in lineage.chain(s3_store, adapter.sha256)] == [
        (0, "", "lora_adapter"), (1, "base_model", "base_model"), (1, "rewards", "rewards"),
        (2, "base_model", "base_model")]

    runner = CliRunner()
    by_sha = runner.invoke(app, ["lineage", adapter.sha256, "--store", s3_store.uri])
    assert by_sha.exit_code == 0, by_sha.output
    assert f"lora_adapter {adapter.sha256[:12]} <- update" in by_sha.output and f"uri {adapter.uri}" in by_sha.output
    by_uri = runner.invoke(app, ["lineage", adapter.uri, "--json"])
    assert by_uri.exit_code == 0, by_uri.output
    assert '"kind": "base_model"' in by_uri.output
    missing = runner.invoke(app, ["lineage", "0" * 64, "--store", s3_store.uri])
    assert missing.exit_code == 1 and "no lineage record" in missing.output


_ERRORS = {
    "slowdown": (503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"),
    "internal": (500, b"<Error><Code>InternalError</Code><Message>volume 1 not found</Message></Error>"),
}


class _FlakyProxy(BaseHTTPRequestHandler):
    """Forwards to the S3 server, after answering the first requests with S3 throttling or a dropped connection,
    and every request before `failing_until` (time.monotonic()) with a 500, as a restarting server does."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int]
    faults: list[str]
    seen: list[str]
    failing_until: float = 0.0

    def _handle(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(self.command)
        fault = self.faults.pop(0) if self.faults else None
        if time.monotonic() < self.failing_until:
            fault = "internal"
        if fault == "drop":
            self.close_connection = True
            return
        if fault in _ERRORS:
            status, msg = _ERRORS[fault]
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(msg)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=10)
        conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
        resp = conn.getresponse()
        payload = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        conn.close()

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

    def log_message(self, *args):
        pass


def test_throttling_and_dropped_connections_are_retried(s3_store, s3_server):
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    handler = type("Proxy", (_FlakyProxy,), {"upstream": (host, int(port)), "seen": [],
                                             "faults": ["slowdown", "drop", "slowdown"]})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    proxy.handle_error = lambda *_: None  # the client hanging up on a dropped request is the point
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        settings = replace(S3Settings.from_env(), endpoint_url=f"http://127.0.0.1:{proxy.server_port}")
        store = S3Store(s3_store.uri, settings)
        ref = store.put(b"through a flaky network", kind="blob")
        assert handler.faults == [] and len(handler.seen) >= 4  # three faults, then the request went through
        assert s3_store.get(ref) == b"through a flaky network"

        assert store.get(ref) == b"through a flaky network"  # HEAD and GET through the proxy

        handler.faults.extend(["slowdown"] * 3)
        impatient = S3Store(s3_store.uri, replace(settings, max_attempts=2))
        with pytest.raises(StoreError, match=r"listing .*: SlowDown: Please reduce your request rate"):
            impatient.list("objects")
        assert handler.faults == ["slowdown"]  # two tries, then the error
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_server_answering_500_for_seconds_is_ridden_out_with_the_default_settings(s3_store, s3_server):
    """What a restarted SeaweedFS does until its volume server registers (seen in CI): 500 InternalError. botocore
    backs off from 50 ms on a 500, so the old default of 8 tries slept 6.35 s at most (the sum of its backoff caps)
    and a 7 s outage failed it unless its requests themselves took the other 0.65 s; 20 tries sleep less than 7 s
    with a probability below 4e-13 (the last eleven alone: one uniform on [0, 12.8 s), ten on [0, 20 s), so
    7^11 / (11! x 12.8 x 20^10))."""
    host, port = s3_server.endpoint.removeprefix("http://").split(":")
    handler = type("Proxy", (_FlakyProxy,), {"upstream": (host, int(port)), "seen": [], "faults": []})
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        settings = replace(S3Settings.from_env(), endpoint_url=f"http://127.0.0.1:{proxy.server_port}")
        assert settings.max_attempts == S3Settings.max_attempts == 20
        store = S3Store(s3_store.uri, settings)
        handler.failing_until = time.monotonic() + 7.0
        ref = store.put(b"after the restart", kind="blob")
        assert time.monotonic() >= handler.failing_until and len(handler.seen) > 8
        assert s3_store.get(ref) == b"after the restart"
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.mark.parametrize("uri, message", [
    ("s3://key:secret@bucket/p", "credentials do not belong in the store URI"),
    ("s3://bucket/p?endpoint=http://x", "no query or fragment allowed"),
    ("s3://ab/p", "bucket name 'ab' must have 3 to 63 characters"),
    ("s3://bucket/a//b", "empty path segment"),
])
def test_bad_store_uris_are_refused(uri, message):
    with pytest.raises(StoreError, match=message):
        parse_s3_uri(uri)


def test_settings_from_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("DGRPO_S3_", "AWS_ENDPOINT_URL")):
            monkeypatch.delenv(key)
    assert S3Settings.from_env().addressing_style == "auto"
    monkeypatch.setenv("DGRPO_S3_ENDPOINT_URL", "http://seaweedfs.kubeflow:8333")
    monkeypatch.setenv("DGRPO_S3_MULTIPART_CHUNK_MB", "8")
    settings = S3Settings.from_env()
    assert settings.addressing_style == "path" and settings.multipart_chunk_mb == 8
    assert settings.transfer_config().multipart_chunksize == 8 << 20
    monkeypatch.setenv("DGRPO_S3_MAX_ATTEMPTS", "many")
    with pytest.raises(StoreError, match="DGRPO_S3_MAX_ATTEMPTS='many': expected an integer"):
        S3Settings.from_env()
    monkeypatch.setenv("DGRPO_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setenv("DGRPO_S3_ADDRESSING_STYLE", "dns")
    with pytest.raises(StoreError, match="DGRPO_S3_ADDRESSING_STYLE='dns': expected one of path, virtual, auto"):
        S3Settings.from_env()


def test_store_keys_cannot_escape_the_prefix(s3_store):
    with pytest.raises(StoreError, match="not a plain relative key"):
        s3_store.put_json("../other/x.json", {})
