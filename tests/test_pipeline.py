"""The pipeline as users run it: one segment compiled to KFP IR, and a chain of segments through kfp.local."""

import json
from pathlib import Path

import pytest
import yaml
from dgrpo_pipelines.cli import app
from dgrpo_pipelines.local import run_pipeline
from dgrpo_pipelines.training import PIPELINE_PARAMETERS, compile_pipeline
from support import small_config
from typer.testing import CliRunner

from dgrpo import artifacts, contracts
from dgrpo.runs import lineage
from dgrpo.runs.evaluations import read_evaluation
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.fine_tune import status
from dgrpo.runtime.plan import training_plan
from dgrpo.runtime.report import evaluation_markdown
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.policy_io import ADAPTER_KIND
from dgrpo.stages.shared.run_config import load_config
from dgrpo.store import ArtifactRef, LocalStore


def _dag(spec: dict, task: dict) -> dict:
    return spec["components"][task["componentRef"]["name"]]["dag"]["tasks"]


def _kind(name: str) -> str:
    return name.rsplit("-", 1)[0] if name.rsplit("-", 1)[-1].isdigit() else name


def test_compiled_segment_runs_one_round_per_iteration_in_order(tmp_path):
    path = compile_pipeline(small_config(**{"pipeline.shards": 2}), tmp_path / "p.yaml")
    spec, platform = yaml.safe_load_all(path.read_text())
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == set(PIPELINE_PARAMETERS)  # ids and hashes only
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finish-segment"}
    assert root["finish-segment"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    finish = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-finish-segment"]
    assert finish["podMetadata"]["labels"] == {"access-ml-pipeline": "true"}  # the KFP API token (PodDefault)
    opener = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-open-segment"]
    assert opener["podMetadata"]["labels"] == {"access-ml-pipeline": "true"}  # looks a lease holder's run up
    segment = _dag(spec, root["exit-handler-1"])
    kinds = {_kind(n): n for n in segment}
    assert set(kinds) == {"open-segment", "plan-segment", "condition", "for-loop"}
    loop = segment[kinds["for-loop"]]
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("plan-segment-Output")
    assert loop["iteratorPolicy"]["parallelismLimit"] == 1  # rounds one at a time, in list order
    assert segment[kinds["condition"]]["taskInfo"]["name"] == "base-model"
    assert "open-segment-Output" in segment[kinds["condition"]]["triggerPolicy"]["condition"]
    body = _dag(spec, loop)
    by_kind = {_kind(n): t for n, t in body.items()}
    assert set(by_kind) == {"begin-round", "for-loop", "cluster", "update", "condition"}
    shards = by_kind["for-loop"]
    assert shards["parameterIterator"]["items"]["raw"] == "[0, 1]"
    inner = {_kind(n): t for n, t in _dag(spec, shards).items()}
    assert inner["reward"]["dependentTasks"] == ["rollout"]
    for stage in ("rollout", "reward"):  # the round reaches the shard loop as an artifact, never a parameter
        assert inner[stage]["inputs"]["artifacts"]["state"]["componentInputArtifact"].endswith("begin-round-state")
        assert "round_index" not in inner[stage]["inputs"].get("parameters", {})
    assert {_kind(t) for t in by_kind["cluster"]["dependentTasks"]} == {"begin-round", "for-loop"}
    assert "cluster" in by_kind["update"]["dependentTasks"]
    cond = by_kind["condition"]["triggerPolicy"]["condition"]
    assert "begin-round-Output" in cond  # the single bool output of begin_round
    evaluate = next(iter(_dag(spec, by_kind["condition"]).values()))
    assert evaluate["inputs"]["artifacts"]["adapter"]["componentInputArtifact"].endswith("update-new_adapter")
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert {i.split("/")[-1].split(":")[0] for i in images} == {f"dgrpo-{s}" for s in (
        "rollout", "reward", "cluster", "update", "evaluate", "control")}  # control: the bookkeeping tasks


def _check_evaluation_outputs(pipeline_root: Path, store: LocalStore, events: dict) -> None:
    """What the KFP UI shows of an evaluation: its metrics as a Metrics artifact (those of its event) and a Markdown
    summary of its record."""
    summaries = [p for p in pipeline_root.rglob("summary") if p.is_file() and p.parent.name.startswith("evaluate")]
    assert len(summaries) == len([k for k in events if k[0] == "evaluate"])
    for path in summaries:
        text = path.read_text()
        title = text.split("\n", 1)[0]
        round_index = 0 if title == "## Evaluation of the base model" else int(
            title.removeprefix("## Evaluation after round "))
        assert text == evaluation_markdown(read_evaluation(store, "chain", round_index))
        output = json.loads((path.parent / "executor_output.json").read_text())
        published = output["artifacts"]["metrics"]["artifacts"][0]["metadata"]
        assert published == events[("evaluate", round_index)]["metrics"]
        assert {"vendi", "heldout_vendi", "train_vendi", "heldout_embedding_diversity"} <= set(published)


def _events(store, run_id):
    return {(e["stage"], e["round"]): e for e in (store.get_json(k) for k in store.list(f"runs/{run_id}/events"))}


@pytest.mark.e2e
def test_three_rounds_in_two_kfp_segments_equal_the_in_process_engine(tmp_path):
    """The chain through kfp.local: 3 rounds at rounds_per_run 2 are 2 KFP runs (a full segment, then a partial
    one started by the first one's decision); the final adapter is the in-process engine's, bit for bit, trained in
    one segment; and the fused pipeline (2 segments of one training task each) writes the same objects."""
    knobs = {"eval.every": 10, "eval.num_steps": 2, "eval.samples_per_prompt": 2}
    cfg = small_config(rounds=3, **knobs, **{"pipeline.rounds_per_run": 2})
    store = LocalStore(tmp_path / "store")
    ctx = StageContext(cfg, store, "chain")
    seen = []
    end = run_pipeline(ctx, str(store.root), tmp_path / "work", "kfp", lambda d, t, e: seen.append((d, t, e)))
    assert end.decision.action == "done" and end.segment == 2

    segments = [store.get_json(k) for k in store.list("runs/chain/segments")]
    assert [s["rounds"] for s in segments] == [[0, 1], [2]]
    assert [s["decision"]["action"] for s in segments] == ["continue", "done"]
    assert len({s["kfp_run_id"] for s in segments}) == 2 and not store.exists("runs/chain/lease.json")
    st = status(store, "chain")
    assert (st["state"], st["rounds_done"], st["rounds_total"], st["segments"]) == ("done", 3, 3, 2)
    total = sum(t.shards for t in training_plan(cfg))
    assert seen[-1][:2] == (total, total)
    assert seen[-1][2]["fine_tune"] == {"rounds_done": 3, "rounds_total": 3}
    events = _events(store, "chain")
    assert set(events) == {(t.stage, t.round) for t in training_plan(cfg)}

    kinds = {"rollouts": contracts.ROLLOUTS, "rewards": contracts.REWARDS, "scores": contracts.SCORES,
             "update_metrics": contracts.UPDATE_METRICS, "eval_samples": contracts.EVAL_SAMPLES}
    n_tables = 0
    for event in events.values():  # every table between stages is valid against its contract on read
        for out in event["outputs"].values():
            ref = ArtifactRef(**out)
            if ref.kind in kinds:
                assert artifacts.read_table(store, ref, kinds[ref.kind]).num_rows > 0
                n_tables += 1
    assert n_tables == 4 * cfg.rounds + len(cfg.eval_rounds())

    final = ArtifactRef(**events[("update", 2)]["outputs"]["adapter"])
    weights = artifacts.read_tensors(store, final, ADAPTER_KIND)
    assert max(float(v.abs().max()) for k, v in weights.items() if "lora_B" in k) > 0
    # lineage across segments: adapter r2 <- update r2 <- adapter r1 (segment 1) ... <- base model and config
    chain = lineage.chain(store, final.sha256)
    assert {r.round for _, _, r in chain if r.kind == "rollouts"} == set(range(3))
    config_rec = next(r for _, _, r in chain if r.kind == "config")
    assert load_config(store, config_rec.sha256).to_dict() == cfg.to_dict()
    assert {r.config_sha256 for _, _, r in chain if r.kind == "lora_adapter"} == {cfg.recipe_sha256()}
    kfp_files = [p for p in (tmp_path / "work" / "pipeline_root").rglob("new_adapter") if p.is_file()]
    target = next(p for p in kfp_files if ArtifactRef.from_json(p.read_text()).sha256 == final.sha256)
    out = CliRunner().invoke(app, ["lineage", str(target)])
    assert out.exit_code == 0, out.output
    assert "base_model" in out.output and "config" in out.output and final.sha256[:12] in out.output
    reports = list((tmp_path / "work" / "pipeline_root").rglob("report"))
    last_report = max(reports, key=lambda p: p.stat().st_mtime).read_text()
    assert len(reports) == 2 and "rounds done: 3/3" in last_report and "<svg" in last_report  # status, then plots
    _check_evaluation_outputs(tmp_path / "work" / "pipeline_root", store, events)

    one = small_config(rounds=3, **knobs, **{"pipeline.rounds_per_run": 3})
    inproc_store = LocalStore(tmp_path / "store2")
    inproc = run_inprocess(StageContext(one, inproc_store, "chain"))
    assert inproc["adapter"].sha256 == final.sha256
    assert inproc["optimizer_state"].sha256 == store.get_json("runs/chain/commits/r000002.json")[
        "optimizer_state"]["sha256"]

    # fused through kfp.local, 2 segments again: every object (tables, adapters, optimizer states, grids) the same
    fused_cfg = small_config(rounds=3, **knobs, **{"pipeline.rounds_per_run": 2, "pipeline.execution": "fused"})
    fused_store = LocalStore(tmp_path / "fused")
    end = run_pipeline(StageContext(fused_cfg, fused_store, "chain"), str(fused_store.root), tmp_path / "fused-work")
    assert end.decision.action == "done" and end.segment == 2
    assert _objects(fused_store) == _objects(store) == _objects(inproc_store)
    assert len(_objects(store)) >= 4 * cfg.rounds + 2 * len(cfg.eval_rounds())
    assert set(_events(fused_store, "chain")) == set(events)
    assert [s["rounds"] for s in map(fused_store.get_json, fused_store.list("runs/chain/segments"))] == [[0, 1], [2]]


def _objects(store: LocalStore) -> set[str]:
    """The sha256s of a store's content-addressed objects but the run's config and deployment settings (which
    name the execution and rounds_per_run)."""
    shas = {key.rsplit("/", 1)[-1].split(".")[0] for key in store.list("objects")}
    records = {sha: lineage.read_record(store, sha) for sha in shas if store.exists(f"lineage/{sha}.json")}
    settings = {sha for sha, rec in records.items() if rec.kind == "config"}
    settings |= {rec.deployment_sha256 for rec in records.values()}
    return shas - settings
