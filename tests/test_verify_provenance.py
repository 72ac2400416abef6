"""`dgrpo verify` proves provenance, not only bytes: commits without gaps, each lineage input the artifact of the
round and stage its record implies, and a dangling input named with the record that holds it (issue 28, item 6).

Each damage below is one an operator or a tool can do to a store (a deleted commit record, a lineage record edited
to point at another round's input); before, `verify` said "ok" to each of them."""

import shutil

import pytest
from reliability_helpers import tiny_config
from support import event_output

from dgrpo.runs.keys import lineage_key
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.verify import expected_source, verify_run
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import ArtifactRef, LocalStore


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    """Fine-tune "ft" of two committed rounds, and "branch" branched from it for a third; tests damage copies."""
    root = tmp_path_factory.mktemp("two-rounds") / "store"
    run_inprocess(StageContext(tiny_config(rounds=2), LocalStore(root), "ft"))
    run_inprocess(StageContext(tiny_config(rounds=3), LocalStore(root), "branch"), resume_from="ft")
    return root


@pytest.fixture
def store(two_rounds, tmp_path):
    shutil.copytree(two_rounds, tmp_path / "store")
    return LocalStore(tmp_path / "store")


def _edit_inputs(store: LocalStore, ref: ArtifactRef, **inputs: str) -> str:
    """Point inputs of `ref`'s lineage record at other artifacts (by sha256), as a person editing it would."""
    key = lineage_key(ref.sha256)
    record = store.get_json(key)
    record["inputs"] |= inputs
    store.put_json(key, record)
    return key


def test_an_undamaged_run_and_a_branched_one_verify(store):
    """The control: the checks below pass on real runs, a branched one (first commit: round 2) included."""
    assert verify_run(store, "ft").problems == []
    assert verify_run(store, "branch").problems == []
    assert [k.rsplit("/", 1)[1] for k in store.list("runs/branch/commits")] == ["r000002.json"]


def test_a_commit_deleted_from_the_middle_is_a_gap(store):
    store.delete("runs/ft/commits/r000000.json")
    problems = verify_run(store, "ft").problems
    assert len(problems) == 1, problems
    assert problems[0].startswith("runs/ft/commits: no commit record of round 1 (commits run without a gap from "
                                  "round 1)")  # rounds shown from 1


def test_the_last_commit_deleted_is_missed_by_its_segment(store):
    store.delete("runs/ft/commits/r000001.json")
    problems = verify_run(store, "ft").problems
    assert len(problems) == 1, problems
    assert problems[0].endswith("no commit record of round 2 (commits run without a gap from round 1); "
                                "runs/ft/eval/r0002.json (the evaluation after round 2) says it was committed")
    store.delete("runs/ft/eval/r0002.json")
    problems = verify_run(store, "ft").problems
    assert len(problems) == 1, problems
    assert problems[0].endswith("no commit record of round 2 (commits run without a gap from round 1); "
                                "runs/ft/segments/s0001.json (segment 1, 2 rounds from round 1) says it was committed")


def test_a_lineage_input_pointing_at_another_rounds_artifact_is_found(store):
    """The update of round 1 edited to have trained on round 0's rollouts, and round 1's rollouts edited to have
    been sampled from the adapter of round 1 itself (the future)."""
    adapter = event_output(store, "r0001-update", "adapter")
    old_rollouts = event_output(store, "r0000-rollout", "rollouts")
    rollouts = event_output(store, "r0001-rollout", "rollouts")
    update_key = _edit_inputs(store, adapter, rollouts=old_rollouts.sha256)
    rollout_key = _edit_inputs(store, rollouts, adapter=adapter.sha256)
    problems = verify_run(store, "ft").problems
    assert len(problems) == 2, problems
    assert (f"lineage record {update_key} (lora_adapter of update round 2): input 'rollouts' "
            f"{old_rollouts.sha256[:12]} is the rollouts of rollout round 1, not the artifact of the rollout of round "
            "2") in problems
    assert (f"lineage record {rollout_key} (rollouts of rollout round 2): input 'adapter' {adapter.sha256[:12]} is "
            "the lora_adapter of update round 2, not the artifact of the update of round 1") in problems


def test_an_input_of_another_kind_and_an_event_naming_another_rounds_output_are_found(store):
    scores, rewards = event_output(store, "r0001-cluster", "scores"), event_output(store, "r0001-reward", "rewards")
    adapter = event_output(store, "r0001-update", "adapter")
    key = _edit_inputs(store, adapter, scores=rewards.sha256)
    event = store.get_json("runs/ft/events/r0001-reward.json")
    event["outputs"]["rewards"] = store.get_json("runs/ft/events/r0000-reward.json")["outputs"]["rewards"]
    store.put_json("runs/ft/events/r0001-reward.json", event)
    evaluation = store.get_json("runs/ft/events/r0002-evaluate.json")  # a model that did not change draws the same
    evaluation["outputs"]["grid"] = store.get_json("runs/ft/events/r0000-evaluate.json")["outputs"]["grid"]  # grid
    store.put_json("runs/ft/events/r0002-evaluate.json", evaluation)
    problems = verify_run(store, "ft").problems
    assert len(problems) == 2, problems
    assert (f"lineage record {key} (lora_adapter of update round 2): input 'scores' {rewards.sha256[:12]} is the "
            "rewards of reward round 2, not the scores the record says") in problems
    assert any(p.startswith("runs/ft/events/r0001-reward.json: its output 'rewards'") and "was written by reward "
               "round 1, not by the reward of round 2" in p for p in problems), problems
    assert scores.sha256 not in " ".join(problems)


def test_a_dangling_input_names_the_record_holding_it(store):
    scores = event_output(store, "r0001-cluster", "scores")
    missing = "ab" * 32
    key = _edit_inputs(store, scores, rewards=missing)
    problems = verify_run(store, "ft").problems
    assert problems == [f"no lineage record for artifact {missing} in {store.uri}; named by input 'rewards' of "
                        f"lineage record {key} (scores of cluster round 2)"]


@pytest.mark.parametrize(("name", "round_index", "expected"), [
    ("adapter", 3, ("update", 2)), ("optimizer_state", 3, ("update", 2)), ("ema_state", 3, ("update", 2)),
    ("rollouts", 3, ("rollout", 3)), ("rollouts[1]", 3, ("rollout", 3)), ("rewards", 3, ("reward", 3)),
    ("scores", 3, ("cluster", 3)), ("prune_decisions", 3, ("rollout", 3)), ("base_model", 3, ("base_model", None)),
    ("config", 0, ("config", None)), ("a_teams_own_input", 3, None)])
def test_expected_source_by_the_records_own_round(name, round_index, expected):
    assert expected_source(name, round_index) == expected
