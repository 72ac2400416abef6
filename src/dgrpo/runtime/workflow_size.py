"""A size model of a segment's Argo Workflow (KFP 2.17 on Argo v4), so that `dgrpo compile` refuses a segment that
would outgrow Argo's limit in the middle of its run: the Workflow then errors without running its exit handler, and
the fine-tune's lease stays held.

What Argo keeps, read from KFP's compiler and driver (kubeflow/pipelines backend/src/v2/compiler/argocompiler dag.go
and container.go, backend/src/v2/driver/driver.go) and from Argo (argo-workflows workflow/packer/packer.go,
workflow/controller/operator.go):

- Nodes. A container task is 3 nodes: its driver pod, an executor DAG node and the launcher pod (a 4th, the Retry
  node, when the task has `retries`). A dsl.If or another DAG component is 2: a DAG driver pod and the DAG node,
  kept (skipped) when its condition is false. A ParallelFor is 3 (the loop's DAG node, its driver pod, the item
  group) and 3 per item (the item's DAG node, driver pod and iteration DAG node). The Workflow adds 3 (entrypoint,
  root driver, root DAG) and the exit hook 1.
- What a node keeps: its skeleton (id, dotted name, template, phase, times, children) and its resolved inputs and
  outputs. A container driver's inputs are the task's component spec, task spec, container spec and kubernetes
  config as JSON; its output is the pod-spec patch, which the executor DAG node and the launcher pod take again as
  input: three copies a task. The patch (driver.go initPodSpecPatch, k8s.go extendPodSpecPatch) holds the launcher
  command with the executor input JSON (every parameter, every input artifact with its uri and KFP metadata, every
  output's uri) twice, as a launcher flag and resolved into the component's `{{$}}` argument, the component spec,
  the component's command with its Python source, and the env, resources, volumes, node selector and tolerations
  of `config.kubernetes`. A DAG driver keeps its DAG component's spec and task spec.
- Compression. Over MAX_WORKFLOW_SIZE (1 MiB of Workflow JSON) Argo replaces the nodes by base64(gzip level 6) of
  their JSON; the spec, metadata and the rest of the status stay plain, among them `taskResultsCompletionStatus`,
  one entry per pod that is never removed. Nodes are a JSON map keyed by `<workflow>-<fnv32a of the node's name>`
  and marshalled in key order, so a task's three copies of its patch lie far apart, mostly beyond gzip's 32 KB
  window: the ratio is measured (`SizeModel.ratio`) by compressing a synthetic status built here in that order.

The model builds the nodes of a segment from the config (its shards, swaps, kubernetes settings, execution) and
the task list of `dgrpo.runtime.plan`, and measures their JSON. The parts written by the component definitions
(component spec, Python source, task spec) are built to the compiled IR's shape; tests/test_run_size.py checks the
model's copy is at least the compiled IR's, task by task, for every preset.
"""

import base64
import dataclasses
import functools
import json
import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from dgrpo.config import RunConfig, StageResources
from dgrpo.runtime.component_io import artifact_metadata
from dgrpo.store import ArtifactRef

ARGO_MAX_WORKFLOW_BYTES = 1 << 20
"""Argo's MAX_WORKFLOW_SIZE default: the Workflow's JSON after compressing its nodes (etcd's own limit: 1.5 MiB)."""
WORKFLOW_BUDGET_BYTES = ARGO_MAX_WORKFLOW_BYTES // 2
"""What the compiler lets a segment's estimate reach: half of Argo's limit, for what the model does not see (longer
ids or store URIs, error messages, a retried pod's extra node)."""
SPEC_BYTES = 100_000
"""The Workflow's spec and metadata, the same for every segment: KFP's templates (~8.5 KB) and its arguments, which
hold each component's spec, container and kubernetes config once (~1.8 x the IR JSON, under 50 KB for every preset,
tested)."""
STATUS_BYTES = 4_000
"""The status outside the nodes: phase, times, conditions, resource durations, progress."""
POD_ENTRY_BYTES = 48
"""One `taskResultsCompletionStatus` entry, `"<workflow>-<fnv32>":true,`, per pod node, never compressed."""
SOURCE_BYTES = 1_500
"""A component's Python source in its command, docstring included (the compiled IR's are 500-1,300 bytes)."""
GZIP_LEVEL = 6
"""Argo's default (WORKFLOW_COMPRESSION_LEVEL unset)."""


@dataclass(frozen=True)
class Task:
    """A container task of the segment as the model sees it."""

    name: str
    """Its component (a stage, `begin_round`, or a swapped stage's export, custom or import task)."""
    stage: str | None
    """The stage whose `kubernetes` settings its pod takes; None: the light settings of the bookkeeping tasks;
    "fused": `kubernetes.fused`."""
    per_shard: bool = False
    """Runs once per prompt shard, inside the round's shard loop."""
    published_inputs: int = 0
    """Input artifacts written by `component_io.publish`: each carries `artifact_metadata` in KFP."""
    plain_inputs: int = 0
    """Input artifacts without metadata (the segment and round state, exported tables)."""
    outputs: int = 1
    """Output artifacts (a stage's tables and its metrics)."""
    parameters: int = 3
    """Input parameters (store_uri, run_id, recipe_sha256, shard_index, ...)."""


@dataclass(frozen=True)
class Segment:
    """The tasks of one segment, as the compiled pipeline nests them."""

    fixed: tuple[Task, ...]
    """Tasks outside the rounds (open, plan, finish, or the fused task)."""
    round: tuple[Task, ...]
    """One round's tasks in order (empty under fused execution)."""
    evaluation: Task | None
    """The evaluation task, under a condition before the rounds (base model) and in every round (staged)."""


@dataclass(frozen=True)
class SizeModel:
    """A segment's Workflow size, linear in its rounds and evaluations: `workflow_bytes`."""

    fixed_raw: int
    """Node JSON of the segment outside its rounds, the base-model condition included."""
    round_raw: int
    """Node JSON of one round that does not evaluate."""
    evaluation_raw: int
    """Node JSON an evaluation adds (a round's or the base model's)."""
    fixed_nodes: int
    round_nodes: int
    evaluation_nodes: int
    fixed_pods: int
    round_pods: int
    evaluation_pods: int
    ratio: float
    """base64(gzip) bytes per byte of node JSON, measured on this segment's synthetic status."""

    def nodes(self, rounds: int, evaluations: int) -> int:
        """Argo nodes of a segment of `rounds` rounds and `evaluations` evaluations."""
        return self.fixed_nodes + rounds * self.round_nodes + evaluations * self.evaluation_nodes

    def compressed_nodes_bytes(self, rounds: int, evaluations: int) -> int:
        raw = self.fixed_raw + rounds * self.round_raw + evaluations * self.evaluation_raw
        return math.ceil(self.ratio * raw)

    def workflow_bytes(self, rounds: int, evaluations: int) -> int:
        """The Workflow's JSON once Argo compresses its nodes, after `rounds` rounds and `evaluations` evaluations
        (the base model's included)."""
        pods = self.fixed_pods + rounds * self.round_pods + evaluations * self.evaluation_pods
        return (SPEC_BYTES + STATUS_BYTES + POD_ENTRY_BYTES * pods
                + self.compressed_nodes_bytes(rounds, evaluations))


def size_model(config: RunConfig, segment: Segment) -> SizeModel:
    """Build the nodes of `segment`'s parts from `config`, measure their JSON, and the compression ratio on a
    two-round segment with one evaluation in Argo's key order."""
    fixed = _Status(config)
    fixed.segment(segment, rounds=0, evaluations=())
    one = _Status(config)
    one.segment(segment, rounds=1, evaluations=())
    evaluated = _Status(config)
    evaluated.segment(segment, rounds=1, evaluations=(0,))
    evaluations_of = (1 if segment.round else 0)  # a fused segment evaluates inside its task
    return SizeModel(
        fixed_raw=fixed.raw_bytes(), round_raw=one.raw_bytes() - fixed.raw_bytes(),
        evaluation_raw=(evaluated.raw_bytes() - one.raw_bytes()) * evaluations_of,
        fixed_nodes=len(fixed.nodes), round_nodes=len(one.nodes) - len(fixed.nodes),
        evaluation_nodes=(len(evaluated.nodes) - len(one.nodes)) * evaluations_of,
        fixed_pods=fixed.pods, round_pods=one.pods - fixed.pods,
        evaluation_pods=(evaluated.pods - one.pods) * evaluations_of,
        ratio=compression_ratio(config, segment, rounds=2))


def compression_ratio(config: RunConfig, segment: Segment, rounds: int) -> float:
    """base64(gzip) bytes per byte of node JSON of a segment of `rounds` rounds evaluating after its last, its
    nodes in Argo's key order."""
    sample = _Status(config)
    sample.segment(segment, rounds=rounds, evaluations=(rounds - 1,))
    return sample.compressed_bytes() / sample.raw_bytes()


LIGHT_TASK_RETRIES = 3
"""pipelines/kubernetes.py's: the bookkeeping tasks retry at least this often (a Retry node each)."""


def task_settings(config: RunConfig, stage: str | None) -> StageResources:
    """The pod settings a task of `stage` gets (pipelines/kubernetes.py `light` for None)."""
    k8s = config.kubernetes
    if stage is None:
        defaults = k8s.resolve_defaults()
        return dataclasses.replace(defaults, gpus=0, gpu_product=None, shm_size=None,
                                   retries=max(defaults.retries or 0, LIGHT_TASK_RETRIES))
    if stage == "fused":
        return k8s.resolve_fused()
    return k8s.resolve(stage)


def spec_json(config: RunConfig, task: Task) -> tuple[str, str, str]:
    """The component spec, container spec and task spec JSON of `task`, shaped as KFP compiles them."""
    settings = task_settings(config, task.stage)
    env = [{"name": k, "value": v} for k, v in _plain_env(config, settings).items()]
    accelerator = {"count": str(settings.gpus), "resourceCount": str(settings.gpus),
                   "resourceType": settings.gpu_resource, "type": settings.gpu_resource} if settings.gpus else {}
    resources = {k: v for k, v in (("cpuLimit", settings.cpu_limit), ("cpuRequest", settings.cpu_request),
                                   ("memoryLimit", settings.memory_limit), ("memoryRequest", settings.memory_request),
                                   ("accelerator", accelerator)) if v}
    params = {p: {"parameterType": "STRING"} for p in _parameter_names(task)}
    inputs = {f"input_{i}": {"artifactType": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}}
              for i in range(task.published_inputs + task.plain_inputs)}
    outputs = {f"output_{i}": {"artifactType": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"}}
               for i in range(task.outputs)}
    component = {"executorLabel": f"exec-{task.name}", "inputDefinitions": {"artifacts": inputs, "parameters": params},
                 "outputDefinitions": {"artifacts": outputs}}
    container = {"args": ["--executor_input", "{{$}}", "--function_to_execute", task.name],
                 "command": ["sh", "-ec", _LAUNCH, _source(task)], "env": env, "image": _image(task),
                 "resources": resources}
    spec = {"cachingOptions": {}, "componentRef": {"name": f"comp-{task.name}"}, "dependentTasks": ["begin-round"],
            "inputs": {"artifacts": {a: {"taskOutputArtifact": {"outputArtifactKey": a, "producerTask": "producer"}}
                                     for a in inputs},
                       "parameters": {p: {"componentInputParameter": f"pipelinechannel--{p}"} for p in params}},
            "taskInfo": {"name": task.name}}
    return _dumps(component), _dumps(container), _dumps(spec)


def dag_spec_bytes(inner_tasks: int) -> int:
    """Component spec plus task spec JSON of a DAG component (a loop body, a condition) with `inner_tasks` tasks:
    the compiled IR's are under this (tested)."""
    return 1_600 + 800 * inner_tasks


def _dag_spec(name: str, inner_tasks: int) -> str:
    """A DAG component's spec and task spec JSON in the IR's shape, cut to `dag_spec_bytes(inner_tasks)`."""
    channels = [f"pipelinechannel--{p}" for p in _PARAMETERS[:8]]
    tasks = {f"{name}-task-{i}": {
        "cachingOptions": {}, "componentRef": {"name": f"comp-{name}-task-{i}"},
        "dependentTasks": [f"{name}-task-{i - 1}"] if i else [],
        "inputs": {"artifacts": {"state": {"taskOutputArtifact": {"outputArtifactKey": "state",
                                                                  "producerTask": "begin-round"}}},
                   "parameters": {c: {"componentInputParameter": c} for c in channels}},
        "taskInfo": {"name": f"{name}-task-{i}"}} for i in range(inner_tasks + 2)}
    component = {"dag": {"tasks": tasks}, "inputDefinitions": {
        "artifacts": {"pipelinechannel--segment": {"artifactType": {"schemaTitle": "system.Artifact",
                                                                    "schemaVersion": "0.0.1"}}},
        "parameters": {c: {"parameterType": "STRING"} for c in channels}}}
    return _dumps(component)[:dag_spec_bytes(inner_tasks)]


_LAUNCH = ('program_path=$(mktemp -d)\n\nprintf "%s" "$0" > "$program_path/ephemeral_component.py"\n_KFP_RUNTIME=true '
           'python3 -m kfp.dsl.executor_main                         --component_module_path                         '
           '"$program_path/ephemeral_component.py"                         "$@"\n')
_LAUNCHER_FLAGS = ["--pod_name", "$(KFP_POD_NAME)", "--pod_uid", "$(KFP_POD_UID)", "--ml_pipeline_server_address",
                   "ml-pipeline.kubeflow", "--ml_pipeline_server_port", "8887", "--mlmd_server_address",
                   "metadata-grpc-service.kubeflow", "--mlmd_server_port", "8080", "--publish_logs", "true",
                   "--ml_pipeline_tls_enabled=false", "--metadata_tls_enabled=false", "--ca_cert_path", "",
                   "--cache_disabled=false", "--log_level", "1", "--"]
_PARAMETERS = ("store_uri", "run_id", "recipe_sha256", "shard_index", "shard_count", "round_index", "config_sha256",
               "kfp_run_id", "after_update", "image", "contract")


def _parameter_names(task: Task) -> list[str]:
    return list(_PARAMETERS[:task.parameters])


@functools.lru_cache(maxsize=64)
def _source(task: Task) -> str:
    """The component's Python source as its command carries it: the same text for every task of the component,
    words drawn from a large vocabulary so that it compresses about as code does (gzip ~3x), not better."""
    rng = random.Random(task.name)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 9))) for _ in range(2048)]
    head = (f"\nimport kfp\nfrom kfp import dsl\nfrom kfp.dsl import *\nfrom typing import *\n\ndef {task.name}("
            + ", ".join(f"{p}: str" for p in _parameter_names(task)) + "):\n")
    lines = [head]
    size = len(head)
    while size < SOURCE_BYTES:
        line = "    " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines)[:SOURCE_BYTES]


def _plain_env(config: RunConfig, settings: StageResources) -> dict[str, str]:
    """The environment pipelines/kubernetes.py sets on a task: the model cache's, then the stage's own."""
    cache = config.kubernetes.model_cache
    env = {"HF_HOME": f"{cache.mount_path}/huggingface", "TORCH_HOME": f"{cache.mount_path}/torch",
           "DGRPO_MODEL_CACHE": cache.mount_path} if cache.pvc else {}
    if cache.pvc and cache.offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env | dict(settings.env or {})


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _fnv32a(text: str) -> int:
    h = 0x811C9DC5
    for byte in text.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


class _Status:
    """The node status of one segment, built the way KFP's compiler and Argo lay it out."""

    def __init__(self, config: RunConfig):
        self.config = config
        self.rng = random.Random(0)
        self.workflow = f"{config.name[:40]}-x7k2q"
        self.store_uri = "s3://ml-platform-artifacts/dgrpo/team-a"  # a typical store; the budget's margin covers more
        self.nodes: dict[str, dict] = {}
        self.pods = 0
        self.shards = config.pipeline.shards

    # -- what a node holds ------------------------------------------------------------------------------------
    def _hex(self, n: int) -> str:
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def _uuid(self) -> str:
        h = self._hex(32)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _node(self, name: str, display: str, kind: str, template: str, inputs: dict | None = None,
              outputs: dict | None = None) -> str:
        node_id = f"{self.workflow}-{_fnv32a(name)}"
        node = {"id": node_id, "name": name, "displayName": display, "type": kind, "templateName": template,
                "templateScope": "local/", "phase": "Succeeded", "boundaryID": f"{self.workflow}-{_fnv32a(name[:-4])}",
                "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:03:20Z", "progress": "1/1",
                "resourcesDuration": {"cpu": 12, "memory": 240}, "children": [f"{self.workflow}-{_fnv32a(name + 'c')}"]}
        if kind == "DAG":
            node["outboundNodes"] = [f"{self.workflow}-{_fnv32a(name + 'o')}"]
        if kind == "Pod":
            self.pods += 1
            node |= {"hostNodeName": "gpu-pool-a100-7c9f8b6d5-x2k4q", "taskResultSynced": True}
            outputs = (outputs or {}) | {"exitCode": "0"}
        if inputs:
            node["inputs"] = {"parameters": [{"name": k, "value": v} for k, v in inputs.items()]}
        if outputs:
            node["outputs"] = outputs
        self.nodes[node_id] = node
        return node_id

    def _patch(self, task: Task, settings: StageResources, component: str, container: str) -> str:
        """The driver's pod-spec patch for `task` (driver.go initPodSpecPatch and k8s.go extendPodSpecPatch)."""
        run = self._uuid()
        kfp_root = f"s3://mlpipeline/v2/artifacts/{self.config.name}/{run}/{task.name}/{self._uuid()}"
        values = {"store_uri": self.store_uri, "run_id": "sd35m-ft-1", "recipe_sha256": self._hex(64),
                  "config_sha256": self._hex(64), "kfp_run_id": run, "shard_index": 3, "shard_count": self.shards,
                  "round_index": 117, "after_update": True, "image": "", "contract": "rollouts"}
        artifacts = {}
        for i in range(task.published_inputs + task.plain_inputs):
            sha = self._hex(64)
            ref = ArtifactRef("rollouts", f"{self.store_uri}/objects/{sha[:2]}/{sha}.parquet", sha, 1)
            artifacts[f"input_{i}"] = {"artifacts": [{
                "name": str(self.rng.randrange(10**5, 10**6)), "type": {"schemaTitle": "system.Dataset",
                                                                "schemaVersion": "0.0.1"},
                "uri": f"s3://mlpipeline/v2/artifacts/{self.config.name}/{run}/producer/{self._uuid()}/input_{i}",
                "metadata": ({"display_name": f"input_{i}"} | (artifact_metadata(ref) if i < task.published_inputs
                                                                  else {}))}]}
        executor_input = _dumps({
            "inputs": {"artifacts": artifacts,
                       "parameterValues": {p: values[p] for p in _parameter_names(task)}},
            "outputs": {"artifacts": {f"output_{i}": {"artifacts": [{
                "type": {"schemaTitle": "system.Dataset", "schemaVersion": "0.0.1"},
                "uri": f"{kfp_root}/output_{i}"}]} for i in range(task.outputs)},
                "outputFile": "/tmp/kfp_outputs/output_metadata.json"}})
        image = _image(task)
        user = json.loads(container)
        command = (["/kfp-launcher/launch", "--executor_type", "container", "--pipeline_name", self.config.name,
                    "--run_id", run, "--execution_id", str(self.rng.randrange(10**5, 10**6)), "--executor_input",
                    executor_input, "--component_spec", component, *_LAUNCHER_FLAGS, *user["command"],
                    *[executor_input if a == "{{$}}" else a for a in user["args"]]])
        k8s = self.config.kubernetes
        env = [{"name": "KFP_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
               {"name": "KFP_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]
        cache = k8s.model_cache
        env += [{"name": k, "value": v} for k, v in _plain_env(self.config, settings).items()]
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"key": key, "name": s.secret, "optional": False}}}
                for s in settings.secrets or [] for key, var in s.env.items()]
        env += [{"name": var, "valueFrom": {"configMapKeyRef": {"key": key, "name": c.config_map,
                                                                "optional": False}}}
                for c in settings.config_maps or [] for key, var in c.env.items()]
        limits = {k: v for k, v in (("cpu", settings.cpu_limit), ("memory", settings.memory_limit)) if v}
        if settings.gpus:
            limits[settings.gpu_resource or "nvidia.com/gpu"] = str(settings.gpus)
        requests = {k: v for k, v in (("cpu", settings.cpu_request), ("memory", settings.memory_request)) if v}
        mounts, volumes = [], []
        if cache.pvc:
            mounts.append({"mountPath": cache.mount_path, "name": cache.pvc})
            volumes.append({"name": cache.pvc, "persistentVolumeClaim": {"claimName": cache.pvc}})
        if settings.shm_size:
            mounts.append({"mountPath": "/dev/shm", "name": "dshm"})
            volumes.append({"emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}, "name": "dshm"})
        selector = dict(settings.node_selector or {}) | (
            {"nvidia.com/gpu.product": settings.gpu_product} if settings.gpu_product else {})
        patch = {"containers": [{"command": command, "env": env, "image": image, "name": "main",
                                 "resources": {"limits": limits, "requests": requests}, "volumeMounts": mounts}],
                 "nodeSelector": selector, "volumes": volumes,
                 "tolerations": [{k: v for k, v in dataclasses.asdict(t).items() if v}
                                 for t in settings.tolerations or []]}
        return _dumps(patch)

    def _k8s_config(self, settings: StageResources) -> str:
        """The task's kfp-kubernetes executor config, as the compiled platform spec holds it."""
        cache = self.config.kubernetes.model_cache
        spec = {"pvcMount": [{"constant": cache.pvc, "mountPath": cache.mount_path,
                              "pvcNameParameter": {"runtimeValue": {"constant": cache.pvc}}}] if cache.pvc else [],
                "secretAsEnv": [{"keyToEnv": [{"envVar": v, "secretKey": k} for k, v in s.env.items()],
                                 "optional": False, "secretName": s.secret,
                                 "secretNameParameter": {"runtimeValue": {"constant": s.secret}}}
                                for s in settings.secrets or []],
                "configMapAsEnv": [{"configMapName": c.config_map, "keyToEnv": [
                    {"configMapKey": k, "envVar": v} for k, v in c.env.items()], "optional": False,
                    "configMapNameParameter": {"runtimeValue": {"constant": c.config_map}}}
                    for c in settings.config_maps or []],
                "nodeSelector": {"labels": dict(settings.node_selector or {})},
                "tolerations": [dataclasses.asdict(t) for t in settings.tolerations or []]}
        if settings.shm_size:
            spec["emptyDirMounts"] = [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": settings.shm_size,
                                       "volumeName": "dshm"}]
        return _dumps(spec)

    # -- the shapes KFP compiles to -----------------------------------------------------------------------------
    def container(self, path: str, task: Task, iteration: int | None = None) -> None:
        """Driver pod, executor DAG node and launcher pod (and a Retry node with retries)."""
        settings = task_settings(self.config, task.stage)
        component, container, spec = spec_json(self.config, task)
        patch = self._patch(task, settings, component, container)
        name = f"{path}.{task.name}"
        self._node(f"{name}-driver", f"{task.name}-driver", "Pod", "system-container-driver",
                   inputs={"component": component, "task": spec,
                           "container": container,
                           "task-name": task.name, "parent-dag-id": str(self.rng.randrange(10**5, 10**6)),
                           "iteration-index": str(-1 if iteration is None else iteration),
                           "kubernetes-config": self._k8s_config(settings)},
                   outputs={"parameters": [
                       {"name": "pod-spec-patch", "value": patch,
                        "valueFrom": {"default": "", "path": "/tmp/outputs/pod-spec-patch"}},
                       {"name": "cached-decision", "value": "false",
                        "valueFrom": {"default": "false", "path": "/tmp/outputs/cached-decision"}},
                       {"name": "condition", "value": "true",
                        "valueFrom": {"default": "true", "path": "/tmp/outputs/condition"}}]})
        retry = {"retry-max-count": str(settings.retries), "retry-backoff-duration": "0",
                 "retry-backoff-factor": "0", "retry-backoff-max-duration": "0"} if settings.retries else {}
        executor_inputs = {"pod-spec-patch": patch, "cached-decision": "false"} | retry
        self._node(name, task.name, "DAG", "system-container-executor", inputs=executor_inputs)
        if settings.retries:
            self._node(f"{name}.executor", "executor", "Retry", "retry-system-container-impl", inputs=executor_inputs)
        self._node(f"{name}.executor(0)", "executor(0)", "Pod", "system-container-impl", inputs=executor_inputs)

    def dag(self, path: str, name: str, inner_tasks: int, iteration: int | None = None, skipped: bool = False) -> str:
        """A DAG component's driver pod and DAG node; returns the path of its tasks."""
        spec = _dag_spec(name, inner_tasks)
        self._node(f"{path}.{name}-driver", f"{name}-driver", "Pod", "system-dag-driver",
                   inputs={"component": spec, "task": "", "task-name": name, "parent-dag-id": "1234567",
                           "iteration-index": str(-1 if iteration is None else iteration), "driver-type": "DAG"},
                   outputs={"parameters": [{"name": "execution-id", "value": "1234568"},
                                           {"name": "iteration-count", "value": str(self.shards)},
                                           {"name": "condition", "value": "false" if skipped else "true"}]})
        self._node(f"{path}.{name}", name, "Skipped" if skipped else "DAG", f"comp-{name}",
                   inputs={"parent-dag-id": "1234568", "condition": "false" if skipped else "true"})
        return f"{path}.{name}"

    def loop(self, path: str, name: str, items: int, inner_tasks: int) -> list[str]:
        """A ParallelFor: its DAG node, driver pod and item group, then 3 nodes an item; returns the items' paths."""
        inner = f"{path}.{name}.iteration"
        self._node(f"{path}.{name}", name, "DAG", f"comp-{name}-iterator", inputs={"parent-dag-id": "1234567"})
        self._node(f"{inner}-driver", "iteration-driver", "Pod", "system-dag-driver",
                   inputs={"component": _dag_spec(name, inner_tasks), "task": "", "task-name": name,
                           "parent-dag-id": "1234567", "driver-type": "DAG"},
                   outputs={"parameters": [{"name": "execution-id", "value": "1234568"},
                                           {"name": "iteration-count", "value": str(items)},
                                           {"name": "condition", "value": "true"}]})
        self._node(f"{inner}-iterations", "iteration-iterations", "TaskGroup", "")
        paths = []
        for i in range(items):
            item = f"{inner}-iterations({i}:{i})"
            self._node(item, f"iteration-iterations({i}:{i})", "DAG", f"comp-{name}-iteration",
                       inputs={"parent-dag-id": "1234568", "iteration-index": str(i)})
            paths.append(self.dag(item, "iteration-item", inner_tasks, iteration=i))
        return paths

    def segment(self, segment: Segment, rounds: int, evaluations: Sequence[int]) -> None:
        """Every node of a segment of `rounds` rounds evaluating after the rounds in `evaluations`."""
        root = f"{self.workflow}.root"
        for name, kind in (("entrypoint", "DAG"), ("root-driver", "Pod"), ("root", "DAG")):
            self._node(f"{self.workflow}.{name}", name, kind, name, inputs={"parent-dag-id": "1234567"})
        handler = self.dag(root, "exit-handler-1", len(segment.fixed) + 1)
        self._node(f"{root}.exit-handler-1.onExit", "exit-handler-1.onExit", "DAG", "exit-hook-root-finish-segment",
                   inputs={"parent-dag-id": "1234567"})
        for task in segment.fixed:
            self.container(handler, task)
        if not segment.round:
            return
        if segment.evaluation is not None:  # the base model's condition; its evaluation counts as one
            self.dag(handler, "condition-2", 1, skipped=True)
        body_tasks = len(segment.round) + 2
        for r, item in enumerate(self.loop(handler, "for-loop-3", rounds, body_tasks)):
            shard_loop = []  # a loop over shards for each span of consecutive sharded tasks
            for task in segment.round:
                if not task.per_shard:
                    shard_loop = []
                    self.container(item, task, iteration=r)
                    continue
                if not shard_loop:
                    shard_loop = self.loop(item, "for-loop-5", self.shards,
                                           sum(t.per_shard for t in segment.round))
                for s, shard in enumerate(shard_loop):
                    self.container(shard, task, iteration=s)
            if segment.evaluation is not None:
                cond = self.dag(item, "condition-6", 1, skipped=r not in evaluations)
                if r in evaluations:
                    self.container(cond, segment.evaluation)

    # -- measures -------------------------------------------------------------------------------------------------
    def raw_bytes(self) -> int:
        return len(self._json())

    def compressed_bytes(self) -> int:
        return len(base64.b64encode(zlib.compress(self._json().encode(), GZIP_LEVEL))) + 18  # the gzip framing

    def _json(self) -> str:
        return json.dumps(self.nodes, separators=(",", ":"), sort_keys=True)


def _image(task: Task) -> str:
    """A digest-pinned image reference, as a production registry gives it."""
    return f"registry.example.com/ml-platform/dgrpo-{(task.stage or 'control')[:8]}@sha256:{'0' * 64}"
