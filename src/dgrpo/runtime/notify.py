"""A webhook told when a fine-tune's chain ends (done, stopped by a guard rail or an operator, failed for good).

An unattended fine-tune that stops at 3 a.m. should not wait for someone to run `dgrpo status`. The exit task posts
one JSON message to the URL in $DGRPO_NOTIFY_WEBHOOK (a Secret exposed to the pods through
`kubernetes.defaults.secrets`; in a local run, the shell's environment): Slack's and Teams' incoming webhooks show
its `text`, anything else reads its fields. The URL is a credential, so it never enters the config or the store,
and an error quoting it is redacted. A chain that goes on (the next segment, a retry) posts nothing.

Delivery is at least once: the message is recorded in the store after the webhook accepted it, and an exit task
retried after that finds the record and does not post again. A webhook that stays down is recorded (the exit
task's retry tries again) and logged, never a reason for the fine-tune to fail.
"""

import json
import logging
import os
import time
import urllib.request

from dgrpo.runs.exchange import get_notification, put_notification
from dgrpo.runs.records import StatusRecord
from dgrpo.runtime.redaction import redact_secrets
from dgrpo.store import ArtifactStore

WEBHOOK_ENV = "DGRPO_NOTIFY_WEBHOOK"
ATTEMPTS = 3
log = logging.getLogger("dgrpo.notify")


def message(run_id: str, store_uri: str, status: StatusRecord) -> dict:
    """The posted JSON: a one-line `text` for chat webhooks, and the fields for anything else."""
    text = (f"dgrpo fine-tune {run_id} {status.state}: {status.reason} ({status.rounds_done}/{status.rounds_total} "
            f"rounds; `dgrpo status {run_id} --store {store_uri}`)")
    return {"text": text, "run_id": run_id, "state": status.state, "reason": status.reason,
            "rounds_done": status.rounds_done, "rounds_total": status.rounds_total, "segment": status.segment,
            "store": store_uri}


def post(url: str, body: dict, *, attempts: int = ATTEMPTS, timeout_s: float = 10.0, backoff_s: float = 1.0
         ) -> None:
    """POST `body` as JSON, retrying a connection error or a 5xx/429 answer; raises the last error."""
    data = json.dumps(body).encode()
    for attempt in range(attempts):
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429 or attempt == attempts - 1:
                raise
        except OSError:
            if attempt == attempts - 1:
                raise
        time.sleep(backoff_s * 2**attempt)


def chain_ended(store: ArtifactStore, run_id: str, status: StatusRecord) -> None:
    """Tell the webhook, if one is set, that the chain of `run_id` ended with `status`; never raises."""
    url = os.environ.get(WEBHOOK_ENV, "")
    sent = get_notification(store, run_id, status.segment or 0)
    if not url or (sent or {}).get("delivered"):
        return
    body = message(run_id, store.uri, status)
    try:
        post(url, body)
    except Exception as exc:  # noqa: BLE001 - the fine-tune's outcome stands whatever the webhook does
        error = redact_secrets(f"{type(exc).__name__}: {exc}".replace(url, "$" + WEBHOOK_ENV))
        log.warning("fine-tune %s: the notification webhook failed (%s)", run_id, error)
        put_notification(store, run_id, status.segment or 0, body | {"delivered": False, "error": error})
        return
    put_notification(store, run_id, status.segment or 0, body | {"delivered": True})
