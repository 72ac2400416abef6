"""A run's own throughput, from its records: images per second and seconds per round.

A round ends when its last record is written: its stages' events, and the evaluation after it (recorded under the
next round's number, as rounds completed). Each event carries the time it was written (`finished_at`). Between
two rounds of one segment the interval is a round's steady cost; a segment's first round also pays the segment's
start-up (pods, imports, model loads), from its record's `started_at`, so both are shown. Runs recorded before
events carried their time have no throughput.
"""

import datetime
from dataclasses import dataclass

from dgrpo.runs.records import Event, SegmentRecord
from dgrpo.runs.segments import segments
from dgrpo.store import ArtifactStore

TRAINING_STAGES = ("rollout", "reward", "cluster", "update")
SLACK = datetime.timedelta(seconds=1)


@dataclass(frozen=True)
class Throughput:
    images_per_s: float
    """Images sampled per wall-clock second between rounds of one segment (the steady rate)."""
    seconds_per_round: float
    """Mean wall-clock seconds between the ends of consecutive rounds of one segment."""
    rounds_measured: int
    """Rounds whose interval is measured (a segment's first round is not: it has no previous round)."""
    seconds_per_round_with_startup: float | None
    """Each segment's span from its start to its last round's end, summed, over their rounds; None without
    segment records."""


def round_ends(events: list[Event]) -> dict[int, datetime.datetime]:
    """When each training round's last record was written (its stages, and the evaluation after it)."""
    ends: dict[int, datetime.datetime] = {}
    for e in events:
        if not e.finished_at:
            continue
        r = e.round if e.stage in TRAINING_STAGES else e.round - 1 if e.stage == "evaluate" else None
        if r is None or r < 0:
            continue
        at = _at(e.finished_at)
        ends[r] = max(ends.get(r, at), at)
    return ends


def round_images(events: list[Event]) -> dict[int, float]:
    """Images each round sampled: its rollout events' sample counts, summed over shards."""
    images: dict[int, float] = {}
    for e in events:
        if e.stage == "rollout":
            images[e.round] = images.get(e.round, 0.0) + e.metrics.get("samples", 0.0)
    return images


def run_throughput(store: ArtifactStore, run_id: str, events: list[Event]) -> Throughput | None:
    """`run_id`'s throughput from its `events` and segment records; None when no two rounds of one segment are
    recorded with their times (a run in its first round, one-round segments, or records from before times)."""
    ends, images = round_ends(events), round_images(events)
    records = segments(store, run_id)
    spans = [_rounds_within(rec, ends) for rec in records] if records else [sorted(ends)]
    seconds, sampled, count = 0.0, 0.0, 0
    for rounds in spans:
        for prev, r in zip(rounds, rounds[1:], strict=False):
            if r in images:
                seconds += (ends[r] - ends[prev]).total_seconds()
                sampled += images[r]
                count += 1
    if count == 0 or seconds <= 0:
        return None
    return Throughput(sampled / seconds, seconds / count, count, _with_startup(records, ends))


def _at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def _rounds_within(record: SegmentRecord, ends: dict[int, datetime.datetime]) -> list[int]:
    """The segment's rounds that ended while it ran (a round a failed segment left is retrained by the next one,
    whose records are the later ones); its times are to the second, hence the second of slack."""
    if not record.started_at:
        return []
    start = _at(record.started_at)
    finish = _at(record.finished_at) + SLACK if record.finished_at else None
    return [r for r in record.rounds if r in ends and start <= ends[r] and (finish is None or ends[r] <= finish)]


def _with_startup(records: list[SegmentRecord], ends: dict[int, datetime.datetime]) -> float | None:
    total, rounds = 0.0, 0
    for rec in records:
        done = _rounds_within(rec, ends)
        if done:
            total += (ends[done[-1]] - _at(rec.started_at)).total_seconds()
            rounds += len(done)
    return total / rounds if rounds else None
