"""MLflow tracking (`dgrpo.runtime.tracking`) against a real MLflow tracking server started on 127.0.0.1: a toy
fine-tune of two segments, killed with SIGKILL inside its first segment's MLflow logging (after the run was created
and filled, before the store recorded it), then resumed, ends as one MLflow run holding every round once; and
MLflow's UI shows it (headless Chromium screenshots, their paths printed)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support import small_config

from dgrpo.config import ConfigError, load_config
from dgrpo.runs.records import Event
from dgrpo.runtime import tracking
from dgrpo.runtime.engine import run_inprocess
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore

REPO = Path(__file__).resolve().parents[1]
SERVER = Path(os.environ.get("DGRPO_MLFLOW_SERVER", REPO / ".venv-mlflow" / "bin" / "mlflow"))
"""The full `mlflow` (server and UI) in its own venv: `make test` builds it (requirements-mlflow-server.txt)."""
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
RUN_ID = "ft-mlflow"
KILL_IN_TRACKING = """
import os, signal, sys
from pathlib import Path
from dgrpo.config import config_from_json
from dgrpo.runtime import tracking
from dgrpo.runtime.engine import run_inprocess
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import open_store

def die(*args, **kwargs):  # the MLflow run is created and filled; the store's record of it not yet written
    print("killed in tracking", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

tracking.write_record = die
config = config_from_json(Path(sys.argv[1]).read_text())
run_inprocess(StageContext(config, open_store(sys.argv[2]), sys.argv[3]))
print("finished without reaching the fault point", flush=True)
"""


def _config(uri: str, **overrides):
    return small_config(**{"rounds": 2, "pipeline.rounds_per_run": 1, "eval.every": 1, "eval.num_steps": 2,
                           "sampling.group_size": 4, "train.batch_size": 8, "train.micro_batch_size": 4,
                           "eval.samples_per_prompt": 2, "tracking.mlflow.enabled": True,
                           "tracking.mlflow.uri": uri} | overrides)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A tracking server with a sqlite backend and served artifacts under tmp_path; its URL."""
    if not SERVER.exists():
        pytest.skip(f"no MLflow server at {SERVER}: `make test` builds .venv-mlflow (requirements-mlflow-server.txt)")
    port = _free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    proc = subprocess.Popen([str(SERVER), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp_path / "mlflow-artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, tmp_path / "mlflow-server.log")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: a session of their own
        proc.wait(timeout=30)
        log.close()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the MLflow server exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the MLflow server did not answer within {timeout_s} s: {log.read_text()[-2000:]}")


@pytest.mark.e2e
def test_a_killed_and_resumed_fine_tune_is_one_mlflow_run_with_each_round_once(mlflow_server, tmp_path):
    pytest.importorskip("mlflow", reason="the MLflow client (extra 'mlflow') is not installed")
    from mlflow.tracking import MlflowClient

    store_dir, config = tmp_path / "store", _config(mlflow_server)
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json())
    killed = subprocess.run([sys.executable, "-c", KILL_IN_TRACKING, str(config_file), str(store_dir), RUN_ID],
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr[-3000:]
    store = LocalStore(store_dir)
    assert tracking.read_record(store, RUN_ID) is None  # killed before recording the MLflow run
    run_inprocess(StageContext(config, store, RUN_ID), resume_from=RUN_ID)
    tracking.log_segment(store, RUN_ID, config)  # a retried exit task logs nothing twice

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(config.name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    record = tracking.read_record(store, RUN_ID)
    assert record["mlflow_run_id"] == run.info.run_id and "error" not in record
    _check_run(client, run, store, config)
    _screenshots(record["run_url"], run.info.run_name, tmp_path)


def _check_run(client, run, store: LocalStore, config) -> None:
    mlflow_id = run.info.run_id
    assert run.data.params == tracking.recipe_params(config)
    for key in ("reward/reward_mean", "update/kl", "update/policy_loss", "rollout/mean_log_prob"):
        assert [m.step for m in client.get_metric_history(mlflow_id, key)] == [1, 2], key
    for key in ("eval/reward", "eval/diversity", "eval/mode_entropy"):
        assert [m.step for m in client.get_metric_history(mlflow_id, key)] == [0, 1, 2], key
    final = store.get_json(f"runs/{RUN_ID}/eval/r0002.json")["metrics"]["reward"]
    assert run.data.metrics["eval/reward"] == pytest.approx(final)
    grids = sorted(a.path for a in client.list_artifacts(mlflow_id, "grids"))
    assert grids == ["grids/r0000.png", "grids/r0001.png", "grids/r0002.png"]
    assert {"report.html", "config.json"} <= {a.path for a in client.list_artifacts(mlflow_id)}
    report = Path(client.download_artifacts(mlflow_id, "report.html")).read_text()
    assert RUN_ID in report and "after round 2" in report
    tags = run.data.tags
    assert tags["dgrpo.run_id"] == RUN_ID and tags["dgrpo.recipe_sha256"] == config.recipe_sha256()
    assert tags["dgrpo.config_sha256"] == config.sha256() and tags["dgrpo.rounds_done"] == "2"
    assert tags["dgrpo.state"] == "done" and run.info.status == "FINISHED"
    best = store.get_json(f"runs/{RUN_ID}/best.json")
    assert tags["dgrpo.best.round"] == str(best["round"]) and tags["dgrpo.best.metric"] == "reward"
    assert tags["dgrpo.best.adapter_uri"].startswith(("file://", "base model"))
    assert tags["dgrpo.last.adapter_uri"].startswith(f"{store.uri.rstrip('/')}/objects/")


def _screenshots(run_url: str, run_name: str, tmp_path: Path) -> None:
    """The run's page and its metric charts in MLflow's UI, as PNGs under tmp_path (paths printed)."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (extra 'dev') is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(run_url, wait_until="load")  # the UI polls: the network never goes idle
            page.get_by_text(run_name, exact=True).first.wait_for(timeout=30_000)
            _screenshot(page, tmp_path / "mlflow-ui-run.png", "the run's overview: status, tags, params")
            page.get_by_text("Model metrics", exact=True).first.click(timeout=30_000)
            page.get_by_placeholder("Search metric charts").fill("reward")
            page.get_by_text("train_reward", exact=True).first.wait_for(timeout=30_000)
            _screenshot(page, tmp_path / "mlflow-ui-metrics.png", "the reward charts, one point per round")
        finally:
            browser.close()


def _screenshot(page, path: Path, what: str) -> None:
    from PIL import Image

    page.wait_for_timeout(1500)  # charts draw after their data arrives
    page.screenshot(path=str(path), full_page=True)
    print(f"MLflow UI screenshot ({what}): {path}")
    with Image.open(path) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert image.width >= 1400 and len(colours) > 50, (path, len(colours))


def test_metric_points_step_training_rounds_from_one_evaluations_by_rounds_done_and_combine_shards():
    events = [Event(stage="reward", round=0, metrics={"reward_mean": 0.2, "samples": 8.0}, outputs={}, shard=0),
              Event(stage="reward", round=0, metrics={"reward_mean": 0.5, "samples": 24.0}, outputs={}, shard=1),
              Event(stage="update", round=0, metrics={"kl": 0.01, "bad": float("nan")}, outputs={}),
              Event(stage="evaluate", round=0, metrics={"reward": 0.1}, outputs={}),
              Event(stage="evaluate", round=1, metrics={"reward": 0.3}, outputs={})]
    points = {k: v for k, (v, _) in tracking.metric_points(events).items()}
    assert points == {("reward/reward_mean", 1): pytest.approx(0.425), ("reward/samples", 1): 32.0,
                      ("update/kl", 1): 0.01, ("eval/reward", 0): 0.1, ("eval/reward", 1): 0.3}


def test_recipe_params_are_the_recipe_clipped_to_mlflows_limit():
    config = small_config(**{"eval.prompts": [f"a red square number {i}" for i in range(40)]})
    params = tracking.recipe_params(config)
    assert params["train.learning_rate"] == "0.003" and "rounds" not in params and "pipeline.shards" not in params
    assert len(params["eval.prompts"]) == tracking.PARAM_VALUE_LIMIT and params["eval.prompts"].endswith("...")


def test_tracking_is_off_by_default_and_its_failure_never_fails_the_fine_tune(tmp_path, monkeypatch, caplog):
    store = LocalStore(tmp_path / "store")
    tracking.log_segment(store, "ft", small_config())  # off: nothing imported, nothing written
    assert tracking.read_record(store, "ft") is None
    pytest.importorskip("mlflow", reason="the MLflow client (extra 'mlflow') is not installed")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    config = _config(f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    tracking.log_segment(store, "ft", config)
    assert "MLflow tracking failed, the fine-tune goes on" in caplog.text
    assert tracking.read_record(store, "ft")["error"]


def test_the_tracking_uri_comes_from_the_config_else_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert tracking.tracking_uri(_config("http://from-config:5000")) == "http://from-config:5000"
    assert tracking.tracking_uri(_config(None)) == "http://from-env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ConfigError, match="tracking.mlflow.uri"):
        tracking.tracking_uri(_config(None))
    with pytest.raises(ConfigError, match="tracking.mlflow.uri.*credentials"):
        load_config(None, {"tracking.mlflow.uri": "https://alice@mlflow.example.com"})
    assert json.loads(load_config(None, {}).to_json())["tracking"]["mlflow"]["enabled"] is False


@pytest.mark.e2e
def test_a_fine_tune_logs_into_the_run_kfps_mlflow_plugin_registered(mlflow_server, tmp_path, monkeypatch):
    """KFP 2.17's MLflow plugin registers each KFP run as an MLflow run tagged `kfp.pipeline_run_id` and gives each
    task pod a nested run (MLFLOW_RUN_ID, tagged mlflow.parentRunId): the fine-tune's first segment logs into the
    plugin's run instead of creating another, and a later segment's plugin run points at it."""
    pytest.importorskip("mlflow", reason="the MLflow client (extra 'mlflow') is not installed")
    from mlflow.tracking import MlflowClient

    config = _config(mlflow_server, rounds=1)
    client = MlflowClient(mlflow_server)
    experiment = client.create_experiment(config.name)
    plugin_run = client.create_run(experiment, tags={tracking.KFP_RUN_TAG: "kfp-run-1"}).info.run_id
    task_run = client.create_run(experiment, tags={tracking.PARENT_TAG: plugin_run}).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", task_run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    store = LocalStore(tmp_path / "store")
    run_inprocess(StageContext(config, store, RUN_ID))

    assert tracking.read_record(store, RUN_ID)["mlflow_run_id"] == plugin_run
    adopted = client.get_run(plugin_run)
    assert adopted.data.tags[tracking.RUN_TAG] == RUN_ID and adopted.data.metrics
    assert {r.info.run_id for r in client.search_runs([experiment])} == {plugin_run, task_run}  # none created
