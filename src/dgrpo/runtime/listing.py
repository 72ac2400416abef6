"""What `dgrpo list`, `dgrpo errors` and `dgrpo status --watch` read: the fine-tunes of a store and their records.

Listing reads only records (no object is hashed) and never asks a KFP API: a store may hold hundreds of fine-tunes,
and `dgrpo status RUN` is there for one fine-tune's live view.
"""

import time
from collections.abc import Callable

from dgrpo.runs.commits import ResumeError
from dgrpo.runs.ownership import lease_breaks
from dgrpo.runtime import fine_tune
from dgrpo.runtime import segment as seg
from dgrpo.store import ArtifactStore


def round_label(completed: int) -> str:
    """One numbering everywhere: rounds completed, "base" for the base model."""
    return "base" if completed == 0 else f"round {completed}"


ENDED_STATES = ("done", "stopped", "failed", "stalled")
"""States after which a chain makes no progress by itself (`stalled` waits for a resume to break its lease)."""


def _no_lookup(_kfp_run_id: str) -> str:
    return ""


def list_fine_tunes(store: ArtifactStore) -> list[dict]:
    """One row per fine-tune under runs/: state, rounds done/total, segments, the best evaluation."""
    rows = []
    for run_id in fine_tune.known_runs(store):
        try:
            st = fine_tune.status(store, run_id, lookup=_no_lookup)
        except (ResumeError, ValueError):  # records of something else under runs/ (an experiment's tables)
            continue
        best = st["best"] or {}
        rows.append({"run_id": run_id, "state": st["state"], "rounds_done": st["rounds_done"],
                     "rounds_total": st["rounds_total"], "segments": st["segments"], "mode": st["mode"],
                     "recipe_sha256": st["recipe_sha256"], "claimed_at": st["claimed_at"],
                     "best": {k: best.get(k) for k in ("metric", "value", "round")} if best else None,
                     "errors": len(seg.errors(store, run_id))})
    return rows


def format_list(rows: list[dict], store_uri: str) -> str:
    if not rows:
        return f"no fine-tunes in {store_uri}"
    width = max(len(r["run_id"]) for r in rows)
    lines = [f"{'RUN':<{width}}  {'STATE':<11} {'ROUNDS':>9}  SEGMENTS  ERRORS  BEST"]
    for r in rows:
        total = r["rounds_total"] if r["rounds_total"] is not None else "?"
        best = r["best"]
        best_text = f"{best['metric']} {best['value']:.4g} at {round_label(best['round'])}" if best else "-"
        lines.append(f"{r['run_id']:<{width}}  {r['state']:<11} {str(r['rounds_done']) + '/' + str(total):>9}  "
                     f"{r['segments']:>8}  {r['errors']:>6}  {best_text}")
    return "\n".join(lines)


def run_errors(store: ArtifactStore, run_id: str) -> list[dict]:
    """Every error the fine-tune recorded (task failures, oldest first), then its lease breaks; each marked with
    whether it is the one that ended its segment (`root`)."""
    fine_tune.status(store, run_id, lookup=_no_lookup)  # an unknown run id is an error naming close ones
    errs = seg.errors(store, run_id)
    root = seg.root_error(errs)
    out = [{"kind": "task", **e.to_json(), "root": e is root} for e in errs]
    out += [{"kind": "lease_break", "at": b.at, "task": b.by, "segment": b.broken.segment, "round": None,
             "error": b.reason, "permanent": False, "root": False} for b in lease_breaks(store, run_id)]
    return sorted(out, key=lambda e: e.get("at") or "")


def format_errors(errs: list[dict], run_id: str) -> str:
    if not errs:
        return f"fine-tune {run_id}: no recorded errors"
    lines = [f"fine-tune {run_id}: {len(errs)} recorded errors, oldest first (* ended its segment)"]
    for e in errs:
        where = f"segment {e.get('segment') or '-'}, {'lease broken by' if e['kind'] == 'lease_break' else 'task'} " \
                f"{e.get('task')}" + (f", round {e['round'] + 1}" if e.get("round") is not None else "")
        lines.append(f"{'*' if e['root'] else ' '} {e.get('at')} ({where})"
                     + (" [permanent]" if e.get("permanent") else "") + f": {e.get('error')}")
    return "\n".join(lines)


def watch(read: Callable[[], dict], show: Callable[[dict], None], interval_s: float,
          sleep: Callable[[float], None] = time.sleep, limit: int | None = None) -> dict:
    """Show the status every `interval_s` until the chain has ended (or `limit` readings); the last status."""
    n = 0
    while True:
        st = read()
        show(st)
        n += 1
        if st["state"] in ENDED_STATES or (limit is not None and n >= limit):
            return st
        sleep(interval_s)
