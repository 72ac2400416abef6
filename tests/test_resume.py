"""Long runs: committed rounds, resuming a fine-tune across pipeline runs, and sharded rounds equal unsharded ones."""

import pytest
from support import small_config

from dgrpo.runs.commits import ResumeError, last_commit, trained_state
from dgrpo.runtime.engine import run_inprocess
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore


def _cfg(**overrides):
    return small_config(**{"eval.every": 10, "eval.num_steps": 2} | overrides)


def test_resumed_run_reaches_the_adapter_of_an_uninterrupted_run(tmp_path):
    store = LocalStore(tmp_path / "store")
    whole = run_inprocess(StageContext(_cfg(rounds=2), store, "whole"))

    first = StageContext(_cfg(rounds=1), store, "ft")
    run_inprocess(first)
    commit = last_commit(store, "ft")
    assert commit.round == 0 and commit.recipe_sha256 == _cfg().recipe_sha256()
    point = trained_state(store, "ft")
    assert point.next_round == 1 and point.adapter.sha256 == commit.adapter.sha256

    resumed = run_inprocess(StageContext(_cfg(rounds=2), store, "ft"), resume_from="ft")  # rounds: the total
    assert resumed["adapter"].sha256 == whole["adapter"].sha256
    assert resumed["optimizer_state"].sha256 == whole["optimizer_state"].sha256
    assert [k.rsplit("/", 1)[1] for k in store.list("runs/ft/commits")] == ["r000000.json", "r000001.json"]
    events = {k.rsplit("/", 1)[1] for k in store.list("runs/ft/events")}
    assert {"r0000-update.json", "r0001-update.json", "r0001-evaluate.json", "r0002-evaluate.json"} <= events
    again = run_inprocess(StageContext(_cfg(rounds=2), store, "ft"), resume_from="ft")  # complete: nothing to do
    assert again["adapter"].sha256 == whole["adapter"].sha256 and len(store.list("runs/ft/segments")) == 2


def test_resume_refuses_what_would_corrupt_a_fine_tune(tmp_path):
    store = LocalStore(tmp_path / "store")
    ctx = StageContext(_cfg(rounds=1), store, "ft")
    run_inprocess(ctx)
    with pytest.raises(ResumeError, match=r"run ft already has committed rounds .*: resume it \(--resume ft\)"):
        run_inprocess(ctx)  # a fresh fine-tune under a run id that exists
    with pytest.raises(ResumeError, match="no fine-tune of that id"):
        run_inprocess(StageContext(_cfg(rounds=1), store, "branch"), "other")
    with pytest.raises(ResumeError, match="differs from the fine-tune's in lora.rank"):
        run_inprocess(StageContext(_cfg(rounds=2, **{"lora.rank": 4}), store, "ft"), "ft")
    assert trained_state(store, "ft").next_round == 1  # nothing trained by the refused runs
    branch = run_inprocess(StageContext(_cfg(rounds=2), store, "branch"), "ft")  # a new fine-tune from ft's round 0
    assert trained_state(store, "branch").next_round == 2 and not store.exists("runs/branch/commits/r000000.json")
    assert store.get_json("runs/branch/commits/r000001.json")["parent"] == last_commit(store, "ft").adapter.sha256
    assert branch["adapter"].sha256 != last_commit(store, "ft").adapter.sha256


def test_sharded_round_equals_unsharded_round(tmp_path):
    one = run_inprocess(StageContext(_cfg(rounds=1), LocalStore(tmp_path / "a"), "x"))
    two = run_inprocess(StageContext(_cfg(rounds=1, **{"pipeline.shards": 2}), LocalStore(tmp_path / "b"), "x"))
    assert two["adapter"].sha256 == one["adapter"].sha256
    events = LocalStore(tmp_path / "b").list("runs/x/events")
    assert sum("rollout-s" in k for k in events) == 2 and sum("reward-s" in k for k in events) == 2


@pytest.mark.e2e
def test_kfp_run_resumes_a_fine_tune_with_a_swapped_in_reward_stage(tmp_path):
    """Night 1 in-process; night 2 through kfp.local: resumed, sharded, with a team's reward component."""
    import io
    from pathlib import Path

    import numpy as np
    from dgrpo_pipelines.local import run_pipeline
    from PIL import Image

    from dgrpo import artifacts, contracts
    from dgrpo.runs import lineage
    from dgrpo.store import ArtifactRef

    store = LocalStore(tmp_path / "store")
    run_inprocess(StageContext(_cfg(rounds=1), store, "ft"))
    component = Path(__file__).parents[1] / "examples" / "custom_reward" / "component.yaml"
    cfg = _cfg(rounds=2, **{"pipeline.shards": 2, "pipeline.stages.reward": {"component": str(component)}})
    run_pipeline(StageContext(cfg, store, "ft"), str(store.root), tmp_path / "work", "kfp", resume_from="ft")

    night1 = store.get_json("runs/ft/commits/r000000.json")
    night2 = store.get_json("runs/ft/commits/r000001.json")
    assert lineage.read_record(store, night2["adapter"]["sha256"]).inputs["adapter"] == night1["adapter"]["sha256"]
    for shard in (0, 1):
        event = store.get_json(f"runs/ft/events/r0001-reward-s{shard:03d}.json")
        ref = ArtifactRef(**event["outputs"]["rewards"])
        rec = lineage.read_record(store, ref.sha256)
        assert (rec.stage, rec.image, rec.round, rec.shard) == ("reward", "python:3.11-slim", 1, shard)
        rewards = artifacts.read_table(store, ref, contracts.REWARDS)
        rollouts = artifacts.read_table(store, ArtifactRef(kind="rollouts", uri=_uri(store, rec.inputs["rollouts"]),
                                                           sha256=rec.inputs["rollouts"], size=0), contracts.ROLLOUTS)
        assert rewards.column("sample_id").to_pylist() == rollouts.column("sample_id").to_pylist()
        brightness = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")).mean() / 255
                      for b in rollouts.column("image_png").to_pylist()]
        np.testing.assert_allclose(rewards.column("reward").to_numpy(), brightness, rtol=1e-12)
        assert event["metrics"]["reward_mean"] == pytest.approx(float(np.mean(brightness)))


def _uri(store, sha: str) -> str:
    return f"{store.uri}/objects/{sha[:2]}/{sha}.parquet"
