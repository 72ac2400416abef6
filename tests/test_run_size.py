"""What a cluster takes (issue 12's numbers, checked by compiling, not by timing): the segment IR of every shipped
preset is small and does not grow with `rounds`; run parameters are ids and hashes, with any prompt file; a run
of the SD3.5 preset executes at most 400 tasks; and the presets use what manifests/ creates."""

import json
import math
from pathlib import Path

import pytest
import yaml
from dgrpo_pipelines.training import compile_pipeline

from dgrpo.config import load_config
from dgrpo.runtime import fine_tune
from dgrpo.runtime.plan import MAX_TASKS_PER_RUN, max_tasks_per_run, segment_tasks
from dgrpo.stages.shared.run_config import load_config as stored_config
from dgrpo.store import LocalStore

ROOT = Path(__file__).parents[1]
PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
REAL = [p for p in PRESETS if not p.startswith("toy")]


def _compile(tmp_path: Path, preset: str, **overrides) -> tuple[int, dict, dict | None]:
    path = compile_pipeline(load_config(ROOT / "configs" / preset, overrides), tmp_path / f"{preset}.ir.yaml")
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


def test_a_segment_of_the_sd35m_preset_executes_at_most_400_tasks(tmp_path):
    config = load_config(ROOT / "configs" / "sd35m-pickscore.yaml")
    _, spec, _ = _compile(tmp_path, "sd35m-pickscore.yaml")
    counts = {start: _executed(spec, config, start) for start in range(config.rounds)}
    assert all(counts[s] == segment_tasks(config, s) for s in counts)  # the graph and the plan agree
    assert max(counts.values()) == max_tasks_per_run(config) <= MAX_TASKS_PER_RUN
    assert counts[0] == 3 + 1 + 20 * (2 * 8 + 3)  # open, plan, finish; base evaluation; 20 rounds of 19 tasks
    assert max(counts.values()) == counts[40] == 3 + 20 * 19 + 1  # rounds 40-59: evaluated after round 60
    with pytest.raises(ValueError, match=r"pipeline.rounds_per_run': a segment of 25 rounds executes up to 479 "
                                         r"tasks.*use at most 20"):
        _compile(tmp_path, "sd35m-pickscore.yaml", **{"pipeline.rounds_per_run": 25})


def _prompt_file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"a photo of object {i} in the style of painter {i % 97}, highly detailed\n"
                            for i in range(n)))
    return path


@pytest.mark.parametrize("preset", PRESETS)
def test_run_parameters_are_ids_and_hashes_even_with_25000_prompts(preset, tmp_path):
    store = LocalStore(tmp_path / "store")
    big = {"sampling.prompts_file": str(_prompt_file(tmp_path, 25_000))} if preset in REAL else {}
    config = load_config(ROOT / "configs" / preset, big)
    record = fine_tune.start(store, config, "f" * 100)  # the longest run id
    params = fine_tune.segment_parameters(store, record) | {"store_uri": "s3://" + "b" * 63 + "/" + "p" * 200}
    assert len(json.dumps(params, separators=(",", ":"))) <= 4000
    assert set(params) == {"store_uri", "run_id", "config_sha256", "recipe_sha256"}
    loaded = stored_config(store, record["config_sha256"])
    assert loaded.to_dict() == config.to_dict()
    if big:
        assert len(loaded.sampling.prompts) == 25_000
        config_object = store.local_path(stored_ref(store, record["config_sha256"]))
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
    config = load_config(ROOT / "configs" / preset)
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
