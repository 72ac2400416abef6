"""A team's failing code is readable, is not retried when a retry repeats it, stores no secret, and does not burn
the run id (issue 28, items 7 and 8).

Before: a broken reward plug-in failed with a bare "IndexError: list index out of range" naming neither the plug-in
nor the stage, was retried `pipeline.max_retries` times, its exception text (a token included) was stored verbatim,
and the run id could be neither rerun nor resumed with the fix."""

from pathlib import Path

import pytest
from reliability_helpers import tiny_config

from dgrpo.registry import RegistryError, plugin_of
from dgrpo.rewards import REWARDS, load_reward
from dgrpo.runs.commits import ResumeError, last_commit
from dgrpo.runs.ownership import OwnershipError
from dgrpo.runs.records import ErrorRecord
from dgrpo.runtime import fine_tune
from dgrpo.runtime import segment as seg
from dgrpo.runtime.engine import ChainFailed, run_inprocess
from dgrpo.runtime.redaction import redact_secrets
from dgrpo.runtime.verify import verify_run
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore

PLUGINS = Path(__file__).parent / "plugins"
TOKEN = "hf_" + "Q7xLm2Vb9KpR4tZs8NwYc3Hd6FgJ1aE5uXo"


@pytest.fixture(autouse=True)
def team_packages(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


def _errors(store: LocalStore, run_id: str) -> list[ErrorRecord]:
    return seg.errors(store, run_id)


def test_a_plugins_error_names_the_stage_the_plugin_and_its_last_line_and_is_permanent(tmp_path):
    store = LocalStore(tmp_path / "store")
    score = load_reward("broken_rewards:index_error", {"up_to": 2})
    with pytest.raises(IndexError) as raised:
        score(__import__("numpy").zeros((3, 4, 4, 3), "uint8"), ["a", "b", "c"])
    source, own = plugin_of(raised.value)
    assert (source.kind, source.path, source.config_field) == ("reward", "broken_rewards:index_error", "reward.name")
    assert own is raised.value
    try:  # dgrpo's stage code wrapping it keeps it the plug-in's
        raise RuntimeError("round 0 failed") from raised.value
    except RuntimeError as wrapped:
        seg.record_error(store, "ft", "reward", wrapped, segment=1, round_index=0)
    [error] = _errors(store, "ft")
    assert error.error.startswith("PluginError: stage reward of round 1: the reward plug-in "
                                     "'broken_rewards:index_error' (config field 'reward.name') failed: IndexError: "
                                     "list index out of range")
    assert error.permanent is True and "run again with the same run id 'ft'" in error.error
    assert plugin_of(RuntimeError("dgrpo's own")) is None


def test_an_embedder_plugins_error_is_named_as_the_embedders(tmp_path):
    from dgrpo.embedders import load_embedder

    store = LocalStore(tmp_path / "store")
    embed = load_embedder("broken_rewards:embedder", cache=False)
    with pytest.raises(ValueError) as raised:
        embed(__import__("numpy").zeros((2, 16, 16, 3), "uint8"))
    seg.record_error(store, "ft", "cluster", raised.value, segment=1, round_index=3)
    [error] = _errors(store, "ft")
    assert error.error.startswith("PluginError: stage cluster of round 4: the embedder plug-in "
                                     "'broken_rewards:embedder' (config field 'cluster.embedder') failed: ValueError: "
                                     "expected 224 px images, got 16 px")
    assert error.permanent is True


def test_errors_a_retry_repeats_are_permanent_and_transient_ones_are_not():
    for deterministic in (KeyError("reward"), IndexError("list index out of range"), TypeError("x"),
                          ValueError("unknown word 'purple' in caption 'a purple square'"),
                          FileNotFoundError("config field 'model.pretrained': toy checkpoint /x does not exist")):
        assert seg.is_permanent(deterministic), deterministic
    for transient in (RuntimeError("CUDA out of memory"), OSError("connection reset"), TimeoutError("read")):
        assert not seg.is_permanent(transient), transient


def test_the_stored_error_holds_no_secret(tmp_path):
    store = LocalStore(tmp_path / "store")
    score = load_reward("broken_rewards:leaks_token", {"token": TOKEN})
    with pytest.raises(KeyError) as raised:
        score(None, [])
    seg.record_error(store, "ft", "evaluate", raised.value)
    [error] = _errors(store, "ft")
    assert TOKEN not in str(error) and "***" in error.error
    assert "'broken_rewards:leaks_token'" in error.error and "api_key=***" in error.error
    assert redact_secrets(f"PGPASSWORD=hunter2 at postgres://u:pw@db/x with {TOKEN}") == \
        "PGPASSWORD=*** at postgres://***@db/x with ***"


def test_a_factorys_own_type_error_and_an_import_failure_are_the_plugins(monkeypatch):
    with pytest.raises(TypeError, match="has no len") as raised:
        load_reward("broken_rewards:bad_factory")
    assert plugin_of(raised.value)[0].path == "broken_rewards:bad_factory"
    with pytest.raises(RegistryError, match="config field 'reward.options': got an unexpected keyword argument"):
        load_reward("broken_rewards:index_error", {"upto": 2})  # a misspelled option stays a config error
    with pytest.raises(RegistryError, match=r"config field 'reward.name': importing module 'broken_at_import' of "
                                            r"'broken_at_import:reward' failed: KeyError: 'default'"):
        REWARDS.get("broken_at_import:reward")


def test_a_broken_plugin_fails_once_in_one_line_and_the_run_id_is_reused_with_the_fix(tmp_path):
    store = LocalStore(tmp_path / "store")
    broken = tiny_config(rounds=1, **{"reward.name": "broken_rewards:index_error", "pipeline.max_retries": 3})
    with pytest.raises(ChainFailed) as raised:
        run_inprocess(StageContext(broken, store, "nightly"))
    message = str(raised.value)
    assert ("PluginError: stage reward of round 1: the reward plug-in 'broken_rewards:index_error' (config field "
            "'reward.name') failed: IndexError: list index out of range") in message
    assert "not retried" in message and "run again with the same run id 'nightly'" in message
    assert len(store.list("runs/nightly/segments")) == 1  # not retried 3 times
    failed_claim = store.get_json("runs/nightly/claim.json")

    fixed = tiny_config(rounds=1)
    run_inprocess(StageContext(fixed, store, "nightly"))  # the same run id, the fixed config
    assert last_commit(store, "nightly").round == 0
    claim = store.get_json("runs/nightly/claim.json")
    assert claim["recipe_sha256"] == fixed.recipe_sha256() and claim["replaces"] == failed_claim["claim"]
    kept = f"runs/nightly/failed-starts/{failed_claim['claim']}"
    assert store.get_json(f"{kept}/claim.json") == failed_claim and store.list(f"{kept}/errors")
    assert fine_tune.status(store, "nightly")["last_error"] is None
    assert verify_run(store, "nightly").problems == []
    with pytest.raises(ResumeError, match="already has committed rounds"):  # one that committed is never replaced
        fine_tune.start(store, fixed, "nightly")
    with pytest.raises(ResumeError, match="the recipe differs"):
        fine_tune.start(store, tiny_config(rounds=1, seed=1), "nightly", resume_from="nightly")


def test_missing_weights_are_not_retried_and_a_resume_with_the_fix_starts_again(tmp_path):
    store = LocalStore(tmp_path / "store")
    missing = tiny_config(rounds=1, **{"model.pretrained": str(tmp_path / "nowhere.pt"), "pipeline.max_retries": 3})
    with pytest.raises(ChainFailed, match="config field 'model.pretrained'.*--resume weekly.*not retried"):
        run_inprocess(StageContext(missing, store, "weekly"))
    assert len(store.list("runs/weekly/segments")) == 1
    assert fine_tune.failed_start(store, "weekly") is not None

    fixed = tiny_config(rounds=1)
    record = fine_tune.start(store, fixed, "weekly", resume_from="weekly")  # before: "the recipe differs"
    assert record.recipe_sha256 == fixed.recipe_sha256()
    assert store.list("runs/weekly/segments") == [] and store.list("runs/weekly/errors") == []
    assert fine_tune.failed_start(store, "weekly") is None  # the new claim has not failed


def test_a_running_or_retrying_fine_tune_is_not_a_failed_start(tmp_path):
    store = LocalStore(tmp_path / "store")
    config = tiny_config(rounds=1)
    fine_tune.start(store, config, "busy")
    assert fine_tune.failed_start(store, "busy") is None  # claimed, nothing failed yet
    seg.record_error(store, "busy", "rollout", OSError("connection reset"), segment=1, round_index=0)
    store.put_json("runs/busy/segments/s0001.json", {"segment": 1, "state": "failed"})
    store.put_json("runs/busy/status.json", {"state": "running", "action": "retry"})
    assert fine_tune.failed_start(store, "busy") is None  # a retry follows
    with pytest.raises(OwnershipError, match="is taken"):
        fine_tune.start(store, config, "busy")
    store.put_json("runs/busy/status.json", {"state": "failed", "action": "failed"})
    assert fine_tune.failed_start(store, "busy").run_id == "busy"


def test_a_crashing_swapped_component_is_named_with_where_its_error_is(tmp_path):
    """A team's container records nothing in the store: the segment that it stopped names the swapped stage, its
    component and where its own error is, not only "committed 0 of 1 planned rounds"; a stage of ours that stopped
    the round is not blamed on the swap (the control)."""
    from dgrpo.runs.evaluations import write_event
    from dgrpo.runs.records import Event

    component = str(Path(__file__).parents[1] / "examples" / "custom_reward" / "component.yaml")
    config = tiny_config(rounds=1, **{"pipeline.stages.reward": {"component": component}})
    for stage_events, blamed in (((), False), (("rollout",), True)):
        store = LocalStore(tmp_path / f"store-{len(stage_events)}")
        record = fine_tune.start(store, config, "ft")
        state, _ = seg.open_segment(store, "ft", record.config_sha256, "k")
        for stage in stage_events:
            write_event(store, "ft", Event(stage=stage, round=0, metrics={}, outputs={}, shard=0))
        end = seg.finish_segment(store, "ft", record.config_sha256, "k", "FAILED")
        named = f"the swapped reward stage (component {component}, pipeline.stages.reward) failed in round 1"
        assert (named in end.error) is blamed, end.error
        assert "committed 0 of its 1 planned rounds" in end.error


def test_a_swapped_component_that_crashes_twice_the_same_way_is_not_retried_again(tmp_path):
    """The first crash of a team's container is retried (it may have been the pod's); the same crash at the same
    round in the next segment stops the chain with pipeline.max_retries left; a different failure in between (the
    control: a stage of ours stopped the second segment) keeps retrying."""
    from dgrpo.runs.evaluations import write_event
    from dgrpo.runs.keys import event_key
    from dgrpo.runs.records import Event

    component = str(Path(__file__).parents[1] / "examples" / "custom_reward" / "component.yaml")
    config = tiny_config(rounds=1, **{"pipeline.stages.reward": {"component": component},
                                      "pipeline.max_retries": 3})
    for second_blames_swap in (True, False):
        store = LocalStore(tmp_path / f"store-{second_blames_swap}")
        record = fine_tune.start(store, config, "ft")
        decisions = []
        for attempt in range(2):
            seg.open_segment(store, "ft", record.config_sha256, f"k{attempt}")
            if attempt == 0 or second_blames_swap:  # the rollout wrote its event: the swapped reward stopped it
                write_event(store, "ft", Event(stage="rollout", round=0, metrics={}, outputs={}, shard=0))
            else:
                store.delete(event_key("ft", 0, "rollout", 0))
            decisions.append(seg.finish_segment(store, "ft", record.config_sha256, f"k{attempt}", "FAILED").decision)
        assert decisions[0].action == "retry"
        assert decisions[1].action == ("failed" if second_blames_swap else "retry"), decisions[1]
        if second_blames_swap:
            assert "not retried: a retry from round 1 repeats this error" in decisions[1].reason
