"""The toy reproduction of DiverseGRPO's claim: Flow-GRPO vs SA-Reg vs DiverseGRPO, plus a beta sweep.

Every arm starts from the same toy checkpoint with the same seeds, prompts and budget (rounds, group size,
optimizer steps) and differs only in its cluster and regulariser settings, taken from the three presets. Each
arm runs through the in-process engine into one shared store; the evaluation records give, per evaluated
round, quality (reward) and diversity (mode entropy, modes >= 10%, mean pairwise embedding distance), written
as one CSV, one markdown table and one quality-vs-diversity plot.
"""

import csv
import io
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgrpo.config import RunConfig, config_from_json, load_config
from dgrpo.runtime.engine import run_inprocess
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import ArtifactStore, LocalStore

PRESETS = {"flowgrpo": "toy-flowgrpo.yaml", "sareg": "toy-sareg.yaml", "diversegrpo": "toy-diversegrpo.yaml",
           "drift": "toy-drift.yaml", "progrpo": "toy-progrpo.yaml", "gardo": "toy-gardo.yaml"}
FAVOURED_MODE = 0
"""The toy reward's favoured quadrant (top-left), whose share shows the collapse."""
COLUMNS = ["arm", "round", "reward", "quality", "mode_entropy", "modes_over_10pct", "favoured_share",
           "embedding_diversity", "pixel_diversity"]


@dataclass(frozen=True)
class Arm:
    name: str
    config: RunConfig


def build_arms(config_dir: Path, betas: list[float], overrides: dict | None = None) -> list[Arm]:
    """The three methods from their presets, then the beta sweep (same budget).

    The sweep runs the creativity bonus without SA-Reg ("bonus-beta<b>": the DiverseGRPO preset with
    train.regularizer none), so the bonus' own effect is visible and not masked by the regulariser.
    """
    overrides = overrides or {}
    arms = [Arm(name, load_config(config_dir / preset, overrides)) for name, preset in PRESETS.items()]
    for beta in betas:
        arms.append(Arm(f"bonus-beta{beta:g}", load_config(config_dir / PRESETS["diversegrpo"], overrides | {
            "cluster.beta": beta, "train.regularizer": "none"})))
    budget = {(a.config.rounds, a.config.seed, a.config.sampling.group_size, a.config.train.batch_size,
               a.config.train.learning_rate, tuple(a.config.sampling.prompts)) for a in arms}
    if len(budget) != 1:
        raise ValueError(f"the presets in {config_dir} differ in budget or seeds; the comparison needs one: {budget}")
    return arms


def eval_rows(store: ArtifactStore, arm: str, run_id: str, rounds: list[int]) -> list[dict]:
    """One row per evaluated round: the evaluate stage's metrics."""
    rows = []
    for r in rounds:
        record = store.get_json(f"runs/{run_id}/eval/r{r:04d}.json")
        m = record["metrics"]
        rows.append({
            "arm": arm, "round": r, "reward": m["reward"], "quality": m.get("quality", float("nan")),
            "mode_entropy": m["mode_entropy"], "modes_over_10pct": m["modes_over_10pct"],
            "favoured_share": float(np.mean([p["mode_shares"][FAVOURED_MODE] for p in record["per_prompt"]])),
            "embedding_diversity": m.get("embedding_diversity", float("nan")), "pixel_diversity": m["diversity"],
        })
    return rows


def at_matched_reward(rows: list[dict], target: float, key: str) -> float:
    """`key` where an arm's reward curve first reaches `target`, linearly interpolated between evaluations."""
    prev = None
    for row in rows:
        if row["reward"] >= target:
            if prev is None or row["reward"] == prev["reward"]:
                return row[key]
            w = (target - prev["reward"]) / (row["reward"] - prev["reward"])
            return prev[key] + w * (row[key] - prev[key])
        prev = row
    return float("nan")


def summarise(rows: list[dict], arms: list[str]) -> tuple[list[dict], float]:
    """Per arm: final metrics and diversity at the highest reward every arm reaches (the matched reward)."""
    by_arm = {a: [r for r in rows if r["arm"] == a] for a in arms}
    matched = min(max(r["reward"] for r in rs) for rs in by_arm.values())
    summary = []
    for a, rs in by_arm.items():
        final = rs[-1]
        summary.append({"arm": a, "final_reward": final["reward"], "final_mode_entropy": final["mode_entropy"],
                        "final_modes_over_10pct": final["modes_over_10pct"],
                        "final_favoured_share": final["favoured_share"],
                        "final_embedding_diversity": final["embedding_diversity"],
                        "matched_mode_entropy": at_matched_reward(rs, matched, "mode_entropy"),
                        "matched_modes_over_10pct": at_matched_reward(rs, matched, "modes_over_10pct"),
                        "matched_embedding_diversity": at_matched_reward(rs, matched, "embedding_diversity")})
    return summary, matched


def markdown(summary: list[dict], matched: float, rows: list[dict], header: str) -> str:
    def table(records: list[dict]) -> list[str]:
        keys = list(records[0])
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for rec in records:
            lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in rec.values())
                         + " |")
        return lines

    base = next(s for s in summary if s["arm"] == "flowgrpo")
    gains = [{"arm": s["arm"],
              "entropy_gain_at_matched": s["matched_mode_entropy"] / base["matched_mode_entropy"] - 1,
              "embedding_div_gain_at_matched": s["matched_embedding_diversity"] / base["matched_embedding_diversity"]
              - 1} for s in summary]
    return "\n".join([header, "", f"Summary (matched reward = {matched:.4f}, the highest reward every arm reaches; "
                      "matched_* are interpolated along each arm's evaluations):", "", *table(summary), "",
                      "Relative to Flow-GRPO at matched reward:", "", *table(gains), "",
                      "Over training (evaluations on all 8 captions, 32 seeds each):", "", *table(rows), ""])


def plot(rows: list[dict], arms: list[str], path: Path) -> None:
    """Quality against diversity per arm over training: mode entropy and embedding diversity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [("mode_entropy", "mode entropy / log 4"), ("embedding_diversity", "mean pairwise embedding distance"),
              ("favoured_share", "favoured-quadrant share")]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for arm in arms:
            rs = [r for r in rows if r["arm"] == arm]
            ax.plot([r["reward"] for r in rs], [r[key] for r in rs], marker="o", ms=3, label=arm,
                    lw=2.2 if arm in PRESETS else 1.0, ls="-" if arm in PRESETS else "--")
            ax.annotate(f"r{rs[-1]['round']}", (rs[-1]["reward"], rs[-1][key]), fontsize=7)
        ax.set_xlabel("reward (quality + mode preference), evaluation")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Toy world: quality vs diversity over training (one point per evaluation)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    _atomic_write(path, buf.getvalue())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _run_arm(config_json: str, store_root: str, run_id: str, threads: int) -> float:
    """One arm in a worker process (spawned: torch state is not shared); returns its wall time."""
    import torch

    torch.set_num_threads(threads)
    start = time.monotonic()
    run_inprocess(StageContext(config_from_json(config_json), LocalStore(store_root), run_id))
    return time.monotonic() - start


def run_experiment(config_dir: Path, output: Path, betas: list[float], overrides: dict | None = None,
                   log=print, jobs: int = 1, threads: int = 1) -> dict[str, Path]:
    """Run every arm (`jobs` at a time, `threads` torch threads each), then write experiment.csv, experiment.md
    and experiment.png under `output`."""
    output.mkdir(parents=True, exist_ok=True)
    store = LocalStore(output / "store")
    arms = build_arms(config_dir, betas, overrides)
    rows, timings = [], {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_arm, arm.config.to_json(), str(output / "store"), f"experiment-{arm.name}",
                               threads): arm for arm in arms}
        for future in as_completed(futures):
            arm = futures[future]
            timings[arm.name] = future.result()
            log(f"{arm.name:<24} trained in {timings[arm.name]:.0f}s")
    for arm in arms:
        arm_rows = eval_rows(store, arm.name, f"experiment-{arm.name}", arm.config.eval_rounds())
        rows += arm_rows
        log(f"{arm.name:<24} " + "  ".join(
            f"r{r['round']}: R {r['reward']:.3f} H {r['mode_entropy']:.2f} fav {r['favoured_share']:.2f}"
            for r in arm_rows[:-1:max(1, len(arm_rows) // 4)] + arm_rows[-1:]))
    names = [a.name for a in arms]
    summary, matched = summarise(rows, names)
    paths = {"csv": output / "experiment.csv", "markdown": output / "experiment.md", "plot": output / "experiment.png"}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(paths["csv"], buf.getvalue().encode())
    cfg = arms[0].config
    header = (f"# Toy reproduction: {cfg.rounds} rounds, {cfg.sampling.prompts_per_round} prompts x "
              f"{cfg.sampling.group_size} images per round, seed {cfg.seed}; {jobs} arms at a time; wall time per arm: "
              + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    _atomic_write(paths["markdown"], markdown(summary, matched, rows, header).encode())
    plot(rows, names, paths["plot"])
    return paths
