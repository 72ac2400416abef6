"""DiverseGRPO (docs/algorithms.md, "DiverseGRPO"): the creativity bonus, structure-aware regularisation (SA-Reg) and
this project's cluster baseline of the detail steps, as the hooks of one method.

- Bonus (cluster stage, `cluster.method: diverse`): each prompt group is clustered spectrally on its embeddings'
  cosine distances and rare clusters are paid, R = Q + beta sqrt(N / n_k) (`score_group`, the math in
  `dgrpo.diversity`).
- SA-Reg (update, `train.regularizer: sa` or `both`): lambda mean((mu - mu_ref)^2) on the trajectory's first
  train.structure_steps denoising steps (`dgrpo.objectives.sa_regularizer`).
- Cluster baseline (update, `train.detail_baseline: cluster`): the detail steps' advantages centred on the image's
  cluster in its group (`dgrpo.objectives.cluster_advantages`).

Its options stay where users set them before it became a module, so no config file or recipe hash changed: the
`cluster` section and train.regularizer, sa_lambda, structure_steps and detail_baseline, which this module reads.
A diversity controller (`dgrpo.methods.diversity_target`) sets the round's beta (the `coefficients` the cluster
hook receives) and lambda (the round's config the update's hook receives).
"""

import dataclasses

import numpy as np

from dgrpo.config import ClusterConfig, RunConfig
from dgrpo.config.fields import check
from dgrpo.diversity import auto_kernel_width, cosine_distances, diverse_rewards, spectral_clusters
from dgrpo.methods.base import Coefficients, GroupClusters, Method, RoundSignals, StepRegularizer
from dgrpo.objectives import cluster_advantages, sa_regularizer


def score_group(quality: np.ndarray, embeddings: np.ndarray, c: ClusterConfig, seed: int) -> dict[str, np.ndarray]:
    """Cluster one prompt group and pay its rare clusters: cluster_id, bonus, final_reward and kernel width.

    With the paper's options (k_selection "fixed", width_heuristic "fixed", normalization "none", no quality gate)
    this is exactly R = Q + beta sqrt(N / n_k); each other value is one of this project's additions
    (docs/algorithms.md, "What this project adds to DiverseGRPO")."""
    d = cosine_distances(embeddings)
    width = c.kernel_width if c.width_heuristic == "fixed" else auto_kernel_width(d, c.width_heuristic,
                                                                                  c.n_neighbors)
    k = c.k if c.k_selection == "fixed" else None
    labels = spectral_clusters(d, k=k, k_max=c.k_max, kernel_width=width, seed=seed)
    bonus, final = diverse_rewards(quality, labels, c.beta, c.normalization, c.quality_gate, c.quality_normalization)
    return {"cluster_id": labels, "bonus": bonus, "final_reward": final, "kernel_width": np.array(width)}


class DiverseGRPO(Method):
    """DiverseGRPO's hooks: the bonus in the cluster stage; SA-Reg and the cluster baseline in the update. Each acts
    only where its option is on."""

    name = "diversegrpo"

    @classmethod
    def check_run(cls, cfg: RunConfig) -> None:
        """The checks of the bonus, SA-Reg and the structure/detail split that span sections."""
        c, s, t = cfg.cluster, cfg.sampling, cfg.train
        check(c.method != "diverse" or c.k_selection != "fixed" or c.k <= s.group_size, "cluster.k",
              f"must be <= sampling.group_size ({s.group_size}), got {c.k}")
        k, trained = t.structure_steps, cfg.num_train_steps  # "auto": measured at the first update, not checked here
        check(not t.uses_sa or k == "auto" or k <= trained, "train.structure_steps",
              f"must be <= the {trained} trained steps (train_fraction x sampling.num_steps), got {k}")
        check(k != "auto" or c.embedder is not None, "train.structure_steps",
              "'auto' measures the diversity sensitivity on cluster.embedder's embeddings: name an embedder")
        window_start = (s.sde_window_range or [0])[0]
        check(not t.uses_sa or not s.sde_window_size or k == "auto" or window_start < k, "sampling.sde_window_range",
              f"starts at step {window_start}, but SA-Reg acts on the trajectory's first train.structure_steps "
              f"({k}) steps only: no window would train one")
        if t.detail_baseline == "cluster":
            check(c.method == "diverse", "train.detail_baseline",
                  f"'cluster' needs the cluster stage's clusters (cluster.method 'diverse'), got cluster.method "
                  f"{c.method!r}")
            check(k == "auto" or k < trained, "train.detail_baseline",
                  f"'cluster' acts on the trained steps after the first train.structure_steps ({k}), but "
                  f"there are only {trained}")
            check(not cfg.gardo.novelty_advantage, "train.detail_baseline",
                  "'cluster' cannot combine with gardo.novelty_advantage, which replaces the advantage")

    def cluster_group(self, *, quality: np.ndarray, embeddings: np.ndarray | None, seed: int,
                      coefficients: Coefficients | None) -> GroupClusters | None:
        """The bonus, with the controller's beta where one sets it."""
        c = self.cfg.cluster
        if c.method != "diverse":
            return None
        if coefficients is not None:
            c = dataclasses.replace(c, beta=coefficients.beta)
        out = score_group(quality, embeddings, c, seed)
        return GroupClusters(cluster_id=out["cluster_id"], bonus=out["bonus"], final_reward=out["final_reward"],
                             kernel_width=float(out["kernel_width"]))

    def detail_advantages(self, *, signals: RoundSignals, advantages: np.ndarray) -> np.ndarray | None:
        """The cluster baseline: once the structure is drawn, the image's cluster mean is a baseline the detail
        steps cannot change."""
        t = self.cfg.train
        if t.detail_baseline != "cluster":
            return None
        return cluster_advantages(signals.rewards, signals.groups, signals.cluster_ids, t.global_std, t.adv_clip_max,
                                  signals.kept)

    def step_regularizer(self, *, j: int, cfg: RunConfig) -> StepRegularizer | None:
        """SA-Reg on the structure steps, weighted by the round's lambda (a controller's, where one sets it)."""
        t = cfg.train
        if not (t.uses_sa and j < t.structure_steps):
            return None
        return StepRegularizer(weight=t.sa_lambda, term=sa_regularizer)
