"""Retention: `dgrpo gc` deletes old rounds' training outputs and nothing a commit, an evaluation, the report, a
resume or another run sharing the objects needs; verify and lineage report what it deleted as pruned."""

import shutil

import pytest
from dgrpo_pipelines.main import main
from reliability_helpers import snapshot, tiny_config
from support import event_output

from dgrpo.runs.commits import last_commit, trained_state
from dgrpo.runtime import retention
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.pruned import pruned_index
from dgrpo.runtime.report import build_report, format_report
from dgrpo.runtime.verify import verify_run
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import ArtifactRef, LocalStore


def _cfg(rounds: int, **overrides):
    return tiny_config(rounds=rounds, **{"eval.every": 2} | overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`ft`: 3 rounds kept by `retention.keep_rounds: 1`; `twin`: 1 round of the same recipe under the default
    policy, so its round 0 objects are ft's round 0 objects (content-addressed, one copy)."""
    root = tmp_path_factory.mktemp("retention") / "store"
    store = LocalStore(root)
    run_inprocess(StageContext(_cfg(3, **{"retention.keep_rounds": 1}), store, "ft"))
    run_inprocess(StageContext(_cfg(1), store, "twin"))
    return root


@pytest.fixture
def store(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "store")
    return LocalStore(tmp_path / "store")


def _gc(store, *args: str) -> int:
    return main(["gc", "ft", "--store", str(store.root), *args])


def test_the_default_policy_and_a_dry_run_delete_nothing(store, capsys):
    assert retention.plan_gc(store, "twin").objects == []  # twin's config keeps everything
    before = snapshot(store.root)
    assert _gc(store, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would delete 4 objects" in out and "keeping rounds 2+ (the last 1)" in out
    assert "4 objects kept because a kept artifact names them" in out  # round 0's, which twin keeps
    assert snapshot(store.root) == before


def test_gc_keeps_what_resume_evaluations_the_report_and_a_sharing_run_need(store, capsys):
    rollouts = {r: event_output(store, f"r000{r}-rollout", "rollouts") for r in range(3)}
    report_before = format_report(build_report(store, "ft"))
    assert _gc(store) == 0
    assert "deleted 4 objects" in capsys.readouterr().out  # round 1's rollouts, scores, metrics, optimizer state
    assert not store.exists(store.key_of(rollouts[1]))
    assert store.exists(store.key_of(rollouts[0]))  # twin keeps its round 0, which is ft's
    assert store.exists(store.key_of(rollouts[2]))  # the last round is kept
    assert {o.kind for o in pruned_index(store).values()} == {"rollouts", "scores", "update_metrics",
                                                              "optimizer_state"}

    assert main(["verify", "ft", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "pruned: 4 objects (optimizer_state, rollouts, scores, update_metrics) of round 2: pruned (by gc at" in out
    assert "4 objects pruned by gc" in out
    assert main(["verify", "twin", "--store", str(store.root)]) == 0
    assert "pruned" not in capsys.readouterr().out  # nothing of twin's is gone

    adapter = last_commit(store, "ft").adapter.sha256
    assert main(["lineage", adapter, "--store", str(store.root), "--verify"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(f"rollouts {rollouts[1].sha256[:12]}" in line and "-- pruned (by gc at" in line for line in lines)
    assert not any("!!" in line for line in lines) and lines[-1].endswith("not shown")  # bounded by --depth 3

    assert format_report(build_report(store, "ft")) == report_before  # evaluations, grids, training curve
    for key in store.list("runs/ft/eval"):
        assert store.check_object(ArtifactRef(**store.get_json(key)["grid"])) is None

    resumed = run_inprocess(StageContext(_cfg(4, **{"retention.keep_rounds": 1}), store, "ft"), resume_from="ft")
    assert trained_state(store, "ft").next_round == 4
    assert resumed["adapter"].sha256 == last_commit(store, "ft").adapter.sha256
    assert verify_run(store, "ft").problems == []


def test_a_gc_killed_between_its_record_and_its_deletes_finishes_on_rerun(store, monkeypatch):
    plan = retention.plan_gc(store, "ft")
    deleted = []

    def dies_after_one(key: str) -> None:
        if deleted:
            raise KeyboardInterrupt("killed mid-gc")
        LocalStore.delete(store, key)
        deleted.append(key)

    monkeypatch.setattr(store, "delete", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        retention.collect(store, plan)
    monkeypatch.undo()
    assert len(deleted) == 1 and len(pruned_index(store)) == len(plan.objects)
    assert verify_run(store, "ft").problems == []  # each object is there, or recorded as pruned
    again = retention.plan_gc(store, "ft")
    assert len(again.objects) == len(plan.objects) - 1 and again.absent == 1
    retention.collect(store, again)
    assert not any(store.exists(o["key"]) for o in plan.objects)
    result = verify_run(store, "ft")
    assert result.problems == [] and len(result.pruned) == len(plan.objects)
    assert retention.plan_gc(store, "ft").objects == []
