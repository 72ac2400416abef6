"""submit, schedule and the chain's continuation against a strict fake of the KFP v2beta1 REST API (kfp_fake)."""

import json
import re

import pytest
from dgrpo_pipelines.cli import app
from kfp_fake import FakeKfp, Rejected, check
from support import small_config
from typer.testing import CliRunner

from dgrpo.config import load_config
from dgrpo.runtime import fine_tune, kfp_rest
from dgrpo.runtime import segment as seg
from dgrpo.store import LocalStore


@pytest.fixture
def multi_user(tmp_path, monkeypatch):
    """Multi-user KFP: a bearer token is required; the continuation reads it where the PodDefault mounts it."""
    fake = FakeKfp(multi_user=True, token="sa-token-123", namespace="team-a")
    token = tmp_path / "token"
    token.write_text("sa-token-123\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    yield fake
    fake.close()


def test_the_fake_rejects_what_the_server_rejects():
    """Negative controls of the fake itself: unknown fields, int64 numbers, both oneof members."""
    with pytest.raises(Rejected, match='"Run" has no field named "namespace"'):
        check("Run", {"display_name": "x", "namespace": "team-a"})
    with pytest.raises(Rejected, match="int64 must be a JSON string"):
        check("RecurringRun", {"max_concurrency": 1})
    with pytest.raises(Rejected, match="multiple oneof"):
        check("Run", {"pipeline_spec": {}, "pipeline_version_reference": {"pipeline_id": "p"}})
    with pytest.raises(Rejected, match='"CronSchedule" has no field named "crontab"'):
        check("RecurringRun", {"trigger": {"cron_schedule": {"crontab": "0 0 2 * * *"}}})
    check("RecurringRun", {"max_concurrency": "1", "trigger": {"periodic_schedule": {"interval_second": "600"}}})


def test_bodies_have_the_v2beta1_shapes():
    spec = {"pipelineInfo": {"name": "p"}}
    platform = {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {}}}}}
    run = kfp_rest.run_body(display_name="ft segment", experiment_id="e", spec=spec, platform=platform,
                            parameters={"run_id": "ft"}, service_account="dgrpo-pipeline-runner")
    assert run["pipeline_spec"] == {"pipeline_spec": spec, "platform_spec": platform}
    check("Run", run)
    assert kfp_rest.run_body(display_name="x", experiment_id="", spec=spec, platform=None,
                             parameters={})["pipeline_spec"] == spec  # no platform settings: the IR itself
    job = kfp_rest.recurring_run_body(display_name="c", experiment_id="e", spec=spec, platform=platform,
                                      parameters={}, cron="0 */10 * * * *")
    assert job["max_concurrency"] == "1" and job["mode"] == "ENABLE" and job["no_catchup"] is True
    check("RecurringRun", job)
    with pytest.raises(ValueError, match="6 fields"):
        kfp_rest.recurring_run_body(display_name="c", experiment_id="e", spec=spec, platform=None, parameters={},
                                    cron="0 2 * * *")
    with pytest.raises(ValueError, match="over the KFP API's 10000"):
        kfp_rest.run_body(display_name="x", experiment_id="", spec=spec, platform=None,
                          parameters={"config_json": "x" * 10_001})
    with pytest.raises(ValueError, match="run parameter 'run_id'"):
        kfp_rest.run_body(display_name="x", experiment_id="", spec=spec, platform=None, parameters={"run_id": "../x"})


def _cluster_settings():
    return {"kubernetes.model_cache": {"pvc": "dgrpo-model-cache"}, "kubernetes.service_account":
            "dgrpo-pipeline-runner", "kubernetes.stages.update.gpus": 4}


def test_submit_stores_the_config_and_sends_only_ids(kfp_api, tmp_path):
    store_uri = (tmp_path / "store").as_uri()
    args = ["submit", "--host", kfp_api.url, "--store", store_uri, "--run-id", "ft-1", "--experiment", "nightly",
            "--set", "rounds=30", "--set", "pipeline.shards=2", "--set", "pipeline.rounds_per_run=5"]
    args += [a for k, v in _cluster_settings().items() for a in ("--set", f"{k}={json.dumps(v)}")]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    (exp,) = kfp_api.posted("/apis/v2beta1/experiments")
    assert exp == {"display_name": "nightly"}
    (run,) = kfp_api.posted("/apis/v2beta1/runs")
    store = LocalStore(tmp_path / "store")
    record = store.get_json("runs/ft-1/chain.json")
    assert run["runtime_config"]["parameters"] == {"store_uri": store.uri, "run_id": "ft-1",
                                                   "config_sha256": record["config_sha256"],
                                                   "recipe_sha256": record["recipe_sha256"]}
    assert run["service_account"] == "dgrpo-pipeline-runner" and run["experiment_id"] == exp_id(kfp_api)
    ir, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    assert ir["deploymentSpec"]["executors"]["exec-update"]["container"]["resources"]["accelerator"][
        "resourceCount"] == "4"
    mount = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-update"]["pvcMount"][0]
    assert mount["constant"] == "dgrpo-model-cache"
    assert set(ir["root"]["inputDefinitions"]["parameters"]) == set(run["runtime_config"]["parameters"])
    (created,) = kfp_api.runs
    assert f"KFP UI: {kfp_api.url}/#/runs/details/{created}" in out.output  # the UI's hash route of the run
    assert record["kfp"]["experiment_id"] == exp_id(kfp_api) and record["mode"] == "kfp"
    assert kfp_rest.get_pipeline(store, record["kfp"]["pipeline_sha256"]) == (ir, platform)  # what continues
    assert fine_tune.read_claim(store, "ft-1").recipe_sha256 == load_config(None).recipe_sha256()  # rounds: not

    again = CliRunner().invoke(app, args)  # the same run id twice: refused before anything is sent
    assert again.exit_code == 1 and "run id 'ft-1' is taken" in again.output
    assert len(kfp_api.posted("/apis/v2beta1/runs")) == 1
    bad = CliRunner().invoke(app, ["submit", "--host", kfp_api.url, "--store", store_uri, "--run-id", "a/../b"])
    assert bad.exit_code != 0 and "a run id is" in bad.output
    local = CliRunner().invoke(app, ["submit", "--host", kfp_api.url, "--store", "outputs/store"])
    assert local.exit_code != 0 and "store URI" in local.output


def exp_id(fake: FakeKfp) -> str:
    (exp,) = fake.experiments.values()
    return exp["experiment_id"]


def test_schedule_creates_one_recurring_run_per_fine_tune(kfp_api, tmp_path):
    store_uri = (tmp_path / "store").as_uri()
    args = ["schedule", "--host", kfp_api.url, "--store", store_uri, "--run-id", "ft-nightly", "--cron",
            "0 0 2 * * *", "--set", "rounds=100", "--set", "pipeline.rounds_per_run=5"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    (job,) = kfp_api.posted("/apis/v2beta1/recurringruns")
    (job_id,) = kfp_api.recurring
    assert f"KFP UI: {kfp_api.url}/#/recurringrun/details/{job_id}" in out.output
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert (job["max_concurrency"], job["mode"], job["no_catchup"]) == ("1", "ENABLE", True)
    store = LocalStore(tmp_path / "store")
    assert job["runtime_config"]["parameters"]["run_id"] == "ft-nightly"
    assert store.get_json("runs/ft-nightly/chain.json")["mode"] == "schedule"
    bad = CliRunner().invoke(app, args[:8] + ["0 2 * * *"])
    assert bad.exit_code != 0 and "6 fields" in bad.output
    before = {p.name: p.read_bytes() for p in (tmp_path / "store/runs/ft-nightly").glob("*.json")}
    (job_id,) = kfp_api.recurring
    again = CliRunner().invoke(app, args[:8] + ["0 0 3 * * *"])  # a second schedule of one fine-tune: refused
    assert again.exit_code != 0 and f"fine-tune ft-nightly is already scheduled: recurring run " \
        f"{job_id} ('ft-nightly chain', cron '0 0 2 * * *')" in re.sub(r"[\s│]+", " ", again.output)
    assert len(kfp_api.posted("/apis/v2beta1/recurringruns")) == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "store/runs/ft-nightly").glob("*.json")} == before
    kfp_api.recurring[job_id]["status"] = "DISABLED"  # a disabled one no longer runs
    replaced = CliRunner().invoke(app, args)  # scheduling it again continues the same fine-tune (claimed once)
    assert replaced.exit_code == 0, replaced.output
    assert len(kfp_api.posted("/apis/v2beta1/recurringruns")) == 2


def _started(store, fake: FakeKfp, config, namespace: str = "") -> dict:
    client = kfp_rest.KfpClient(fake.url, namespace=namespace)
    from dgrpo_pipelines.remote import compiled

    spec, platform = compiled(config)
    kfp = {"endpoint": fake.url, "experiment_id": client.experiment_id("dgrpo"), "namespace": namespace,
           "service_account": "dgrpo-pipeline-runner", "pipeline_sha256": kfp_rest.put_pipeline(
               store, spec, platform).sha256}
    return fine_tune.start(store, config, "ft", mode="kfp", kfp=kfp)


def test_the_exit_task_submits_the_next_segment_with_the_service_account_token(multi_user, tmp_path):
    """A segment that ends with rounds left submits the next one: same pipeline, same ids, the runner's token."""
    store = LocalStore(tmp_path / "store")
    cfg = small_config(rounds=4, **{"pipeline.rounds_per_run": 2, "pipeline.max_retries": 1})
    record = _started(store, multi_user, cfg, namespace="team-a")
    state, base_due = seg.open_segment(store, "ft", record.config_sha256, "kfp-run-1")
    assert base_due and state.rounds == (0, 1) and store.exists("runs/ft/lease.json")
    # the run "succeeded" without committing (an injected no-op): counted as a failure, retried by a new run
    text = fine_tune.finish_on_cluster(store, "ft", record.config_sha256, "kfp-run-1", "COMPLETE")
    (run,) = multi_user.posted("/apis/v2beta1/runs")
    assert run["display_name"] == "ft segment 2" and run["experiment_id"] == record.kfp["experiment_id"]
    assert run["runtime_config"]["parameters"] == fine_tune.segment_parameters(store, record)
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == cfg.name
    headers = [h for m, p, _, h in multi_user.requests if p == "/apis/v2beta1/runs"]
    assert headers[0]["Authorization"] == "Bearer sa-token-123"
    assert not store.exists("runs/ft/lease.json")  # released before the next segment starts
    segment_record = store.get_json("runs/ft/segments/s0001.json")
    assert segment_record["next_kfp_run_id"] == run_id_of(multi_user)
    assert segment_record["decision"]["action"] == "retry" and "next segment: KFP run" in text

    seg.open_segment(store, "ft", record.config_sha256, "kfp-run-2")  # fails again: max_retries 1 reached
    fine_tune.finish_on_cluster(store, "ft", record.config_sha256, "kfp-run-2", "FAILED")
    assert len(multi_user.posted("/apis/v2beta1/runs")) == 1  # no third run
    st = fine_tune.status(store, "ft")
    assert st["state"] == "failed" and "2 segments in a row failed" in st["reason"]


def run_id_of(fake: FakeKfp) -> str:
    (run,) = fake.runs.values()
    return run["run_id"]


def test_a_refused_continuation_stops_the_chain_visibly(kfp_api, tmp_path, monkeypatch):
    """Without a token a multi-user API refuses the continuation: the exit task fails and the status says so."""
    store = LocalStore(tmp_path / "store")
    cfg = small_config(rounds=4, **{"pipeline.rounds_per_run": 2})
    record = _started(store, kfp_api, cfg)
    kfp_api.multi_user, kfp_api.token = True, "expected"
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "absent"))
    seg.open_segment(store, "ft", record.config_sha256, "kfp-run-1")
    with pytest.raises(kfp_rest.KfpApiError, match="HTTP 401"):
        fine_tune.finish_on_cluster(store, "ft", record.config_sha256, "kfp-run-1", "FAILED")
    st = fine_tune.status(store, "ft")
    assert st["state"] == "failed" and "submitting the next segment failed" in st["reason"]
    assert st["lease"] is None


# --- the chain against the real server's behaviour (issue 24, findings 1, 2, 3, 7, 8) ---------------------------


@pytest.fixture
def no_waiting(monkeypatch):
    """The client's backoff sleeps, recorded instead of slept."""
    import time
    from types import SimpleNamespace

    waits: list[float] = []
    monkeypatch.setattr(kfp_rest, "time", SimpleNamespace(sleep=waits.append, monotonic=time.monotonic),
                        raising=False)
    return waits


def _first_run(store, fake: FakeKfp, record: dict) -> str:
    """Segment 1's KFP run, created as the continuation creates runs."""
    return kfp_rest.submit_next(store, record, 1, fine_tune.segment_parameters(store, record))


def _commit(store, state, rounds, evaluate: bool = True) -> None:
    """Commit `rounds` as the update stage does, and write the evaluation records due after them (and the base
    model's) as the evaluate stage does, unless `evaluate` is False (its pod was killed)."""
    from dgrpo.runs.commits import commit_round, trained_state

    ctx = seg.context(store, state)
    due = set(ctx.config.eval_rounds())
    for r in rounds:
        parent = trained_state(store, state.run_id).adapter
        commit_round(store, state.run_id, round_index=r, adapter=_ref(f"a{r}"), optimizer_state=_ref(f"o{r}"),
                     parent=parent, lease=ctx.lease, recipe_sha256=ctx.config.recipe_sha256())
        for completed in ({0, r + 1} if r == 0 else {r + 1}) & due if evaluate else ():
            store.put_json(f"runs/{state.run_id}/eval/r{completed:04d}.json", {"round": completed, "metrics": {}})


def _ref(tag: str):
    from dgrpo.store import ArtifactRef

    digest = (tag.encode().hex() * 64)[:64]
    return ArtifactRef(kind="lora_adapter", uri=f"file:///x/{digest}", sha256=digest, size=1)


def test_a_successful_segment_is_read_from_the_store_not_from_kfps_final_state(kfp_api, tmp_path, monkeypatch):
    """Finding 1: the exit task of a successful cluster segment sees RUNNING (a skipped dsl.If branch was the exit
    handler's last child); the planned rounds are committed, so the chain goes on, even with max_retries 0."""
    monkeypatch.setattr(seg, "is_permanent", lambda exc: False)  # a transient error, without importing torch
    store = LocalStore(tmp_path / "store")
    cfg = small_config(rounds=4, **{"pipeline.rounds_per_run": 2, "pipeline.max_retries": 0})
    record = _started(store, kfp_api, cfg)
    first = _first_run(store, kfp_api, record)
    state, _ = seg.open_segment(store, "ft", record.config_sha256, first)
    seg.record_error(store, "ft", "rollout", OSError("connection reset"), state.segment, 0)  # then a retry passed
    _commit(store, state, [0, 1])
    final = kfp_api.final_status(first, "succeeded")
    assert final == "RUNNING"  # what KFP 2.17 hands the exit task of this pipeline
    fine_tune.finish_on_cluster(store, "ft", record.config_sha256, first, final)
    s1 = store.get_json("runs/ft/segments/s0001.json")
    assert (s1["state"], s1["decision"]["action"]) == ("succeeded", "continue")
    assert s1["kfp_final_state"] == "RUNNING"  # kept, as a hint
    second = s1["next_kfp_run_id"]
    assert kfp_api.runs[second]["display_name"] == "ft segment 2"
    assert fine_tune.status(store, "ft")["state"] == "running"

    # an OOM-killed pod also leaves RUNNING: one of two planned rounds committed, so the segment failed
    state, _ = seg.open_segment(store, "ft", record.config_sha256, second)
    _commit(store, state, [2])
    fine_tune.finish_on_cluster(store, "ft", record.config_sha256, second, kfp_api.final_status(second, "killed"))
    s2 = store.get_json("runs/ft/segments/s0002.json")
    assert s2["state"] == "failed" and "committed 1 of its 2 planned rounds (KFP's final state: RUNNING)" in s2[
        "error"]
    assert s2["decision"]["action"] == "failed" and len(kfp_api.runs) == 2  # max_retries 0: nothing submitted


def test_a_segment_whose_evaluation_pod_was_killed_failed(kfp_api, tmp_path):
    """All planned rounds committed, but the evaluation due after the last one is missing (an OOM-killed pod
    records no error): the segment failed, and is retried from the next round."""
    store = LocalStore(tmp_path / "store")
    cfg = small_config(rounds=4, **{"pipeline.rounds_per_run": 2, "pipeline.max_retries": 1})
    record = _started(store, kfp_api, cfg)
    first = _first_run(store, kfp_api, record)
    state, _ = seg.open_segment(store, "ft", record.config_sha256, first)
    _commit(store, state, [0, 1], evaluate=False)
    store.put_json("runs/ft/eval/r0000.json", {"round": 0, "metrics": {}})  # the base model's evaluation ran
    fine_tune.finish_on_cluster(store, "ft", record.config_sha256, first, kfp_api.final_status(first, "killed"))
    s1 = store.get_json("runs/ft/segments/s0001.json")
    assert s1["state"] == "failed" and "no evaluation record eval/r0002" in s1["error"]
    assert s1["decision"]["action"] == "retry" and len(kfp_api.runs) == 2


def test_a_run_terminated_by_an_operator_is_recorded_as_stopped_not_retried(kfp_api, tmp_path):
    store = LocalStore(tmp_path / "store")
    cfg = small_config(rounds=4, **{"pipeline.rounds_per_run": 2, "pipeline.max_retries": 3})
    record = _started(store, kfp_api, cfg)
    first = _first_run(store, kfp_api, record)
    seg.open_segment(store, "ft", record.config_sha256, first)
    fine_tune.finish_on_cluster(store, "ft", record.config_sha256, first,
                                kfp_api.final_status(first, "terminated"))
    st = fine_tune.status(store, "ft")
    assert st["state"] == "stopped" and st["stop"]["rule"] == "terminated" and len(kfp_api.runs) == 1
    assert f"terminated by an operator before round 1: KFP run {first} was terminated (CANCELING)" in \
        fine_tune.format_status(st)

    # the exit task of a terminated run may read RUNNING: the run's own API state says it was terminated
    fine_tune.start(store, cfg, "ft", resume_from="ft", mode="kfp", kfp=record.kfp)
    second = kfp_rest.submit_next(store, record, 2, fine_tune.segment_parameters(store, record))
    seg.open_segment(store, "ft", record.config_sha256, second)
    kfp_api.set_state(second, "CANCELING")
    fine_tune.finish_on_cluster(store, "ft", record.config_sha256, second, "RUNNING")
    assert fine_tune.status(store, "ft")["state"] == "stopped" and len(kfp_api.runs) == 2


def test_a_lease_held_by_a_finished_run_is_broken_by_the_next_segment(kfp_api, tmp_path):
    """Finding 2: a segment whose exit task never ran (terminated run, exit pod pending past the deadline) leaves
    its lease; status says so, and the next scheduled run breaks it with a record and goes on."""
    store = LocalStore(tmp_path / "store")
    cfg = small_config(rounds=4, **{"pipeline.rounds_per_run": 2})
    record = _started(store, kfp_api, cfg)
    first = _first_run(store, kfp_api, record)
    state, _ = seg.open_segment(store, "ft", record.config_sha256, first)
    _commit(store, state, [0])
    kfp_api.set_state(first, "RUNNING")
    with pytest.raises(seg.OwnershipError, match="being trained by segment 1"):  # a live holder keeps its lease
        seg.open_segment(store, "ft", record.config_sha256, "scheduled-1")
    kfp_api.set_state(first, "FAILED")  # its update pod was OOM-killed, and the exit pod never started
    st = fine_tune.status(store, "ft")
    assert st["state"] == "stalled"
    assert f"stalled: lease held by finished run {first} (FAILED)" in fine_tune.format_status(st)

    second, _ = seg.open_segment(store, "ft", record.config_sha256, "scheduled-2")
    assert (second.segment, second.rounds) == (2, (1, 2))
    s1 = store.get_json("runs/ft/segments/s0001.json")
    assert (s1["state"], s1["progress"], s1.get("kfp_final_state")) == ("failed", 1, "FAILED")
    (broken,) = [store.get_json(k) for k in store.list("runs/ft/lease-breaks")]
    assert broken["lease"]["holder"] == state.holder and broken["by"] == "segment of KFP run scheduled-2"
    assert f"its KFP run {first} is FAILED" in broken["reason"]
    assert "last lease break" in fine_tune.format_status(fine_tune.status(store, "ft"))


def test_a_lease_of_a_terminated_run_is_broken_and_the_chain_stops(kfp_api, tmp_path):
    store = LocalStore(tmp_path / "store")
    cfg = small_config(rounds=4, **{"pipeline.rounds_per_run": 2})
    record = _started(store, kfp_api, cfg)
    first = _first_run(store, kfp_api, record)
    seg.open_segment(store, "ft", record.config_sha256, first)
    kfp_api.set_state(first, "RUNNING")
    kfp_rest.KfpClient(kfp_api.url).terminate_run(first)  # in the UI; the exit hook's pods never left Pending
    kfp_api.end_workflow(first)
    assert kfp_api.runs[first]["state"] == "FAILED"  # as KFP 2.17 reports it: only its history says CANCELING
    later, _ = seg.open_segment(store, "ft", record.config_sha256, "scheduled-1")
    assert later.rounds == () and not store.exists("runs/ft/lease.json")
    st = fine_tune.status(store, "ft")
    assert st["state"] == "stopped" and st["stop"]["rule"] == "terminated"


def test_the_continuation_is_retried_with_backoff_and_never_duplicated(kfp_api, tmp_path, no_waiting):
    """Finding 3: 503, 429, a reset connection and a lost answer (the run was created) are ridden out with one run
    created; a retried exit task finds the run its first try created."""
    store = LocalStore(tmp_path / "store")
    cfg = small_config(rounds=6, **{"pipeline.rounds_per_run": 2})
    record = _started(store, kfp_api, cfg)
    first = _first_run(store, kfp_api, record)
    state, _ = seg.open_segment(store, "ft", record.config_sha256, first)
    _commit(store, state, [0, 1])
    kfp_api.fail("POST", "/apis/v2beta1/runs", 503, 429, "reset", "drop")
    kfp_api.fail("GET", "/apis/v2beta1/runs", 502)
    fine_tune.finish_on_cluster(store, "ft", record.config_sha256, first, "RUNNING")
    named = [r for r in kfp_api.runs.values() if r["display_name"] == "ft segment 2"]
    assert len(named) == 1 and store.get_json("runs/ft/segments/s0001.json")["next_kfp_run_id"] == \
        named[0]["run_id"]
    # doubling waits between POSTs (2, 4, 8, 16 s), and one of the lookup's own GET retries (2 s) after the 502
    assert no_waiting == [2.0, 2.0, 4.0, 8.0, 16.0]

    second = named[0]["run_id"]
    state, _ = seg.open_segment(store, "ft", record.config_sha256, second)
    _commit(store, state, [2, 3])
    kfp_api.fail("POST", "/apis/v2beta1/runs", *[503] * 6)  # the API is down for the whole first try
    with pytest.raises(kfp_rest.KfpUnavailable, match="gave up after 6 tries"):
        fine_tune.finish_on_cluster(store, "ft", record.config_sha256, second, "RUNNING")
    assert fine_tune.status(store, "ft")["state"] == "failed" and len(kfp_api.runs) == 2
    fine_tune.finish_on_cluster(store, "ft", record.config_sha256, second, "RUNNING")  # Argo retries the task
    named = [r for r in kfp_api.runs.values() if r["display_name"] == "ft segment 3"]
    assert len(named) == 1 and store.get_json("runs/ft/segments/s0002.json")["next_kfp_run_id"] == \
        named[0]["run_id"]
    s2 = store.get_json("runs/ft/segments/s0002.json")
    assert (s2["state"], s2["decision"]["action"]) == ("succeeded", "continue")  # the first try's outcome, kept
    assert fine_tune.status(store, "ft")["state"] == "running"
    # an exit task that posted the run and died before recording it: its retry finds the run by its name
    again = kfp_rest.submit_next(store, record, 3, fine_tune.segment_parameters(store, record))
    assert again == named[0]["run_id"] and len(kfp_api.runs) == 3


def test_a_timed_out_post_that_created_the_run_is_found_not_repeated(kfp_api, no_waiting):
    client = kfp_rest.KfpClient(kfp_api.url, timeout_s=0.3)
    kfp_api.slow_s = 1.0
    exp = client.experiment_id("dgrpo")
    body = kfp_rest.run_body(display_name="ft segment 7", experiment_id=exp, spec=_ir(), platform=None,
                             parameters={"run_id": "ft"})
    kfp_api.fail("POST", "/apis/v2beta1/runs", "timeout")
    run_id = client.create_run_once(body)
    assert list(kfp_api.runs) == [run_id]
    closed = kfp_rest.KfpClient(_closed_port_url(), attempts=2, timeout_s=1)
    with pytest.raises(kfp_rest.KfpUnavailable, match="gave up after 2 tries"):
        closed.get_run("x")


def _ir() -> dict:
    return {"pipelineInfo": {"name": "p"}, "root": {}, "deploymentSpec": {}, "components": {}, "schemaVersion": "2.1.0",
            "sdkVersion": "kfp-2.17.0"}


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_filters_survive_the_servers_second_url_decoding(kfp_api):
    client = kfp_rest.KfpClient(kfp_api.url)
    first = client.experiment_id("nightly+sd35 50%")
    assert client.experiment_id("nightly+sd35 50%") == first and len(kfp_api.experiments) == 1


def test_auth_failures_are_one_line_that_says_how_to_get_a_token(tmp_path, monkeypatch, no_waiting):
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "absent"))
    fake = FakeKfp(multi_user=True, token="good", namespace="team-a")
    proxy = FakeKfp(login_page=True)
    try:
        with pytest.raises(kfp_rest.KfpAuthError, match="HTTP 401, not authenticated") as e401:
            kfp_rest.KfpClient(fake.url, namespace="team-a").experiment_id("dgrpo")
        with pytest.raises(kfp_rest.KfpAuthError, match="HTTP 403, not allowed") as e403:
            kfp_rest.KfpClient(fake.url, token="stale", namespace="team-a").experiment_id("dgrpo")
        with pytest.raises(kfp_rest.KfpApiError, match="give --namespace"):
            kfp_rest.KfpClient(fake.url, token="good").experiment_id("dgrpo")
        with pytest.raises(kfp_rest.KfpAuthError, match="login page") as dex:
            kfp_rest.KfpClient(proxy.url).experiment_id("dgrpo")
        for err in (e401, e403, dex):
            text = str(err.value)
            assert "<html" not in text.lower() and "Log in" not in text and "\n" not in text
            assert "port-forward svc/ml-pipeline-ui 8080:80" in text and "--audience pipelines.kubeflow.org" in text
        from dgrpo_pipelines.errors import describe

        line = describe(dex.value)  # what the command line prints after "error: "
        assert "create token <service-account> --audience" in line and "internal error" not in line
    finally:
        fake.close()
        proxy.close()


def test_stop_now_terminates_the_segments_run_and_breaks_its_lease(kfp_api, tmp_path):
    store = LocalStore(tmp_path / "store")
    cfg = small_config(rounds=4, **{"pipeline.rounds_per_run": 2})
    record = _started(store, kfp_api, cfg)
    first = _first_run(store, kfp_api, record)
    seg.open_segment(store, "ft", record.config_sha256, first)
    kfp_api.set_state(first, "RUNNING")
    out = CliRunner().invoke(app, ["stop", "ft", "--store", str(store.root), "--now", "--host", kfp_api.url,
                                   "--reason", "wrong reward"])
    assert out.exit_code == 0, out.output
    assert f"terminated KFP run {first}" in out.output and "lease was broken" in out.output
    assert [p for m, p, _, _ in kfp_api.requests if m == "POST" and p.endswith(":terminate")] == [
        f"/apis/v2beta1/runs/{first}:terminate"]
    st = fine_tune.status(store, "ft")
    assert st["state"] == "stopped" and st["lease"] is None and st["stop"]["message"] == "wrong reward"
    assert store.get_json("runs/ft/segments/s0001.json")["decision"]["action"] == "stopped"
    again = CliRunner().invoke(app, ["stop", "ft", "--store", str(store.root), "--now", "--host", kfp_api.url])
    assert again.exit_code == 0 and "nothing to terminate" in again.output


def test_a_schedule_on_a_submitted_chain_is_its_watchdog(kfp_api, tmp_path):
    """`dgrpo schedule` on a submitted fine-tune keeps the chain submitting itself; each scheduled run ends at once
    while a live segment trains (no error recorded), and breaks the lease of a finished one and trains on."""
    from dgrpo_pipelines.remote import schedule

    from dgrpo.contracts.stages import STAGE_NAMES

    store = LocalStore(tmp_path / "store")
    images = {k: f"registry.example/dgrpo-{k}:1" for k in (*STAGE_NAMES, "control")}
    cfg = small_config(rounds=6, **{"pipeline.rounds_per_run": 2, "kubernetes.images": images,
                                    "kubernetes.kfp_endpoint": kfp_api.url})
    record = _started(store, kfp_api, cfg)
    first = _first_run(store, kfp_api, record)
    state, _ = seg.open_segment(store, "ft", record.config_sha256, first)
    schedule(kfp_rest.KfpClient(kfp_api.url), cfg, store.uri, "ft", "0 0 */6 * * *")
    chain_record = store.get_json("runs/ft/chain.json")
    assert chain_record["mode"] == "kfp" and chain_record["kfp"]["watchdog_cron"] == "0 0 */6 * * *"
    assert store.exists("runs/ft/lease.json")  # the live segment keeps its lease

    kfp_api.set_state(first, "RUNNING")
    idle, _ = seg.open_segment(store, "ft", record.config_sha256, "scheduled-1")
    assert idle.rounds == () and not seg.errors(store, "ft")
    _commit(store, state, [0])
    kfp_api.set_state(first, "FAILED")  # the update of round 1 was OOM-killed; its exit pod never ran
    watched, _ = seg.open_segment(store, "ft", record.config_sha256, "scheduled-2")
    assert (watched.segment, watched.rounds) == (2, (1, 2)) and store.list("runs/ft/lease-breaks")
