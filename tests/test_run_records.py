"""dgrpo.runs: typed records read what stores written before them hold, and write the same JSON back.

tests/fixtures/old_store_records/ holds records copied from a store that `dgrpo run --engine inprocess` wrote at
4ce6561, before typed records; lease, lease-break, error and stop records are written below in the old shapes
literally (that store had none left)."""

import json
from pathlib import Path

import pytest

from dgrpo.runs import keys
from dgrpo.runs.commits import last_commit, trained_state
from dgrpo.runs.evaluations import evaluations, events, read_best
from dgrpo.runs.ownership import lease_breaks, read_claim, read_lease
from dgrpo.runs.record import RecordError
from dgrpo.runs.records import (
    BestRecord,
    ChainRecord,
    Claim,
    Commit,
    DriverRecord,
    ErrorRecord,
    EvalRecord,
    Event,
    SegmentRecord,
    StatusRecord,
)
from dgrpo.runs.segments import errors, read_chain, read_status, read_stop, segments
from dgrpo.store import LocalStore

FIXTURES = Path(__file__).parent / "fixtures" / "old_store_records"
RUN = "old-run"
OLD_LEASE = {"holder": "71dc14b80b2a4d488ef7fefe5e15a2c4", "acquired_at": "2026-12-05T20:24:09+00:00",
             "segment": 1, "kfp_run_id": "inprocess-f13771b0a66b", "start_round": 0}
OLD_BREAK = {"lease": OLD_LEASE, "by": "dgrpo run --resume old-run on host", "at": "2026-12-05T20:30:00+00:00",
             "reason": "its local driver (pid 4242) is no longer running"}
OLD_ERROR = {"task": "update", "segment": 1, "round": 1, "error": "RuntimeError: boom", "permanent": False,
             "at": "2026-12-05T20:24:30+00:00"}
OLD_STOP = {"rule": "manual", "round": 2, "message": "stopped by hand (dgrpo stop)", "values": {},
            "at": "2026-12-05T20:25:00+00:00"}


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture
def old_store(tmp_path: Path) -> LocalStore:
    """A store laid out as the code before typed records wrote it, at the keys and paddings it used."""
    store = LocalStore(tmp_path / "store")
    literal = {"claim.json": _fixture("claim"), "chain.json": _fixture("chain"), "status.json": _fixture("status"),
               "driver.json": _fixture("driver"), "best.json": _fixture("best"),
               "segments/s0001.json": _fixture("segment"), "commits/r000001.json": _fixture("commit"),
               "eval/r0000.json": _fixture("eval"), "events/r0001-update.json": _fixture("event"),
               "lease.json": OLD_LEASE, "lease-breaks/20261205T203000000000Z-71dc14b8.json": OLD_BREAK,
               "errors/20261205T202430000000Z-0a1b2c3d.json": OLD_ERROR, "stop.json": OLD_STOP}
    for name, data in literal.items():
        store.put_json(f"runs/{RUN}/{name}", data)
    return store


def test_old_records_read_through_the_typed_functions(old_store: LocalStore) -> None:
    claim = read_claim(old_store, RUN)
    assert claim is not None and claim.recipe_sha256 == _fixture("claim")["recipe_sha256"] and claim.base is None
    assert read_lease(old_store, RUN).holder == OLD_LEASE["holder"]
    assert lease_breaks(old_store, RUN)[0].broken.segment == 1
    commit = last_commit(old_store, RUN)
    assert commit.round == 1 and commit.adapter.sha256 == _fixture("commit")["adapter"]["sha256"]
    assert trained_state(old_store, RUN).next_round == 2
    assert read_chain(old_store, RUN).mode == "local" and not read_chain(old_store, RUN).scheduled
    [segment] = segments(old_store, RUN)
    assert segment.rounds == [0, 1] and segment.ended.action == "done" and segment.progress == 2
    assert read_status(old_store, RUN).rounds_done == 2
    assert read_stop(old_store, RUN).rule == "manual" and errors(old_store, RUN)[0].round == 1
    assert read_best(old_store, RUN).adapter.sha256 == _fixture("best")["adapter"]["sha256"]
    [evaluation] = evaluations(old_store, RUN)
    assert evaluation.round == 0 and evaluation.grid.kind == "eval_grid" and evaluation.per_prompt
    [event] = events(old_store, RUN)
    assert event.stage == "update" and event.output("adapter").kind == "lora_adapter"


@pytest.mark.parametrize(("kind", "name"), [
    (Claim, "claim"), (ChainRecord, "chain"), (StatusRecord, "status"), (DriverRecord, "driver"),
    (BestRecord, "best"), (SegmentRecord, "segment"), (Commit, "commit"), (EvalRecord, "eval"), (Event, "event")])
def test_old_records_write_back_unchanged(kind: type, name: str) -> None:
    data = _fixture(name)
    assert kind.from_json(data).to_json() == data


def test_fields_a_version_does_not_know_survive_and_missing_ones_are_named() -> None:
    legacy = _fixture("commit") | {"model": "toy", "seed": 3}  # commits from before claims held these
    assert Commit.from_json(legacy).to_json() == legacy and Commit.from_json(legacy).extra["seed"] == 3
    assert ErrorRecord.from_json(OLD_ERROR).to_json() == OLD_ERROR
    with pytest.raises(RecordError, match="Commit"):
        Commit.from_json({"round": 1})


def test_keys_keep_their_paddings() -> None:
    assert keys.commit_key("r", 3) == "runs/r/commits/r000003.json"
    assert keys.eval_key("r", 3) == "runs/r/eval/r0003.json"
    assert keys.segment_key("r", 2) == "runs/r/segments/s0002.json"
    assert keys.event_key("r", 3, "reward", 1) == "runs/r/events/r0003-reward-s001.json"
    assert keys.event_round(keys.event_key("r", 12, "update")) == 12
    assert keys.event_stage(keys.event_key("r", 3, "reward", 1)) == "reward"
