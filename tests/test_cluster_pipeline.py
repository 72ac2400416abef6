"""The cluster pipeline: kfp-kubernetes settings in the compiled IR and stage swaps (submit and schedule:
test_kfp_rest.py)."""

from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from dgrpo_pipelines.cli import app
from dgrpo_pipelines.kubernetes import CONTROL_RESOURCES, LIGHT_TASK_RETRIES
from dgrpo_pipelines.training import compile_pipeline
from support import small_config
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
    light = ("open", "plan", "begin", "finish")  # the segment's own tasks: the defaults, no GPU
    tasks = {name: t for name, t in _tasks(spec).items() if name.split("-")[0] in
             ("rollout", "reward", "cluster", "update", "evaluate", *light)}
    executors = spec["deploymentSpec"]["executors"]
    assert {n.split("-")[0] for n in tasks} == {"rollout", "reward", "cluster", "update", "evaluate", *light}
    for name, task in tasks.items():
        stage, label = name.split("-")[0], _executor(spec, task)
        container, k8s = executors[label]["container"], platform[label]
        env = {e["name"]: e["value"] for e in container["env"]}
        gpus = {"rollout": "2", "update": "8"}.get(stage)
        assert env == {"HF_HOME": "/models/huggingface", "TORCH_HOME": "/models/torch", "DGRPO_MODEL_CACHE": "/models",
                       "HF_HUB_OFFLINE": "1"} | ({"DGRPO_EXPECT_GPUS": gpus} if gpus else {}), name
        assert k8s["pvcMount"][0]["constant"] == "dgrpo-model-cache" and k8s["pvcMount"][0]["mountPath"] == "/models"
        assert k8s["secretAsEnv"][0]["secretName"] == "dgrpo-s3"
        assert {(e["secretKey"], e["envVar"]) for e in k8s["secretAsEnv"][0]["keyToEnv"]} == {
            ("access-key", "AWS_ACCESS_KEY_ID"), ("secret-key", "AWS_SECRET_ACCESS_KEY")}
        assert k8s["nodeSelector"]["labels"]["pool"] == "training"
        bookkeeping = stage in light  # the control image's small pod, retried at least LIGHT_TASK_RETRIES times
        assert container["resources"]["resourceCpuRequest"] == (CONTROL_RESOURCES["cpu_request"] if bookkeeping
                                                                 else "2"), name
        assert container["resources"]["resourceMemoryRequest"] == (CONTROL_RESOURCES["memory_request"]
                                                                    if bookkeeping else "8Gi"), name
        caching = task.get("cachingOptions", {}).get("enableCache", False)
        assert caching == (stage in ("reward", "cluster")), f"{name}: caching {caching}"
        assert task["retryPolicy"]["maxRetryCount"] == (max(2, LIGHT_TASK_RETRIES) if bookkeeping else 2), name
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


def _shard_loop(spec: dict) -> tuple[dict, dict, dict]:
    """(the shard loop task, its body's tasks, the round loop body's tasks)."""
    for comp in spec["components"].values():
        body = comp.get("dag", {}).get("tasks", {})
        for task in body.values():
            if "parameterIterator" in task and "raw" in task["parameterIterator"]["items"]:
                return task, spec["components"][task["componentRef"]["name"]]["dag"]["tasks"], body
    raise AssertionError("no shard loop")


def test_rollout_and_reward_fan_out_over_shards_and_cluster_collects_them(tmp_path):
    spec, _ = _compile(tmp_path, rounds=2, **{"pipeline.shards": 3, "pipeline.parallelism": 2,
                                              "sampling.prompts_per_round": 4})
    loop, body, round_body = _shard_loop(spec)
    assert loop["parameterIterator"]["items"]["raw"] == "[0, 1, 2]"
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    assert {n.split("-")[0] for n in body} == {"rollout", "reward"}
    rollout = next(t for n, t in body.items() if n.startswith("rollout"))
    assert rollout["inputs"]["parameters"]["shard_index"]["componentInputParameter"].startswith(
        "pipelinechannel--loop-item")
    (c,) = [t for n, t in round_body.items() if n.startswith("cluster")]
    assert set(c["inputs"]["artifacts"]) == {"rollouts", "rewards", "state"}
    assert any(d.startswith("for-loop") for d in c["dependentTasks"])
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
    _, body, _ = _shard_loop(spec)
    assert set(body) == {"rollout", "export-table", "brightness-reward", "import-rewards"}
    ext = body["brightness-reward"]
    assert ext["inputs"]["artifacts"]["rollouts"]["taskOutputArtifact"] == {"outputArtifactKey": "table",
                                                                            "producerTask": "export-table"}
    # the fine-tune's round, from a task inside the shard loop (a parameter from outside would be overwritten)
    assert ext["inputs"]["parameters"]["round_index"]["taskOutputParameter"] == {"outputParameterKey": "Output",
                                                                                 "producerTask": "export-table"}
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
    assert {"export-shards", "export-shards-2", "custom-cluster", "import-scores"} <= set(_tasks(spec))


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
    assert out.exit_code == 1 and "declares contract rewards v1, expected rollouts v5" in out.output

    no_meta = tmp_path / "plain.parquet"
    pq.write_table(_rewards(metadata=False), no_meta)
    out = CliRunner().invoke(app, ["contract", "check", "rewards", str(no_meta)])
    assert out.exit_code == 1 and "declares contract <none>" in out.output

    broken = tmp_path / "broken.parquet"
    pq.write_table(_rewards().drop_columns(["components"]), broken)
    out = CliRunner().invoke(app, ["contract", "check", "reward", str(broken)])
    assert out.exit_code == 1 and "missing column 'components'" in out.output
