"""Kubeflow lightweight components: one thin wrapper per stage around `dgrpo.stages`."""

from dgrpo_components.stages import cluster, evaluate, reward, rollout, update

__all__ = ["cluster", "evaluate", "reward", "rollout", "update"]
