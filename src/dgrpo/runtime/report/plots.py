"""The report's plots as inline SVG, drawn by matplotlib (object API: no pyplot, no global backend state).

One colour per run, so several runs overlay on every plot; line styles tell the prompt split apart (solid: all
evaluation prompts, dashed: held-out, dotted: training).
"""

import io
import re

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from dgrpo.runtime.report.data import RunData, diversity_key, quality_key

SPLITS = (("", "all prompts", "-"), ("heldout_", "held-out", "--"), ("train_", "training", ":"))
LABELS = {"reward": "reward", "quality": "quality (mode-independent)", "embedding_diversity":
          "embedding diversity (mean pairwise distance)", "vendi": "Vendi score of the embeddings",
          "diversity": "pixel diversity (mean pairwise RMS)", "mode_entropy": "mode entropy / log M",
          "modes_over_10pct": "modes holding >= 10%"}
UPDATE_LABELS = {"approx_kl": "approx. KL to the sampler", "clip_fraction": "clip fraction",
                 "ratio_std": "importance-ratio std", "zero_std_groups": "share of zero-spread groups",
                 "reward_group_std": "in-group spread of the final reward", "kl": "KL to the base model",
                 "sa_reg": "SA-Reg", "agreement_max_abs": "rollout/update |delta log p| (max, agreement gate)",
                 "agreement_worst_share": "agreement gate: max |delta log p| / its bound"}


MIN_SPAN_ABS = 0.05
"""The smallest range an evaluation axis shows, in the measure's units: on a 0-1 measure (reward, mode entropy) a
change below a few hundredths is within the evaluation's sampling noise, and an axis fitted to it would draw noise
as a trend (or a trade-off on the Pareto plot)."""

MIN_SPAN_REL = 0.10
"""...and at least this share of the largest value shown, for measures on other scales (Vendi score, modes)."""

ROLLOUT_LABELS = {"diversity_mean": "rollout diversity (embedding, in-group; dashed: target)",
                  "diversity_probe": "diversity probe (fixed noise, what the controller measures; dashed: target)",
                  "beta": "bonus weight beta (diversity controller)",
                  "sa_lambda": "SA-Reg lambda (diversity controller)",
                  "dark_pixel_share": "share of near-black pixels", "clipped_pixel_share": "share of blown-out pixels",
                  "colour_entropy": "colour-histogram entropy (normalised)"}
"""What the round's rollouts showed (`TrainingRound.rollouts`), drawn where a run reports it."""
REGULARIZER_PANELS = {"kl": ("kl", "both"), "sa_reg": ("sa", "both")}
"""Update metrics drawn only for a recipe whose train.regularizer uses them (otherwise a flat zero)."""


def _min_span(values: list[float] | np.ndarray, set_lim) -> None:
    """Widen an axis, centred on its data, to at least MIN_SPAN_ABS and MIN_SPAN_REL of its largest magnitude."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return
    lo, hi = float(values.min()), float(values.max())
    span = max(MIN_SPAN_ABS, MIN_SPAN_REL * float(np.abs(values).max()))
    if hi - lo < span:
        mid = (lo + hi) / 2
        set_lim(mid - span / 2, mid + span / 2)


def _base_ticks(ax) -> None:
    """Evaluations count rounds done: tick 0 is the base model."""
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: "base" if x == 0 else f"{x:g}"))


def _svg(fig: Figure) -> str:
    """The figure as an <svg> element, without the XML prologue (it is inlined into HTML)."""
    buf = io.StringIO()
    with rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, selectable, and a smaller page
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (4.6, 3.0)) -> tuple[Figure, object]:
    fig = Figure(figsize=size)
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.15, top=0.9)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if xlabel in ("round", "after round"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _colours(n: int) -> list:
    return [f"C{i % 10}" for i in range(n)]


def evaluation_metrics(runs: list[RunData]) -> list[str]:
    """The per-prompt measures every run's evaluations report, in display order."""
    keys = [k for k in LABELS if any(k in ev.metrics for run in runs for ev in run.evaluations)]
    return keys


def metric_over_rounds(runs: list[RunData], key: str) -> str:
    """One evaluation measure against the round, per run and prompt split."""
    fig, ax = _figure(LABELS.get(key, key), "after round", key)
    shown = []
    for run, colour in zip(runs, _colours(len(runs)), strict=True):
        for prefix, split, style in SPLITS:
            points = [(ev.round, ev.metrics[prefix + key]) for ev in run.evaluations if prefix + key in ev.metrics]
            if points:
                x, y = zip(*points, strict=True)
                shown += y
                label = f"{run.run_id} ({split})" if len(runs) > 1 else split
                ax.plot(x, y, style, color=colour, marker="o", markersize=3, label=label)
    _min_span(shown, ax.set_ylim)
    _base_ticks(ax)
    ax.legend(fontsize=7)
    return _svg(fig)


def training_reward(runs: list[RunData]) -> str:
    """The training reward per round, with a band of +- its mean in-group standard deviation."""
    fig, ax = _figure("training reward per round (band: +- in-group std)", "round", "reward")
    for run, colour in zip(runs, _colours(len(runs)), strict=True):
        if not run.training:
            continue
        x = np.array([t.round + 1 for t in run.training])  # the k-th round, as "after round k" counts it
        mean = np.array([t.reward_mean for t in run.training])
        spread = np.array([t.group_std for t in run.training])
        ax.plot(x, mean, "-", color=colour, marker="o", markersize=3, label=run.run_id)
        ax.fill_between(x, mean - spread, mean + spread, color=colour, alpha=0.2, linewidth=0)
    ax.legend(fontsize=7)
    return _svg(fig)


def update_metric(runs: list[RunData], key: str, source: str = "update") -> str | None:
    """One metric of the round against the round, or None when no run reports it: the update's (`source`
    "update") or of the round's rollouts ("rollouts"; the rollout diversity with the controller's target dashed)."""
    def points(run: RunData, name: str) -> list[tuple[int, float]]:
        return [(t.round + 1, getattr(t, source)[name]) for t in run.training if name in getattr(t, source)]

    series = [(run, points(run, key)) for run in runs if key not in REGULARIZER_PANELS or run.config is None
              or run.config.train.regularizer in REGULARIZER_PANELS[key]]
    if not any(p for _, p in series):
        return None
    fig, ax = _figure({**UPDATE_LABELS, **ROLLOUT_LABELS}.get(key, key), "round", key)
    colours = dict(zip((r.run_id for r in runs), _colours(len(runs)), strict=True))
    for run, own in series:
        colour = colours[run.run_id]
        measured = "diversity_probe" if points(run, "diversity_probe") else "diversity_mean"  # what the target is of
        for style, drawn in (("-", own), ("--", points(run, "diversity_target") if key == measured else [])):
            if drawn:
                x, y = zip(*drawn, strict=True)
                ax.plot(x, y, style, color=colour, marker="o" if style == "-" else None, markersize=3,
                        label=run.run_id if style == "-" else None)
    ax.legend(fontsize=7)
    return _svg(fig)


def pareto_front(points: np.ndarray) -> np.ndarray:
    """The points no other point beats on both axes (both maximised), sorted by the first axis."""
    keep = [i for i, p in enumerate(points)
            if not np.any(np.all(points >= p, axis=1) & np.any(points > p, axis=1))]
    front = points[keep]
    return front[np.argsort(front[:, 0])]


def quality_diversity(runs: list[RunData]) -> str:
    """Each run's path through (quality, diversity) over its evaluations, and the Pareto front of all points."""
    metrics = runs[0].evaluations[0].metrics
    qk, dk = quality_key(metrics), diversity_key(metrics)
    fig, ax = _figure("quality against diversity (Pareto)", LABELS[qk], LABELS[dk], size=(6.0, 4.2))
    every = []
    for run, colour in zip(runs, _colours(len(runs)), strict=True):
        path = np.array([(ev.metrics[qk], ev.metrics[dk]) for ev in run.evaluations
                         if qk in ev.metrics and dk in ev.metrics])
        if not len(path):
            continue
        every.append(path)
        ax.plot(path[:, 0], path[:, 1], "-", color=colour, marker="o", markersize=4, alpha=0.8, label=run.run_id)
        ax.annotate(_point_label(run.evaluations[0].round), path[0], fontsize=7, color=colour)
        ax.annotate(_point_label(run.evaluations[-1].round), path[-1], fontsize=7, color=colour, fontweight="bold")
    if every:
        points = np.concatenate(every)
        _min_span(points[:, 0], ax.set_xlim)
        _min_span(points[:, 1], ax.set_ylim)
        front = pareto_front(np.concatenate(every))
        ax.step(front[:, 0], front[:, 1], where="post", color="black", linestyle="--", linewidth=1,
                label="Pareto front")
    ax.legend(fontsize=7)
    return _svg(fig)


def _point_label(rounds_done: int) -> str:
    return "base" if rounds_done == 0 else f"r{rounds_done}"


def svg_ids_unique(svgs: list[str]) -> list[str]:
    """matplotlib names clip paths and glyphs with ids that repeat across figures; inlined into one page, a repeat
    would make one plot use another's clip path. Prefix every id (and its references) per plot."""
    out = []
    for n, svg in enumerate(svgs):
        prefix = f"p{n}-"
        svg = re.sub(r'\bid="([^"]+)"', lambda m, p=prefix: f'id="{p}{m.group(1)}"', svg)
        svg = re.sub(r"url\(#([^)]+)\)", lambda m, p=prefix: f"url(#{p}{m.group(1)})", svg)
        svg = re.sub(r'href="#([^"]+)"', lambda m, p=prefix: f'href="#{p}{m.group(1)}"', svg)
        out.append(svg)
    return out
