"""The pipeline as users run it: compiled to KFP IR, and run end to end through kfp.local."""

import json

import pytest
import yaml
from conftest import small_config
from dgrpo_pipelines.cli import app
from dgrpo_pipelines.local import run_pipeline
from dgrpo_pipelines.training import compile_pipeline
from typer.testing import CliRunner

from dgrpo import artifacts, contracts, lineage
from dgrpo.runtime.plan import training_plan
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.policy_io import ADAPTER_KIND
from dgrpo.stages.shared.shards import read_merged
from dgrpo.store import ArtifactRef, LocalStore

STAGE_ORDER = ["rollout", "reward", "cluster", "update"]


def _round_of(task: dict) -> int:
    return int(task["inputs"]["parameters"]["round_index"]["runtimeValue"]["constant"])


def test_compiled_pipeline_has_every_stage_per_round_in_order(tmp_path):
    cfg = small_config(rounds=3, **{"eval.every": 1})
    spec = yaml.safe_load(compile_pipeline(cfg, tmp_path / "p.yaml").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    by_stage_round = {}
    for name, task in tasks.items():
        if name.startswith("for-loop"):  # the shard fan-out: rollout -> reward per shard
            body = {n.split("-")[0]: (n, t) for n, t in spec["components"][task["componentRef"]["name"]]["dag"][
                "tasks"].items()}
            assert body["reward"][1]["dependentTasks"] == [body["rollout"][0]]
            by_stage_round[("fanout", _round_of(body["rollout"][1]))] = (name, set(task.get("dependentTasks", [])))
        elif name != "resume":
            stage = task["componentRef"]["name"].removeprefix("comp-").split("-")[0]
            by_stage_round[(stage, _round_of(task))] = (name, set(task.get("dependentTasks", [])))
    for r in range(3):
        assert by_stage_round[("fanout", r)][0] in by_stage_round[("cluster", r)][1]
        assert by_stage_round[("cluster", r)][0] in by_stage_round[("update", r)][1]
        if r > 0:
            assert by_stage_round[("update", r - 1)][0] in by_stage_round[("fanout", r)][1]
            assert by_stage_round[("update", r - 1)][0] in by_stage_round[("update", r)][1]
        assert by_stage_round[("update", r)][0] in by_stage_round[("evaluate", r + 1)][1]
    assert by_stage_round[("evaluate", 0)][1] == {"resume"}
    assert len(by_stage_round) == len([t for t in training_plan(cfg) if t.stage != "reward"])
    executors = spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in executors.values()}
    assert {i.split("/")[-1].split(":")[0] for i in images} == {f"dgrpo-{s}" for s in STAGE_ORDER + ["evaluate"]}


def _events(store, run_id):
    return {(e["stage"], e["round"]): e for e in (store.get_json(k) for k in store.list(f"runs/{run_id}/events"))}


@pytest.mark.e2e
def test_two_rounds_through_kfp_local(tmp_path):
    cfg = small_config(**{"pipeline.shards": 2})  # rollout and reward fan out over 2 shards per round
    store = LocalStore(tmp_path / "store")
    ctx = StageContext(cfg, store, "e2e")
    seen = []
    run_pipeline(ctx, str(store.root), tmp_path / "work", "kfp", lambda done, total, e: seen.append((done, total)))

    plan = list(training_plan(cfg))
    total = sum(t.shards for t in plan)
    assert seen[-1] == (total, total)
    events = _events(store, "e2e")
    assert set(events) == {(t.stage, t.round) for t in plan}

    # every table between stages is valid against its contract on read
    kinds = {"rollouts": contracts.ROLLOUTS, "rewards": contracts.REWARDS, "scores": contracts.SCORES,
             "update_metrics": contracts.UPDATE_METRICS, "eval_samples": contracts.EVAL_SAMPLES}
    all_events = [store.get_json(k) for k in store.list("runs/e2e/events")]
    assert sum(e["stage"] == "rollout" for e in all_events) == 2 * cfg.rounds  # one event per shard
    n_tables = 0
    for event in all_events:
        for out in event["outputs"].values():
            ref = ArtifactRef(**out)
            if ref.kind in kinds:
                table = artifacts.read_table(store, ref, kinds[ref.kind])
                assert table.num_rows > 0
                n_tables += 1
    assert n_tables == (2 * 2 + 2) * cfg.rounds + len(cfg.eval_rounds())

    shards = [ArtifactRef(**e["outputs"]["rollouts"]) for e in all_events if (e["stage"], e["round"]) == ("rollout", 1)]
    rollouts = read_merged(store, shards, contracts.ROLLOUTS)
    assert [artifacts.read_table(store, r, contracts.ROLLOUTS).num_rows for r in shards] == [8, 8]
    assert rollouts.num_rows == cfg.sampling.prompts_per_round * cfg.sampling.group_size
    assert len(rollouts.column("log_probs")[0].as_py()) == cfg.sampling.num_steps

    # the adapter trained: LoRA B left zero, and the policy's evaluation reward moved
    final = ArtifactRef(**events[("update", cfg.rounds - 1)]["outputs"]["adapter"])
    weights = artifacts.read_tensors(store, final, ADAPTER_KIND)
    assert all(k.startswith("transformer.") for k in weights)
    assert max(float(v.abs().max()) for k, v in weights.items() if "lora_B" in k) > 0
    first, last = events[("evaluate", 0)]["metrics"], events[("evaluate", cfg.rounds)]["metrics"]
    assert last["reward"] != first["reward"]
    assert events[("update", 0)]["metrics"]["approx_kl"] < 1e-6  # on-policy: the ratio starts at 1

    # lineage: adapter <- update <- rollouts <- previous adapter ... <- base checkpoint and config
    chain = lineage.chain(store, final.sha256)
    kinds_in_chain = {r.kind for _, _, r in chain}
    expected_kinds = {"lora_adapter", "rollouts", "scores", "rewards", "optimizer_state", "base_model", "config"}
    assert expected_kinds <= kinds_in_chain
    assert {r.round for _, _, r in chain if r.kind == "rollouts"} == set(range(cfg.rounds))
    config_rec = next(r for _, _, r in chain if r.kind == "config")
    stored_config = store.get(ArtifactRef(kind="config", uri=config_rec.uri, sha256=config_rec.sha256, size=0))
    assert json.loads(stored_config) == cfg.to_dict()

    # `dgrpo lineage` reads the KFP output artifact file of the last update
    kfp_files = [p for p in (tmp_path / "work" / "pipeline_root").rglob("new_adapter") if p.is_file()]
    target = next(p for p in kfp_files if ArtifactRef.from_json(p.read_text()).sha256 == final.sha256)
    out = CliRunner().invoke(app, ["lineage", str(target)])
    assert out.exit_code == 0, out.output
    assert "base_model" in out.output and "config" in out.output and final.sha256[:12] in out.output

    # the in-process engine runs the same stages unsharded: identical artifacts, bit for bit
    inproc = StageContext(small_config(), LocalStore(tmp_path / "store2"), "e2e")
    run_pipeline(inproc, str(tmp_path / "store2"), tmp_path / "work2", "inprocess")
    assert _events(inproc.store, "e2e")[("update", cfg.rounds - 1)]["outputs"]["adapter"]["sha256"] == final.sha256
