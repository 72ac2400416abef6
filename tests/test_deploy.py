"""What a cluster deployment consumes: the stage image references, the images/ tree and the manifests/."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from dgrpo_components.images import image_for

from dgrpo.config.deployment import IMAGE_KEYS
from dgrpo.contracts.stages import STAGE_NAMES
from dgrpo.store.s3 import S3Settings

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import render_manifests  # noqa: E402

PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][A-Za-z0-9.+!-]*$")


def test_image_references_file_selects_the_stage_images(tmp_path, monkeypatch):
    refs = {s: f"registry.example/team/dgrpo-{s}:abc123@sha256:{'0' * 63}{i}" for i, s in enumerate(STAGE_NAMES)}
    path = tmp_path / "images.json"
    path.write_text(json.dumps(refs))
    monkeypatch.setenv("DGRPO_IMAGES_FILE", str(path))
    assert [image_for(s) for s in STAGE_NAMES] == [refs[s] for s in STAGE_NAMES]
    path.write_text(json.dumps({k: v for k, v in refs.items() if k != "cluster"}))
    with pytest.raises(ValueError, match=r"images.json: no image reference for stage 'cluster'"):
        image_for("cluster")
    monkeypatch.setenv("DGRPO_IMAGES_FILE", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"missing.json: cannot read the image references"):
        image_for("rollout")
    monkeypatch.delenv("DGRPO_IMAGES_FILE")
    monkeypatch.setenv("DGRPO_IMAGE_REGISTRY", "r.example/x")
    monkeypatch.setenv("DGRPO_IMAGE_TAG", "t1")
    assert image_for("update") == "r.example/x/dgrpo-update:t1"


def test_every_stage_of_the_table_has_a_component_and_an_image():
    from dgrpo_components.stages import STAGE_COMPONENTS

    assert list(STAGE_COMPONENTS) == list(STAGE_NAMES)
    for stage in STAGE_NAMES:
        assert (ROOT / "images" / "stage" / f"requirements-{stage}.txt").is_file(), stage
    with pytest.raises(ValueError, match="unknown stage 'score'"):
        image_for("score")


def test_compiled_pipeline_uses_the_image_references_file(tmp_path):
    refs = {s: f"registry.example/dgrpo-{s}:rev42" for s in IMAGE_KEYS}
    (tmp_path / "images.json").write_text(json.dumps(refs))
    env = {**os.environ, "DGRPO_IMAGES_FILE": str(tmp_path / "images.json")}
    out = tmp_path / "pipeline.yaml"
    dgrpo = Path(sys.executable).parent / "dgrpo"  # a fresh process: components read their images at import
    subprocess.run([str(dgrpo), "compile", "--set", "rounds=1", "--output", str(out)], env=env, check=True,
                   capture_output=True, cwd=tmp_path)
    spec = next(yaml.safe_load_all(out.read_text()))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == set(refs.values())


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_image_is_pinned_non_root_and_built_on_the_base(stage):
    dockerfile = (ROOT / "images" / "stage" / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    assert "ENV DGRPO_IMAGE=${DGRPO_IMAGE}" in dockerfile  # lineage records the image reference
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    # the stage's own requirements, under the base pins (torch cannot be replaced)
    assert '-c /opt/dgrpo/constraints.txt -r "/opt/dgrpo/requirements-${STAGE}.txt"' in dockerfile
    text = (ROOT / "images" / "stage" / f"requirements-{stage}.txt").read_text()
    requirements = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert requirements and all(PIN.match(r) for r in requirements), requirements
    if stage in ("rollout", "update"):
        assert {"diffusers", "peft", "accelerate"} <= {r.split("==")[0] for r in requirements}
    if stage == "cluster":
        assert {"dreamsim", "scikit-learn"} <= {r.split("==")[0] for r in requirements}


def test_base_image_pins_and_installs_kfp_without_its_client():
    base = ROOT / "images" / "base"
    for name in ("requirements.txt", "kfp-runtime.txt"):
        lines = [x for x in (base / name).read_text().splitlines() if x.strip() and not x.startswith("#")]
        assert all(PIN.match(x) for x in lines), (name, lines)
    assert "torch==2.14.1" in (base / "requirements.txt").read_text()
    dockerfile = (base / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --no-deps -r kfp-runtime.txt" in dockerfile
    assert re.findall(r"^USER (\S+)$", dockerfile, re.M)[-1].split(":")[0] not in ("0", "root")


def _rendered():
    return list(yaml.safe_load_all(render_manifests.render_with_python(ROOT / "manifests")))


def test_manifests_render_and_validate_against_the_kubernetes_schemas():
    docs = _rendered()
    secret = yaml.safe_load((ROOT / "manifests" / "s3-credentials.secret.yaml").read_text())
    for doc in [*docs, secret]:
        kubernetes_validate.validate(doc, "1.32.0", strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert kinds == {("ConfigMap", "dgrpo-s3"),
                     ("PersistentVolumeClaim", "dgrpo-model-cache"), ("ServiceAccount", "dgrpo-pipeline-runner"),
                     ("Role", "dgrpo-pipeline-runner"), ("RoleBinding", "dgrpo-pipeline-runner"),
                     ("Role", "dgrpo-continuation"), ("RoleBinding", "dgrpo-continuation")}
    assert all(d["metadata"]["namespace"] == "kubeflow" for d in docs)
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dgrpo" for d in docs)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**docs[0], "spec": {"bogus": 1}}, "1.32.0", strict=True)


def test_the_pod_default_for_the_kfp_api_token_is_valid():
    """kubernetes-validate has no schema for the PodDefault CRD: its env, volumes and mounts are checked strictly
    inside a Pod, the rest by hand (the CRD requires spec.selector); a typo in the projected token is caught."""
    doc = yaml.safe_load((ROOT / "manifests" / "kubeflow" / "access-ml-pipeline.poddefault.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("kubeflow.org/v1alpha1", "PodDefault")
    spec = doc["spec"]
    assert spec["selector"] == {"matchLabels": {"access-ml-pipeline": "true"}}  # the finish task's label

    def pod(volumes):
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {
            "volumes": volumes, "containers": [{"name": "c", "image": "i", "env": spec["env"],
                                                "volumeMounts": spec["volumeMounts"]}]}}

    kubernetes_validate.validate(pod(spec["volumes"]), "1.32.0", strict=True)
    token = spec["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    assert {e["name"]: e["value"] for e in spec["env"]}["KF_PIPELINES_SA_TOKEN_PATH"] == \
        f"{spec['volumeMounts'][0]['mountPath']}/{token['path']}"
    typo = [{**spec["volumes"][0], "projected": {"sources": [{"serviceAccountToken": {**token, "audiences": []}}]}}]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod(typo), "1.32.0", strict=True)


def test_manifests_agree_with_each_other_and_with_the_store(monkeypatch):
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _rendered()}
    secret = yaml.safe_load((ROOT / "manifests" / "s3-credentials.secret.yaml").read_text())
    role = docs[("Role", "dgrpo-pipeline-runner")]
    readable = {n for rule in role["rules"] for n in rule.get("resourceNames", [])}
    assert {"kfp-launcher", "dgrpo-s3", secret["metadata"]["name"], "dgrpo-model-cache"} <= readable

    # the stage settings ConfigMap holds exactly variables the S3 store reads, with valid values
    env = docs[("ConfigMap", "dgrpo-s3")]["data"]
    for key in [k for k in os.environ if k.startswith("DGRPO_S3_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = S3Settings.from_env()
    assert settings.endpoint_url == env["DGRPO_S3_ENDPOINT_URL"] and settings.addressing_style == "path"
    documented = set(re.findall(r"DGRPO_S3_[A-Z_]+", (ROOT / "src/dgrpo/store/s3.py").read_text()))
    assert set(env) <= documented


@pytest.mark.skipif(not (shutil.which("kustomize") or shutil.which("kubectl")), reason="no kustomize here")
def test_builtin_renderer_matches_kustomize():
    text, tool = render_manifests.render(ROOT / "manifests")
    assert "built-in" not in tool

    def key(d):
        return d["kind"], d["metadata"]["name"]

    assert sorted(yaml.safe_load_all(text), key=key) == sorted(_rendered(), key=key)


def test_the_exit_task_is_retried_and_stage_pods_have_deadlines(tmp_path):
    """The exit task alone releases the lease and submits the next segment: it is retried in every preset; a
    stage's `timeout_s` becomes its pod's activeDeadlineSeconds, so a hung pod fails its task and the exit hook runs."""
    from dgrpo_pipelines.kubernetes import LIGHT_TASK_RETRIES, light
    from dgrpo_pipelines.training import compile_pipeline

    from dgrpo.config import load_config
    from dgrpo.toyworld.presets import PRESETS_DIR

    presets = sorted([*(ROOT / "configs").glob("*.yaml"), *PRESETS_DIR.glob("*.yaml")])
    assert presets
    cfg = load_config(None, {"rounds": 2, "kubernetes.stages.update.timeout_s": 7200})
    ir, platform = yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "p.yaml").read_text())
    (finish,) = [t for t in ir["root"]["dag"]["tasks"].values()
                 if t["componentRef"]["name"] == "comp-finish-segment"]
    assert finish["retryPolicy"]["maxRetryCount"] == LIGHT_TASK_RETRIES >= 3
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-update"]["activeDeadlineSeconds"] == "7200"
    assert "activeDeadlineSeconds" not in executors.get("exec-rollout", {})
    for preset in presets:  # no preset can take the exit task's retries away
        assert light(load_config(preset).kubernetes).retries >= LIGHT_TASK_RETRIES, preset.name
