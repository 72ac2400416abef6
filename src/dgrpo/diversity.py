"""DiverseGRPO creativity reward: cluster a prompt group's images by embedding, reward the rare modes.

Per-sample rewards make the mode weights follow replicator dynamics, so one mode takes over. The creativity
bonus E_i = sqrt(N / n_k) pays an image more the smaller its semantic cluster is (docs/algorithms.md, "DiverseGRPO"):
cosine distances of the images' embeddings -> Gaussian affinity -> normalised spectral clustering -> bonus.
The Vendi score (docs/algorithms.md, "Measuring diversity") measures the diversity of the same embeddings.
"""

import numpy as np

NORMALIZATIONS = ("none", "zscore", "minmax")
WIDTH_HEURISTICS = ("knn", "median")
_TINY = 1e-9  # floor for distances and widths, so duplicates cannot drive the kernel width to zero
_REL_TOL = 1e-12  # "equal up to rounding" for group statistics of float rewards


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """Cosine geometry needs a finite 2-D array of nonzero rows."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"embeddings must be a non-empty 2-D array [N, dim], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("embeddings must be finite")
    norms = np.linalg.norm(x, axis=1)
    if np.any(norms == 0):
        raise ValueError("embeddings has an all-zero row; its cosine similarity is undefined")
    return x / norms[:, None]


NEGATIVE_TOLERANCE = 4096 * float(np.finfo(np.float32).eps)
"""How far below zero a distance may be and still count as zero (about 4.9e-4). A team's `1 - cos` of unit
embeddings is negative by rounding for near-duplicates: a float32 dot product of n terms of unit vectors is off by
at most about n x eps/2 (Higham's gamma_n bound, sum |u_i v_i| <= 1), so 4096 x eps covers float32 embeddings of up
to 8192 dimensions (DreamSim: 1792, CLIP: 768-1280) in the worst case; a value further below zero is not rounding
and is refused. (Half-precision embeddings round more: compute the distances in float32.)"""


def _check_distances(distances: np.ndarray) -> np.ndarray:
    """A distance matrix must be square, finite, non-negative up to rounding (NEGATIVE_TOLERANCE, clipped to 0) and
    symmetric; anything else is a caller bug."""
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise ValueError(f"distances must be a non-empty square matrix, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("distances must be finite")
    if np.any(d < -NEGATIVE_TOLERANCE):
        i, j = np.unravel_index(int(np.argmin(d)), d.shape)
        raise ValueError(f"distances must be non-negative: [{i}, {j}] is {d[i, j]:.3g}, below the rounding "
                         f"tolerance -{NEGATIVE_TOLERANCE:.2g}")
    if not np.allclose(d, d.T, rtol=1e-7, atol=1e-9):
        raise ValueError("distances must be symmetric")
    return np.maximum((d + d.T) / 2, 0.0)


def cosine_distances(embeddings: np.ndarray) -> np.ndarray:
    """D_ij = 1 - cos(x_i, x_j) in [0, 2]: DreamSim's distance, exactly symmetric with a zero diagonal."""
    u = _check_embeddings(embeddings)
    d = 1.0 - u @ u.T
    d = np.clip((d + d.T) / 2, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def nearest_neighbour_width(distances: np.ndarray, n_neighbors: int = 7) -> float:
    """Automatic kernel width: median over images of the geometric mean of their n_neighbors nearest distances.

    Why nearest neighbours: the median of all pairwise distances is a cross-mode distance, which makes the graph
    look fully connected (eigengap k = 1). Why a geometric mean rather than the k-th neighbour: in a group of 24 a
    mode often has fewer than 7 images, so the k-th neighbour of most images lies in another mode and the width
    jumps to the cross-mode scale; within- and cross-mode distances differ by an order of magnitude, and a
    log-scale average stays near the within-mode scale while a neighbourhood spills over a little. Exact
    duplicates are skipped: a zero distance would drag the log-mean, and the width, towards zero, splitting
    every mode of a collapsed or discretely jittered group into singletons.
    """
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    d = _check_distances(distances)
    n = d.shape[0]
    if n == 1 or not np.any(d > 0):
        return 1.0  # no scale to measure; any width gives the same all-ones affinity
    local = []
    for row in d:
        distinct = np.sort(row[row > _TINY])[:n_neighbors]  # duplicates (and the image itself) carry no scale
        if distinct.size:
            local.append(np.exp(np.log(distinct).mean()))
    return float(max(np.median(local), _TINY))


def median_width(distances: np.ndarray) -> float:
    """The textbook width: the median of all pairwise distances (i < j).

    Offered for comparison: when most pairs are cross-mode it is a cross-mode distance and the eigengap sees one
    connected cluster (docs/algorithms.md, "DiverseGRPO").
    """
    d = _check_distances(distances)
    pairs = d[np.triu_indices(d.shape[0], 1)]
    return float(max(np.median(pairs), _TINY)) if pairs.size and np.any(pairs > 0) else 1.0


def auto_kernel_width(distances: np.ndarray, heuristic: str = "knn", n_neighbors: int = 7) -> float:
    """The automatic kernel width by name: "knn" (nearest_neighbour_width) or "median" (median_width)."""
    if heuristic == "knn":
        return nearest_neighbour_width(distances, n_neighbors)
    if heuristic == "median":
        return median_width(distances)
    raise ValueError(f"heuristic must be one of {WIDTH_HEURISTICS}, got {heuristic!r}")


def mean_pairwise_distance(embeddings: np.ndarray) -> float:
    """Mean cosine distance over pairs i != j: the DreamSim diversity of one prompt's images (docs/algorithms.md,
    "Measuring diversity")."""
    d = cosine_distances(embeddings)
    n = d.shape[0]
    return float(d[~np.eye(n, dtype=bool)].mean()) if n > 1 else 0.0


def affinity(distances: np.ndarray, kernel_width: float | None = None, n_neighbors: int = 7) -> np.ndarray:
    """Gaussian affinity A_ij = exp(-D_ij^2 / (2 s^2)).

    A_ii = 1 is kept on purpose: the self-affinity stays in the degree, so a one-image mode keeps a volume of
    at least 1 and normalised cuts do not merge it into a neighbour. kernel_width None: nearest_neighbour_width.
    """
    d = _check_distances(distances)
    if kernel_width is None:
        kernel_width = nearest_neighbour_width(d, n_neighbors)
    if not (np.isfinite(kernel_width) and kernel_width > 0):
        raise ValueError(f"kernel_width must be a positive finite number, got {kernel_width}")
    return np.exp(-(d**2) / (2.0 * kernel_width**2))


def _normalised_spectrum(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-pairs of D^-1/2 A D^-1/2, largest eigenvalue first."""
    inv_sqrt = 1.0 / np.sqrt(a.sum(axis=1))  # degrees >= 1 thanks to A_ii = 1
    m = a * inv_sqrt[:, None] * inv_sqrt[None, :]
    values, vectors = np.linalg.eigh((m + m.T) / 2)
    return values[::-1], vectors[:, ::-1]


def eigengap_k(eigenvalues: np.ndarray, k_max: int) -> int:
    """k = argmax_i (lambda_i - lambda_{i+1}) for i in 1..min(k_max, N-1); eigenvalues sorted descending."""
    m = min(k_max, len(eigenvalues) - 1)
    if m < 1:
        return 1
    gaps = eigenvalues[:m] - eigenvalues[1 : m + 1]
    return int(np.argmax(gaps)) + 1


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Relabel clusters 0, 1, ... in order of first appearance, so equal partitions give equal arrays."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


def _check_k(k: int | None, k_max: int, n: int) -> None:
    if k is not None and not (isinstance(k, int | np.integer) and 1 <= k <= n):
        raise ValueError(f"k must be None or an integer in 1..{n} (the number of images), got {k!r}")
    if not (isinstance(k_max, int | np.integer) and k_max >= 1):
        raise ValueError(f"k_max must be an integer >= 1, got {k_max!r}")


def spectral_clusters(
    distances: np.ndarray,
    k: int | None = None,
    k_max: int = 8,
    kernel_width: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Cluster labels 0..k-1 by normalised spectral clustering (Ng-Jordan-Weiss); k None picks k by eigengap.

    The paper gives neither k nor the width; the eigengap capped at k_max is the automatic mode (k = 1 when the
    group has no structure). kernel_width None: nearest_neighbour_width. Deterministic for a given seed; labels
    are canonical (order of first appearance). k-means is scikit-learn's. The spectral embedding is the top-k
    eigenvectors of D^-1/2 A D^-1/2 with A_ii = 1 kept in the degree, computed here rather than with
    sklearn.manifold.spectral_embedding: that one builds the graph Laplacian without self-loops, which merges a
    one-image mode into a neighbour (ARI 0.81-0.86 on planted 8/8/7/1 groups against 1.0 here), and it does not
    return the eigenvalues the eigengap needs.
    """
    d = _check_distances(distances)
    n = d.shape[0]
    _check_k(k, k_max, n)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    values, vectors = _normalised_spectrum(affinity(d, kernel_width))
    k = eigengap_k(values, k_max) if k is None else int(k)
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    embedding = vectors[:, :k]
    embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), _TINY)
    from sklearn.cluster import KMeans  # here: the rollout stage imports this module (DRIFT) but never clusters

    labels = KMeans(n_clusters=k, random_state=seed % 2**32, n_init=10).fit_predict(embedding)
    return _canonical(labels)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {lab.shape}")
    return lab


def _normalise(e: np.ndarray, normalization: str) -> np.ndarray:
    """Group-level rescaling of E: raw E (1 to 4.9 for N = 24) can swamp a quality spread of ~0.01."""
    if normalization == "none":
        return e
    if normalization == "zscore":
        return _zscore(e)  # constant E up to rounding gives zeros: no signal, not +-1 noise
    spread = np.ptp(e)
    return np.zeros_like(e) if spread == 0 else (e - e.min()) / spread


def creativity_bonus(labels: np.ndarray, normalization: str = "none") -> np.ndarray:
    """E_i = sqrt(N / n_k) for image i in cluster k of size n_k, optionally normalised within the group."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    lab = _check_labels(labels)
    _, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    e = np.sqrt(lab.size / counts[inverse.reshape(-1)].astype(np.float64))
    return _normalise(e, normalization)


def _zscore(x: np.ndarray) -> np.ndarray:
    mean, std = x.mean(), x.std()
    if std <= _REL_TOL * max(1.0, abs(mean)):
        return np.zeros_like(x)
    return (x - mean) / std


def diverse_rewards(
    quality: np.ndarray,
    labels: np.ndarray,
    beta: float,
    normalization: str = "none",
    quality_gate: bool = False,
    quality_normalization: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """(beta * E', Q' + beta * E') for one prompt group.

    E' is normalised over the whole group (the clusters are the group's), then, with quality_gate, zeroed for
    images below the group's mean quality, so rarity alone cannot pay for a bad image. Q' is Q, or with
    quality_normalization "zscore" its z-score within the group, so beta weighs the bonus against a unit spread.
    """
    if quality_normalization not in ("none", "zscore"):
        raise ValueError(f"quality_normalization must be 'none' or 'zscore', got {quality_normalization!r}")
    q = np.asarray(quality, dtype=np.float64)
    lab = _check_labels(labels)
    if q.shape != lab.shape:
        raise ValueError(f"quality shape {q.shape} must match labels shape {lab.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError("quality must be finite")
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    bonus = beta * creativity_bonus(lab, normalization)
    if quality_gate:
        mean = q.mean()
        bonus = np.where(q >= mean - _REL_TOL * max(1.0, abs(mean)), bonus, 0.0)
    base = _zscore(q) if quality_normalization == "zscore" else q
    return bonus, base + bonus


def vendi_score(embeddings: np.ndarray) -> float:
    """exp(entropy of the eigenvalues of K/n), K the cosine-similarity kernel: the effective number of modes."""
    u = _check_embeddings(embeddings)
    eigenvalues = np.clip(np.linalg.eigvalsh(u @ u.T / u.shape[0]), 0.0, None)
    p = eigenvalues[eigenvalues > 0]
    return float(np.exp(-np.sum(p * np.log(p))))
