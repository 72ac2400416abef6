"""The report's throughput: images/s and s/round from the times in a run's records, exact by construction on
records written here, and the real records of a short in-process run."""

import dataclasses
import datetime

import pytest

from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.report.data import RunData
from dgrpo.runtime.report.page import _throughput
from dgrpo.runtime.report.summary import load_events
from dgrpo.runtime.report.throughput import Throughput, run_throughput
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore

T0 = datetime.datetime(2026, 1, 1, 10, 0, 0, tzinfo=datetime.UTC)


def _at(seconds: float) -> str:
    return (T0 + datetime.timedelta(seconds=seconds)).isoformat()


def _event(store, stage: str, round_index: int, seconds: float, shard: int | None = None, samples: float = 16):
    metrics = {"samples": samples} if stage == "rollout" else {}
    suffix = "" if shard is None else f"-s{shard:03d}"
    event = {"stage": stage, "round": round_index, "metrics": metrics, "outputs": {}, "finished_at": _at(seconds)}
    store.put_json(f"runs/t/events/r{round_index:04d}-{stage}{suffix}.json", event)


def _segment(store, n: int, rounds: list[int], started: float, finished: float | None) -> None:
    record = {"segment": n, "rounds": rounds, "started_at": _at(started)[:19] + "+00:00"}  # to the second
    if finished is not None:
        record["finished_at"] = _at(finished)[:19] + "+00:00"
    store.put_json(f"runs/t/segments/s{n:04d}.json", record)


def test_seconds_per_round_between_rounds_of_one_segment(tmp_path):
    store = LocalStore(tmp_path / "store")
    _event(store, "evaluate", 0, 2)  # the base model's evaluation: the first segment's start-up
    for r, (rollout, update) in enumerate([(5, 10), (15, 20), (25, 30)]):
        _event(store, "rollout", r, rollout - 1, shard=0, samples=8)
        _event(store, "rollout", r, rollout, shard=1, samples=8)
        _event(store, "update", r, update)
    _event(store, "evaluate", 1, 12)  # after round 0: ends it
    # segment 0 failed in round 3, which segment 1 trained again five minutes later, with round 4
    _event(store, "rollout", 3, 305)
    _event(store, "update", 3, 310)
    _event(store, "rollout", 4, 312)
    _event(store, "update", 4, 316.5)
    _event(store, "evaluate", 5, 316)
    _segment(store, 0, [0, 1, 2, 3], started=0.4, finished=31)
    _segment(store, 1, [3, 4], started=300, finished=None)  # still running
    t = run_throughput(store, "t", load_events(store, "t"))
    # intervals 12 -> 20, 20 -> 30, 310 -> 316.5: 24.5 s for 3 rounds of 16 images
    assert t == Throughput(images_per_s=48 / 24.5, seconds_per_round=24.5 / 3, rounds_measured=3,
                           seconds_per_round_with_startup=(30 + 16.5) / 5)


def test_without_times_or_a_second_round_there_is_no_throughput(tmp_path):
    store = LocalStore(tmp_path / "store")
    _event(store, "rollout", 0, 5)
    _event(store, "update", 0, 10)
    _event(store, "rollout", 1, 15)
    _event(store, "update", 1, 20)
    _segment(store, 0, [0], 0, 11)
    _segment(store, 1, [1], 12, 21)
    assert run_throughput(store, "t", load_events(store, "t")) is None  # one round a segment
    old = [dataclasses.replace(e, finished_at="") for e in load_events(store, "t")]
    assert run_throughput(store, "t", old) is None  # records from before events carried their time


def test_the_page_shows_each_runs_throughput():
    measured = RunData("fast", [], [], None, [], None, None, Throughput(2.5, 6.4, 3, 7.25))
    unmeasured = RunData("short", [], [], None, [], None, None, None)
    html = _throughput([measured, unmeasured])
    assert "<td class='num'>2.5</td><td class='num'>6.4</td><td class='num'>3</td><td class='num'>7.25</td>" in html
    assert "<td>short</td><td colspan='4'>not measured" in html


def test_a_real_run_records_its_times(tmp_path):
    from reliability_helpers import tiny_config

    store = LocalStore(tmp_path / "store")
    cfg = tiny_config(rounds=2, **{"pipeline.rounds_per_run": 2})
    start = datetime.datetime.now(datetime.UTC)
    run_inprocess(StageContext(cfg, store, "t"))
    elapsed = (datetime.datetime.now(datetime.UTC) - start).total_seconds()
    events = load_events(store, "t")
    assert all(e.finished_at for e in events)
    t = run_throughput(store, "t", events)
    images = cfg.sampling.prompts_per_round * cfg.sampling.group_size
    assert t is not None and t.rounds_measured == 1 and 0 < t.seconds_per_round < elapsed
    assert t.images_per_s == pytest.approx(images / t.seconds_per_round, rel=1e-12)
    # a segment's started_at is recorded to the second, so the start-up measured from it may be up to 1 s long
    assert 0 < t.seconds_per_round_with_startup < elapsed + 1.0
