"""A fine-tune as a chain of segments: run ids and their ownership, leases, the commit chain, resume checks,
retries and guard rails, through the in-process engine and the store-level segment steps every engine shares."""

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dgrpo_pipelines.cli import app
from support import S3_BUCKET, small_config
from typer.testing import CliRunner

from dgrpo.runs.commits import CommitError, ResumeError, commit_round
from dgrpo.runs.keys import validate_run_id
from dgrpo.runs.ownership import OwnershipError
from dgrpo.runs.records import ChainRecord
from dgrpo.runs.segments import read_chain
from dgrpo.runtime import component_io as cio
from dgrpo.runtime import fine_tune
from dgrpo.runtime import segment as seg
from dgrpo.runtime.engine import ChainFailed, run_inprocess
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import ArtifactRef, LocalStore

PLUGINS = Path(__file__).parent / "plugins"
FAST = {"eval.every": 10, "eval.num_steps": 2, "eval.samples_per_prompt": 2}


def _cfg(**overrides):
    return small_config(**FAST | overrides)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-lead", "trail.", "a..b", "x" * 101, "sp ace", "ü"])
def test_a_run_id_has_a_character_set_wherever_it_enters(bad, tmp_path):
    with pytest.raises(ValueError, match="a run id is 1 to 100 letters"):
        validate_run_id(bad)
    out = CliRunner().invoke(app, ["run", "--run-id", bad, "--output", str(tmp_path)])
    assert out.exit_code != 0 and "a run id is" in out.output
    with pytest.raises(ValueError, match="pipeline parameter 'run_id'"), cio.task(str(tmp_path), bad, "rollout"):
        pass
    assert not (tmp_path / "store").exists() and not (tmp_path / "runs").exists()  # nothing written anywhere


def test_valid_run_ids():
    for good in ("ft", "sd35m-pickscore-20260101-120000", "A.b_c-9", "x" * 100):
        assert validate_run_id(good) == good


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_one_run_id_claimed_by_many_at_once_has_one_owner(backend, tmp_path, request):
    store = LocalStore(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_store")
    cfg = _cfg()

    def start(i: int):
        try:
            return fine_tune.start(store, cfg, "race")
        except OwnershipError as exc:
            return exc

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(start, range(6)))
    won = [r for r in results if isinstance(r, ChainRecord)]
    assert len(won) == 1 and all("run id 'race' is taken" in str(r) for r in results if r not in won)
    assert sorted(k.rsplit("/", 1)[1] for k in store.list("runs/race")) == ["chain.json", "claim.json", "driver.json"]


def test_two_segments_never_train_at_once_and_a_stale_lease_has_a_way_out(tmp_path):
    store = LocalStore(tmp_path / "store")
    record = fine_tune.start(store, _cfg(rounds=4, **{"pipeline.rounds_per_run": 2}), "ft")
    first, _ = seg.open_segment(store, "ft", record.config_sha256, "run-a")
    with pytest.raises(OwnershipError, match=f"being trained by segment 1 .*dgrpo unlock ft --holder {first.holder}"):
        seg.open_segment(store, "ft", record.config_sha256, "run-b")
    assert store.list("runs/ft/segments") == ["runs/ft/segments/s0001.json"]
    assert seg.begin_round(store, first, 0).round == 0

    # run-a dies without its exit task: its lease stays until an operator releases exactly that lease
    st = fine_tune.status(store, "ft")
    assert st["state"] == "running" and st["lease"]["holder"] == first.holder
    assert f"dgrpo unlock ft --holder {first.holder}" in fine_tune.format_status(st)
    out = CliRunner().invoke(app, ["unlock", "ft", "--holder", "someone-else", "--store", str(store.root)])
    assert out.exit_code == 1 and store.exists("runs/ft/lease.json")
    out = CliRunner().invoke(app, ["unlock", "ft", "--holder", first.holder, "--store", str(store.root)])
    assert out.exit_code == 0, out.output
    second, _ = seg.open_segment(store, "ft", record.config_sha256, "run-b")
    assert second.segment == 2 and second.rounds == (0, 1)
    # run-a wakes up: refused at its next round and at its commit, so nothing interleaves
    with pytest.raises(OwnershipError, match="no longer held"):
        seg.begin_round(store, first, 0)
    ctx = seg.context(store, first)
    with pytest.raises(OwnershipError, match="no longer held"):
        _commit_as_update(ctx, 0, _ref("a"), _ref("o"), None)
    assert not store.list("runs/ft/commits")


def test_a_chain_stopped_by_hand_trains_no_further_round_and_submits_nothing(tmp_path):
    store = LocalStore(tmp_path / "store")
    record = fine_tune.start(store, _cfg(rounds=4, **{"pipeline.rounds_per_run": 2}), "ft", mode="kfp",
                             kfp={"endpoint": "http://kfp.invalid"})  # a cluster chain: it would submit
    state, _ = seg.open_segment(store, "ft", record.config_sha256, "run-a")
    out = CliRunner().invoke(app, ["stop", "ft", "--store", str(store.root), "--reason", "budget spent"])
    assert out.exit_code == 0, out.output
    with pytest.raises(seg.ChainStopped, match="stopped by hand: budget spent"):
        seg.begin_round(store, state, 0)
    submitted = []
    end = seg.finish_segment(store, "ft", record.config_sha256, "run-a", "FAILED",
                             lambda *a: submitted.append(a) or "x")
    assert end.decision.action == "stopped" and not submitted and not store.exists("runs/ft/lease.json")
    assert seg.open_segment(store, "ft", record.config_sha256, "run-b")[0].rounds == ()  # ends at once
    assert "stopped by hand before round 1: budget spent" in fine_tune.format_status(fine_tune.status(store, "ft"))
    fine_tune.start(store, _cfg(rounds=4, **{"pipeline.rounds_per_run": 2}), "ft", resume_from="ft")
    assert seg.open_segment(store, "ft", record.config_sha256, "run-c")[0].rounds == (0, 1)  # resumed


def _ref(c: str) -> ArtifactRef:
    return ArtifactRef(kind="lora_adapter", uri=f"file:///x/{c}", sha256=c * 64, size=1)


def test_a_commit_extends_its_own_chain(tmp_path):
    store = LocalStore(tmp_path / "store")
    fine_tune.start(store, _cfg(), "ft")
    ctx = StageContext(_cfg(), store, "ft")
    _commit_as_update(ctx, 0, _ref("a"), _ref("o"), None)
    _commit_as_update(ctx, 0, _ref("a"), _ref("o"), None)  # a retried update that had committed: its own record
    with pytest.raises(CommitError, match="round 1 is already committed with adapter aaaa"):
        _commit_as_update(ctx, 0, _ref("b"), _ref("o"), None)
    with pytest.raises(CommitError, match="does not extend the fine-tune's chain, whose next round is 1"):
        _commit_as_update(ctx, 2, _ref("c"), _ref("o"), _ref("a"))
    with pytest.raises(CommitError, match="trained from adapter bbbb"):
        _commit_as_update(ctx, 1, _ref("c"), _ref("o"), _ref("b"))
    _commit_as_update(ctx, 1, _ref("c"), _ref("o"), _ref("a"))
    assert [store.get_json(k)["parent"] for k in store.list("runs/ft/commits")] == [None, "a" * 64]


def test_a_mistyped_resume_starts_nothing_and_a_changed_recipe_is_named(tmp_path):
    store = LocalStore(tmp_path / "store")
    fine_tune.start(store, _cfg(), "flowgrpo-nightly")
    with pytest.raises(ResumeError, match="no fine-tune of that id .*did you mean flowgrpo-nightly"):
        fine_tune.start(store, _cfg(), "flowgrpo-nigthly", resume_from="flowgrpo-nigthly")
    assert not store.list("runs/flowgrpo-nigthly")
    out = CliRunner().invoke(app, ["run", "--resume", "flowgrpo-nigthly", "--store", str(store.root), "--output",
                                   str(tmp_path / "out"), "--set", "rounds=1"])
    assert out.exit_code == 1 and "did you mean flowgrpo-nightly" in out.output
    assert not store.list("runs/flowgrpo-nigthly") and not (tmp_path / "out" / "runs").exists()
    with pytest.raises(ResumeError, match=r"differs from the fine-tune's in lora.rank, train.learning_rate;"):
        fine_tune.start(store, _cfg(**{"lora.rank": 4, "train.learning_rate": 1e-3}), "flowgrpo-nightly",
                        resume_from="flowgrpo-nightly")
    deployment = {"rounds": 40, "pipeline.shards": 2, "kubernetes.defaults.cpu_request": "8",
                  "sampling.batch_size": 4, "pipeline.rounds_per_run": 5}
    resumed = fine_tune.start(store, _cfg(**deployment), "flowgrpo-nightly", resume_from="flowgrpo-nightly")
    assert resumed.rounds == 40 and resumed.recipe_sha256 == _cfg().recipe_sha256()
    with pytest.raises(OwnershipError, match="is taken"):
        fine_tune.start(store, _cfg(), "flowgrpo-nightly")  # a fresh start never reuses a run id


def test_a_failed_segment_is_retried_from_the_last_commit_then_the_chain_stops(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    store = LocalStore(tmp_path / "store")
    flaky = {"reward.name": "flaky_rewards:flaky", "pipeline.max_retries": 1, "rounds": 1}
    once = _cfg(**flaky, **{"reward.options": {"marker": str(tmp_path / "once"), "fail_times": 1}})
    out = run_inprocess(StageContext(once, store, "flaky"))
    segments = [store.get_json(k) for k in store.list("runs/flaky/segments")]
    assert [(s["state"], s["decision"]["action"]) for s in segments] == [("failed", "retry"), ("succeeded", "done")]
    assert "injected failure 1 of 1" in segments[0]["error"] and segments[1]["start_round"] == 0
    assert store.get_json("runs/flaky/commits/r000000.json")["adapter"]["sha256"] == out["adapter"].sha256

    always = _cfg(**flaky, **{"reward.options": {"marker": str(tmp_path / "always"), "fail_times": 99}})
    with pytest.raises(ChainFailed, match="2 segments in a row failed .*max_retries 1.*injected failure 2 of 99"):
        run_inprocess(StageContext(always, store, "doomed"))
    st = fine_tune.status(store, "doomed")
    assert (st["state"], st["segments"], st["rounds_done"], st["lease"]) == ("failed", 2, 0, None)
    assert st["last_error"]["task"] == "evaluate" and "injected failure 2 of 99" in st["last_error"]["error"]
    shown = CliRunner().invoke(app, ["status", "doomed", "--store", str(store.root)])
    assert shown.exit_code == 0 and "failed - 2 segments in a row" in shown.output
    assert "last error" in shown.output and "task evaluate" in shown.output


def test_a_guard_rail_stops_the_chain_and_status_gives_the_rule_and_its_numbers(tmp_path):
    store = LocalStore(tmp_path / "store")
    guarded = _cfg(rounds=1, **{"pipeline.guard_rails.diversity_floor": 1000.0})
    run_inprocess(StageContext(guarded, store, "ft"))  # the base model's diversity is far below the floor
    st = fine_tune.status(store, "ft")
    assert st["state"] == "stopped" and st["rounds_done"] == 0 and not store.list("runs/ft/commits")
    assert st["stop"]["rule"] == "collapse-floor" and st["stop"]["values"]["floor"] == 1000.0
    assert 0 < st["stop"]["values"]["value"] < 1000.0
    shown = CliRunner().invoke(app, ["status", "ft", "--store", str(store.root)])
    assert "guard rail collapse-floor before round 1" in shown.output
    assert st["best"]["round"] == 0 and st["best"]["adapter"] is None  # the base model, so far

    relaxed = _cfg(rounds=1, **{"pipeline.guard_rails.diversity_floor": 0.0})  # a person looked and resumed
    out = run_inprocess(StageContext(relaxed, store, "ft"), resume_from="ft")
    st = fine_tune.status(store, "ft")
    assert (st["state"], st["rounds_done"], st["stop"]) == ("done", 1, None)
    best = store.get_json("runs/ft/best.json")
    assert best["metric"] == "reward" and best["round"] in (0, 1)
    assert best["round"] == 0 or best["adapter"]["sha256"] == out["adapter"].sha256


def test_the_image_monitor_rule_stops_a_chain_on_the_rollouts_it_trained_on(tmp_path):
    """The toy's images are about half black background: a 0.2 limit on the rollouts' dark pixels stops the chain at
    the first evaluation after training, with the rounds and the mean the reward stage recorded; 0.9 does not."""
    store = LocalStore(tmp_path / "store")
    knobs = {"eval.every": 1, "pipeline.guard_rails.monitor_max": {"dark_pixel_share": 0.2}}
    run_inprocess(StageContext(_cfg(rounds=2, **knobs), store, "ft"))
    st = fine_tune.status(store, "ft")
    assert st["state"] == "stopped" and st["rounds_done"] == 1 and st["stop"]["rule"] == "degenerate-images"
    recorded = store.get_json("runs/ft/events/r0000-reward.json")["metrics"]["dark_pixel_share"]
    assert st["stop"]["values"]["value"] == pytest.approx(recorded) and st["stop"]["values"]["rounds"] == [1, 1]
    loose = knobs | {"pipeline.guard_rails.monitor_max": {"dark_pixel_share": 0.9}}
    run_inprocess(StageContext(_cfg(rounds=2, **loose), store, "loose"))
    assert fine_tune.status(store, "loose")["state"] == "done"


def _run(store_uri: str, out: Path, run_id: str, *extra: str) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "dgrpo"), "run", "--engine", "inprocess", "--run-id", run_id,
           "--store", store_uri, "--output", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_the_same_run_id_twice_at_once_one_fails_cleanly(backend, tmp_path, request):
    """Two `dgrpo run --run-id dup` processes at once: one trains, the other stops with one line before writing
    anything of the fine-tune; its commits form one chain."""
    if backend == "s3":
        request.getfixturevalue("s3_server")
        store_uri = f"s3://{S3_BUCKET}/dup-{uuid.uuid4().hex[:8]}"
    else:
        store_uri = str(tmp_path / "store")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(_cfg(rounds=2, **{"pipeline.rounds_per_run": 1}).to_dict()))
    procs = [_run(store_uri, tmp_path / f"out{i}", "dup", "--config", str(config)) for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    loser = outs[[p.returncode for p in procs].index(1)]
    # the refusal depends on when the loser reads the store: before the winner's first commit the run id is
    # claimed; after it (a loaded machine can start the second process that late) the run has committed rounds
    refusals = ("error: run id 'dup' is taken", "error: run dup already has committed rounds")
    assert any(refusal in loser for refusal in refusals) and "Traceback" not in loser, loser
    from dgrpo.store import open_store

    store = open_store(store_uri)
    commits = [store.get_json(k) for k in store.list("runs/dup/commits")]
    assert [c["round"] for c in commits] == [0, 1] and commits[1]["parent"] == commits[0]["adapter"]["sha256"]
    segments = [store.get_json(k) for k in store.list("runs/dup/segments")]
    assert len(segments) == 2 and len({s["holder"] for s in segments}) == 2
    assert len({c["lease"] for c in commits}) == 2  # each round under its own segment's lease


def test_a_25000_prompt_file_trains(tmp_path):
    """The prompt set travels as an object of the store: a 25,000-prompt file costs the config a hash."""
    prompts = tmp_path / "prompts.txt"
    captions = ["a red square", "a red cross", "a green square", "a green cross", "a blue square", "a blue cross"]
    prompts.write_text("".join(f"{captions[i % 6]}\n" for i in range(25_000)))
    cfg = _cfg(rounds=1, **{"sampling.prompts_file": str(prompts)})
    assert len(cfg.sampling.prompts) == 25_000
    store = LocalStore(tmp_path / "store")
    out = run_inprocess(StageContext(cfg, store, "big"))
    record = store.get_json("runs/big/chain.json")
    params = fine_tune.segment_parameters(store, read_chain(store, "big"))
    assert len(json.dumps(params)) < 400
    config_file = store.local_path(seg_ref(store, record["config_sha256"]))
    assert config_file.stat().st_size < 10_000 and out["adapter"] is not None
    rollouts = store.get_json("runs/big/events/r0000-rollout.json")
    assert rollouts["metrics"]


def seg_ref(store, sha):
    from dgrpo.stages.shared.run_config import object_ref

    return object_ref(store, "config", sha)


def test_a_dead_local_drivers_lease_is_broken_on_resume_with_a_record(tmp_path):
    store = LocalStore(tmp_path / "store")
    cfg = _cfg(rounds=4, **{"pipeline.rounds_per_run": 2})
    record = fine_tune.start(store, cfg, "ft")
    state, _ = seg.open_segment(store, "ft", record.config_sha256, "local-1")
    assert not fine_tune.release_if_driver_died(store, "ft")  # this process, the driver, is alive
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    driver = store.get_json("runs/ft/driver.json")
    store.put_json("runs/ft/driver.json", driver | {"pid": int(dead)})  # killed -9 mid-segment
    fine_tune.start(store, cfg, "ft", resume_from="ft")
    assert not store.exists("runs/ft/lease.json")
    (broken,) = [store.get_json(k) for k in store.list("runs/ft/lease-breaks")]
    assert broken["lease"]["holder"] == state.holder and broken["by"].startswith("dgrpo run --resume ft on ")
    assert f"pid {dead}" in broken["reason"]
    assert store.get_json("runs/ft/segments/s0001.json")["state"] == "failed"
    assert seg.open_segment(store, "ft", record.config_sha256, "local-2")[0].segment == 2


def _commit_as_update(ctx, round_index, adapter, optimizer_state, parent) -> None:
    """`commit_round` as the update stage calls it, under the context's lease and recipe."""
    commit_round(ctx.store, ctx.run_id, round_index=round_index, adapter=adapter, optimizer_state=optimizer_state,
                 parent=parent, lease=ctx.lease, recipe_sha256=ctx.config.recipe_sha256())
