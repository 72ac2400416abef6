"""Pro-GRPO (Huang et al. 2025, "Expand and Prune"): keep the subset of a group whose rewards vary the most.

Many trajectories of a group collapse towards the group's mean reward and carry little signal; Optimal Variance
Filtering (OVF) keeps the k of G samples whose rewards have the largest variance. Expand-and-Prune samples
G_max > G trajectories and applies OVF to reward previews at checkpoint steps, stopping the others early, which is
where its savings in transformer evaluations (NFEs) come from.
"""

import numpy as np


def optimal_variance_subset(values: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of the k values with the largest population variance: the exact sort-and-split solution.

    A maximum-variance k-subset is always made of the i lowest and the k - i highest values for some i: the
    variance is convex in any one member's value, so a chosen value lying between two unchosen ones can be
    swapped for one of them without lowering it. Trying the k + 1 splits of the sorted values is therefore exact;
    `tests/test_progrpo.py` checks it against brute force up to G = 12. Ties: values
    are sorted by (value, index) and the first best split wins, so the choice is deterministic.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite")
    n = x.size
    if not (isinstance(k, int | np.integer) and 1 <= k <= n):
        raise ValueError(f"k must be an integer in 1..{n} (the number of values), got {k!r}")
    order = np.lexsort((np.arange(n), x))
    best, best_var = order[n - k:], -1.0
    for low in range(k + 1):
        idx = np.concatenate([order[:low], order[n - (k - low):]])
        var = float(x[idx].var())
        if var > best_var:
            best, best_var = idx, var
    return np.sort(best)


def nfe_of_schedule(group_size: int, num_steps: int, prune_steps: list[int], prune_sizes: list[int]) -> int:
    """Velocity evaluations (sample-steps) of one group under expand-and-prune: every live trajectory evaluates the
    velocity once per step; at a checkpoint step c the velocity of all live ones is computed (it gives the preview)
    and only the survivors take step c and the following steps."""
    nfe, live, start = 0, group_size, 0
    for step, size in zip(prune_steps, prune_sizes, strict=True):
        nfe += live * (step + 1 - start)
        live, start = size, step + 1
    return nfe + live * (num_steps - start)
