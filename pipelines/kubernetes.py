"""Cluster settings of a pipeline task from `config.kubernetes` (kfp-kubernetes); kfp.local ignores them."""

import dataclasses

from kfp import dsl, kubernetes

from dgrpo.config import KubernetesConfig, StageResources

SHM_VOLUME = "dshm"


def configure(task: dsl.PipelineTask, settings: StageResources, k8s: KubernetesConfig) -> dsl.PipelineTask:
    """Apply resources, scheduling, volumes, environment, retries and caching to `task`."""
    if settings.gpus:
        task.set_accelerator_type(settings.gpu_resource).set_accelerator_limit(settings.gpus)
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


def light(k8s: KubernetesConfig) -> StageResources:
    """Settings of the bookkeeping tasks (segment steps, Parquet adapters, the exit task): the defaults, without
    GPUs, with at least LIGHT_TASK_RETRIES retries."""
    defaults = k8s.resolve_defaults()
    return dataclasses.replace(defaults, gpus=0, gpu_product=None, shm_size=None,
                               retries=max(defaults.retries or 0, LIGHT_TASK_RETRIES))
