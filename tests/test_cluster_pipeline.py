"""The cluster pipeline: kfp-kubernetes settings in the compiled IR, stage swaps, and submit/schedule request bodies
against a local fake of the KFP REST API."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from conftest import small_config
from dgrpo_pipelines.cli import app
from dgrpo_pipelines.training import compile_pipeline
from typer.testing import CliRunner

from dgrpo import contracts

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "custom_reward"
K8S = {
    "kubernetes.defaults": {
        "cpu_request": "2", "memory_request": "8Gi", "retries": 2, "node_selector": {"pool": "training"},
        "secrets": [{"secret": "dgrpo-s3", "env": {"access-key": "AWS_ACCESS_KEY_ID",
                                                   "secret-key": "AWS_SECRET_ACCESS_KEY"}}]},
    "kubernetes.stages.rollout": {
        "gpus": 2, "gpu_product": "NVIDIA-H100-80GB-HBM3", "shm_size": "16Gi", "cpu_limit": "8",
        "memory_limit": "64Gi", "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                 "effect": "NoSchedule"}]},
    "kubernetes.stages.update": {"gpus": 8, "gpu_resource": "nvidia.com/gpu", "shm_size": "64Gi"},
    "kubernetes.stages.evaluate": {"caching": False},
    "kubernetes.model_cache": {"pvc": "dgrpo-model-cache", "mount_path": "/models", "offline": True},
}


def _compile(tmp_path, **overrides):
    path = compile_pipeline(small_config(**overrides), tmp_path / "p.yaml")
    docs = list(yaml.safe_load_all(path.read_text()))
    return docs[0], (docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {})


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline, in the root DAG and in the fan-out sub-DAGs."""
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out |= comp.get("dag", {}).get("tasks", {})
    return out


def _executor(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def test_cluster_pipeline_carries_every_kubernetes_setting(tmp_path):
    spec, platform = _compile(tmp_path, rounds=2, **{"pipeline.shards": 2}, **K8S)
    tasks = {name: t for name, t in _tasks(spec).items() if name.split("-")[0] in
             ("rollout", "reward", "cluster", "update", "evaluate", "resume")}
    executors = spec["deploymentSpec"]["executors"]
    assert {n.split("-")[0] for n in tasks} == {"rollout", "reward", "cluster", "update", "evaluate", "resume"}
    for name, task in tasks.items():
        stage, label = name.split("-")[0], _executor(spec, task)
        container, k8s = executors[label]["container"], platform[label]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env == {"HF_HOME": "/models/huggingface", "TORCH_HOME": "/models/torch", "DGRPO_MODEL_CACHE": "/models",
                       "HF_HUB_OFFLINE": "1"}, name
        assert k8s["pvcMount"][0]["constant"] == "dgrpo-model-cache" and k8s["pvcMount"][0]["mountPath"] == "/models"
        assert k8s["secretAsEnv"][0]["secretName"] == "dgrpo-s3"
        assert {(e["secretKey"], e["envVar"]) for e in k8s["secretAsEnv"][0]["keyToEnv"]} == {
            ("access-key", "AWS_ACCESS_KEY_ID"), ("secret-key", "AWS_SECRET_ACCESS_KEY")}
        assert k8s["nodeSelector"]["labels"]["pool"] == "training"
        assert container["resources"]["resourceCpuRequest"] == "2"
        assert container["resources"]["resourceMemoryRequest"] == "8Gi"
        caching = task.get("cachingOptions", {}).get("enableCache", False)
        assert caching == (stage in ("reward", "cluster")), f"{name}: caching {caching}"
        if stage != "resume":
            assert task["retryPolicy"]["maxRetryCount"] == 2, name
        gpus = {"rollout": "2", "update": "8"}.get(stage)
        assert container["resources"].get("accelerator", {}).get("resourceCount") == gpus, name
        if gpus:
            assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
            shm = k8s["emptyDirMounts"][0]
            assert (shm["mountPath"], shm["medium"]) == ("/dev/shm", "Memory")
            assert shm["sizeLimit"] == {"rollout": "16Gi", "update": "64Gi"}[stage]
        else:
            assert "emptyDirMounts" not in k8s, name
        if stage == "rollout":
            assert k8s["nodeSelector"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
            assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
            assert container["resources"]["resourceCpuLimit"] == "8"
            assert container["resources"]["resourceMemoryLimit"] == "64Gi"
        else:
            assert "tolerations" not in k8s, name


def test_rollout_and_reward_fan_out_over_shards_and_cluster_collects_them(tmp_path):
    spec, _ = _compile(tmp_path, rounds=2, **{"pipeline.shards": 3, "pipeline.parallelism": 2,
                                              "sampling.prompts_per_round": 4})
    root = spec["root"]["dag"]["tasks"]
    loops = {n: t for n, t in root.items() if n.startswith("for-loop")}
    assert len(loops) == 2
    for loop in loops.values():
        assert loop["parameterIterator"]["items"]["raw"] == "[0, 1, 2]"
        assert loop["iteratorPolicy"]["parallelismLimit"] == 2
        body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
        assert {n.split("-")[0] for n in body} == {"rollout", "reward"}
        rollout = next(t for n, t in body.items() if n.startswith("rollout"))
        assert rollout["inputs"]["parameters"]["shard_index"]["componentInputParameter"].startswith(
            "pipelinechannel--loop-item")
    clusters = [t for n, t in root.items() if n.startswith("cluster")]
    for c in clusters:
        assert set(c["inputs"]["artifacts"]) == {"rollouts", "rewards", "start"}
        assert c["dependentTasks"][0].startswith("for-loop")
    cluster_comp = spec["components"]["comp-cluster"]["inputDefinitions"]["artifacts"]
    assert cluster_comp["rollouts"]["isArtifactList"] and cluster_comp["rewards"]["isArtifactList"]


def test_config_rejects_more_shards_than_prompt_groups():
    from dgrpo.config import ConfigError

    with pytest.raises(ConfigError, match="pipeline.shards"):
        small_config(**{"pipeline.shards": 3})  # 2 prompts per round


def test_example_component_yaml_is_compiled_from_its_source(tmp_path):
    import importlib.util

    from kfp import compiler

    spec = importlib.util.spec_from_file_location("reward_component", EXAMPLE / "reward_component.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    compiler.Compiler().compile(module.brightness_reward, str(tmp_path / "c.yaml"))
    assert (tmp_path / "c.yaml").read_text() == (EXAMPLE / "component.yaml").read_text(), \
        "examples/custom_reward/component.yaml is stale: run python examples/custom_reward/reward_component.py"


def test_swapped_reward_stage_is_wired_between_parquet_adapters(tmp_path):
    spec, _ = _compile(tmp_path, rounds=1, **{"pipeline.stages.reward": {"component": str(EXAMPLE / "component.yaml")}})
    body = next(spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]
                for n, t in spec["root"]["dag"]["tasks"].items() if n.startswith("for-loop"))
    assert set(body) == {"rollout", "export-table", "brightness-reward", "import-rewards"}
    ext = body["brightness-reward"]
    assert ext["inputs"]["artifacts"]["rollouts"]["taskOutputArtifact"] == {"outputArtifactKey": "table",
                                                                            "producerTask": "export-table"}
    assert "round_index" in ext["inputs"]["parameters"]
    imp = body["import-rewards"]["inputs"]
    assert imp["artifacts"]["table"]["taskOutputArtifact"]["producerTask"] == "brightness-reward"
    assert imp["parameters"]["image"]["runtimeValue"]["constant"] == "python:3.11-slim"
    assert "comp-reward" not in spec["components"]


def test_swap_by_image_and_command_builds_a_container_component(tmp_path):
    spec, _ = _compile(tmp_path, rounds=1, **{"pipeline.stages.cluster": {
        "image": "registry.example.com/team/cluster:2.1", "command": ["python", "/app/cluster.py"]}})
    container = spec["deploymentSpec"]["executors"]["exec-custom-cluster"]["container"]
    assert container["image"] == "registry.example.com/team/cluster:2.1"
    assert container["command"] == ["python", "/app/cluster.py"]
    args = container["args"]
    for port in ("--rollouts", "--rewards", "--scores", "--round_index"):
        assert port in args
    assert args[args.index("--scores") + 1] == "{{$.outputs.artifacts['scores'].path}}"
    names = set(spec["root"]["dag"]["tasks"])
    assert {"export-shards", "export-shards-2", "custom-cluster", "import-scores"} <= names


def test_swapped_component_with_wrong_ports_is_rejected_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (EXAMPLE / "component.yaml").read_text().replace("rewards", "scores_out")
    bad.write_text(text)
    with pytest.raises(ValueError, match=r"pipeline.stages.reward.*missing \['rewards'\]"):
        compile_pipeline(small_config(**{"pipeline.stages.reward": {"component": str(bad)}}), tmp_path / "p.yaml")
    with pytest.raises(ValueError, match="pipeline.stages.reward.component.: no component YAML"):
        compile_pipeline(small_config(**{"pipeline.stages.reward": {"component": str(tmp_path / "none.yaml")}}),
                         tmp_path / "p.yaml")


# contract show / check ------------------------------------------------------------------------------------------
def test_contract_show_stage_lists_what_it_reads_and_writes():
    out = CliRunner().invoke(app, ["contract", "show", "cluster"])
    assert out.exit_code == 0, out.output
    assert "reads:" in out.output and "writes:" in out.output
    assert "rollouts" in out.output and "rewards" in out.output and "scores" in out.output
    assert "final_reward" in out.output and "dgrpo.contract" in out.output
    out = CliRunner().invoke(app, ["contract", "show", "nosuch"])
    assert out.exit_code != 0 and "unknown stage or contract" in out.output


def _rewards(n: int = 3, metadata: bool = True) -> pa.Table:
    table = pa.table({"sample_id": [f"r0/p0/s{i}" for i in range(n)], "group_id": ["r0/p0"] * n,
                      "prompt": ["a red square"] * n, "reward": [0.5] * n,
                      "components": pa.array([[("q", 0.5)]] * n, pa.map_(pa.string(), pa.float64()))})
    return contracts.validate(table, contracts.REWARDS, "test") if metadata else table


def test_contract_check_validates_any_parquet_file(tmp_path):
    import pyarrow.parquet as pq

    good = tmp_path / "rewards.parquet"
    pq.write_table(_rewards(), good)
    for target in ("reward", "rewards", "cluster"):
        out = CliRunner().invoke(app, ["contract", "check", target, str(good)])
        assert out.exit_code == 0, out.output
        assert "valid rewards v1 table (3 rows)" in out.output
    out = CliRunner().invoke(app, ["contract", "check", "rollout", str(good)])
    assert out.exit_code == 1 and "declares contract rewards v1, expected rollouts v4" in out.output

    no_meta = tmp_path / "plain.parquet"
    pq.write_table(_rewards(metadata=False), no_meta)
    out = CliRunner().invoke(app, ["contract", "check", "rewards", str(no_meta)])
    assert out.exit_code == 1 and "declares contract <none>" in out.output

    broken = tmp_path / "broken.parquet"
    pq.write_table(_rewards().drop_columns(["components"]), broken)
    out = CliRunner().invoke(app, ["contract", "check", "reward", str(broken)])
    assert out.exit_code == 1 and "missing column 'components'" in out.output


# submit / schedule against a fake KFP API ------------------------------------------------------------------------
class FakeKfp(BaseHTTPRequestHandler):
    """The KFP v2beta1 endpoints kfp.Client calls to create experiments, runs and recurring runs."""

    requests: list[tuple[str, str, dict]] = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.requests.append(("GET", self.path, {}))
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({"experiments": [], "total_size": 0})
        elif self.path.startswith("/apis/v2beta1/healthz"):
            self._reply({"multi_user": False})
        else:
            self.send_error(404)

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        elif self.path == "/apis/v2beta1/runs":
            self._reply({"run_id": "run-1", "display_name": body["display_name"]})
        elif self.path == "/apis/v2beta1/recurringruns":
            self._reply({"recurring_run_id": "rec-1", "display_name": body["display_name"]})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # the kfp client reads ~/.config/kfp/context.json
    FakeKfp.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", FakeKfp.requests
    server.shutdown()
    server.server_close()


def _posted(requests, path):
    return [body for method, p, body in requests if method == "POST" and p == path]


def test_submit_sends_the_compiled_pipeline_with_run_parameters(kfp_api):
    host, requests = kfp_api
    out = CliRunner().invoke(app, ["submit", "--host", host, "--store", "s3://bucket/dgrpo", "--set", "rounds=3",
                                   "--set", "pipeline.shards=2", "--resume", "ft-1", "--experiment", "nightly"])
    assert out.exit_code == 0, out.output
    assert "KFP run run-1" in out.output
    (exp,) = _posted(requests, "/apis/v2beta1/experiments")
    assert exp["display_name"] == "nightly"
    (run,) = _posted(requests, "/apis/v2beta1/runs")
    assert run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == {"store_uri": "s3://bucket/dgrpo", "run_id": "ft-1",
                                                   "resume_from": "ft-1"}
    spec = run["pipeline_spec"]  # no platform settings: the IR itself
    assert spec["pipelineInfo"]["name"] == "toy-flowgrpo"
    assert sum(n.startswith("update") for n in spec["root"]["dag"]["tasks"]) == 3
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"store_uri", "run_id", "resume_from",
                                                                   "config_json"}


def test_schedule_creates_a_recurring_run_that_continues_one_fine_tune(kfp_api):
    host, requests = kfp_api
    args = ["schedule", "--host", host, "--store", "s3://bucket/dgrpo", "--run-id", "ft-nightly",
            "--cron", "0 0 2 * * *", "--set", "rounds=2", "--set", "kubernetes.stages.update.gpus=4",
            "--set", "kubernetes.model_cache.pvc=dgrpo-model-cache"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "recurring run rec-1" in out.output
    (job,) = _posted(requests, "/apis/v2beta1/recurringruns")
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert job["mode"] == "ENABLE" and int(job["max_concurrency"]) == 1 and job["no_catchup"] is True
    assert job["experiment_id"] == "exp-1"
    assert job["runtime_config"]["parameters"] == {"store_uri": "s3://bucket/dgrpo", "run_id": "ft-nightly",
                                                   "resume_from": "ft-nightly"}
    spec, platform = job["pipeline_spec"]["pipeline_spec"], job["pipeline_spec"]["platform_spec"]  # IR + k8s
    update_exec = spec["deploymentSpec"]["executors"]["exec-update"]
    assert update_exec["container"]["resources"]["accelerator"]["resourceCount"] == "4"
    mount = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-update"]["pvcMount"][0]
    assert mount["constant"] == "dgrpo-model-cache"

    bad = CliRunner().invoke(app, args[:8] + ["0 2 * * *"])
    assert bad.exit_code != 0 and "6 fields" in bad.output
    local = CliRunner().invoke(app, ["submit", "--host", host, "--store", "outputs/store"])
    assert local.exit_code != 0 and "store URI" in local.output
