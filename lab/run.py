"""Running the experiment: every arm x seed from one checkpoint at one budget, then the tables, goals, report, plot.

Every arm starts from the same toy checkpoint with the same prompts and budget (rounds, group size, optimizer steps,
learning rate) and differs only in its method sections, taken from its preset; every arm runs once per seed, through
the in-process engine, into one shared store, and a finished run of the same recipe is reused.
"""

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from dgrpo_lab.analysis import summarise_groups, summary_records
from dgrpo_lab.arms import Arm, build_arms, difference_lines, favoured_mode, run_id_of, with_seed
from dgrpo_lab.columns import COLUMNS
from dgrpo_lab.goals import GOALS_DOC, check_goals, verdict
from dgrpo_lab.measures import cost_of, eval_rows, rollout_signal, with_signal
from dgrpo_lab.plot import plot
from dgrpo_lab.report import fmt, markdown, write_csv
from dgrpo_lab.seeds import DEFAULT_SEEDS, describe, seed_group
from dgrpo_lab.target import target_lines

from dgrpo.config import RunConfig, config_from_json
from dgrpo.files import atomic_write_text
from dgrpo.runs.evaluations import has_evaluation
from dgrpo.runs.exchange import put_experiment_wall
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.report.summary import load_events
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import ArtifactStore, LocalStore
from dgrpo.toyworld.presets import PRESETS_DIR

Run = tuple[str, int, RunConfig]
"""(arm, seed, the arm's config at that seed)."""


def _run_arm(config_json: str, store_root: str, run_id: str, threads: int) -> float:
    """One run in a worker process (spawned: torch state is not shared); returns its wall time."""
    import torch

    torch.set_num_threads(threads)
    start = time.monotonic()
    run_inprocess(StageContext(config_from_json(config_json), LocalStore(store_root), run_id))
    return time.monotonic() - start


def train(runs: list[Run], store_root: Path, *, jobs: int, threads: int, log: Callable[[str], object]
          ) -> dict[str, float]:
    """Train the `runs` not finished in the store yet, `jobs` at a time with `threads` torch threads each; returns
    the wall seconds of each run trained ("<arm>-s<seed>"), recorded in the store beside the run."""
    store = LocalStore(store_root)
    todo = [r for r in runs if not has_evaluation(store, run_id_of(r[0], r[2]), r[2].rounds)]
    log(f"{len(runs)} runs, {len(runs) - len(todo)} already finished; {jobs} at a time")
    start, timings = time.monotonic(), {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_arm, config.to_json(), str(store_root), run_id_of(name, config), threads):
                   (name, seed, run_id_of(name, config)) for name, seed, config in todo}
        for future in as_completed(futures):
            name, seed, run_id = futures[future]
            key = f"{name}-s{seed}"
            timings[key] = future.result()
            put_experiment_wall(store, run_id, {"seconds": timings[key], "jobs": jobs, "threads": threads})
            log(f"{name:<12} seed {seed}: trained in {timings[key]:.0f}s ({len(timings)}/{len(todo)}, "
                f"{time.monotonic() - start:.0f}s elapsed)")
    return timings


def read_runs(store: ArtifactStore, runs: list[Run], favoured: dict[str, int]
              ) -> tuple[list[dict], dict[tuple[str, int], dict[str, float]]]:
    """Every run's evaluation rows (with what its updates learned from) and its cost, read back from the store."""
    rows, costs = [], {}
    for name, seed, config in runs:
        run_id = run_id_of(name, config)
        events = load_events(store, run_id)
        rows += with_signal(eval_rows(store, name, seed, run_id, config.eval_rounds(), favoured[name]),
                            rollout_signal(store, run_id, events, favoured[name]))
        costs[name, seed] = cost_of(store, run_id, events)
    return rows, costs


def _header(arms: list[Arm], seeds: list[int] | tuple[int, ...], timings: dict[str, float], *, jobs: int,
            threads: int, wall: float) -> str:
    cfg = arms[0].config
    held_out = sum(p not in cfg.sampling.prompts for p in cfg.eval.prompts)
    trained = (f"{len(timings)} runs trained in this call, {jobs} at a time, {threads} torch thread(s) each: wall "
               f"time {wall:.0f}s, {min(timings.values()):.0f}-{max(timings.values()):.0f}s per run" if timings else
               "Every run reused from the store (trained by an earlier call).")
    return (f"# Toy reproduction: {len(arms)} arms x {len(seeds)} seeds ({describe(seeds)})\n\n"
            f"{cfg.rounds} rounds of {cfg.sampling.prompts_per_round} prompts x {cfg.sampling.group_size} images, "
            f"batch {cfg.train.batch_size}, lr {cfg.train.learning_rate:g}; evaluation every {cfg.eval.every} "
            f"rounds on {len(cfg.eval.prompts)} captions ({held_out} held out) x {cfg.eval.samples_per_prompt} "
            f"samples, {cfg.eval.num_steps} ODE steps. {trained}")


def _log_goals(goals: dict[str, list[dict]], log: Callable[[str], object]) -> None:
    if "evaluation" not in goals:
        log(f"goals ({GOALS_DOC}): none decided, no evaluation seeds in this call (--seeds evaluation or all); "
            "on the tuning seeds, for reference:")
    for group, decided in goals.items():
        log(f"goals ({GOALS_DOC}) on the {group} seeds{'' if group == 'evaluation' else ', deciding nothing'}:")
        for g in decided:
            log(f"  {verdict(g, group)}  {g['name']}: {g['goal']}: {g['numbers']}")


def run_experiment(output: Path, *, config_dir: Path = PRESETS_DIR, betas: list[float] | None = None,
                   overrides: dict | None = None, log: Callable[[str], object] = print, jobs: int = 2,
                   threads: int = 1, seeds: list[int] | tuple[int, ...] = DEFAULT_SEEDS,
                   presets: dict[str, str | tuple[str, dict]] | None = None, html: bool = True
                   ) -> dict[str, Path]:
    """Run every arm x seed (`jobs` at a time, `threads` torch threads each; finished runs of the same recipe are
    reused), then write experiment.csv (every evaluation), experiment-summary.csv and experiment.md (per seed
    group), experiment.png (the deciding group) and, with `html`, one run report per seed overlaying the arms
    (experiment-seed<N>.html)."""
    output.mkdir(parents=True, exist_ok=True)
    arms = build_arms(config_dir, betas, overrides, presets)
    favoured = {arm.name: favoured_mode(arm.config) for arm in arms}  # before training: a bad preference fails now
    start = time.monotonic()
    runs = [(arm.name, seed, with_seed(arm.config, seed)) for seed in seeds for arm in arms]
    log(f"{len(arms)} arms x {len(seeds)} seeds ({describe(seeds)})")
    timings = train(runs, output / "store", jobs=jobs, threads=threads, log=log)
    store = LocalStore(output / "store")
    rows, costs = read_runs(store, runs, favoured)
    names = [a.name for a in arms]
    groups = summarise_groups(rows, names, costs=costs)
    goals = {group: check_goals(summary) for group, (summary, _) in groups.items()}
    for group, (summary, _) in groups.items():
        for s in summary:
            log(f"{s['arm']:<12} {group} seeds: held-out quality gain {fmt(s['heldout_quality_gain'])}, mode "
                f"entropy {fmt(s['heldout_mode_entropy'])} held-out, {fmt(s['train_mode_entropy'])} training; at "
                f"matched quality {fmt(s['matched_heldout_mode_entropy'])} ({s['matched_reached']}/{s['seeds']} "
                "reach it)")
    _log_goals(goals, log)
    paths = {"csv": output / "experiment.csv", "summary": output / "experiment-summary.csv",
             "markdown": output / "experiment.md", "plot": output / "experiment.png"}
    write_csv(paths["csv"], rows, COLUMNS)
    write_csv(paths["summary"], *summary_records([s for summary, _ in groups.values() for s in summary]))
    header = _header(arms, seeds, timings, jobs=jobs, threads=threads, wall=time.monotonic() - start)
    differences = difference_lines(arms)
    for line in differences[4:-1]:
        log(line)
    header += "\n\n" + "\n".join(differences)
    text = markdown(groups, goals, rows, names, header)
    if any(config.methods.get("diversity_target") for _, _, config in runs):
        for group, (summary, _) in groups.items():
            text += f"\n\n### {group} seeds\n\n" + "\n".join(target_lines(
                store, [r for r in runs if seed_group(r[1]) == group], rows, summary)) + "\n"
    atomic_write_text(paths["markdown"], text)
    shown = next(iter(groups))  # the deciding group when there is one
    plot([r for r in rows if seed_group(r["seed"]) == shown], names, paths["plot"], groups[shown][1],
         seeds=f"the {shown} seeds")
    if html:
        from dgrpo.runtime.report import write_html

        for seed in seeds:
            ids = [run_id_of(name, config) for name, s, config in runs if s == seed]
            paths[f"html-seed{seed}"] = write_html(store, ids, output / f"experiment-seed{seed}.html")
    return paths
