"""The experiment's Markdown report and CSV tables: every number as mean ± sample std over one seed group."""

import csv
import io
import math
from pathlib import Path

from dgrpo_lab.analysis import path_means
from dgrpo_lab.columns import COST, FINAL, MATCHED, SIGNAL
from dgrpo_lab.goals import GOALS_DOC, verdict
from dgrpo_lab.seeds import seed_group

from dgrpo.files import atomic_write_text

GROUP_NOTES = {"evaluation": "seeds no preset was tuned on: the goals are decided on these",
               "tuning": "the seeds the presets were tuned on: shown, never deciding a goal"}


def fmt(value) -> str:
    if isinstance(value, tuple):
        mean, std = value
        return "n/a" if not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(records: list[dict], keys: list[str]) -> list[str]:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return lines + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in records]


def goal_lines(goals: dict[str, list[dict]], seeds: dict[str, list[int]]) -> list[str]:
    """The goals section: the evaluation seeds' verdicts, and the tuning seeds' for reference, each goal by the
    name GOALS_DOC explains it under."""
    lines = [f"## Goals ({GOALS_DOC})", ""]
    if "evaluation" not in goals:
        lines += ["No evaluation seeds in this call, so no goal is decided (`--seeds evaluation` or `--seeds all`).",
                  ""]
    for group, decided in goals.items():
        which = " ".join(map(str, seeds[group]))
        lines += [f"On the {group} seeds ({which}; {GROUP_NOTES[group]}):", ""]
        if not decided:
            lines += ["The Flow-GRPO or DiverseGRPO arm is missing: nothing to decide.", ""]
            continue
        lines += ["| goal | | result | numbers |", "|---|---|---|---|",
                  *[f"| `{g['name']}` | {g['goal']} | {verdict(g, group)} | {g['numbers']} |" for g in decided], ""]
    return lines


def markdown(groups: dict[str, tuple[list[dict], float]], goals: dict[str, list[dict]], rows: list[dict],
             arms: list[str], header: str) -> str:
    """The report: per seed group, the arms at the end of the budget and at matched quality, then the goals, the
    cost and each arm's path."""
    summary = [s for entries, _ in groups.values() for s in entries]
    seeds = {g: sorted({r["seed"] for r in rows if seed_group(r["seed"]) == g}) for g in groups}
    final_keys = ["arm", "seed_group", "seeds", "rounds", *FINAL]
    matched_keys = ["arm", "seed_group", "matched_reached", *[f"matched_{k}" for k in MATCHED]]
    targets = "; ".join(f"{g} seeds {t:.4f}" for g, (_, t) in groups.items())
    lines = [header, "", "Every cell: mean ± sample standard deviation over the seeds of one group (`seed_group`: "
             "evaluation seeds, which decide the goals, apart from the tuning seeds the presets were chosen on; the "
             "goal on learning uses the standard error, std / sqrt(seeds)). Quality is the mode-independent "
             "`toy_quality`; gains are over the base model (round 0, the same for every run).", "",
             "## At the end of the budget", "", *table(summary, final_keys), "",
             f"## At matched quality: the training-caption quality where Flow-GRPO ends (mean over a group's seeds: "
             f"{targets})", "", "Interpolated along each run's evaluations where its quality on the training "
             "captions first reaches the target; a run that never reaches it counts with its final evaluation "
             "(`matched_reached` counts those that do).", "", *table(summary, matched_keys), "",
             *goal_lines(goals, seeds)]
    if COST[0] in summary[0]:
        lines += ["## Cost", "", "Rollout transformer evaluations (NFEs) per round, and the wall time of one run's "
                  "training in this experiment (runs share the machine as the header says, so compare the arms "
                  "with each other, not with other machines).", "",
                  *table(summary, ["arm", "seed_group", "heldout_quality_gain", "heldout_mode_entropy", *COST]), ""]
    path_keys = ["arm", "seed_group", "round", "seeds", "train_quality", "heldout_quality", "heldout_mode_entropy",
                 "train_mode_entropy", "heldout_modes_over_10pct", "heldout_favoured_share", "heldout_vendi",
                 "train_vendi", *SIGNAL]
    paths = [{"seed_group": g} | m for g in groups for m in path_means(
        [r for r in rows if seed_group(r["seed"]) == g], arms)]
    lines += ["## Paths (mean ± std over a group's seeds per evaluated round)", "", *table(paths, path_keys), ""]
    return "\n".join(lines)


def write_csv(path: Path, records: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(path, buf.getvalue())
