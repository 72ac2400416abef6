"""A fake of the KFP v2beta1 REST API that is stricter than the real one where dgrpo must be exact.

Field names are those of KFP 2.17's v2beta1 protos (backend/api/v2beta1/{run,recurring_run,experiment,
runtime_config}.proto), in their proto spelling: an unknown field is a 400, like the server's protojson with
DiscardUnknown false. int64 fields must be JSON strings (protojson's canonical form), a cron must have 6 fields
(robfig/cron reads a 5-field cron as seconds-first), `mode` is a Mode name, `pipeline_spec` and a pipeline version
are a oneof, run parameters are capped at 10,000 bytes. In multi-user mode an experiment id and a bearer token are
required, as there.
"""

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

TIMESTAMP = "timestamp"
SCHEMA: dict[str, dict] = {
    "Run": {"experiment_id": str, "run_id": str, "display_name": str, "storage_state": str, "description": str,
            "pipeline_version_id": str, "pipeline_spec": dict, "pipeline_version_reference": "PipelineVersionReference",
            "runtime_config": "RuntimeConfig", "service_account": str, "created_at": TIMESTAMP,
            "scheduled_at": TIMESTAMP, "finished_at": TIMESTAMP, "state": str, "error": dict, "run_details": dict,
            "recurring_run_id": str, "state_history": list, "plugins_input": dict, "plugins_output": dict},
    "RecurringRun": {"recurring_run_id": str, "display_name": str, "description": str, "pipeline_version_id": str,
                     "pipeline_spec": dict, "pipeline_version_reference": "PipelineVersionReference",
                     "runtime_config": "RuntimeConfig", "service_account": str, "max_concurrency": "int64",
                     "trigger": "Trigger", "mode": str, "created_at": TIMESTAMP, "updated_at": TIMESTAMP,
                     "status": str, "error": dict, "no_catchup": bool, "namespace": str, "experiment_id": str,
                     "plugins_input": dict},
    "Experiment": {"experiment_id": str, "display_name": str, "description": str, "created_at": TIMESTAMP,
                   "namespace": str, "storage_state": str, "last_run_created_at": TIMESTAMP},
    "RuntimeConfig": {"parameters": dict, "pipeline_root": str},
    "PipelineVersionReference": {"pipeline_id": str, "pipeline_version_id": str},
    "Trigger": {"cron_schedule": "CronSchedule", "periodic_schedule": "PeriodicSchedule"},
    "CronSchedule": {"start_time": TIMESTAMP, "end_time": TIMESTAMP, "cron": str},
    "PeriodicSchedule": {"start_time": TIMESTAMP, "end_time": TIMESTAMP, "interval_second": "int64"},
}
ONEOFS = {"Run": ("pipeline_version_id", "pipeline_spec", "pipeline_version_reference"),
          "RecurringRun": ("pipeline_version_id", "pipeline_spec", "pipeline_version_reference"),
          "Trigger": ("cron_schedule", "periodic_schedule")}


class Rejected(ValueError):
    pass


def check(message: str, body, where: str = "") -> None:
    """Raise Rejected unless `body` is a valid `message` in the strict reading above."""
    where = where or message
    if not isinstance(body, dict):
        raise Rejected(f"{where}: expected an object")
    fields = SCHEMA[message]
    for key, value in body.items():
        if key not in fields:
            raise Rejected(f'{where}: message type "{message}" has no field named "{key}"')
        kind = fields[key]
        if kind == "int64":
            if not (isinstance(value, str) and value.lstrip("-").isdigit()):
                raise Rejected(f"{where}.{key}: int64 must be a JSON string, got {value!r}")
        elif kind == TIMESTAMP:
            if not isinstance(value, str):
                raise Rejected(f"{where}.{key}: expected an RFC 3339 string")
        elif isinstance(kind, str):
            check(kind, value, f"{where}.{key}")
        elif not isinstance(value, kind):
            raise Rejected(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    members = [k for k in ONEOFS.get(message, ()) if k in body]
    if len(members) > 1:
        raise Rejected(f'{where}: should not have multiple oneof fields {members}')


def check_pipeline_spec(spec: dict) -> tuple[dict, dict | None]:
    """The server joins `pipeline_spec` and `platform_spec` as two YAML documents; a bare IR is the spec alone."""
    if set(spec) == {"pipeline_spec", "platform_spec"}:
        ir, platform = spec["pipeline_spec"], spec["platform_spec"]
        if "platforms" not in platform:
            raise Rejected("pipeline_spec.platform_spec: expected 'platforms'")
    else:
        ir, platform = spec, None
    for key in ("pipelineInfo", "root", "deploymentSpec", "components", "schemaVersion", "sdkVersion"):
        if key not in ir:
            raise Rejected(f"pipeline_spec: not a pipeline IR (no {key!r})")
    return ir, platform


class FakeKfp:
    """The server, its recorded requests and its state."""

    def __init__(self, multi_user: bool = False, token: str = "", namespace: str = ""):
        self.multi_user, self.token, self.namespace = multi_user, token, namespace
        self.requests: list[tuple[str, str, dict | None, dict]] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                body = None
                if method == "POST":
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((method, url.path, body, dict(self.headers)))
                try:
                    if fake.multi_user and self.headers.get("Authorization") != f"Bearer {fake.token}":
                        self._reply(401, {"error": "Unauthenticated: no valid bearer token", "code": 16})
                        return
                    status, answer = fake.route(method, url.path, parse_qs(url.query), body)
                except Rejected as exc:
                    status, answer = 400, {"error": str(exc), "code": 3}
                self._reply(status, answer)

            def do_GET(self):  # noqa: N802 - http.server's naming
                self._handle("GET")

            def do_POST(self):  # noqa: N802
                self._handle("POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def posted(self, path: str) -> list[dict]:
        return [body for method, p, body, _ in self.requests if method == "POST" and p == path]

    def route(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        api = "/apis/v2beta1"
        if method == "GET" and path == f"{api}/experiments":
            flt = json.loads(query.get("filter", ["{}"])[0]) if "filter" in query else {}
            names = [p.get("string_value", p.get("stringValue")) for p in flt.get("predicates", [])
                     if p.get("key") == "display_name"]
            ns = query.get("namespace", [""])[0]
            found = [e for e in self.experiments.values() if (not names or e["display_name"] in names)
                     and (not self.multi_user or e.get("namespace") == ns)]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if method == "POST" and path == f"{api}/experiments":
            check("Experiment", body)
            if self.multi_user and not body.get("namespace"):
                raise Rejected("Invalid input error: In multi-user mode, experiment namespace can not be empty")
            exp = body | {"experiment_id": str(uuid.uuid4())}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if method == "POST" and path in (f"{api}/runs", f"{api}/recurringruns"):
            kind = "Run" if path.endswith("/runs") else "RecurringRun"
            check(kind, body)
            self._check_common(kind, body)
            if kind == "Run":
                run = body | {"run_id": str(uuid.uuid4()), "state": "PENDING"}
                self.runs[run["run_id"]] = run
                return 200, run
            job = body | {"recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
            self.recurring[job["recurring_run_id"]] = job
            return 200, job
        if method == "GET" and path.startswith(f"{api}/runs/"):
            run = self.runs.get(path.rsplit("/", 1)[1])
            return (200, run) if run else (404, {"error": "run not found", "code": 5})
        return 404, {"error": f"no route {method} {path}", "code": 5}

    def _check_common(self, kind: str, body: dict) -> None:
        if "pipeline_spec" not in body:
            raise Rejected(f"{kind}: dgrpo always sends its pipeline spec")
        check_pipeline_spec(body["pipeline_spec"])
        params = body.get("runtime_config", {}).get("parameters", {})
        if len(json.dumps(params, separators=(",", ":"))) > 10_000:
            raise Rejected("run parameters exceed MAX_PARAMETER_BYTES (10000)")
        if self.multi_user and not body.get("experiment_id"):
            raise Rejected("Experiment id can not be empty in multi-user mode")
        if body.get("experiment_id") and body["experiment_id"] not in self.experiments:
            raise Rejected(f"experiment {body['experiment_id']} not found")
        if kind == "RecurringRun":
            if body.get("mode") not in ("ENABLE", "DISABLE"):
                raise Rejected(f"RecurringRun.mode: invalid enum value {body.get('mode')!r}")
            if not 1 <= int(body.get("max_concurrency", "0")) <= 10:
                raise Rejected("max_concurrency must be 1 to 10")
            cron = body.get("trigger", {}).get("cron_schedule", {}).get("cron")
            if cron is not None and len(cron.split()) != 6:
                raise Rejected(f"cron {cron!r}: dgrpo must send 6 fields (seconds first)")
