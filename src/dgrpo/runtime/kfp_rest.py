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
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from dgrpo.stages.shared.ownership import validate_run_id
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
             parameters: dict[str, Any], service_account: str = "", description: str = "") -> dict:
    """A v2beta1 Run. It has no namespace field: the namespace is the experiment's."""
    body = {"display_name": display_name, "pipeline_spec": pipeline_spec_field(spec, platform),
            "runtime_config": {"parameters": check_parameters(parameters)}}
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
                       enabled: bool = True, max_concurrency: int = 1) -> dict:
    """A v2beta1 RecurringRun: cron trigger, at most `max_concurrency` runs at once, no catch-up."""
    if not 1 <= max_concurrency <= 10:
        raise ValueError(f"max_concurrency {max_concurrency}: the KFP API takes 1 to 10")
    body = run_body(display_name=display_name, experiment_id=experiment_id, spec=spec, platform=platform,
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


class KfpClient:
    """The few v2beta1 calls dgrpo makes: find or create an experiment, create runs and recurring runs."""

    def __init__(self, endpoint: str, token: str | None = None, namespace: str = "", timeout_s: float = 30.0):
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"KFP endpoint {endpoint!r}: expected an http(s):// URL")
        self.endpoint, self.namespace, self.timeout_s = endpoint.rstrip("/"), namespace, timeout_s
        self.token = find_token(token)

    def request(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> dict:
        url = f"{self.endpoint}{API}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise KfpApiError(f"{method} {API}{path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise KfpApiError(f"{method} {self.endpoint}{API}{path}: {exc}") from exc
        return json.loads(text) if text.strip() else {}

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name` (in the client's namespace), created when absent."""
        flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "string_value": name}]})
        query = {"filter": flt} | ({"namespace": self.namespace} if self.namespace else {})
        found = self.request("GET", "/experiments", query=query).get("experiments") or []
        if found:
            return found[0]["experiment_id"]
        body = {"display_name": name} | ({"namespace": self.namespace} if self.namespace else {})
        return self.request("POST", "/experiments", body)["experiment_id"]

    def create_run(self, body: dict) -> str:
        return self.request("POST", "/runs", body)["run_id"]

    def get_run(self, run_id: str) -> dict:
        return self.request("GET", f"/runs/{urllib.parse.quote(run_id)}")

    def create_recurring_run(self, body: dict) -> str:
        return self.request("POST", "/recurringruns", body)["recurring_run_id"]


def submit_next(store: ArtifactStore, chain_record: dict, segment: int, parameters: dict[str, str]) -> str:
    """The continuation: submit the chain's next segment as a new run of the stored pipeline."""
    kfp = chain_record["kfp"]
    spec, platform = get_pipeline(store, kfp["pipeline_sha256"])
    body = run_body(display_name=f"{chain_record['run_id']} segment {segment}", experiment_id=kfp["experiment_id"],
                    spec=spec, platform=platform, parameters=parameters,
                    service_account=kfp.get("service_account", ""),
                    description=f"dgrpo fine-tune {chain_record['run_id']}, continued by segment {segment - 1}")
    return KfpClient(kfp["endpoint"], namespace=kfp.get("namespace", "")).create_run(body)
