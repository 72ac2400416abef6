"""Hold a diversity target: DiverseGRPO's bonus weight beta and SA-Reg's lambda adapted each round (docs/algorithms.md,
"Diversity target").

Why: the DiverseGRPO paper fixes beta and lambda by hand and names an adaptive budget as future work; a team running
unattended fine-tunes on a new domain cannot sweep them, but it can state how much diversity it wants to keep. As
PPO's adaptive KL coefficient holds a KL target (Ziegler et al. 2019), the controller holds a diversity target: each
round the cluster stage measures the rollouts' diversity d (the mean over prompt groups of an in-group measure on
cluster.embedder's embeddings, of images the round's input policy sampled), smooths it, s <- (1 - w) s + w d, and
moves each adapted coefficient by

    c <- clip(c exp(gain e), c_min, c_max),   e = clip((target - s) / target, -error_clip, error_clip),

multiplicative and bounded: below the target both grow (more bonus for rare clusters, a tighter pull of the
structure steps towards the base model) with gain_up, above it both shrink with gain_down, and one round moves a
coefficient by at most exp(gain error_clip). The target is absolute or a fraction of the base model's diversity,
the mean measurement of the first `base_rounds` rounds, during which the coefficients keep their starting values.

Why a probe, and why smooth: one round's rollouts are a fresh draw of noise (on the toy, 6 groups of 16 images
measure the base model's diversity with a 2.1% standard deviation), so the measurement moves even where the policy
does not; acting on it raw, the controller chases the noise, and with unequal gains the noise itself biases where it
settles. With `probe_prompts` the rollout stage also samples a probe, `probe_images` images of each of
`probe_prompts` fixed training prompts, as the rollouts are sampled but from the same noise every round (common
random numbers, stream PROBE), and the controller measures that: from round to round it moves only with the policy.
Without a probe, the exponential mean with w = 0.3 has 0.42 of the raw noise for a lag of about two rounds.

The coefficients are state: the scores table records each round's (columns beta, sa_lambda, diversity_target,
diversity_smoothed), the update reads lambda from there and carries them into the optimizer-state artifact (tensors
control.*), from which the next round's cluster stage continues; a resumed or retried round reads the same artifact
and computes the same numbers. Turn it on with `methods: {diversity_target: {fraction: 0.95}}` on a DiverseGRPO config.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import torch

from dgrpo.config import RunConfig
from dgrpo.config.fields import POSITIVE, Range, check
from dgrpo.diversity import mean_pairwise_distance, vendi_score
from dgrpo.methods.base import COEFFICIENT_COLUMNS, Coefficients, DiversityProbe, Method

Measure = Literal["mean_distance", "vendi"]
Coefficient = Literal["beta", "sa_lambda"]
STATE = COEFFICIENT_COLUMNS
"""What the controller carries from round to round, each as the optimizer-state tensor control.<name>."""


@dataclass
class TargetOptions:
    """The diversity target and the controller's bounds (`methods.diversity_target.*`)."""

    measure: Measure = "mean_distance"
    """In-group diversity of a round's rollouts on cluster.embedder, averaged over groups: "mean_distance" (mean
    pairwise cosine distance) or "vendi" (Vendi score, the effective number of distinct images, 1 to G)."""
    fraction: Annotated[float, Range(gt=0)] | None = None
    """Target as a fraction of the base model's diversity (the first round's rollouts), e.g. 0.95."""
    target: Annotated[float, Range(gt=0)] | None = None
    """Absolute target on `measure`, instead of `fraction`."""
    adapt: list[Coefficient] = field(default_factory=lambda: ["beta", "sa_lambda"])
    """Which coefficients follow the target: cluster.beta (needs cluster.method diverse) and train.sa_lambda (needs
    train.regularizer sa or both); their config values are the first round's starting points."""
    probe_prompts: Annotated[int, Range(ge=0)] = 0
    """Measure a fixed-noise probe of this many training prompts (evenly spaced in sampling.prompts; the rollout
    shards split them) instead of the round's rollouts; 0: the rollouts. Costs probe_prompts x probe_images samples a
    round, not trained on."""
    probe_images: Annotated[int, Range(ge=2)] = 16
    """Images per probe prompt."""
    smoothing: Annotated[float, Range(gt=0, le=1)] = 0.3
    """Weight w of the newest round in the exponential mean the controller compares with the target (1: the raw
    round)."""
    base_rounds: Annotated[int, Range(ge=1)] = 3
    """With `fraction`: the base model's diversity is the mean measurement of the fine-tune's first base_rounds
    rounds (one round is a noisy reference); the coefficients hold their starting values meanwhile."""
    gain_up: Annotated[float, POSITIVE] = 4.0
    """log-change of a coefficient per unit relative error when the diversity is below the target (it grows)."""
    gain_down: Annotated[float, POSITIVE] = 2.0
    """The same when the diversity is above the target (it shrinks). A smaller gain_down than gain_up gives
    diversity the benefit of the doubt: a collapse speeds itself up, so the controller tightens faster than it
    relaxes."""
    error_clip: Annotated[float, Range(gt=0, le=1)] = 0.2
    """Bound of the relative error e, so one round changes a coefficient by at most exp(gain x error_clip) (2.2x up,
    1.5x down at the defaults): a noisy round cannot swing it."""
    beta_range: list[Annotated[float, Range(ge=0)]] = field(default_factory=lambda: [0.01, 30.0])
    """[min, max] of beta."""
    sa_lambda_range: list[Annotated[float, Range(ge=0)]] = field(default_factory=lambda: [0.01, 100.0])
    """[min, max] of lambda."""

    def check_run(self, cfg: RunConfig, path: str) -> None:
        """The checks that span sections (called when the config loads)."""
        check((self.fraction is None) != (self.target is None), f"{path}.fraction",
              "set exactly one of fraction (of the base model's diversity) and target (an absolute value)")
        check(len(self.adapt) > 0 and len(set(self.adapt)) == len(self.adapt), f"{path}.adapt",
              f"must name beta and/or sa_lambda once each, got {self.adapt}")
        check(cfg.cluster.embedder is not None, "cluster.embedder",
              f"must name an embedder: {path} measures diversity on the rollouts' embeddings")
        check("beta" not in self.adapt or cfg.cluster.method == "diverse", f"{path}.adapt",
              f"adapts beta, the bonus weight, but cluster.method is {cfg.cluster.method!r}: set it to diverse")
        check("sa_lambda" not in self.adapt or cfg.train.uses_sa, f"{path}.adapt",
              f"adapts sa_lambda, but train.regularizer is {cfg.train.regularizer!r}: set it to sa or both")
        check(self.probe_prompts <= len(cfg.sampling.prompts), f"{path}.probe_prompts",
              f"must be at most the number of training prompts ({len(cfg.sampling.prompts)}), got "
              f"{self.probe_prompts}")
        for name in ("beta_range", "sa_lambda_range"):
            low_high = getattr(self, name)
            check(len(low_high) == 2 and low_high[0] <= low_high[1], f"{path}.{name}",
                  f"must be [min, max] with min <= max, got {low_high}")


def measure_diversity(group_embeddings: list[np.ndarray], measure: Measure) -> float:
    """The round's diversity: the in-group `measure` averaged over the prompt groups."""
    one = mean_pairwise_distance if measure == "mean_distance" else vendi_score
    return float(np.mean([one(e) for e in group_embeddings]))


def adapt(value: float, *, measured: float, target: float, gain_up: float, gain_down: float, error_clip: float,
          bounds: list[float]) -> float:
    """One controller step: `value` x exp(gain e), e the relative shortfall of `measured` below `target`, clipped
    to +-error_clip, gain `gain_up` where e > 0 (below the target: the value grows) and `gain_down` where e < 0;
    the result clipped to `bounds`."""
    error = min(max((target - measured) / target, -error_clip), error_clip)
    return min(max(value * math.exp((gain_up if error > 0 else gain_down) * error), bounds[0]), bounds[1])


class DiversityTarget(Method):
    """The controller's hooks: the round's coefficients in the cluster stage, their carry in the update."""

    name = "diversity_target"
    Options = TargetOptions

    def diversity_probe(self) -> DiversityProbe | None:
        o, prompts = self.options, self.cfg.sampling.prompts
        if o.probe_prompts == 0:
            return None
        return DiversityProbe([prompts[j * len(prompts) // o.probe_prompts] for j in range(o.probe_prompts)],
                              o.probe_images)

    def round_coefficients(self, *, round_index: int, group_embeddings: list[np.ndarray],
                           probe_embeddings: list[np.ndarray] | None,
                           previous: Callable[[], dict[str, torch.Tensor] | None]) -> Coefficients:
        o, c, t = self.options, self.cfg.cluster, self.cfg.train
        if o.probe_prompts and (probe_embeddings is None or len(probe_embeddings) != o.probe_prompts):
            found = 0 if probe_embeddings is None else len(probe_embeddings)
            raise ValueError(f"methods.diversity_target.probe_prompts is {o.probe_prompts}, but the rollouts of round "
                             f"{round_index + 1} carry {found} probe prompts (rollouts column diversity_probe): a "
                             "swapped rollout stage must write them, or set probe_prompts to 0")
        measured = measure_diversity(probe_embeddings if o.probe_prompts else group_embeddings, o.measure)
        state = {k[len("control."):]: float(v) for k, v in (previous() or {}).items() if k.startswith("control.")}
        if set(STATE) <= set(state):
            smoothed = (1 - o.smoothing) * state["diversity_smoothed"] + o.smoothing * measured
        else:  # the first round, or one whose input state predates the controller
            state = {"beta": c.beta, "sa_lambda": t.sa_lambda, "diversity_target": o.target or o.fraction * measured}
            smoothed = measured
        target, beta, sa_lambda = state["diversity_target"], state["beta"], state["sa_lambda"]
        if o.fraction is not None and 0 < round_index < o.base_rounds:  # the base model's mean so far
            target = (target * round_index + o.fraction * measured) / (round_index + 1)
        elif round_index >= (o.base_rounds if o.fraction is not None else 0):
            step = {"measured": smoothed, "target": target, "gain_up": o.gain_up, "gain_down": o.gain_down,
                    "error_clip": o.error_clip}
            beta = adapt(beta, bounds=o.beta_range, **step) if "beta" in o.adapt else c.beta
            sa_lambda = adapt(sa_lambda, bounds=o.sa_lambda_range, **step) if "sa_lambda" in o.adapt \
                else t.sa_lambda
        return Coefficients(beta=beta, sa_lambda=sa_lambda, diversity_target=target, diversity_smoothed=smoothed,
                            metrics={"diversity_measured": measured, "diversity_smoothed": smoothed,
                                     **({"diversity_probe": measured} if o.probe_prompts else {}),
                                     "diversity_target": target, "diversity_gap": smoothed - target, "beta": beta,
                                     "sa_lambda": sa_lambda})

    def carry(self, *, coefficients: dict[str, float]) -> dict[str, torch.Tensor]:
        return {f"control.{k}": torch.tensor(coefficients[k], dtype=torch.float64) for k in STATE
                if k in coefficients}
