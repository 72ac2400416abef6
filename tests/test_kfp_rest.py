"""submit, schedule and the chain's continuation against a strict fake of the KFP v2beta1 REST API (kfp_fake)."""

import json

import pytest
from conftest import small_config
from dgrpo_pipelines.cli import app
from kfp_fake import FakeKfp, Rejected, check
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
            "--set", "rounds=30", "--set", "pipeline.shards=2"]
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
    assert record["kfp"]["experiment_id"] == exp_id(kfp_api) and record["mode"] == "kfp"
    assert kfp_rest.get_pipeline(store, record["kfp"]["pipeline_sha256"]) == (ir, platform)  # what continues
    assert fine_tune.read_claim(store, "ft-1")["recipe_sha256"] == load_config(None).recipe_sha256()  # rounds: not

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
            "0 0 2 * * *", "--set", "rounds=100"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    (job,) = kfp_api.posted("/apis/v2beta1/recurringruns")
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert (job["max_concurrency"], job["mode"], job["no_catchup"]) == ("1", "ENABLE", True)
    store = LocalStore(tmp_path / "store")
    assert job["runtime_config"]["parameters"]["run_id"] == "ft-nightly"
    assert store.get_json("runs/ft-nightly/chain.json")["mode"] == "schedule"
    again = CliRunner().invoke(app, args)  # scheduling it again continues the same fine-tune (claimed once)
    assert again.exit_code == 0, again.output
    bad = CliRunner().invoke(app, args[:8] + ["0 2 * * *"])
    assert bad.exit_code != 0 and "6 fields" in bad.output
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
    state, base_due = seg.open_segment(store, "ft", record["config_sha256"], "kfp-run-1")
    assert base_due and state.rounds == (0, 1) and store.exists("runs/ft/lease.json")
    # the run "succeeded" without committing (an injected no-op): counted as a failure, retried by a new run
    text = fine_tune.finish_on_cluster(store, "ft", record["config_sha256"], "kfp-run-1", "COMPLETE")
    (run,) = multi_user.posted("/apis/v2beta1/runs")
    assert run["display_name"] == "ft segment 2" and run["experiment_id"] == record["kfp"]["experiment_id"]
    assert run["runtime_config"]["parameters"] == fine_tune.segment_parameters(store, record)
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == cfg.name
    headers = [h for m, p, _, h in multi_user.requests if p == "/apis/v2beta1/runs"]
    assert headers[0]["Authorization"] == "Bearer sa-token-123"
    assert not store.exists("runs/ft/lease.json")  # released before the next segment starts
    segment_record = store.get_json("runs/ft/segments/s0001.json")
    assert segment_record["next_kfp_run_id"] == run_id_of(multi_user)
    assert segment_record["decision"]["action"] == "retry" and "next segment: KFP run" in text

    seg.open_segment(store, "ft", record["config_sha256"], "kfp-run-2")  # fails again: max_retries 1 reached
    fine_tune.finish_on_cluster(store, "ft", record["config_sha256"], "kfp-run-2", "FAILED")
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
    seg.open_segment(store, "ft", record["config_sha256"], "kfp-run-1")
    with pytest.raises(kfp_rest.KfpApiError, match="HTTP 401"):
        fine_tune.finish_on_cluster(store, "ft", record["config_sha256"], "kfp-run-1", "FAILED")
    st = fine_tune.status(store, "ft")
    assert st["state"] == "failed" and "submitting the next segment failed" in st["reason"]
    assert st["lease"] is None
