"""The chain-end webhook (dgrpo.runtime.notify): one message when a fine-tune's chain ends, none while it goes on."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import small_config

from dgrpo.runs.exchange import get_notification
from dgrpo.runtime import fine_tune, fused
from dgrpo.runtime import segment as seg
from dgrpo.store import LocalStore

TOKEN = "T0KEN-9f8e7d6c5b4a3f2e1d0c"  # the secret part of a chat webhook's URL


@pytest.fixture
def webhook():
    """A webhook on 127.0.0.1 that records each POSTed JSON body and answers `status` (200 by default)."""
    received: list[dict] = []
    state = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server hook
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(state["status"])
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/{TOKEN}", received, state
    server.shutdown()
    server.server_close()


def _segments(store: LocalStore, config, count: int) -> tuple[str, list[seg.SegmentEnd]]:
    """The fine-tune `ft`'s segments one after the other, each ended as its exit task ends it; its config hash."""
    config_sha256 = fine_tune.start(store, config, "ft").config_sha256
    ends = []
    for i in range(count):
        state, base_due = seg.open_segment(store, "ft", config_sha256, f"k{i}")
        fused.train_segment(store, state, base_due)
        ends.append(seg.finish_segment(store, "ft", config_sha256, f"k{i}", "SUCCEEDED"))
    return config_sha256, ends


def test_the_webhook_hears_once_when_the_chain_ends(tmp_path, monkeypatch, webhook):
    url, received, _ = webhook
    monkeypatch.setenv("DGRPO_NOTIFY_WEBHOOK", url)
    store = LocalStore(tmp_path / "store")
    config = small_config(**{"rounds": 2, "pipeline.rounds_per_run": 1, "eval.every": 100})
    config_sha256, (first, last) = _segments(store, config, 2)
    assert first.decision.action == "continue" and last.decision.action == "done"
    (body,) = received  # nothing while the chain went on
    assert (body["run_id"], body["state"], body["rounds_done"], body["rounds_total"]) == ("ft", "done", 2, 2)
    assert body["text"].startswith("dgrpo fine-tune ft done: 2/2 rounds committed")
    assert get_notification(store, "ft", 2)["delivered"] is True

    seg.finish_segment(store, "ft", config_sha256, "k1", "SUCCEEDED")  # the exit task retried
    assert len(received) == 1


def test_a_webhook_that_stays_down_never_fails_the_fine_tune(tmp_path, monkeypatch, webhook):
    url, received, state = webhook
    state["status"] = 503
    monkeypatch.setenv("DGRPO_NOTIFY_WEBHOOK", url)
    monkeypatch.setattr("dgrpo.runtime.notify.time.sleep", lambda s: None)
    store = LocalStore(tmp_path / "store")
    _, (end,) = _segments(store, small_config(**{"rounds": 1, "eval.every": 100}), 1)
    assert end.decision.action == "done" and len(received) == 3  # retried, then given up
    sent = get_notification(store, "ft", 1)
    assert sent["delivered"] is False and "503" in sent["error"]
    assert TOKEN not in json.dumps(sent)  # the URL is a credential: never stored


def test_no_webhook_no_message(tmp_path, monkeypatch):
    monkeypatch.delenv("DGRPO_NOTIFY_WEBHOOK", raising=False)
    store = LocalStore(tmp_path / "store")
    _segments(store, small_config(**{"rounds": 1, "eval.every": 100}), 1)
    assert get_notification(store, "ft", 1) is None
