"""A team's method outside dgrpo, registered by its path in the config (`methods: {"acme_methods:HalfLoss": }`)."""

from dgrpo.methods.base import Method

CALLS: list[int] = []


class HalfLoss(Method):
    """Halves every step's policy loss and records the steps it weighed."""

    def step_weight(self, *, j: int, sigma: float, sigma_next: float) -> float | None:
        CALLS.append(j)
        return 0.5

    def update_metrics(self, *, ratio_by_step: dict[int, dict[str, float]]) -> dict[str, float]:
        return {"acme_steps": float(len(ratio_by_step))}
