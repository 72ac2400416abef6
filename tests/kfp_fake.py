"""A fake of the KFP v2beta1 REST API that is stricter than the real one where dgrpo must be exact.

Field names are those of KFP 2.17's v2beta1 protos (backend/api/v2beta1/{run,recurring_run,experiment,
runtime_config}.proto), in their proto spelling: an unknown field is a 400, like the server's protojson with
DiscardUnknown false. int64 fields must be JSON strings (protojson's canonical form), a cron must have 6 fields
(robfig/cron reads a 5-field cron as seconds-first), `mode` is a Mode name, `pipeline_spec` and a pipeline version
are a oneof, run parameters are capped at 10,000 bytes. In multi-user mode an experiment id and a bearer token are
required, as there.

And as unkind as the real one where dgrpo must cope (KFP 2.17's apiserver, read at its source): no token is 401, a
token without the RBAC is 403, an auth proxy (`login_page`) answers with a redirect to an HTML login page; in
multi-user mode listing experiments without a namespace is 400; a list `filter` is URL-decoded once more after the
query string (list_request_util.go), so a '+' turns into a space and a stray '%' is a 400; `fail(...)` injects
5xx, 429, timeouts and answers lost after the request was carried out; `final_status` says what the exit task's
`PipelineTaskFinalStatus.state` is at a run's end: RUNNING, not COMPLETE, after a successful run whose exit
handler holds a `dsl.If` (metadata/client.go recounts a DAG only from a container launcher), and after a
killed pod.

A failed task is reported as the persistence agent reports an Argo Workflow (`fail_task`): a run's
`run_details.task_details` holds one PipelineTaskDetail per Argo node (report_server.go, api_converter.go
toModelTasks/toApiPipelineTaskDetail), whose `child_tasks[].pod_name` are its children's node ids; the log
endpoint `GET /apis/v1alpha1/runs/{run_id}/nodes/{node_id}/log` (main.go, run_log_server.go) streams a node's
`main` container log as text and, since it writes HTTP 200 before reading, answers a failure with 200 and a JSON
`{"error_message", "error_details"}` body.
"""

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote_plus, urlparse

TIMESTAMP = "timestamp"
LOG_PATH = re.compile(r"/apis/v1alpha1/runs/(?P<run_id>[^/]+)/nodes/(?P<node_id>[^/]+)/log")
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


def go_query_unescape(text: str) -> str:
    """Go's url.QueryUnescape: '+' is a space, a '%' not followed by two hex digits is an error."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        raise Rejected(f"Invalid input error: failed to decode the filter: invalid URL escape in {text[:80]!r}")
    return unquote_plus(text)


def has_condition(ir: dict) -> bool:
    """Whether any DAG of the IR holds a task with a trigger condition (a dsl.If branch)."""
    dags = [ir.get("root", {})] + list(ir.get("components", {}).values())
    return any("condition" in t.get("triggerPolicy", {}) for d in dags for t in d.get("dag", {}).get("tasks",
                                                                                                     {}).values())


class FakeKfp:
    """The server, its recorded requests and its state."""

    def __init__(self, multi_user: bool = False, token: str = "", namespace: str = "", login_page: bool = False):
        self.multi_user, self.token, self.namespace, self.login_page = multi_user, token, namespace, login_page
        self.requests: list[tuple[str, str, dict | None, dict]] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.faults: list[tuple[str, str, object]] = []
        self.slow_s = 2.0
        self.termination_s = 0.0
        """Seconds a terminated run's Workflow takes to fail (its pods deleted) before a get_run reads FAILED."""
        self.ending: dict[str, float] = {}
        self.allowed_tokens: set[str] = set()
        self.logs: dict[str, str] = {}
        """The `main` container log of each Argo node id that still has one (its pod, or the log archive)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict | str) -> None:
                text = isinstance(body, str)  # a log: Go sniffs its Content-Type, the header being set too late
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _html(self, status: int, location: str = "") -> None:
                data = b"<!DOCTYPE html><html><head><title>Dex</title></head><body>Log in to Your Account</body></html>"
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                if url.path.startswith("/dex/"):
                    self._html(200)
                    return
                body = None
                if method == "POST":
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                fake.requests.append((method, url.path, body, dict(self.headers)))
                fault = fake.take_fault(method, url.path)
                if fault == "reset":  # the connection drops before the request reaches the server
                    self.close_connection = True
                    return
                if isinstance(fault, int):
                    self._reply(fault, {"error": f"injected HTTP {fault}", "code": 14})
                    return
                auth = self.headers.get("Authorization")
                if fake.login_page and auth is None:  # the auth proxy in front of the API sends browsers to Dex
                    self._html(302, "/dex/auth?client_id=kubeflow-oidc-authservice")
                    return
                try:
                    if fake.multi_user and auth is None:
                        self._reply(401, {"error": "Unauthenticated: no valid bearer token", "code": 16})
                        return
                    if fake.multi_user and auth != f"Bearer {fake.token}" and auth[7:] not in fake.allowed_tokens:
                        self._reply(403, {"error": "PermissionDenied: User 'system:serviceaccount:x:y' is not "
                                                   "authorized with reason: (request: {Verb: create})", "code": 7})
                        return
                    status, answer = fake.route(method, url.path, parse_qs(url.query), body)
                except Rejected as exc:
                    status, answer = 400, {"error": str(exc), "code": 3}
                if fault == "drop":  # carried out, but the answer is lost
                    self.close_connection = True
                    return
                if fault == "timeout":  # carried out, answered after the client gave up
                    time.sleep(fake.slow_s)
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

    def fail(self, method: str, path: str, *faults: object) -> None:
        """The next requests `method path` each meet one fault, in order: an HTTP status (503, 429, 500),
        "reset" (connection lost before the server saw it), "drop" (carried out, answer lost), "timeout" (carried
        out, answered after `slow_s`)."""
        self.faults += [(method, path, f) for f in faults]

    def take_fault(self, method: str, path: str) -> object:
        for i, (m, p, fault) in enumerate(self.faults):
            if m == method and p == path:
                del self.faults[i]
                return fault
        return None

    def set_state(self, run_id: str, state: str) -> None:
        """Set run `run_id`'s state as KFP 2.17's `RunStore.UpdateRun` does: a changed state is appended to the
        run's state_history."""
        run = self.runs[run_id]
        run["state"] = state
        history = run.setdefault("state_history", [])
        if not history or history[-1]["state"] != state:
            history.append({"update_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "state": state})

    def end_workflow(self, run_id: str) -> None:
        """The persistence agent's report of run `run_id`'s Workflow reaching a final phase. A terminated run's
        Workflow fails past the deadline the terminate set to 0, and `ReportWorkflowResource` no longer treats a
        Workflow in a final phase as terminating: the run becomes FAILED, its CANCELING left in state_history."""
        if self.runs[run_id]["state"] == "CANCELING":
            self.set_state(run_id, "FAILED")

    def final_status(self, run_id: str, outcome: str) -> str:
        """End run `run_id` (its API state) and say what its exit task's PipelineTaskFinalStatus.state is, as KFP
        2.17 computes it: the exit-handler DAG's MLMD state. `outcome`: "succeeded" (COMPLETE only if no dsl.If
        branch can be the DAG's last child: a skipped branch is created CANCELED by its driver and nothing recounts
        the DAG, so it stays RUNNING), "killed" (a pod OOM-killed or preempted publishes nothing: RUNNING), "failed"
        (FAILED), "terminated" (CANCELED; the run itself is CANCELING while its exit task runs, as
        `RunStore.TerminateRun` set it)."""
        run = self.runs[run_id]
        self.set_state(run_id, {"succeeded": "SUCCEEDED", "killed": "FAILED", "failed": "FAILED",
                                "terminated": "CANCELING"}[outcome])
        spec = run["pipeline_spec"]
        ir = spec.get("pipeline_spec", spec)
        if outcome == "succeeded":
            return "RUNNING" if has_condition(ir) else "COMPLETE"
        return {"killed": "RUNNING", "failed": "FAILED", "terminated": "CANCELED"}[outcome]

    def fail_task(self, run_id: str, task: str, log: str | None) -> str:
        """Task `task` (its IR task key, the Argo DAG task's name) of run `run_id` failed in its executor pod, as
        the persistence agent reports the Workflow: a task detail per Argo node (the Workflow's root, the task's
        driver, the task's DAG node listing its executor's node id, the executor pod) with the node's display name
        and state. `log` is the pod's `main` container log (None: the pod and its archived log are gone). Returns
        the executor's node id."""
        run = self.runs[run_id]
        workflow = f"{run['display_name'].split()[0]}-{uuid.uuid4().hex[:5]}"
        ids = [f"{workflow}-{uuid.uuid4().int % 10**10}" for _ in range(3)]
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def detail(name: str, state: str, children: tuple[str, ...] = ()) -> dict:
            found = {"run_id": run_id, "task_id": str(uuid.uuid4()), "display_name": name, "create_time": at,
                     "start_time": at, "end_time": at, "state": state}
            return found | ({"child_tasks": [{"pod_name": c} for c in children]} if children else {})

        details = run.setdefault("run_details", {}).setdefault("task_details", [])
        details += [detail(workflow, "FAILED", tuple(ids[1:])), detail(f"{task}-driver", "SUCCEEDED"),
                    detail(task, "FAILED", (ids[2],)), detail("executor", "FAILED")]
        if log is not None:
            self.logs[ids[2]] = log
        return ids[2]

    def read_log(self, run_id: str, node_id: str) -> str | dict:
        """ResourceManager.ReadLog: the node's log, or the error the server writes after its 200."""
        if run_id not in self.runs:
            message = (f"Failed to read logs for run {run_id} due to run fetching error: Failed to fetch run {run_id}: "
                       f"ResourceNotFoundError: Run {run_id} not found")
        elif node_id not in self.logs:
            message = (f"Failed to read logs for run {run_id}: Failed to read logs from archive {node_id} due to error "
                       "fetching the log file: The specified key does not exist.")
        else:
            return self.logs[node_id]
        return {"error_message": message, "error_details": f"{message}\nInvalidInputError: ..."}

    def route(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict | str]:
        api = "/apis/v2beta1"
        if method == "GET" and (log := LOG_PATH.fullmatch(path)) is not None:
            return 200, self.read_log(log["run_id"], log["node_id"])
        if method == "GET" and path == f"{api}/experiments":
            names = self._names(query)
            ns = query.get("namespace", [""])[0]
            if self.multi_user and not ns:
                raise Rejected("Invalid input error: In multi-user mode, ListExperiment requires filtering by "
                               "namespace")
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
                run = body | {"run_id": str(uuid.uuid4())}
                self.runs[run["run_id"]] = run
                self.set_state(run["run_id"], "PENDING")
                return 200, run
            job = body | {"recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
            self.recurring[job["recurring_run_id"]] = job
            return 200, job
        if method == "GET" and path == f"{api}/runs":
            names, exp = self._names(query), query.get("experiment_id", [""])[0]
            if self.multi_user and not exp and not query.get("namespace", [""])[0]:
                raise Rejected("Invalid input error: In multi-user mode, ListRuns requires an experiment or a "
                               "namespace")
            found = [r for r in self.runs.values() if (not names or r["display_name"] in names)
                     and (not exp or r.get("experiment_id") == exp)]
            return 200, {"runs": found[::-1], "total_size": len(found)} if found else {}
        if method == "GET" and path == f"{api}/recurringruns":
            names, exp = self._names(query), query.get("experiment_id", [""])[0]
            found = [j for j in self.recurring.values() if (not names or j["display_name"] in names)
                     and (not exp or j.get("experiment_id") == exp)]
            return 200, {"recurringRuns": found, "total_size": len(found)} if found else {}
        if method == "POST" and path.startswith(f"{api}/runs/") and path.endswith(":terminate"):
            run = self.runs.get(path.rsplit("/", 1)[1].removesuffix(":terminate"))
            if run is None:
                return 404, {"error": "run not found", "code": 5}
            if run["state"] not in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"):
                self.set_state(run["run_id"], "CANCELING")  # RunStore.TerminateRun; the Workflow's deadline 0
                self.ending[run["run_id"]] = time.monotonic() + self.termination_s
            return 200, {}
        if method == "GET" and path.startswith(f"{api}/runs/"):
            run = self.runs.get(path.rsplit("/", 1)[1])
            if run and time.monotonic() >= self.ending.get(run["run_id"], float("inf")):
                self.end_workflow(run["run_id"])  # the terminated Workflow has failed past its deadline
            return (200, run) if run else (404, {"error": "run not found", "code": 5})
        return 404, {"error": f"no route {method} {path}", "code": 5}

    @staticmethod
    def _names(query: dict) -> list[str]:
        """The display names a list filter asks for, decoded twice as the server does."""
        if "filter" not in query:
            return []
        try:
            flt = json.loads(go_query_unescape(query["filter"][0]))
        except json.JSONDecodeError as exc:
            raise Rejected(f"Invalid input error: the filter is not JSON ({exc})") from exc
        return [p.get("string_value", p.get("stringValue")) for p in flt.get("predicates", [])
                if p.get("key") == "display_name"]

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
