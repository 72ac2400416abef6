"""Where and how a run executes: the pipeline's shape, stage swaps and the pods (kfp-kubernetes).

None of this changes what is trained, so none of it enters the recipe hash; lineage records it separately.
Per-stage tables are keyed by the stage names of `dgrpo.contracts.stages`, the one list of stages.
"""

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from dgrpo.config.fields import NON_NEGATIVE, POSITIVE, Range, check
from dgrpo.contracts.stages import STAGE_NAMES, SWAPPABLE_STAGES, stage_spec


@dataclass
class CustomStage:
    """A team's own component in place of one of ours: a component YAML, or an image and a command."""

    component: str | None = None
    """Path of a KFP component YAML whose inputs and outputs are named as in `dgrpo contract show <stage>`."""
    image: str | None = None
    """Container image, used with `command` when no component YAML is given."""
    command: list[str] = field(default_factory=list)
    """Command run in `image`; `--<input> PATH --<output> PATH` (and `--round_index N`...) are appended."""

    def validate(self, path: str) -> None:
        check((self.component is None) != (self.image is None), path,
              "set exactly one of 'component' (a component YAML) or 'image' (with 'command')")
        check(self.image is None or len(self.command) > 0, f"{path}.command", "must not be empty with 'image'")


@dataclass
class GuardRails:
    """Stop rules checked after every evaluation, so a fine-tune nobody watches stops when it collapses or hacks
    its reward; and the metric that picks the best adapter so far (always recorded). Unset rules are off."""

    diversity_metric: str = "diversity"
    """Evaluation metric the collapse rules read: diversity (pixels), embedding_diversity (cluster.embedder),
    mode_entropy or modes_over_10pct (with a mode classifier)."""
    diversity_floor: Annotated[float, NON_NEGATIVE] | None = None
    """Collapse: stop when the diversity metric falls below this value."""
    diversity_max_drop: Annotated[float, Range(gt=0, lt=1)] | None = None
    """Collapse: stop when the diversity metric has fallen by this fraction from the base model's evaluation (the
    fine-tune's first), e.g. 0.5 stops once it has halved."""
    hacking_evaluations: Annotated[int, Range(ge=2)] | None = None
    """Reward hacking: stop when the held-out metric fell at each of this many consecutive evaluations while the
    training reward rose over the same rounds."""
    monitor_max: dict[str, Annotated[float, NON_NEGATIVE]] = field(default_factory=dict)
    """Degenerate images: stop when an image monitor of the training rollouts (the reward stage's: dark_pixel_share,
    clipped_pixel_share, colour_entropy), averaged over the rounds since the previous evaluation, is above its limit,
    e.g. {dark_pixel_share: 0.6}. What a reward is hacked with (black or blown-out images) shows in the rollouts a
    round after it starts, before an evaluation's metric moves."""
    monitor_min: dict[str, Annotated[float, NON_NEGATIVE]] = field(default_factory=dict)
    """The same, below a floor, e.g. {colour_entropy: 0.02}: flat images."""
    heldout_metric: str = "heldout_reward"
    """Evaluation metric of the held-out prompts the hacking rule reads (heldout_reward needs eval prompts that are
    not training prompts; reward otherwise)."""
    best_metric: str = "reward"
    """Evaluation metric that ranks adapters: the best so far is recorded in runs/<id>/best.json."""
    best_mode: Literal["max", "min"] = "max"
    """Whether a larger or a smaller `best_metric` is better."""

    def enabled(self) -> bool:
        return (self.diversity_floor is not None or self.diversity_max_drop is not None
                or self.hacking_evaluations is not None or bool(self.monitor_max) or bool(self.monitor_min))


@dataclass
class PipelineConfig:
    """How the training plan becomes Kubeflow pipeline runs: one run (a segment) per `rounds_per_run` rounds."""

    rounds_per_run: Annotated[int, POSITIVE] = 20
    """Rounds one KFP run (a segment) trains at most; each finished segment submits the next until `rounds` are
    committed. Staged, a round is 2 x shards + 3 tasks that Argo keeps in the segment's Workflow (about 100 KB
    a round at 8 shards, docs/kubernetes.md "Workflow size"): the compiler refuses a segment estimated over half of
    Argo's 1 MiB and names the rounds that fit. Fused, a segment is 3 tasks whatever its rounds."""
    max_retries: Annotated[int, NON_NEGATIVE] = 2
    """Failed segments retried in a row, from the last committed round, before the chain stops as failed; a
    segment that committed rounds before failing starts the count again."""
    guard_rails: GuardRails = field(default_factory=GuardRails)
    """Stop rules on the evaluations, and the best-adapter metric."""
    shards: Annotated[int, POSITIVE] = 1
    """Prompt shards the sharded stages (rollout, reward) fan out over; a group never spans shards."""
    parallelism: Annotated[int, NON_NEGATIVE] = 0
    """Shards running at once (0: all); bounds the GPUs one round asks for."""
    stages: dict[str, CustomStage | None] = field(default_factory=dict)
    """External components replacing our stages, by stage name (null: ours); only table-in, table-out stages can be
    swapped (reward: reads 'rollouts', writes 'rewards'; cluster: reads 'rollouts' and 'rewards', writes 'scores')."""
    stage_timeout_s: Annotated[float, Range(gt=0)] | None = None
    """Time limit of one stage call (a shard of rollout or reward, cluster, update, an evaluation) in every engine:
    past it the stage fails with one line naming it, as a hung plug-in would otherwise block it forever. None: no
    limit. On a cluster a pod's own limit is `kubernetes.<stage>.timeout_s`."""
    execution: Literal["staged", "fused"] = "staged"
    """How a segment's rounds run. staged: a KFP task per stage and round (per shard for rollout and reward), each
    its own pod; the stages show one by one in the KFP UI and a team's container can replace one. fused: the
    segment's rounds run inside one task (`train_segment`, one pod holding `kubernetes.fused`'s GPUs) that calls the
    same stage functions in process, writing the same tables, adapters and lineage per round; models stay loaded
    across rounds, so the pod start-up, imports and model loads are paid once a segment instead of once a task
    (docs/kubernetes.md, "Staged or fused"). A container swap (`stages`) needs staged."""
    resident_gb: Annotated[float, Range(ge=0)] = 4.0
    """Memory (GiB) each process of a segment run in one process group (fused, or in process) keeps the objects it
    wrote or read in, so a round's later steps read its rollouts from memory; its writes go to the store in the
    background meanwhile (`dgrpo.store.resident`). A round's rollouts with their trajectories should fit: about
    3.5 GB at SD3.5-M size over the pod's processes. 0 reads everything back from the store."""

    def validate(self, path: str) -> None:
        for name, custom in self.swaps().items():
            check(name in SWAPPABLE_STAGES, f"{path}.stages.{name}",
                  f"is not a swappable stage (swappable: {', '.join(SWAPPABLE_STAGES)})")
            custom.validate(f"{path}.stages.{name}")
            check(self.execution == "staged", f"{path}.stages.{name}",
                  f"is a container component, which runs as its own task: it needs {path}.execution: staged "
                  f"(the config chooses {self.execution!r}); a Python plug-in (a dotted path in the stage's own "
                  "section, e.g. reward.name) runs inside the fused task")

    def swaps(self) -> dict[str, CustomStage]:
        """The swapped stages and their components."""
        return {name: custom for name, custom in self.stages.items() if custom is not None}


@dataclass
class Toleration:
    """A Kubernetes toleration, e.g. for a tainted GPU node pool."""

    key: str = ""
    """Taint key, e.g. nvidia.com/gpu."""
    operator: Literal["Equal", "Exists"] = "Exists"
    """Equal or Exists."""
    value: str | None = None
    """Taint value (with Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """NoSchedule, PreferNoSchedule or NoExecute; None tolerates every effect."""


@dataclass
class SecretEnv:
    """Keys of a Kubernetes Secret exposed as environment variables (e.g. S3 or hub credentials)."""

    secret: str = ""
    """Secret name in the run's namespace."""
    env: dict[str, str] = field(default_factory=dict)
    """Secret key -> environment variable name."""

    def validate(self, path: str) -> None:
        check(bool(self.secret), f"{path}.secret", "must name a Secret")
        check(len(self.env) > 0, f"{path}.env", "must map at least one key to an environment variable")


@dataclass
class ConfigMapEnv:
    """Keys of a Kubernetes ConfigMap exposed as environment variables."""

    config_map: str = ""
    """ConfigMap name in the run's namespace."""
    env: dict[str, str] = field(default_factory=dict)
    """ConfigMap key -> environment variable name."""

    def validate(self, path: str) -> None:
        check(bool(self.config_map), f"{path}.config_map", "must name a ConfigMap")
        check(len(self.env) > 0, f"{path}.env", "must map at least one key to an environment variable")


@dataclass
class StageResources:
    """Pod settings of one stage; a field left unset (null) takes `kubernetes.defaults`, then the built-in."""

    gpus: Annotated[int, NON_NEGATIVE] | None = None
    """Accelerators per pod (accelerator limit); built-in 0."""
    gpu_resource: str | None = None
    """Accelerator resource name (accelerator type); built-in nvidia.com/gpu."""
    gpu_product: str | None = None
    """GPU model as the node label nvidia.com/gpu.product (GPU feature discovery), e.g. NVIDIA-H100-80GB-HBM3."""
    cpu_request: str | None = None
    """CPU request, e.g. "4"."""
    cpu_limit: str | None = None
    """CPU limit."""
    memory_request: str | None = None
    """Memory request, e.g. 32Gi."""
    memory_limit: str | None = None
    """Memory limit."""
    node_selector: dict[str, str] | None = None
    """Node labels the pod must match."""
    tolerations: list[Toleration] | None = None
    """Taints the pod tolerates."""
    shm_size: str | None = None
    """Size of a memory-backed /dev/shm (PyTorch data loading and NCCL need more than the 64M default)."""
    secrets: list[SecretEnv] | None = None
    """Secrets exposed as environment variables."""
    config_maps: list[ConfigMapEnv] | None = None
    """ConfigMap keys exposed as environment variables (e.g. the dgrpo-s3 store settings of manifests/)."""
    env: dict[str, str] | None = None
    """Plain environment variables."""
    retries: Annotated[int, NON_NEGATIVE] | None = None
    """Retries of a failed pod (preemption, node loss); built-in 0."""
    timeout_s: Annotated[int, NON_NEGATIVE] | None = None
    """Seconds a started pod may run (its activeDeadlineSeconds): a hung pod then fails the task, so the exit task
    runs; unset or 0: no limit. It does not bound a pod pending for GPUs (the kubelet counts from the pod's start)."""
    caching: bool | None = None
    """KFP result caching; built-in off for the stochastic stages (rollout, update), on for the others."""

    def validate(self, path: str) -> None:
        for i, s in enumerate(self.secrets or []):
            s.validate(f"{path}.secrets[{i}]")
        for i, c in enumerate(self.config_maps or []):
            c.validate(f"{path}.config_maps[{i}]")


@dataclass
class ModelCacheConfig:
    """A PersistentVolumeClaim holding base weights and DreamSim weights, so no round downloads them again."""

    pvc: str = ""
    """Claim name (manifests/ creates one); empty: no cache volume, stages download into the pod."""
    mount_path: str = "/models"
    """Where the claim is mounted; HF_HOME and TORCH_HOME point inside it."""
    offline: bool = False
    """Set HF_HUB_OFFLINE=1: read the cache only, fail instead of downloading. Fill the claim once with the
    manifests/model-cache-fill.job.yaml Job (gated models need a token), then set true: pods never download."""

    def validate(self, path: str) -> None:
        check(self.mount_path.startswith("/"), f"{path}.mount_path", f"must be absolute, got {self.mount_path!r}")


IMAGE_KEYS = (*STAGE_NAMES, "control")
"""Images a segment runs: one per stage, and `control` for the bookkeeping tasks (open/plan/begin/finish)."""
IMAGE_REFERENCE = re.compile(r"[a-z0-9][a-z0-9._-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)+"
                             r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?")
"""registry[:port]/path/name[:tag][@sha256:digest]: a reference a kubelet can pull, with its registry."""
DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

BUILTIN_RESOURCES = {"gpus": 0, "gpu_resource": "nvidia.com/gpu", "retries": 0, "node_selector": {},
                     "tolerations": [], "secrets": [], "config_maps": [], "env": {}}


@dataclass
class KubernetesConfig:
    """Cluster settings of the compiled pipeline (kfp-kubernetes); ignored by kfp.local and the in-process engine."""

    defaults: StageResources = field(default_factory=StageResources)
    """Settings of every stage unless the stage sets its own."""
    stages: dict[str, StageResources] = field(default_factory=dict)
    """Per-stage settings, by stage name (rollout, reward, cluster, update, evaluate)."""
    fused: StageResources = field(default_factory=StageResources)
    """The pod of the fused task (`pipeline.execution: fused`), which runs every stage of the segment: size it for
    the update (GPUs = train.num_processes, its memory and shm); unset fields take `defaults`."""
    model_cache: ModelCacheConfig = field(default_factory=ModelCacheConfig)
    """The model-cache volume, mounted in every stage."""
    service_account: str = ""
    """Service account the KFP runs execute as (manifests/ creates dgrpo-pipeline-runner); empty: the namespace's
    default runner. The chain's continuation task needs the RBAC of manifests/continuation-rbac.yaml."""
    kfp_endpoint: str = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    """KFP API address the continuation task reaches from inside the cluster to submit the next segment."""
    images: dict[str, str] = field(default_factory=dict)
    """Image reference per image key: a stage name, or `control` (the bookkeeping tasks' small CPU image); pin by
    digest (`name:tag@sha256:...`, what `make images` prints). Unset keys keep the reference the components were
    defined with ($DGRPO_IMAGES_FILE, else the ghcr.io/dgrpo placeholders, which `dgrpo submit` refuses)."""
    image_pull_secrets: list[str] = field(default_factory=list)
    """Secrets (type kubernetes.io/dockerconfigjson) every pod pulls its image with, for a private registry."""
    labels: dict[str, str] = field(default_factory=dict)
    """Labels on every task pod, e.g. cost centre labels, or kueue.x-k8s.io/queue-name for a Kueue LocalQueue."""
    annotations: dict[str, str] = field(default_factory=dict)
    """Annotations on every task pod."""
    priority_class: str = ""
    """A Kueue WorkloadPriorityClass, set as the pod label kueue.x-k8s.io/priority-class: KFP 2.17's platform
    spec cannot set a pod's priorityClassName, so this orders admission in a Kueue queue, not kube-scheduler
    preemption. Empty: none."""
    pipeline_root: str = ""
    """Where KFP keeps this run's own artifact files (the small reference files the stages exchange), sent as the
    run's runtime_config.pipeline_root, e.g. s3://dgrpo-pipelines/pipeline-root; empty: the namespace's
    kfp-launcher defaultPipelineRoot. The namespace's kfp-launcher ConfigMap is never replaced."""

    def validate(self, path: str) -> None:
        self.defaults.validate(f"{path}.defaults")
        for key in self.images:
            check(key in IMAGE_KEYS, f"{path}.images.{key}", f"is not an image key (keys: {', '.join(IMAGE_KEYS)})")
            check(IMAGE_REFERENCE.fullmatch(self.images[key]) is not None, f"{path}.images.{key}",
                  f"is not an image reference (registry/name:tag or registry/name@sha256:<64 hex>), "
                  f"got {self.images[key]!r}")
        for i, name in enumerate(self.image_pull_secrets):
            check(DNS_NAME.fullmatch(name) is not None, f"{path}.image_pull_secrets[{i}]",
                  f"must be a Secret name, got {name!r}")
        check(not self.priority_class or DNS_NAME.fullmatch(self.priority_class) is not None,
              f"{path}.priority_class", f"must be a WorkloadPriorityClass name, got {self.priority_class!r}")
        check(not self.pipeline_root or self.pipeline_root.startswith(("s3://", "gs://", "minio://")),
              f"{path}.pipeline_root", f"must be an s3://, gs:// or minio:// URI, got {self.pipeline_root!r}")
        self.fused.validate(f"{path}.fused")
        check(self.kfp_endpoint.startswith(("http://", "https://")), f"{path}.kfp_endpoint",
              f"must be an http(s):// URL, got {self.kfp_endpoint!r}")
        for name, resources in self.stages.items():
            check(name in STAGE_NAMES, f"{path}.stages.{name}", f"is not a stage (stages: {', '.join(STAGE_NAMES)})")
            resources.validate(f"{path}.stages.{name}")
        self.model_cache.validate(f"{path}.model_cache")

    def resolve_defaults(self) -> StageResources:
        """`defaults` over the built-in, for tasks that are not a stage; caching off."""
        return dataclasses.replace(self._resolve(StageResources(), caching=False), caching=False)

    def resolve_fused(self) -> StageResources:
        """The fused task's settings: `fused` over the defaults and the built-in; caching off (it trains)."""
        return dataclasses.replace(self._resolve(self.fused, caching=False), caching=False)

    def resolve(self, stage: str) -> StageResources:
        """The effective settings of `stage`: its own, else the defaults, else the built-in."""
        return self._resolve(self.stages.get(stage, StageResources()), caching=not stage_spec(stage).stochastic)

    def _resolve(self, own: StageResources, caching: bool) -> StageResources:
        values = {}
        for f in dataclasses.fields(StageResources):
            value = getattr(own, f.name)
            value = getattr(self.defaults, f.name) if value is None else value
            values[f.name] = BUILTIN_RESOURCES.get(f.name) if value is None else value
        if values["caching"] is None:
            values["caching"] = caching
        return StageResources(**values)


@dataclass
class RetentionConfig:
    """What `dgrpo gc RUN` may delete from the store, which otherwise grows by every round's rollouts (about 3 MB
    a toy round, an estimated 3 GB an SD3.5-M round: docs/storage.md). Committed adapters, the optimizer state a
    resume needs, evaluations, rewards tables (the report's training curve), lineage and run records are always
    kept."""

    keep_rounds: Annotated[int, POSITIVE] | None = None
    """Rounds, counting back from the last committed one, whose rollouts, scores, prune decisions, update metrics
    and optimizer states `dgrpo gc` keeps; those of older rounds are deleted unless a kept artifact of any run in
    the store names them. None (the default): keep everything, gc deletes nothing."""


@dataclass
class MlflowConfig:
    """One MLflow run per fine-tune, which every segment logs into when it ends (`dgrpo.runtime.tracking`,
    docs/tracking.md): the recipe as params, per-round training and evaluation metrics with the round as step,
    grids and the HTML report as artifacts, lineage and the best adapter as tags. Needs the `mlflow` extra. A
    tracking failure is logged and recorded, never fails the fine-tune."""

    enabled: bool = False
    """Log the fine-tune to MLflow (off by default)."""
    uri: str | None = None
    """Tracking server, e.g. http://mlflow.mlflow.svc:5000. Wins over $MLFLOW_TRACKING_URI, which is used when this
    is unset (and which KFP's MLflow plugin sets in its task pods). Credentials never go here: the MLflow client
    reads MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD from the environment (a Secret,
    kubernetes.*.secrets)."""
    experiment: str = ""
    """MLflow experiment of the run; empty: the config's `name`. Where KFP's plugin registered the segment's KFP
    run, its experiment is used."""

    def validate(self, path: str) -> None:
        if self.uri is None:
            return
        check(bool(self.uri.strip()), f"{path}.uri", "must not be empty (null: $MLFLOW_TRACKING_URI)")
        check("@" not in self.uri.split("/")[2 if "://" in self.uri else 0], f"{path}.uri",
              "must not hold credentials (user@host): MLflow reads them from MLFLOW_TRACKING_USERNAME/PASSWORD or "
              "MLFLOW_TRACKING_TOKEN")


@dataclass
class TrackingConfig:
    """Experiment trackers a fine-tune reports to, besides the store and the KFP UI."""

    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    """MLflow (off by default)."""

    def validate(self, path: str) -> None:
        self.mlflow.validate(f"{path}.mlflow")
