"""Cluster settings of a pipeline task from `config.kubernetes` (kfp-kubernetes); kfp.local ignores them."""

import dataclasses

from dgrpo_components.images import image_for, is_placeholder, key_of
from kfp import dsl, kubernetes

from dgrpo.config import KubernetesConfig, StageResources
from dgrpo.config.deployment import IMAGE_KEYS
from dgrpo.config.fields import ConfigError

SHM_VOLUME = "dshm"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
EXPECT_GPUS_ENV = "DGRPO_EXPECT_GPUS"
"""Set to a task's GPU count: the task refuses to start when torch sees fewer (dgrpo.runtime.gpu_check)."""


def images(k8s: KubernetesConfig) -> dict[str, str]:
    """The image of every image key as compiled: `kubernetes.images`, else what the components were defined with."""
    return {key: k8s.images.get(key) or image_for(key) for key in IMAGE_KEYS}


def image_lines(k8s: KubernetesConfig) -> list[str]:
    """One line per image key, for `dgrpo compile` and `dgrpo submit` to print."""
    return [f"  {key:<9} {ref}" + ("   (placeholder)" if is_placeholder(ref) else "")
            for key, ref in images(k8s).items()]


def check_cluster_images(k8s: KubernetesConfig) -> None:
    """Refuse placeholder references before a cluster submission: every pod would fail in ImagePullBackOff."""
    for key, ref in images(k8s).items():
        if is_placeholder(ref):
            raise ConfigError(f"config field 'kubernetes.images.{key}': {ref} is a placeholder no cluster can pull; "
                              "build and push the images (make images) and set kubernetes.images "
                              "(docs/kubernetes.md, the deployment walk-through)")


def _image_key(task: dsl.PipelineTask) -> str | None:
    """The image key whose reference the task's component was defined with (None: a team's own image)."""
    spec = task.component_spec.implementation.container
    return None if spec is None else key_of(spec.image)


def configure(task: dsl.PipelineTask, settings: StageResources, k8s: KubernetesConfig) -> dsl.PipelineTask:
    """Apply the image, resources, scheduling, pod metadata, volumes, environment, retries and caching to `task`."""
    key = _image_key(task)
    if key is not None and k8s.images.get(key):
        task.set_container_image(k8s.images[key])
    if k8s.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(k8s.image_pull_secrets))
    labels = dict(k8s.labels) | ({KUEUE_PRIORITY_LABEL: k8s.priority_class} if k8s.priority_class else {})
    for name, value in labels.items():
        kubernetes.add_pod_label(task, name, value)
    for name, value in k8s.annotations.items():
        kubernetes.add_pod_annotation(task, name, value)
    if settings.gpus:
        task.set_accelerator_type(settings.gpu_resource).set_accelerator_limit(settings.gpus)
        task.set_env_variable(EXPECT_GPUS_ENV, str(settings.gpus))
    if settings.gpu_product:
        kubernetes.add_node_selector(task, label_key="nvidia.com/gpu.product", label_value=settings.gpu_product)
    for setter, value in ((task.set_cpu_request, settings.cpu_request), (task.set_cpu_limit, settings.cpu_limit),
                          (task.set_memory_request, settings.memory_request),
                          (task.set_memory_limit, settings.memory_limit)):
        if value:
            setter(value)
    for key, value in settings.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for t in settings.tolerations:
        kubernetes.add_toleration(task, key=t.key or None, operator=t.operator, value=t.value, effect=t.effect)
    if settings.shm_size:
        kubernetes.empty_dir_mount(task, volume_name=SHM_VOLUME, mount_path="/dev/shm", medium="Memory",
                                   size_limit=settings.shm_size)
    cache = k8s.model_cache
    if cache.pvc:
        kubernetes.mount_pvc(task, pvc_name=cache.pvc, mount_path=cache.mount_path)
        env = {"HF_HOME": f"{cache.mount_path}/huggingface", "TORCH_HOME": f"{cache.mount_path}/torch",
               "DGRPO_MODEL_CACHE": cache.mount_path}
        if cache.offline:
            env["HF_HUB_OFFLINE"] = "1"
        for name, value in env.items():
            task.set_env_variable(name, value)
    for secret in settings.secrets:
        kubernetes.use_secret_as_env(task, secret_name=secret.secret, secret_key_to_env=dict(secret.env))
    for cm in settings.config_maps:
        kubernetes.use_config_map_as_env(task, config_map_name=cm.config_map, config_map_key_to_env=dict(cm.env))
    for name, value in settings.env.items():
        task.set_env_variable(name, value)
    if settings.retries:
        task.set_retry(num_retries=settings.retries)
    if settings.timeout_s:
        kubernetes.set_timeout(task, settings.timeout_s)
    task.set_caching_options(settings.caching)
    return task


LIGHT_TASK_RETRIES = 3
"""Retries of every bookkeeping task at least, the exit task among them: it alone releases the lease and submits
the next segment, and each of these tasks is safe to repeat (open_segment finds its own lease, finish_segment keeps
its first outcome and finds a run it already submitted)."""


CONTROL_RESOURCES = {"cpu_request": "500m", "cpu_limit": "2", "memory_request": "2Gi", "memory_limit": "8Gi"}
"""CPU and memory of the bookkeeping tasks: a namespace's ResourceQuota on cpu and memory admits only pods that
request them, and these small tasks must not take a GPU pod's share (`defaults` sizes the stages); the 8Gi
limit leaves room for the Parquet adapters of a swapped stage, which hold a round's tables."""


def light(k8s: KubernetesConfig) -> StageResources:
    """Settings of the bookkeeping tasks (segment steps, Parquet adapters, the exit task): the defaults, without
    GPUs, with at least LIGHT_TASK_RETRIES retries and the control image's CPU and memory (CONTROL_RESOURCES)."""
    defaults = k8s.resolve_defaults()
    return dataclasses.replace(defaults, gpus=0, gpu_product=None, shm_size=None,
                               retries=max(defaults.retries or 0, LIGHT_TASK_RETRIES), **CONTROL_RESOURCES)
