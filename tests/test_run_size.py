"""What a cluster takes (issue 12's and 23's numbers, checked by compiling, not by timing): the segment IR of every
shipped preset is small and does not grow with `rounds`; run parameters are ids and hashes, with any prompt file; a
segment's Argo Workflow, by the size model of `dgrpo.runtime.workflow_size`, stays within half of Argo's 1 MiB (the
compiler refuses more), grows with rounds and shards as the model says, and is constant in rounds under fused
execution; KFP artifact metadata is a uri and a sha256; and the presets use what manifests/ creates."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import yaml
from dgrpo_pipelines.kubernetes import light
from dgrpo_pipelines.training import compile_pipeline

from dgrpo.config import load_config
from dgrpo.config.deployment import CustomStage
from dgrpo.runtime import component_io, fine_tune, workflow_size
from dgrpo.runtime.plan import (
    FUSED_TASKS,
    evaluation_task,
    max_tasks_per_run,
    segment_shape,
    segment_tasks,
    tasks_per_round,
    workflow_bytes,
)
from dgrpo.stages.shared.context import StageResult
from dgrpo.stages.shared.run_config import load_config as stored_config
from dgrpo.store import ArtifactRef, LocalStore
from dgrpo.toyworld.presets import PRESETS_DIR

ROOT = Path(__file__).parents[1]
PRESETS = sorted(p.name for p in [*(ROOT / "configs").glob("*.yaml"), *PRESETS_DIR.glob("*.yaml")])
REAL = [p for p in PRESETS if not p.startswith("toy")]


def _preset(name: str) -> Path:
    """A shipped preset by file name: the toy ones are package data, the real ones in configs/."""
    return (PRESETS_DIR if name.startswith("toy") else ROOT / "configs") / name


def _compile(tmp_path: Path, preset: str, **overrides) -> tuple[int, dict, dict | None]:
    path = compile_pipeline(load_config(_preset(preset), overrides), tmp_path / f"{preset}.ir.yaml")
    docs = list(yaml.safe_load_all(path.read_text()))
    return path.stat().st_size, docs[0], docs[1] if len(docs) > 1 else None


@pytest.mark.parametrize("preset", PRESETS)
def test_segment_ir_is_small_and_does_not_grow_with_rounds(preset, tmp_path):
    short, _, _ = _compile(tmp_path, preset, rounds=10)
    long, _, _ = _compile(tmp_path, preset, rounds=600)
    assert long <= 150_000, f"{preset}: {long} bytes of IR"
    assert abs(long - short) <= 0.02 * short, (preset, short, long)


def _leaf_tasks(spec: dict, tasks: dict, loops: tuple = (), conds: tuple = ()) -> list[tuple[tuple, tuple]]:
    """(loops, conditions) of every container task under `tasks`: how many times it runs follows from them."""
    out = []
    for task in tasks.values():
        comp = spec["components"][task["componentRef"]["name"]]
        iterator = task.get("parameterIterator")
        here = loops + ((iterator["items"].get("raw") or "rounds"),) if iterator else loops
        cond = conds + (task["triggerPolicy"]["condition"],) if "condition" in task.get("triggerPolicy", {}) \
            else conds
        out += _leaf_tasks(spec, comp["dag"]["tasks"], here, cond) if "dag" in comp else [(here, cond)]
    return out


def _executed(spec: dict, config, start: int) -> int:
    """Tasks a segment starting at `start` executes, read from the compiled graph and the segment's rounds."""
    rounds = range(start, min(start + config.pipeline.rounds_per_run, config.rounds))
    evals = set(config.eval_rounds())
    total = 0
    for loops, conds in _leaf_tasks(spec, spec["root"]["dag"]["tasks"]):
        times = math.prod(len(json.loads(x)) if x != "rounds" else 1 for x in loops)
        if "rounds" in loops:
            times *= sum(r + 1 in evals for r in rounds) if conds else len(rounds)
        elif conds:
            times *= int(start == 0 and 0 in evals)  # the base-model evaluation
        total += times
    return total


SD35 = "sd35m-pickscore.yaml"
STAGED = {"pipeline.execution": "staged"}


def _largest_fitting(config) -> int:
    """The largest rounds_per_run whose segment the model keeps within the budget (0: none)."""
    model = workflow_size.size_model(config, segment_shape(config))
    return max((n for n in range(1, config.pipeline.rounds_per_run + 1) if workflow_bytes(
        dataclasses.replace(config, pipeline=dataclasses.replace(config.pipeline, rounds_per_run=n)), model)
        <= workflow_size.WORKFLOW_BUDGET_BYTES), default=0)


def test_the_compiled_staged_segment_executes_the_tasks_the_plan_counts(tmp_path):
    fits = _largest_fitting(load_config(_preset(SD35), STAGED))
    config = load_config(_preset(SD35), STAGED | {"pipeline.rounds_per_run": fits})
    _, spec, _ = _compile(tmp_path, SD35, **STAGED, **{"pipeline.rounds_per_run": fits})
    counts = {start: _executed(spec, config, start) for start in range(config.rounds)}
    assert all(counts[s] == segment_tasks(config, s) for s in counts)  # the graph and the plan agree
    assert tasks_per_round(config) == 2 * 8 + 3  # begin_round, 8 x (rollout, reward), cluster, update
    assert counts[0] == 3 + 1 + fits * 19  # open, plan, finish; base evaluation; the rounds' 19 tasks each
    assert max(counts.values()) == counts[60 - fits] == max_tasks_per_run(config) == 3 + fits * 19 + 1  # + round 60's


def test_a_staged_sd35m_segment_of_20_rounds_is_refused_naming_the_rounds_that_fit(tmp_path):
    config = load_config(_preset(SD35), STAGED)
    assert (config.rounds, config.pipeline.rounds_per_run, config.pipeline.shards) == (600, 20, 8)
    fits = _largest_fitting(config)
    assert 1 <= fits < 20  # 20 rounds x 8 shards staged is ~2 MiB by the model: refused
    with pytest.raises(ValueError, match=r"^config field 'pipeline.rounds_per_run': a segment of 20 rounds at 8 "
                                         r"shards makes an Argo Workflow of about \d+ KiB, over the 512 KiB budget .*"
                                         rf"use at most {fits} or pipeline.execution: fused$") as refused:
        _compile(tmp_path, SD35, **STAGED)
    assert "\n" not in str(refused.value)
    _compile(tmp_path, SD35, **STAGED, **{"pipeline.rounds_per_run": fits})  # the named value compiles
    with pytest.raises(ValueError, match=rf"a segment of {fits + 1} rounds"):
        _compile(tmp_path, SD35, **STAGED, **{"pipeline.rounds_per_run": fits + 1})


def _model(shards: int, **overrides):
    config = load_config(_preset(SD35), STAGED | {"pipeline.shards": shards} | overrides)
    return config, workflow_size.size_model(config, segment_shape(config))


def test_the_estimate_is_linear_in_rounds_and_grows_with_shards_as_the_model_says():
    config, model = _model(8)
    per_round = model.ratio * model.round_raw + workflow_size.POD_ENTRY_BYTES * model.round_pods
    sizes = [model.workflow_bytes(r, 1) for r in range(0, 25)]
    assert all(abs(b - a - per_round) <= 1 for a, b in zip(sizes, sizes[1:], strict=False))  # ceil: 1 byte
    assert 60_000 < per_round < 150_000  # an SD3.5 round at 8 shards: about 90 KB compressed
    # nodes a round: its loop item (3), begin_round (3 and a Retry node: bookkeeping tasks retry), the shard loop
    # (3), 3 a shard item and 3 a task inside, cluster and update (3 each), the evaluation's condition (2; the
    # evaluation adds its task's 3)
    rounds = {s: _model(s)[1] for s in (1, 2, 4, 8)}
    assert {s: m.round_nodes for s, m in rounds.items()} == {s: 3 + 4 + 3 + s * (3 + 3 * 2) + 3 + 3 + 2
                                                             for s in rounds}
    assert all(m.evaluation_nodes == 3 for m in rounds.values())
    assert model.nodes(20, 1) == 23 + 20 * 90 + 3  # the Workflow's, the rounds', an evaluation's: ~1,800 nodes
    raw = [rounds[s].round_raw for s in (1, 2, 4, 8)]
    assert raw == sorted(raw) and len(set(raw)) == 4
    # a shard adds its item and its 2 tasks, and one more input artifact to cluster (2) and update (1): linear in
    # shards, so the bytes 4 more shards add are twice what 2 more add, within the digits of larger indices
    assert abs((raw[3] - raw[2]) - 2 * (raw[2] - raw[1])) <= 0.01 * raw[3]
    assert workflow_bytes(config, model) == max(model.workflow_bytes(20, e) for e in (0, 1))


def test_the_compression_ratio_measured_on_two_rounds_bounds_longer_segments_closely():
    """More rounds give gzip more alike neighbours in its 32 KB window: a longer segment compresses a little better
    than the two rounds the model measures, so the linear estimate is an upper bound, and a close one."""
    config, model = _model(4)
    longer = workflow_size.compression_ratio(config, segment_shape(config), rounds=6)
    assert 0.85 * model.ratio <= longer <= model.ratio, (model.ratio, longer)
    assert 0.05 < model.ratio < 0.3  # base64(gzip) of node JSON: JSON compresses, hashes and uuids do not


def test_a_fused_segment_is_a_constant_handful_of_tasks_whatever_its_rounds(tmp_path):
    sizes, tasks = set(), set()
    for rounds_per_run in (1, 20, 200):
        fused = {"pipeline.execution": "fused", "pipeline.rounds_per_run": rounds_per_run}
        config = load_config(_preset(SD35), fused)
        model = workflow_size.size_model(config, segment_shape(config))
        assert model.round_nodes == model.evaluation_nodes == 0 and tasks_per_round(config) == 0
        sizes.add(workflow_bytes(config, model))
        tasks.add(max_tasks_per_run(config))
        _, spec, _ = _compile(tmp_path, SD35, **fused)
        leaves = _leaf_tasks(spec, spec["root"]["dag"]["tasks"])
        assert len(leaves) == max_tasks_per_run(config) and not any(loops for loops, _ in leaves)
    assert tasks == {len(FUSED_TASKS)} == {3} and len(sizes) == 1
    assert sizes.pop() <= workflow_size.WORKFLOW_BUDGET_BYTES // 3


def test_a_swapped_stage_adds_an_export_per_table_read_and_an_import_per_table_written():
    config = load_config(_preset("toy.yaml"), {"pipeline.shards": 3})
    custom = CustomStage(image="registry.example/team:1", command=["score"])
    for stages, per_round in (({}, 1 + 3 * 2 + 2), ({"reward": custom}, 1 + 3 * (1 + 3) + 2),
                              ({"cluster": custom}, 1 + 3 * 2 + 4 + 1),
                              ({"reward": custom, "cluster": custom}, 1 + 3 * 4 + 4 + 1)):
        swapped = dataclasses.replace(config, pipeline=dataclasses.replace(config.pipeline, stages=stages))
        assert tasks_per_round(swapped) == per_round, stages


def test_the_model_gives_each_task_the_pod_settings_the_pipeline_gives_it():
    """Those that change a task's nodes (retries: a Retry node) or add bytes to every copy of its patch."""
    config = load_config(_preset(SD35))
    for ours, pipeline in ((workflow_size.task_settings(config, None), light(config.kubernetes)),
                           (workflow_size.task_settings(config, "rollout"), config.kubernetes.resolve("rollout"))):
        for field in ("retries", "gpus", "secrets", "config_maps", "env", "node_selector", "tolerations", "shm_size"):
            assert getattr(ours, field) == getattr(pipeline, field), field


def _json_len(value) -> int:
    return len(json.dumps(value, separators=(",", ":"), sort_keys=True))


@pytest.mark.parametrize(("preset", "execution"), [("toy.yaml", "staged"), (SD35, "fused"),
                                                   *((p, "staged") for p in REAL)])
def test_the_model_holds_at_least_the_compiled_ir_of_every_task(preset, execution, tmp_path):
    """What the model copies from the component definitions (component spec, container with its source, task spec)
    is at least what the compiled IR holds, task by task; so is the Workflow spec allowance."""
    overrides = {"pipeline.execution": execution, "pipeline.rounds_per_run": 1}
    config = load_config(_preset(preset), overrides)
    size, spec, _ = _compile(tmp_path, preset, **overrides)
    assert 8_500 + 1.8 * _json_len(spec) <= workflow_size.SPEC_BYTES
    shape = segment_shape(config)
    tasks = {t.name: t for t in (*shape.fixed, *shape.round)}
    tasks |= {"evaluate": evaluation_task()} if shape.evaluation else {}
    seen = set()

    def walk(dag_tasks: dict) -> None:
        for name, task in dag_tasks.items():
            comp = spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                assert _json_len(comp) + _json_len(task) <= workflow_size.dag_spec_bytes(len(comp["dag"]["tasks"]))
                walk(comp["dag"]["tasks"])
                continue
            container = spec["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]
            ours = tasks[name.removesuffix("-2").replace("-", "_")]
            seen.add(ours.name)
            model = sum(len(text) for text in workflow_size.spec_json(config, ours))
            assert model >= _json_len(comp) + _json_len(container) + _json_len(task), name

    walk(spec["root"]["dag"]["tasks"])
    assert seen == set(tasks)


def test_kfp_artifact_metadata_is_the_uri_and_sha256_only(tmp_path):
    """The lineage record stays in the store: Argo copies each input artifact's metadata into every consumer."""
    class Artifact:
        def __init__(self, path):
            self.path, self.metadata = str(path), {}

    ref = ArtifactRef("rollouts", "s3://ml/dgrpo/objects/ab/" + "ab" * 32 + ".parquet", "ab" * 32, 10)
    out = Artifact(tmp_path / "rollouts")
    component_io.publish(None, StageResult({"rollouts": ref}), {"rollouts": out})
    assert out.metadata == {"dgrpo_uri": ref.uri, "sha256": ref.sha256}
    assert ArtifactRef.from_json((tmp_path / "rollouts").read_text()) == ref


def _prompt_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"a photo of object {i} in the style of painter {i % 97}, highly detailed\n"
                            for i in range(n)))
    return path


@pytest.mark.parametrize("preset", PRESETS)
def test_run_parameters_are_ids_and_hashes_even_with_25000_prompts(preset, tmp_path):
    store = LocalStore(tmp_path / "store")
    big = {"sampling.prompts_file": str(_prompt_file(tmp_path, 25_000))} if preset in REAL else {}
    config = load_config(_preset(preset), big)
    record = fine_tune.start(store, config, "f" * 100)  # the longest run id
    params = fine_tune.segment_parameters(store, record) | {"store_uri": "s3://" + "b" * 63 + "/" + "p" * 200}
    assert len(json.dumps(params, separators=(",", ":"))) <= 4000
    assert set(params) == {"store_uri", "run_id", "config_sha256", "recipe_sha256"}
    loaded = stored_config(store, record.config_sha256)
    assert loaded.to_dict() == config.to_dict()
    if big:
        assert len(loaded.sampling.prompts) == 25_000
        config_object = store.local_path(stored_ref(store, record.config_sha256))
        assert config_object.stat().st_size < 12_000  # the prompts are an object of their own


def stored_ref(store, sha):
    from dgrpo.stages.shared.run_config import object_ref

    return object_ref(store, "config", sha)


MANIFESTS = ROOT / "manifests"


def _manifest(kind: str, name: str) -> dict:
    for path in MANIFESTS.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"manifests/ has no {kind} {name}")


@pytest.mark.parametrize("preset", REAL)
def test_real_presets_use_the_claim_secret_settings_and_service_account_of_manifests(preset, tmp_path):
    config = load_config(_preset(preset))
    _, spec, platform = _compile(tmp_path, preset)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    claim = _manifest("PersistentVolumeClaim", config.kubernetes.model_cache.pvc)
    secret = _manifest("Secret", "dgrpo-s3-credentials")
    settings = _manifest("ConfigMap", "dgrpo-s3")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # every stage pod mounts it at once
    assert set(executors) == set(spec["deploymentSpec"]["executors"])  # every task, light ones included
    for name, k8s in executors.items():
        assert [m["constant"] for m in k8s["pvcMount"]] == [claim["metadata"]["name"]], name
        assert k8s["pvcMount"][0]["mountPath"] == "/models"  # the images' HF_HOME / TORCH_HOME live there
        (sec,) = k8s["secretAsEnv"]
        assert sec["secretName"] == secret["metadata"]["name"]
        assert {e["secretKey"] for e in sec["keyToEnv"]} == set(secret["stringData"])
        assert {e["envVar"] for e in sec["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        (cm,) = k8s["configMapAsEnv"]
        assert cm["configMapName"] == "dgrpo-s3"
        assert {e["configMapKey"] for e in cm["keyToEnv"]} == set(settings["data"])
    account = config.kubernetes.service_account
    assert _manifest("ServiceAccount", account)
    bound = {_manifest("RoleBinding", n)["roleRef"]["name"] for n in ("dgrpo-pipeline-runner", "dgrpo-continuation")
             if any(s["name"] == account for s in _manifest("RoleBinding", n)["subjects"])}
    assert bound == {"dgrpo-pipeline-runner", "dgrpo-continuation"}
    rules = _manifest("Role", "dgrpo-continuation")["rules"]
    assert {"create", "get", "list"} <= {v for r in rules if r["resources"] == ["runs"] for v in r["verbs"]}
    runner = _manifest("Role", "dgrpo-pipeline-runner")["rules"]
    readable = {n for rule in runner for n in rule.get("resourceNames", [])}
    assert {claim["metadata"]["name"], secret["metadata"]["name"], "dgrpo-s3"} <= readable
