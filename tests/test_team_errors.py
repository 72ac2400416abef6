"""A team's failing code is readable, is not retried when a retry repeats it, stores no secret, and does not burn
the run id (issue 28, items 7 and 8).

Before: a broken reward plug-in failed with a bare "IndexError: list index out of range" naming neither the plug-in
nor the stage, was retried `pipeline.max_retries` times, its exception text (a token included) was stored verbatim,
and the run id could be neither rerun nor resumed with the fix."""

import json
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
    cases = [(shards, stage_events, blamed) for shards in (1, 2) for stage_events, blamed in (((), False),
                                                                                              (("rollout",), True))]
    for shards, stage_events, blamed in cases:  # a sharded stage's event names its shard only with several
        config = tiny_config(rounds=1, **{"pipeline.stages.reward": {"component": component},
                                          "pipeline.shards": shards})
        store = LocalStore(tmp_path / f"store-{shards}-{len(stage_events)}")
        record = fine_tune.start(store, config, "ft")
        state, _ = seg.open_segment(store, "ft", record.config_sha256, "k")
        for stage in stage_events:
            write_event(store, "ft", Event(stage=stage, round=0, metrics={}, outputs={},
                                           shard=0 if shards > 1 else None))
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
                write_event(store, "ft", Event(stage="rollout", round=0, metrics={}, outputs={}))
            else:
                store.delete(event_key("ft", 0, "rollout"))
            decisions.append(seg.finish_segment(store, "ft", record.config_sha256, f"k{attempt}", "FAILED").decision)
        assert decisions[0].action == "retry"
        assert decisions[1].action == ("failed" if second_blames_swap else "retry"), decisions[1]
        if second_blames_swap:
            assert "not retried: a retry from round 1 repeats this error" in decisions[1].reason


SECRET = "sk-live-123456789abcdef"
OWN_LINE = f"RuntimeError: acme-reward could not parse weights token={SECRET}"
SHOWN = "RuntimeError: acme-reward could not parse weights token=***"
POD_LOG = f"""I1206 02:24:10.123456      21 launcher_v2.go:151] executor input: {{...}}
acme-reward: loading weights
Traceback (most recent call last):
  File "/app/reward.py", line 9, in <module>
    raise RuntimeError("acme-reward could not parse weights token={SECRET}")
{OWN_LINE}
F1206 02:24:16.417000      21 main.go:130] failed to execute component: exit status 1
time="2026-12-06T02:24:16.418Z" level=info msg="sub-process exited" argo=true error="<nil>"
Error: exit status 1
"""
"""The end of a crashed team container's `main` log on KFP: its traceback, then the launcher's and Argo's lines."""


def _acme_component(tmp_path: Path) -> Path:
    """A team's reward component (a lightweight Python component kfp.local can run) that crashes quoting a token."""
    from kfp import compiler, dsl
    from kfp.dsl import Dataset, Input, Output

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def acme_reward(rollouts: Input[Dataset], rewards: Output[Dataset]):
        print("acme-reward: loading weights")
        raise RuntimeError("acme-reward could not parse weights token=sk-live-123456789abcdef")

    path = tmp_path / "acme.yaml"
    compiler.Compiler().compile(acme_reward, str(path))
    return path


def _no_secret_under(root: Path) -> None:
    """No record of the fine-tune (errors, segments, status) holds the token; the team's code quoting it may be in
    the stored pipeline's objects, which are its own."""
    leaks = [p for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks


def test_the_own_last_line_of_a_task_log_skips_the_machinery_and_is_redacted():
    """The last line a team's code wrote: the exception after the last traceback (not KFP's launcher line, nor
    Argo's "Error: exit status 1"); a program without a traceback: its last line. kfp.local's log gives the output
    of the swapped task that failed, not of one that succeeded, nor of another task that failed."""
    from dgrpo_pipelines.errors import own_last_error
    from dgrpo_pipelines.local import failed_task_output

    assert own_last_error(POD_LOG.splitlines()) == SHOWN
    assert own_last_error(["I1206 02:24:10.1 1 x.go:1] start", "fatal: cannot open /models/acme: denied",
                           "Error: exit status 3"]) == "fatal: cannot open /models/acme: denied"
    assert own_last_error(["Error: exit status 1"]) == ""
    cyan, red, reset = "\x1b[96m", "\x1b[91m", "\x1b[0m"
    log = "\n".join([
        f"02:24:08.937 - INFO - Executing task {cyan}'acme-reward'{reset}", "    all well",
        f"02:24:09.000 - INFO - Task {cyan}'acme-reward'{reset} finished with status \x1b[92mSUCCESS{reset}",
        f"02:24:16.314 - INFO - Executing task {cyan}'acme-reward'{reset}", "02:24:16.314 - INFO - Streamed logs:",
        "    [KFP Executor 2026-12-06 02:24:16,397 INFO]: Looking for component `acme_reward`",
        *(f"    {line}" for line in POD_LOG.splitlines()[1:6]), "    ",
        f"02:24:16.416 - ERROR - Task {cyan}'acme-reward'{reset} finished with status {red}FAILURE{reset}",
        f"02:24:17.000 - INFO - Executing task {cyan}'begin-round'{reset}", "    RoundOrderError: not the next round",
        f"02:24:18.000 - ERROR - Task {cyan}'begin-round'{reset} finished with status {red}FAILURE{reset}"])
    output = failed_task_output(log, {"acme-reward"})
    assert "all well" not in "\n".join(output) and own_last_error(output) == SHOWN
    assert failed_task_output(log, {"reward"}) == []


@pytest.mark.e2e
def test_a_crashing_swapped_container_s_own_last_line_is_shown_and_kept_redacted_on_kfp_local(tmp_path):
    """Through kfp.local: the line the chain fails with names the swapped stage and its component, and ends with
    the last line of the component's own error, its token redacted; `dgrpo status` shows it as the last error;
    no record of the fine-tune holds the token."""
    from dgrpo_pipelines.local import run_pipeline

    component = _acme_component(tmp_path)
    config = tiny_config(rounds=1, **{"pipeline.stages.reward": {"component": str(component)},
                                      "pipeline.max_retries": 0})
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ChainFailed) as raised:
        run_pipeline(StageContext(config, store, "ft"), str(store.root), tmp_path / "work", "kfp")
    message = str(raised.value)
    assert f"the swapped reward stage (component {component}, pipeline.stages.reward) failed in round 1" in message
    assert message.endswith(f"; the swapped reward component's own last error (task logs): {SHOWN}"), message
    assert SECRET in (tmp_path / "work" / "kfp.log").read_text()  # where it came from
    last = fine_tune.status(store, "ft")["last_error"]
    assert (last["task"], last["segment"], last["round"]) == ("reward", 1, 0)
    assert last["error"] == (f"SwappedStageError: stage reward of round 1: the swapped component (component "
                             f"{component}, config field 'pipeline.stages.reward') failed: {SHOWN}")
    _no_secret_under(tmp_path / "store" / "runs")


def _crashed_on_kfp(kfp_api, tmp_path: Path, log: str | None):
    """A cluster fine-tune whose first segment's swapped reward component crashed in its pod (the fake's run has
    its Argo nodes), ended by its exit task; returns its store and KFP run id."""
    from dgrpo_pipelines.remote import compiled

    from dgrpo.runs.evaluations import write_event
    from dgrpo.runs.records import Event
    from dgrpo.runtime import kfp_rest

    component = _acme_component(tmp_path)
    config = tiny_config(rounds=1, **{"pipeline.stages.reward": {"component": str(component)},
                                      "pipeline.max_retries": 0})
    store = LocalStore(tmp_path / "store")
    spec, platform = compiled(config)
    kfp = {"endpoint": kfp_api.url, "experiment_id": kfp_rest.KfpClient(kfp_api.url).experiment_id("dgrpo"),
           "namespace": "", "pipeline_sha256": kfp_rest.put_pipeline(store, spec, platform).sha256}
    record = fine_tune.start(store, config, "ft", mode="kfp", kfp=kfp)
    run = kfp_rest.submit_next(store, record, 1, fine_tune.segment_parameters(store, record))
    seg.open_segment(store, "ft", record.config_sha256, run)
    write_event(store, "ft", Event(stage="rollout", round=0, metrics={}, outputs={}))
    pod = kfp_api.fail_task(run, "acme-reward", log)
    end = seg.finish_segment(store, "ft", record.config_sha256, run, kfp_api.final_status(run, "failed"))
    assert end.error.startswith("the swapped reward stage (component ")
    return store, run, pod


def test_a_crashing_swapped_container_s_own_last_line_is_read_from_its_pod_log_on_kfp(kfp_api, tmp_path):
    """On a cluster the watching client reads the failed task's pod log through the KFP API (the task detail of
    the swapped component's Argo node names its executor's node), keeps its last own line redacted, once, and
    adds it to what it shows; the run's other tasks and logs are not read."""
    from dgrpo_pipelines.remote import team_error

    from dgrpo.runtime import kfp_rest

    store, run, pod = _crashed_on_kfp(kfp_api, tmp_path, POD_LOG)
    client = kfp_rest.KfpClient(kfp_api.url)
    clause = team_error(client, store, "ft")
    assert clause == f"; the swapped reward component's own last error (the pod log of KFP run {run}): {SHOWN}"
    log_requests = [p for m, p, _, _ in kfp_api.requests if "/log" in p]
    assert log_requests == [f"/apis/v1alpha1/runs/{run}/nodes/{pod}/log"]
    [kept] = [e for e in seg.errors(store, "ft") if e.task == "reward"]
    assert kept.segment == 1 and kept.error.endswith(f"failed: {SHOWN}")
    assert fine_tune.status(store, "ft")["last_error"]["error"] == kept.error
    assert team_error(client, store, "ft") == clause  # asked again: kept, not read again
    assert len([p for m, p, _, _ in kfp_api.requests if "/log" in p]) == 1
    _no_secret_under(tmp_path / "store" / "runs")


def test_dgrpo_status_with_the_kfp_host_shows_the_swapped_containers_own_line(kfp_api, tmp_path, capsys):
    """`dgrpo status RUN --host URL` is where an operator sees it: the line read from the pod log, redacted."""
    from dgrpo_pipelines.main import main

    _crashed_on_kfp(kfp_api, tmp_path, POD_LOG)
    main(["status", "ft", "--store", str(tmp_path / "store"), "--host", kfp_api.url])
    shown = capsys.readouterr().out
    assert "team:      the swapped reward component's own last error" in shown and SHOWN in shown
    assert TOKEN not in shown
    main(["status", "ft", "--store", str(tmp_path / "store"), "--json"])  # without --host: the kept record
    assert SHOWN in json.loads(capsys.readouterr().out)["last_error"]["error"]


def test_a_pod_log_that_cannot_be_read_is_said_in_one_clause(kfp_api, tmp_path):
    """The pod and its archived log are gone: the server answers 200 with a JSON error (it writes the status first);
    the client says so in one clause, records nothing and does not raise; so for a KFP API that refuses."""
    from dgrpo_pipelines.remote import team_error

    from dgrpo.runtime import kfp_rest

    store, run, pod = _crashed_on_kfp(kfp_api, tmp_path, None)
    clause = team_error(kfp_rest.KfpClient(kfp_api.url), store, "ft")
    assert clause.startswith(f"; its own error could not be read from the pod log of KFP run {run} (KfpApiError: "
                             f"Failed to read logs for run {run}: Failed to read logs from archive {pod}"), clause
    assert not [e for e in seg.errors(store, "ft") if e.task == "reward"]
    kfp_api.fail("GET", f"/apis/v2beta1/runs/{run}", 403)
    refused = team_error(kfp_rest.KfpClient(kfp_api.url, attempts=1), store, "ft")
    assert refused.startswith("; its own error could not be read") and "HTTP 403" in refused, refused
