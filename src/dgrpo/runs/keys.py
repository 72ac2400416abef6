"""Where a fine-tune's records live in the store: one function per key, the one spelling of each.

Every record of fine-tune `run_id` is under `runs/<run_id>/`. Padding is what stores on disk already use, and
never changes, so stores written before still read: commits `r{round:06d}`, segments `s{n:04d}`, evaluations and
events `r{round:04d}`. A run id appears in KFP run parameters and store keys, so it has a character set that cannot
leave its namespace (`validate_run_id`).
"""

import datetime
import re
import uuid

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")
RUN_ID_RULE = ("1 to 100 letters, digits, '.', '_' or '-', starting and ending with a letter or digit, "
               "without '..'")
RUNS = "runs"


def validate_run_id(run_id: str, source: str = "run id") -> str:
    """`run_id` itself, or ValueError naming `source` (a CLI option, a pipeline parameter, a REST field)."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id) or ".." in run_id:
        raise ValueError(f"{source} {run_id!r}: a run id is {RUN_ID_RULE}")
    return run_id


def now() -> str:
    """A record's timestamp: UTC, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def stamp() -> str:
    """A sortable, unique-enough name for a record of which a run keeps many (errors, lease breaks)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def run_key(run_id: str, name: str) -> str:
    return f"{RUNS}/{validate_run_id(run_id)}/{name}"


def run_id_of(key: str) -> str:
    """The run id a record key belongs to (`runs/<run_id>/...`)."""
    return key.split("/")[1]


def claim_key(run_id: str) -> str:
    return run_key(run_id, "claim.json")


def lease_key(run_id: str) -> str:
    return run_key(run_id, "lease.json")


def lease_breaks_prefix(run_id: str) -> str:
    return run_key(run_id, "lease-breaks")


def lease_break_key(run_id: str, holder: str) -> str:
    return f"{lease_breaks_prefix(run_id)}/{stamp()}-{holder[:8]}.json"


def commits_prefix(run_id: str) -> str:
    return run_key(run_id, "commits")


def commit_key(run_id: str, round_index: int) -> str:
    return f"{commits_prefix(run_id)}/r{round_index:06d}.json"


def segments_prefix(run_id: str) -> str:
    return run_key(run_id, "segments")


def segment_key(run_id: str, n: int) -> str:
    return f"{segments_prefix(run_id)}/s{n:04d}.json"


def shown(round_index: int) -> int:
    """A training round as people see it: numbered from 1 (stored indexes, commit and event keys count from 0).
    Evaluations count the rounds done (`eval_key`): the one "after round r" follows shown round r, 0 is the base."""
    return round_index + 1


def evaluation_label(rounds_done: int) -> str:
    """An evaluation's name: "base" for the base model's, "after round r" once r rounds are done."""
    return "base" if rounds_done == 0 else f"after round {rounds_done}"


def after_round(rounds_done: int) -> str:
    """'after round r' once r rounds are done; before the first, 'before round 1'."""
    return f"after round {rounds_done}" if rounds_done else "before round 1"


def evals_prefix(run_id: str) -> str:
    return run_key(run_id, "eval")


def eval_key(run_id: str, completed: int) -> str:
    """The evaluation after `completed` rounds (0: the base model)."""
    return f"{evals_prefix(run_id)}/r{completed:04d}.json"


def events_prefix(run_id: str) -> str:
    return run_key(run_id, "events")


def event_key(run_id: str, round_index: int, stage: str, shard: int | None = None) -> str:
    suffix = "" if shard is None else f"-s{shard:03d}"
    return f"{events_prefix(run_id)}/r{round_index:04d}-{stage}{suffix}.json"


def event_round(key: str) -> int:
    """The round of an event key (`event_key`)."""
    return int(key.rsplit("/r", 1)[-1][:4])


def event_stage(key: str) -> str:
    """The stage of an event key, without its shard suffix."""
    return key.rsplit("/", 1)[-1].removesuffix(".json").split("-")[1]


def is_segment_key(key: str) -> bool:
    return re.match(r"^runs/[^/]+/segments/[^/]+\.json$", key) is not None


def is_eval_key(key: str) -> bool:
    return re.match(r"^runs/[^/]+/eval/[^/]+\.json$", key) is not None


def is_event_key(key: str) -> bool:
    return re.match(r"^runs/[^/]+/events/[^/]+\.json$", key) is not None


def commit_round_of(key: str) -> int | None:
    """The round of a commit key (`commit_key`), None for any other key."""
    found = re.search(r"^runs/[^/]+/commits/r(\d+)\.json$", key)
    return int(found[1]) if found else None


def errors_prefix(run_id: str) -> str:
    return run_key(run_id, "errors")


def error_key(run_id: str) -> str:
    return f"{errors_prefix(run_id)}/{stamp()}-{uuid.uuid4().hex[:8]}.json"


def stop_key(run_id: str) -> str:
    return run_key(run_id, "stop.json")


def best_key(run_id: str) -> str:
    return run_key(run_id, "best.json")


def chain_key(run_id: str) -> str:
    return run_key(run_id, "chain.json")


def status_key(run_id: str) -> str:
    return run_key(run_id, "status.json")


def driver_key(run_id: str) -> str:
    return run_key(run_id, "driver.json")


def report_key(run_id: str, ext: str) -> str:
    """The run's report: `json`, `md` or `html`."""
    return run_key(run_id, f"report.{ext}")


def failed_start_prefix(run_id: str, claim_id: str) -> str:
    return run_key(run_id, f"failed-starts/{claim_id}")


def pruned_prefix(run_id: str) -> str:
    return run_key(run_id, "pruned")


def pruned_key(run_id: str, at: str) -> str:
    return f"{pruned_prefix(run_id)}/{at.replace(':', '')}-{uuid.uuid4().hex[:8]}.json"


def update_request_key(run_id: str, round_index: int) -> str:
    return run_key(run_id, f"update/r{round_index:04d}-request.json")


def update_result_key(request_key: str) -> str:
    return request_key.removesuffix("-request.json") + "-result.json"


def mlflow_key(run_id: str) -> str:
    return run_key(run_id, "mlflow.json")


def notified_key(run_id: str, segment: int) -> str:
    """The chain-end message posted after `segment` (`dgrpo.runtime.notify`)."""
    return run_key(run_id, f"notified/s{segment:04d}.json")


def experiment_wall_key(run_id: str) -> str:
    return run_key(run_id, "experiment-wall.json")


def structure_profile_key(run_id: str) -> str:
    """The fine-tune's structure profile (`dgrpo.stages.structure_profile`), under train.structure_steps auto."""
    return run_key(run_id, "structure_profile.json")


def lineage_key(sha256: str) -> str:
    """Artifact `sha256`'s lineage record (`dgrpo.runs.lineage`): beside the object, not under a run, since runs
    share artifacts."""
    return f"lineage/{sha256}.json"
