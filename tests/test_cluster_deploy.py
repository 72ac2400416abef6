"""What a cluster with a ResourceQuota, a private registry and GPU nodes needs from a compiled segment and from
images/ and manifests/: requests and limits on every pod, the configured images, pull secrets and pod metadata,
placeholder images refused before a submission, GPU tasks that refuse the CPU, and a model cache filled once."""

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from dgrpo_components.images import image_for
from dgrpo_pipelines.kubernetes import check_cluster_images, configure, image_lines, light
from kfp import compiler
from typer.testing import CliRunner

from dgrpo.config import load_config
from dgrpo.config.deployment import IMAGE_KEYS
from dgrpo.config.fields import ConfigError
from dgrpo.contracts.stages import STAGE_NAMES
from dgrpo.runtime import component_io, gpu_check, kfp_rest, model_cache
from dgrpo.runtime.segment import RoundState
from dgrpo.store import LocalStore

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import render_manifests  # noqa: E402

import images as images_script  # noqa: E402

DIGEST = "@sha256:" + "0" * 64
REFS = {key: f"registry.example.com/ml/dgrpo-{key}:rev1{DIGEST}" for key in IMAGE_KEYS}
PRESETS = ("sd35m-pickscore.yaml", "flux1dev-pickscore.yaml")
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"([0-9.]+)([KMGT]i)?", quantity).groups()
    return int(float(number) * UNITS.get(unit or "", 1))


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _compiled(tmp_path: Path, **overrides) -> tuple[dict, dict]:
    from dgrpo_pipelines.training import build_pipeline

    config = load_config(None, {"rounds": 2, "pipeline.rounds_per_run": 2, **overrides})
    compiler.Compiler().compile(build_pipeline(config), str(tmp_path / "p.yaml"))
    ir, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    return ir["deploymentSpec"]["executors"], platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_size_every_pod_for_a_resource_quota(preset):
    """Every pod requests and limits CPU and memory (a quota on them admits nothing else); a memory-backed /dev/shm
    counts against the pod's memory, so the request exceeds it; GPU pods tolerate the GPU taint; the cache is
    read offline."""
    k8s = load_config(ROOT / "configs" / preset).kubernetes
    pods = {stage: k8s.resolve(stage) for stage in STAGE_NAMES} | {"fused": k8s.resolve_fused(), "control":
                                                                   light(k8s)}
    for name, pod in pods.items():
        assert all((pod.cpu_request, pod.cpu_limit, pod.memory_request, pod.memory_limit)), name
        assert _cpu(pod.cpu_request) <= _cpu(pod.cpu_limit), name
        assert _bytes(pod.memory_request) <= _bytes(pod.memory_limit), name
        if pod.shm_size:
            assert _bytes(pod.memory_request) >= _bytes(pod.shm_size) + 32 * 2**30, (name, "room beside the shm")
        if pod.gpus:
            assert any(t.key == pod.gpu_resource and t.effect == "NoSchedule" for t in pod.tolerations), name
    assert pods["update"].gpus == pods["fused"].gpus == load_config(ROOT / "configs" / preset).train.num_processes
    assert pods["control"].gpus == 0 and _bytes(pods["control"].memory_limit) <= 8 * 2**30
    assert k8s.model_cache.offline and k8s.model_cache.pvc == "dgrpo-model-cache"


def test_compiled_pods_carry_images_pull_secrets_metadata_resources_and_the_gpu_guard(tmp_path):
    images = dict(REFS)
    del images["cluster"]  # an unset key keeps the reference the component was defined with
    executors, platform = _compiled(tmp_path, **{
        "kubernetes.images": images, "kubernetes.image_pull_secrets": ["regcred"],
        "kubernetes.labels": {"kueue.x-k8s.io/queue-name": "team-a"}, "kubernetes.annotations": {"team": "ml"},
        "kubernetes.priority_class": "high", "kubernetes.defaults.cpu_request": "4",
        "kubernetes.defaults.memory_request": "16Gi", "kubernetes.stages.update.gpus": 2})
    expected = {"open-segment": "control", "plan-segment": "control", "begin-round": "control",
                "finish-segment": "control", "rollout": "rollout", "reward": "reward", "update": "update",
                "evaluate": "evaluate", "evaluate-2": "evaluate"}
    for name, key in expected.items():
        assert executors[f"exec-{name}"]["container"]["image"] == REFS[key], name
    assert executors["exec-cluster"]["container"]["image"] == image_for("cluster")
    for name, executor in executors.items():
        pod = platform[name]
        assert pod["imagePullSecret"][0]["secretName"] == "regcred", name
        assert pod["podMetadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a", name
        assert pod["podMetadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high", name
        assert pod["podMetadata"]["annotations"] == {"team": "ml"}, name
        resources = executor["container"]["resources"]
        assert resources["cpuRequest"] and resources["memoryRequest"], name
        guard = {e["name"]: e["value"] for e in executor["container"].get("env", [])}.get("DGRPO_EXPECT_GPUS")
        assert guard == ("2" if name == "exec-update" else None), name
    assert executors["exec-open-segment"]["container"]["resources"]["memoryLimit"] <= 8 * 2**30  # not 16Gi
    assert executors["exec-update"]["container"]["resources"]["cpuRequest"] == 4


def test_placeholder_images_are_refused_before_a_submission(kfp_api, tmp_path, monkeypatch):
    monkeypatch.delenv("DGRPO_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("DGRPO_IMAGES_FILE", raising=False)
    k8s = load_config(None).kubernetes
    with pytest.raises(ConfigError, match=r"'kubernetes.images.rollout': ghcr.io/dgrpo/dgrpo-rollout:\S+ is a "
                                          "placeholder"):
        check_cluster_images(k8s)
    assert all(line.endswith("(placeholder)") for line in image_lines(k8s))
    from dgrpo_pipelines.cli import app

    args = ["submit", "--host", kfp_api.url, "--store", (tmp_path / "store").as_uri(), "--run-id", "ft",
            "--set", "pipeline.rounds_per_run=2"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code != 0 and "kubernetes.images.rollout" in out.output
    assert kfp_api.posted("/apis/v2beta1/runs") == [] and not (tmp_path / "store" / "runs").exists()

    sets = ["--set", f"kubernetes.images={json.dumps(REFS)}", "--set",
            "kubernetes.pipeline_root=s3://dgrpo-pipelines/root"]
    out = CliRunner().invoke(app, args + sets)
    assert out.exit_code == 0, out.output
    assert all(ref in out.output for ref in REFS.values())  # submit prints the images it submitted
    (run,) = kfp_api.posted("/apis/v2beta1/runs")
    assert run["runtime_config"]["pipeline_root"] == "s3://dgrpo-pipelines/root"
    executors = run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} <= set(REFS.values())
    record = LocalStore(tmp_path / "store").get_json("runs/ft/chain.json")
    assert record["kfp"]["pipeline_root"] == "s3://dgrpo-pipelines/root"  # the continuation sends it too


@pytest.mark.parametrize(("field", "value", "message"), [
    ("kubernetes.images", {"sampler": "r.example/x:1"}, "'kubernetes.images.sampler': is not an image key"),
    ("kubernetes.images", {"update": "dgrpo-update"}, "'kubernetes.images.update': is not an image reference"),
    ("kubernetes.images", {"update": "r.example/x@sha256:abc"}, "'kubernetes.images.update': is not an image"),
    ("kubernetes.image_pull_secrets", ["Reg Cred"], "'kubernetes.image_pull_secrets[0]': must be a Secret name"),
    ("kubernetes.priority_class", "High!", "'kubernetes.priority_class': must be a WorkloadPriorityClass"),
    ("kubernetes.pipeline_root", "/tmp/root", "'kubernetes.pipeline_root': must be an s3://"),
])
def test_bad_deployment_fields_are_one_line_errors_naming_them(field, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, {field: value})


def test_a_gpu_task_without_cuda_refuses_to_run_and_says_why(tmp_path, monkeypatch):
    def view(count, cuda="13.0", reason=""):
        return lambda: ("2.14.1", cuda, count, reason)

    driver = lambda: "NVIDIA driver 535.183.01 (nvidia-smi)"  # noqa: E731
    gpu_check.check_gpus({}, torch_view=view(0), driver=driver)  # no GPUs given: nothing to check
    gpu_check.check_gpus({"DGRPO_EXPECT_GPUS": "2"}, torch_view=view(2), driver=driver)
    with pytest.raises(RuntimeError) as exc:
        gpu_check.check_gpus({"DGRPO_EXPECT_GPUS": "8"}, torch_view=view(0, reason="driver too old"), driver=driver)
    text = str(exc.value)
    assert "\n" not in text and "given 8 GPU(s) but torch sees 0: driver too old" in text
    assert "NVIDIA driver 535.183.01" in text and "torch 2.14.1 built for CUDA 13.0" in text
    with pytest.raises(RuntimeError, match="torch 2.14.1 is a CPU-only build"):
        gpu_check.check_gpus({"DGRPO_EXPECT_GPUS": "1"}, torch_view=view(0, cuda=None), driver=driver)
    with pytest.raises(ValueError, match="DGRPO_EXPECT_GPUS: expected a GPU count, got 'all'"):
        gpu_check.check_gpus({"DGRPO_EXPECT_GPUS": "all"})

    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n")
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    assert "550.54.15" in gpu_check.node_driver(version)
    assert gpu_check.node_driver(tmp_path / "absent").startswith("no NVIDIA driver visible")

    # the real guard in every component's body, on this machine's torch: the error is recorded for the exit task
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("DGRPO_EXPECT_GPUS", "1")
    store = LocalStore(tmp_path / "store")
    with pytest.raises(RuntimeError, match=f"torch sees 0.*torch {re.escape(torch.__version__)}"), \
            component_io.task(store.uri, "ft", "rollout"):
        pass
    (key,) = store.list("runs/ft/errors")
    assert "given 1 GPU(s)" in json.dumps(store.get_json(key))
    # the fused task (pipeline.execution fused) checks before it trains, and records the error as well
    state = tmp_path / "segment"
    state.write_text(RoundState("ft", "0" * 64, 1, "h", 0, rounds=(0, 1)).to_json())
    with pytest.raises(RuntimeError, match="given 1 GPU"):
        component_io.train_fused(store.uri, "ft", SimpleNamespace(path=str(state), metadata={}), False, None, None)
    assert len(store.list("runs/ft/errors")) == 2


def test_manifests_leave_kfp_launcher_alone_and_the_run_sets_its_pipeline_root():
    rendered = yaml.safe_load_all(render_manifests.render_with_python(ROOT / "manifests"))
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert ("ConfigMap", "kfp-launcher") not in names
    for path in (ROOT / "manifests").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert (doc or {}).get("metadata", {}).get("name") != "kfp-launcher", path
    body = kfp_rest.run_body(display_name="x", experiment_id="e", spec={}, platform=None, parameters={},
                             pipeline_root="s3://b/root")
    assert body["runtime_config"] == {"parameters": {}, "pipeline_root": "s3://b/root"}
    assert "pipeline_root" not in kfp_rest.run_body(display_name="x", experiment_id="e", spec={}, platform=None,
                                                    parameters={})["runtime_config"]


def test_the_cache_fill_job_fills_what_the_presets_read_as_uid_10001_with_the_token_secret():
    job, policy = yaml.safe_load_all((ROOT / "manifests" / "model-cache-fill.job.yaml").read_text())
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    secret = yaml.safe_load((ROOT / "manifests" / "hf-token.secret.yaml").read_text())
    pvc = yaml.safe_load((ROOT / "manifests" / "model-cache-pvc.yaml").read_text())
    pod = job["spec"]["template"]["spec"]
    (fill,) = pod["containers"]
    config = load_config(ROOT / "configs" / "sd35m-diversegrpo.yaml")  # the walk-through's fine-tune
    assert fill["args"] == model_cache.plan_for(config).arguments()
    assert fill["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["fsGroup"] == 10001
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"] == \
        config.kubernetes.model_cache.pvc
    assert volumes["hf-token"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert {i["key"] for i in volumes["hf-token"]["secret"]["items"]} == set(secret["stringData"])
    env = {e["name"]: e["value"] for e in fill["env"]}
    mounts = {m["name"]: m["mountPath"] for m in fill["volumeMounts"]}
    assert env["HF_HOME"] == f"{config.kubernetes.model_cache.mount_path}/huggingface"  # what configure() sets
    assert env["HF_TOKEN_PATH"].startswith(mounts["hf-token"] + "/")
    # DreamSim: one location, the claim, in the presets, the Job and docs/models.md
    cache_dir = config.cluster.embedder_options["cache_dir"]
    assert cache_dir.startswith(mounts["model-cache"] + "/") and f"{cache_dir}:ensemble" in fill["args"]
    assert cache_dir in (ROOT / "docs" / "models.md").read_text()
    (own,) = pod["initContainers"]
    assert own["securityContext"]["capabilities"]["add"] == ["CHOWN", "FOWNER"] and "-R" not in own["args"][0]


def test_cache_fill_downloads_what_from_pretrained_reads():
    sd35 = ["model_index.json", "sd3.5_medium.safetensors", "text_encoders/t5xxl_fp16.safetensors", "README.md",
            "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
            "transformer/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.safetensors",
            "text_encoder/pytorch_model.bin", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
            "tokenizer/vocab.json", "scheduler/scheduler_config.json"]
    index = {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
             "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "vae": ["diffusers", "AutoencoderKL"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "FlowMatch"]}
    assert model_cache.select_files(sd35, index) == [
        "README.md", "model_index.json", "scheduler/scheduler_config.json", "text_encoder/model.safetensors",
        "tokenizer/vocab.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    clip = ["config.json", "pytorch_model.bin", "open_clip_pytorch_model.bin", "preprocessor_config.json",
            "tokenizer.json", "flax_model.msgpack"]
    assert model_cache.select_files(clip, None) == ["config.json", "open_clip_pytorch_model.bin",
                                                     "preprocessor_config.json", "pytorch_model.bin", "tokenizer.json"]
    assert model_cache.select_files(clip, None, processor_only=True) == [
        "config.json", "preprocessor_config.json", "tokenizer.json"]
    gardo = model_cache.plan_for(load_config(ROOT / "configs" / "sd35m-gardo.yaml"))
    assert "THUDM/ImageReward/ImageReward.pt" in gardo.files and "openai/clip-vit-large-patch14" in gardo.models
    assert gardo.local == ["/models/aesthetic/sac+logos+ava1-l14-linearMSE.pth"]  # placed by hand, reported


def test_make_images_fails_when_it_built_nothing_and_prints_the_config_section(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(images_script, "docker_available", lambda: "no docker command on PATH")
    monkeypatch.setattr(sys, "argv", ["images.py", "--output", str(tmp_path / "images.json")])
    assert images_script.main() == 1
    assert "nothing built" in capsys.readouterr().err and not (tmp_path / "images.json").exists()

    def fail(*args):
        raise subprocess.CalledProcessError(1, ["docker", "build"])

    monkeypatch.setattr(images_script, "docker_available", lambda: None)
    monkeypatch.setattr(images_script, "docker", fail)
    monkeypatch.setattr(images_script, "git_revision", lambda: "abc")
    assert images_script.main() == 1 and not (tmp_path / "images.json").exists()
    section = yaml.safe_load(images_script.config_snippet(REFS))
    assert load_config(None, {"kubernetes.images": section["kubernetes"]["images"]}).kubernetes.images == REFS


def test_images_pin_torch_to_the_cuda_it_bundles_and_bookkeeping_runs_on_a_cpu_image():
    base = (ROOT / "images" / "base" / "Dockerfile").read_text()
    assert not re.search(r"^FROM nvidia/cuda", base, re.M)  # the wheel brings its CUDA; no second one
    declared = re.search(r"^ARG TORCH_CUDA=(\S+)$", base, re.M).group(1)
    assert declared == torch.version.cuda  # the pinned torch from PyPI, as in this venv
    assert "torch.version.cuda == '${TORCH_CUDA}'" in base  # the build fails on another CUDA build
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in base  # nvidia-smi for gpu_check's message
    control = (ROOT / "images" / "control" / "Dockerfile").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in control and "torch.version.cuda is None" in control
    assert "pip install --no-cache-dir --no-deps -r kfp-runtime.txt" in control
    assert '--constraint requirements.txt ".[mlflow]"' in control  # finish_segment's MLflow client, pins kept
    assert re.findall(r"^USER (\S+)$", control, re.M)[-1] == "10001:10001"
    from dgrpo_components import stages

    for name in ("open_segment", "plan_segment", "begin_round", "finish_segment"):
        assert getattr(stages, name).component_spec.implementation.container.image == image_for("control")


def test_configure_keeps_a_teams_own_image(tmp_path):
    from kfp import dsl

    @dsl.component(base_image="registry.team.example/reward:7")
    def team_reward(x: int) -> int:
        return x

    k8s = load_config(None, {"kubernetes.images": REFS}).kubernetes

    @dsl.pipeline(name="p")
    def pipeline():
        configure(team_reward(x=1), k8s.resolve("reward"), k8s)

    compiler.Compiler().compile(pipeline, str(tmp_path / "p.yaml"))
    ir = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    assert ir["deploymentSpec"]["executors"]["exec-team-reward"]["container"]["image"] == \
        "registry.team.example/reward:7"
