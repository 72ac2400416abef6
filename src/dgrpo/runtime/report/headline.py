"""The report's headline: what ran (method, state, rounds, duration, engine) and a one-line verdict on it, so a
reader knows what happened before reading a table. Read from the run's records only (never a KFP API), so it can
be rendered for a run in progress too."""

import datetime
from dataclasses import dataclass

from dgrpo.config import RunConfig
from dgrpo.config import load_config as default_config
from dgrpo.runs.commits import trained_state
from dgrpo.runs.ownership import read_lease
from dgrpo.runs.records import SegmentRecord
from dgrpo.runs.segments import read_chain, read_status, segments
from dgrpo.stages.shared.run_config import load_config
from dgrpo.store import ArtifactStore, StoreError

QUALITY_STEP = 0.01
"""A change of the quality measure (0-1 rewards) smaller than this between the first and last evaluation reads as
no change: the toy world's evaluation means move by a few thousandths between repeats of one policy."""

DIVERSITY_FALL = 0.05
"""A diversity measure falling by more than this share of its first value reads as a loss of diversity."""

DIVERSITY_ORDER = ("mode_entropy", "vendi", "embedding_diversity", "diversity")
"""The diversity measure the verdict quotes: mode coverage where the world knows its modes, else the Vendi score,
else mean embedding distance, else pixel distance."""


def verdict(first: dict[str, float], last: dict[str, float]) -> str:
    """One line on the first and last evaluation. The rule: quality (or reward) moved when it changed by at least
    QUALITY_STEP; diversity fell when its first listed measure (DIVERSITY_ORDER) fell by more than DIVERSITY_FALL
    of its first value. Quality up with diversity fallen: "diversity collapsing"; diversity kept: "held"."""
    if first is last:
        return "only the base model evaluated: nothing to compare yet"
    qk = "quality" if "quality" in first and "quality" in last else "reward"
    dk = next((k for k in DIVERSITY_ORDER if k in first and k in last), None)
    if qk not in first or qk not in last or dk is None:
        return "no quality and diversity measure in both the first and the last evaluation"
    dq, d0, d1 = last[qk] - first[qk], first[dk], last[dk]
    quality = (f"{qk} {dq:+.3g}" if abs(dq) >= QUALITY_STEP else f"{qk} unchanged ({first[qk]:.3g} -> "
                                                                  f"{last[qk]:.3g})")
    fell = d0 > 0 and (d0 - d1) / d0 > DIVERSITY_FALL
    name = dk.replace("_", " ")
    if fell:
        outcome = "diversity collapsing" if dq >= QUALITY_STEP else "diversity lost without a quality gain"
        return f"{quality} while {name} fell {d0:.3g} -> {d1:.3g}: {outcome}"
    outcome = "held" if dq >= QUALITY_STEP else ("quality fell" if dq <= -QUALITY_STEP else "no clear change yet")
    return f"{quality}, {name} {d0:.3g} -> {d1:.3g}: {outcome}"


@dataclass
class Headline:
    method: str
    state: str
    rounds_done: int
    rounds_total: int | None
    duration_s: float | None
    engine: str
    verdict: str

    def line(self) -> str:
        """The headline as one line (the markdown report's and the HTML page's first line)."""
        total = "?" if self.rounds_total is None else self.rounds_total
        took = "-" if self.duration_s is None else _duration(self.duration_s)
        return (f"{self.method}; {self.state}, {self.rounds_done}/{total} rounds in {took}; {self.engine}. "
                f"Verdict: {self.verdict}")


def run_config(store: ArtifactStore, run_id: str) -> RunConfig | None:
    """The run's config, from its chain record (None for a run without one, e.g. stages run by hand)."""
    chain = read_chain(store, run_id)
    sha = chain.config_sha256 if chain is not None else None
    try:
        return load_config(store, sha) if sha else None
    except (StoreError, KeyError, ValueError):
        return None


def method_name(config: RunConfig) -> str:
    return (f"{config.name}: cluster {config.cluster.method}, regularizer {config.train.regularizer}, "
            f"reward {config.reward.name}, model {config.model.kind}")


def build_headline(store: ArtifactStore, run_id: str, evaluations: list[dict[str, float]],
                   config: RunConfig | None) -> Headline:
    """The headline of `run_id` from its records; `evaluations` are its evaluations' metrics, in round order."""
    chain, recorded = read_chain(store, run_id), read_status(store, run_id)
    state = "running" if read_lease(store, run_id) else (recorded.state if recorded else "not started")
    found = segments(store, run_id)
    engine = "-"
    if found:
        inprocess = (found[-1].kfp_run_id or "").startswith("inprocess-")
        engine = "in-process engine" if inprocess else f"kfp ({chain.mode if chain else '?'})"
        if config is not None:
            engine += f", {config.pipeline.execution} execution"
    total = chain.rounds if chain is not None else (config.rounds if config is not None else None)
    verdict_line = verdict(evaluations[0], evaluations[-1]) if evaluations else "no evaluation yet"
    return Headline(method_name(config) if config is not None else "recipe unknown (no chain record)", state,
                    trained_state(store, run_id).next_round, total, _span(found, running=state == "running"),
                    engine, verdict_line)


def _span(segments: list[SegmentRecord], running: bool) -> float | None:
    """Seconds from the first segment's start to the last one's end (to now while running)."""
    starts = [_time(s.started_at) for s in segments]
    ends = [_time(s.finished_at) for s in segments]
    starts, ends = [t for t in starts if t], [t for t in ends if t]
    if not starts:
        return None
    end = datetime.datetime.now(datetime.UTC) if running or not ends else max(ends)
    return max((end - min(starts)).total_seconds(), 0.0)


def _time(value: str | None) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else (f"{m}m{s:02d}s" if m else f"{s}s")


def non_default_fields(recipe: dict) -> tuple[dict[str, object], dict[str, object]]:
    """The recipe's flattened fields split into those that differ from the field defaults and the rest."""
    defaults = flatten(default_config(None).recipe_dict())
    fields = flatten(recipe)
    changed = {k: v for k, v in fields.items() if k not in defaults or defaults[k] != v}
    return changed, {k: v for k, v in fields.items() if k not in changed}


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """A nested recipe as dotted keys (`train.learning_rate`)."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for k, v in value.items():
            out |= flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): value}
