"""A small client of the Kubeflow Pipelines v2beta1 REST API, on the standard library only.

The continuation task runs in a stage image, which carries the KFP executor but not kfp's client stack, so
`dgrpo submit`, `dgrpo schedule` and the chain's continuation all build their requests here. The bodies follow the
v2beta1 protos as the API server parses them (protojson, unknown fields rejected): int64 fields as JSON strings,
`pipeline_spec` holding the IR and its `platform_spec` (the kfp-kubernetes settings), a cron of 6 fields with
seconds first (robfig/cron would misread a 5-field Unix cron). In a multi-user cluster the caller authenticates
with a projected service-account token of audience `pipelines.kubeflow.org` (the `access-ml-pipeline` PodDefault
mounts it; its path is $KF_PIPELINES_SA_TOKEN_PATH); a standalone KFP needs none.
"""

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dgrpo.runs.keys import validate_run_id
from dgrpo.runs.records import ChainRecord
from dgrpo.store import ArtifactRef, ArtifactStore

API = "/apis/v2beta1"
TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
MAX_PARAMETER_BYTES = 10_000
"""The API server's default cap on a run's parameters as JSON (MAX_PARAMETER_BYTES)."""
PIPELINE_KIND = "pipeline"


class KfpApiError(RuntimeError):
    """The KFP API refused or failed a request; the message has the status and the server's answer."""


def pipeline_spec_field(spec: dict, platform: dict | None) -> dict:
    """The `pipeline_spec` of a Run or RecurringRun: the IR, with its platform spec beside it when there is one
    (the server joins the two as YAML documents, as kfp's own client sends them)."""
    if platform and platform.get("platforms"):
        return {"pipeline_spec": spec, "platform_spec": platform}
    return spec


def check_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    if "run_id" in parameters:
        validate_run_id(parameters["run_id"], "run parameter 'run_id'")
    size = len(json.dumps(parameters, separators=(",", ":")).encode())
    if size > MAX_PARAMETER_BYTES:
        raise ValueError(f"run parameters are {size} bytes as JSON, over the KFP API's {MAX_PARAMETER_BYTES}")
    return parameters


def run_body(*, display_name: str, experiment_id: str, spec: dict, platform: dict | None,
             parameters: dict[str, Any], service_account: str = "", description: str = "",
             pipeline_root: str = "") -> dict:
    """A v2beta1 Run. It has no namespace field: the namespace is the experiment's. A `pipeline_root` is this run's
    own (runtime_config), so the namespace's kfp-launcher ConfigMap stays as it is."""
    body = {"display_name": display_name, "pipeline_spec": pipeline_spec_field(spec, platform),
            "runtime_config": {"parameters": check_parameters(parameters)}}
    if pipeline_root:
        body["runtime_config"]["pipeline_root"] = pipeline_root
    if experiment_id:
        body["experiment_id"] = experiment_id
    if service_account:
        body["service_account"] = service_account
    if description:
        body["description"] = description
    return body


def check_cron(cron: str) -> str:
    if len(cron.split()) != 6:
        raise ValueError(f"--cron {cron!r}: KFP cron has 6 fields (seconds first), e.g. '0 0 2 * * *' for 02:00 "
                         "daily; a 5-field Unix cron would be misread as seconds")
    return cron


def recurring_run_body(*, display_name: str, experiment_id: str, spec: dict, platform: dict | None,
                       parameters: dict[str, Any], cron: str, service_account: str = "", description: str = "",
                       enabled: bool = True, max_concurrency: int = 1, pipeline_root: str = "") -> dict:
    """A v2beta1 RecurringRun: cron trigger, at most `max_concurrency` runs at once, no catch-up."""
    if not 1 <= max_concurrency <= 10:
        raise ValueError(f"max_concurrency {max_concurrency}: the KFP API takes 1 to 10")
    body = run_body(display_name=display_name, experiment_id=experiment_id, spec=spec, platform=platform,
                    pipeline_root=pipeline_root,
                    parameters=parameters, service_account=service_account, description=description)
    return body | {"trigger": {"cron_schedule": {"cron": check_cron(cron)}},
                   "max_concurrency": str(max_concurrency),  # int64: a JSON string in protojson
                   "mode": "ENABLE" if enabled else "DISABLE", "no_catchup": True}


def put_pipeline(store: ArtifactStore, spec: dict, platform: dict | None) -> ArtifactRef:
    """Keep the compiled segment pipeline in the store, so the continuation resubmits exactly it."""
    body = {"pipeline_spec": spec, "platform_spec": platform or {}}
    return store.put(json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), kind=PIPELINE_KIND,
                     suffix=".json")


def get_pipeline(store: ArtifactStore, sha256: str) -> tuple[dict, dict | None]:
    ref = ArtifactRef(kind=PIPELINE_KIND, uri=f"{store.uri.rstrip('/')}/objects/{sha256[:2]}/{sha256}.json",
                      sha256=sha256, size=0)
    body = json.loads(store.get(ref))
    return body["pipeline_spec"], body["platform_spec"] or None


def find_token(token: str | None = None) -> str | None:
    """An explicit token, else $KF_PIPELINES_TOKEN, else the projected service-account token file if mounted."""
    if token:
        return token
    if os.environ.get("KF_PIPELINES_TOKEN"):
        return os.environ["KF_PIPELINES_TOKEN"]
    path = Path(os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", TOKEN_PATH))
    return path.read_text().strip() if path.is_file() else None


FINISHED_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
"""v2beta1 RuntimeState values of a run that will run no task any more (its exit task included)."""
TERMINATED_STATES = ("CANCELING", "CANCELED")
"""A run an operator terminated (the UI's Terminate, `dgrpo stop --now`)."""
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)


def ui_url(host: str, run_id: str, recurring: bool = False) -> str:
    """The KFP UI page of a run (or a recurring run) at `host`, the endpoint `dgrpo submit --host` was given: the
    UI (ml-pipeline-ui, or Kubeflow's /pipeline) serves the API it proxies, and routes with a hash router
    (frontend/src/components/Router.tsx: /runs/details/:runId, /recurringrun/details/:recurringRunId)."""
    page = "recurringrun" if recurring else "runs"
    return f"{host.rstrip('/')}/#/{page}/details/{urllib.parse.quote(run_id)}"


def run_state(run: dict) -> str:
    """A run's state as the chain decides on it: its API state, except that a run an operator terminated reads
    CANCELED to the end. KFP 2.17 marks a terminated run CANCELING (`run_store.TerminateRun`) and sets its
    Workflow's deadline to 0; once the Workflow has ended, the persistence agent's report makes it FAILED
    (`ReportWorkflowResource`: a Workflow in a final state is no longer "terminating"). The CANCELING that
    `UpdateRun` left in its state_history is what tells an operator's termination from a failure."""
    state = str(run.get("state", ""))
    history = {str(h.get("state", "")) for h in run.get("state_history") or [] if isinstance(h, dict)}
    return "CANCELED" if state == "FAILED" and "CANCELING" in history else state
TOKEN_HELP = ("get a token: on a standalone KFP, `kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80` and "
              "--host http://localhost:8080 (no token); on multi-user Kubeflow, `kubectl -n <namespace> create token "
              "<service-account> --audience pipelines.kubeflow.org`, passed as --token or $KF_PIPELINES_TOKEN")


class KfpAuthError(KfpApiError):
    """401/403, or a login page instead of the API: the one line says how to get a token."""


class KfpUnavailable(KfpApiError):
    """A failure a later try may not repeat: no connection, a timeout, 5xx or 429."""


def _detail(text: str) -> str:
    """The server's message from an error body: its JSON `error`/`message`, never a whole HTML page."""
    try:
        body = json.loads(text)
    except ValueError:
        return "an HTML page" if "<html" in text[:500].lower() else " ".join(text.split())[:300]
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)[:300]
    return str(body)[:300]


class KfpClient:
    """The few v2beta1 calls dgrpo makes: experiments, runs (create, find, get, terminate), recurring runs.

    Reads are retried on connection errors, timeouts, 5xx and 429 with exponential backoff (`attempts` tries,
    `backoff_s` doubling); creating a run is retried too, made idempotent by its display name (`create_run_once`)."""

    def __init__(self, endpoint: str, token: str | None = None, namespace: str = "", timeout_s: float = 30.0,
                 attempts: int = 6, backoff_s: float = 2.0):
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"KFP endpoint {endpoint!r}: expected an http(s):// URL")
        self.endpoint, self.namespace, self.timeout_s = endpoint.rstrip("/"), namespace, timeout_s
        self.attempts, self.backoff_s = max(1, attempts), backoff_s
        self.token = find_token(token)

    def request(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> dict:
        """One try. KfpAuthError for 401/403 or a login page, KfpUnavailable for what a retry may cure."""
        url = f"{self.endpoint}{API}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        where = f"{method} {self.endpoint}{API}{path}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                text, kind = resp.read().decode(errors="replace"), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            detail = _detail(exc.read().decode(errors="replace"))
            if exc.code in (401, 403):
                why = "not authenticated" if exc.code == 401 else "not allowed"
                raise KfpAuthError(f"{where}: HTTP {exc.code}, {why} ({detail}); {TOKEN_HELP}") from None
            error = KfpUnavailable if exc.code in TRANSIENT_STATUSES else KfpApiError
            raise error(f"{where}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise KfpUnavailable(f"{where}: {getattr(exc, 'reason', exc)}") from exc
        if "html" in kind or text.lstrip()[:1] == "<":  # an auth proxy (Dex, oauth2-proxy) sent its login page
            raise KfpAuthError(f"{where}: answered with a login page, not the KFP API; {TOKEN_HELP}")
        try:
            return json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise KfpApiError(f"{where}: not a JSON answer ({_detail(text)})") from exc

    def retrying(self, call, what: str):
        """`call()` until it does not raise KfpUnavailable, at most `attempts` times with doubling waits."""
        for attempt in range(self.attempts):
            try:
                return call()
            except KfpUnavailable as exc:
                if attempt + 1 == self.attempts:
                    raise KfpUnavailable(f"{what}: gave up after {self.attempts} tries; last: {exc}") from exc
                time.sleep(min(self.backoff_s * 2 ** attempt, 60.0))
        raise AssertionError("unreachable")

    def get(self, path: str, query: dict | None = None) -> dict:
        return self.retrying(lambda: self.request("GET", path, query=query), f"GET {path}")

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name` (in the client's namespace), created when absent."""
        query = {"filter": filter_param(display_name=name)} | ({"namespace": self.namespace} if self.namespace
                                                               else {})
        try:
            found = self.get("/experiments", query).get("experiments") or []
        except KfpAuthError:
            raise
        except KfpApiError as exc:
            if "HTTP 400" in str(exc) and not self.namespace:
                raise KfpApiError(f"{exc}; a multi-user Kubeflow lists experiments per profile: give --namespace "
                                  "<your profile namespace>") from None
            raise
        if found:
            return found[0]["experiment_id"]
        body = {"display_name": name} | ({"namespace": self.namespace} if self.namespace else {})
        return self.retrying(lambda: self.request("POST", "/experiments", body), "POST /experiments")["experiment_id"]

    def create_run(self, body: dict) -> str:
        return self.create_run_once(body)

    def find_run(self, experiment_id: str, display_name: str) -> dict | None:
        """The newest run named `display_name` in the experiment, or None."""
        query = {"experiment_id": experiment_id, "filter": filter_param(display_name=display_name),
                 "sort_by": "created_at desc", "page_size": "10"}
        if self.namespace:
            query["namespace"] = self.namespace
        runs = self.get("/runs", query).get("runs") or []
        return runs[0] if runs else None

    def create_run_once(self, body: dict, look_first: bool = False) -> str:
        """POST the run; before a repeated try (and before the first with `look_first`: a retried task that may
        have posted it already) look for it by its display name in its experiment, since a lost answer may have
        created it: a retry never starts a second run."""
        for attempt in range(self.attempts):
            try:
                if (attempt or look_first) and body.get("experiment_id"):
                    found = self.find_run(body["experiment_id"], body["display_name"])
                    if found is not None:
                        return found["run_id"]
                return self.request("POST", "/runs", body)["run_id"]
            except KfpUnavailable as exc:
                if attempt + 1 == self.attempts:
                    raise KfpUnavailable(f"creating run {body.get('display_name')!r}: gave up after "
                                         f"{self.attempts} tries; last: {exc}") from exc
                time.sleep(min(self.backoff_s * 2 ** attempt, 60.0))
        raise AssertionError("unreachable")

    def get_run(self, run_id: str) -> dict:
        return self.get(f"/runs/{urllib.parse.quote(run_id)}")

    def run_state(self, run_id: str) -> str:
        """Run `run_id`'s state as the chain decides on it (`run_state`)."""
        return run_state(self.get_run(run_id))

    def terminate_run(self, run_id: str) -> None:
        path = f"/runs/{urllib.parse.quote(run_id)}:terminate"
        self.retrying(lambda: self.request("POST", path, {}), f"POST {path}")

    def create_recurring_run(self, body: dict) -> str:
        return self.request("POST", "/recurringruns", body)["recurring_run_id"]

    def find_recurring_runs(self, experiment_id: str, display_name: str) -> list[dict]:
        """The recurring runs named `display_name` in the experiment, enabled or not."""
        query = {"experiment_id": experiment_id, "filter": filter_param(display_name=display_name),
                 "page_size": "100"} | ({"namespace": self.namespace} if self.namespace else {})
        found = self.get("/recurringruns", query)
        # the proto names the list recurringRuns; a gateway printing snake_case names says recurring_runs
        return found.get("recurringRuns") or found.get("recurring_runs") or []


def filter_param(*, display_name: str) -> str:
    """A v2beta1 `filter` on the display name, percent-encoded once more than the query string does: the API
    server URL-decodes the filter a second time after its gateway did (a '+' or '%' would otherwise change)."""
    flt = {"predicates": [{"operation": "EQUALS", "key": "display_name", "string_value": display_name}]}
    return urllib.parse.quote(json.dumps(flt, separators=(",", ":")), safe="")


RunStateLookup = Callable[[str], str]
"""The v2beta1 state of a KFP run by its id (SUCCEEDED, FAILED, RUNNING, ...)."""


def run_state_lookup(chain_record: ChainRecord | None, attempts: int = 3) -> RunStateLookup | None:
    """How to ask a cluster chain's KFP API for a run's state ($KF_PIPELINES_ENDPOINT overrides the in-cluster
    endpoint the chain record holds, for a laptop); None for a chain that is not on KFP."""
    kfp = (chain_record.kfp if chain_record is not None else None) or {}
    if not kfp.get("endpoint"):
        return None
    client = KfpClient(os.environ.get("KF_PIPELINES_ENDPOINT") or kfp["endpoint"], namespace=kfp.get("namespace", ""),
                       attempts=attempts, timeout_s=10.0)
    return client.run_state


def submit_next(store: ArtifactStore, chain_record: ChainRecord, segment: int, parameters: dict[str, str]) -> str:
    """The continuation: submit the chain's next segment as a new run of the stored pipeline, named
    deterministically ("<run id> segment <n>") so that a retried submission finds the run it already made."""
    kfp = chain_record.kfp or {}
    spec, platform = get_pipeline(store, kfp["pipeline_sha256"])
    body = run_body(display_name=f"{chain_record.run_id} segment {segment}", experiment_id=kfp["experiment_id"],
                    spec=spec, platform=platform, parameters=parameters,
                    service_account=kfp.get("service_account", ""), pipeline_root=kfp.get("pipeline_root", ""),
                    description=f"dgrpo fine-tune {chain_record.run_id}, continued by segment {segment - 1}")
    return KfpClient(kfp["endpoint"], namespace=kfp.get("namespace", "")).create_run_once(body, look_first=True)
