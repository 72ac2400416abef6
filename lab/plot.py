"""The experiment's figure: each arm's mean path through quality x diversity, seed bands and the Pareto front."""

import io
from pathlib import Path

import numpy as np
from dgrpo_lab.analysis import pareto_front, path_means
from dgrpo_lab.arms import PRESETS
from dgrpo_lab.columns import MATCH_KEY, SPLITS

from dgrpo.files import atomic_write_bytes

PANELS = [("mode_entropy", "mode entropy / log 4"), ("embedding_diversity", "mean pairwise embedding distance"),
          ("vendi", "Vendi score (embeddings)")]


def plot(rows: list[dict], arms: list[str], path: Path, target: float | None = None, seeds: str = "") -> None:
    """Each arm's mean path over the seeds of `rows` (named by `seeds` in the title) through quality x diversity
    (held-out and training captions), seed bands (±1 std of the diversity, x bars ±1 std of the quality) and the
    Pareto front of all arms' mean points; `target` marks the matched quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = path_means(rows, arms)
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    for row_axes, split in zip(axes, SPLITS, strict=True):
        for ax, (metric, label) in zip(row_axes, PANELS, strict=True):
            qkey, key = f"{split}_quality", f"{split}_{metric}"
            points = []
            for i, arm in enumerate(arms):
                pts = [m for m in means if m["arm"] == arm]
                x, xs = np.array([m[qkey][0] for m in pts]), np.array([m[qkey][1] for m in pts])
                y, ys = np.array([m[key][0] for m in pts]), np.array([m[key][1] for m in pts])
                ax.fill_between(x, y - ys, y + ys, color=f"C{i}", alpha=0.15, lw=0)
                ax.errorbar(x, y, xerr=xs, color=f"C{i}", marker="o", ms=3, lw=2 if arm in PRESETS else 1,
                            elinewidth=0.6, label=arm)
                ax.annotate(f"r{pts[-1]['round']}", (x[-1], y[-1]), fontsize=7, color=f"C{i}")
                points += [(float(a), float(b)) for a, b in zip(x, y, strict=True) if np.isfinite(a + b)]
            front = pareto_front(points)
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="k", ls=":", lw=1.2,
                    label="Pareto front")
            if target is not None and qkey == MATCH_KEY and np.isfinite(target):
                ax.axvline(target, color="grey", lw=0.8, ls="--")
            ax.set_xlabel(f"{'held-out' if split == 'heldout' else 'training'} captions: toy quality")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Toy world: each arm's path through quality and diversity (mean over {seeds or 'the seeds'}; "
                 "bands ±1 std; top: held-out captions; bottom: training captions, dashed: the matched quality)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
