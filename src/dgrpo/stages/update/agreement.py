"""The agreement gate: the update computes the same policy the rollout sampled from, or the round fails.

Rollout and update run in different containers, possibly from different images, torch or diffusers builds, dtypes
or attention kernels, and the update trusts the rollout's stored log-probs as the PPO ratio's denominator. So before
its first optimizer step the update recomputes them under the round's input adapter (the rollout's own, nothing
trained yet) and compares.

What is recomputed: every trained step of this process's first micro-batch, one no-grad forward per step. Any
disagreement worth catching (a dtype, a weight, a kernel, a code change) is a property of the model and the code,
not of particular trajectories, so it shows on any micro-batch and on every step it touches; the steps are all
checked because the SDE's noise and the conditioning (DRIFT's prompt noise, guidance) differ by step. The cost is
1 / (micro-batches x optimizer steps x inner epochs) of the round's forward passes, without their backward passes:
about 2% for the SD3.5 recipe (16 micro-batches of one process per round), 17% for the toy's 2 steps of one batch.

The bound, per trajectory and step. log p is the per-element mean over the D latent elements of
-(x' - mu)^2 / (2 s^2) - log s - log sqrt(2 pi), and mu is affine in the velocity v. If every element of v carries a
relative rounding error up to r, log p moves by at most r sum_i |g_i v_i| with g = d(log p)/dv (first order,
all errors aligned: a worst case, so it also holds for systematic differences such as another GEMM kernel for
another batch size). r = KAPPA u, u the unit roundoff of the dtype the update computes v in (2^-24 float32,
2^-11 float16, 2^-8 bfloat16) and KAPPA the growth of a rounding error through the network. To that adds the
float32 evaluation of log p itself: SUM_KAPPA u32 log2(D) (|log p| + 1), the pairwise sum of D terms of about that
size. On the toy (D 768, float32) the bound is ~8e-6, and the update's own first step, which batches differently
and runs peft's LoRA layers, agrees within 1e-6 (tests/test_drift.py); a rollout sampled in bfloat16 for a float32
update is refused on the tiny SD3 by 10x and more (tests/test_agreement.py), a perturbed weight by orders of
magnitude. Limits: a mismatch made of independent rounding errors averages over the D elements of the per-element
mean (as 1 / sqrt(D)), so at SD3.5's D = 65,536 a bfloat16 rollout for a float32 update moves log p by a few 1e-6,
near the float32 evaluation floor, and may pass; it then also moves the PPO ratio far less than the clip range
(1e-4), which is what the gate protects. Systematic mismatches (weights, adapters, code, prompt handling) do not
average out. A rollout made more precisely than the update computes passes: the update's own rounding is then the
larger.
"""

import math
import os
from dataclasses import dataclass

import torch

from dgrpo.config import SamplingConfig
from dgrpo.models import FlowPolicy
from dgrpo.runs import lineage
from dgrpo.sampling import ScheduleStep, step_with_logprob
from dgrpo.stages.update.replay import Replay
from dgrpo.store import ArtifactRef, ArtifactStore

KAPPA = 64.0
"""Growth of a relative rounding error of the velocity through the network, with room for another batch's GEMM
kernels (a rollout batches one group, the update shuffled micro-batches)."""
SUM_KAPPA = 4.0
"""Room for another summation order of log p's per-element mean (another torch build); the same code on the same
inputs evaluates it identically."""

UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8,
                 torch.float64: 2.0 ** -53}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AgreementError(RuntimeError):
    """Rollout and update compute different policies; nothing of the round was trained or written."""


@dataclass(frozen=True)
class Agreement:
    """The gate's figures for the update metrics: |stored - recomputed log p| and its largest share of the bound."""

    mean_abs: float
    max_abs: float
    bound: float
    """The bound at the worst step (where max_abs / bound is largest)."""
    worst_share: float
    worst_step: int

    def metrics(self) -> dict[str, float]:
        return {"agreement_mean_abs": self.mean_abs, "agreement_max_abs": self.max_abs,
                "agreement_bound": self.bound, "agreement_worst_share": self.worst_share}


def velocity_dtype(policy: FlowPolicy, mixed_precision: str) -> torch.dtype:
    """The dtype the update computes velocities in: the autocast dtype under mixed precision, else the model's."""
    return AUTOCAST.get(mixed_precision, policy.dtype)


def step_disagreement(*, method: str, v: torch.Tensor, x: torch.Tensor, x_next: torch.Tensor, step: ScheduleStep,
                      noise_level: float, stored: torch.Tensor, roundoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(|stored - recomputed log p|, bound) per trajectory of one step, from the recomputed velocity `v`."""
    with torch.enable_grad():
        v32 = v.detach().float().requires_grad_(True)
        recomputed = step_with_logprob(v32, x.float(), step, method=method, noise_level=noise_level,
                                       prev_sample=x_next.float())
        (grad,) = torch.autograd.grad(recomputed.log_prob.sum(), v32)
    log_prob = recomputed.log_prob.detach()
    sensitivity = (grad * v32.detach()).abs().flatten(1).sum(1)
    elements = x[0].numel()
    bound = (KAPPA * roundoff * sensitivity
             + SUM_KAPPA * UNIT_ROUNDOFF[torch.float32] * math.log2(max(elements, 2)) * (log_prob.abs() + 1.0))
    return (log_prob - stored.to(log_prob.device)).abs(), bound


def rollout_origin(store: ArtifactStore, rollouts: ArtifactRef | list[ArtifactRef]) -> str:
    """'image I, code C' of the rollouts (each shard's lineage record; distinct values joined)."""
    records = [lineage.read_record(store, r.sha256) for r in (rollouts if isinstance(rollouts, list) else [rollouts])]
    images = sorted({str(r.image) for r in records})
    codes = sorted({r.code_version for r in records})
    return f"image {'/'.join(images)}, code {'/'.join(codes)}"


def this_origin() -> str:
    return f"image {os.environ.get('DGRPO_IMAGE')}, code {lineage.code_version()}"


def refusal(round_index: int, result: Agreement, rollouts_from: str, roundoff_dtype: torch.dtype) -> str:
    """The one line a refused round fails with."""
    return (f"update round {round_index + 1}: the rollouts' log-probs disagree with the update's recomputation under "
            f"the same adapter at denoising step {result.worst_step}: max |delta log p| {result.max_abs:.3g} > bound "
            f"{result.bound:.3g} ({str(roundoff_dtype).removeprefix('torch.')} rounding); rollouts by "
            f"{rollouts_from}, update by {this_origin()}: rebuild the stages from one image, with one model.dtype "
            f"and attention backend, or re-roll the round")


def measure(policy: FlowPolicy, replay: Replay, *, sampling: SamplingConfig, roundoff: float, rows: torch.Tensor,
            steps: list[int]) -> Agreement:
    """Recompute the stored log-probs of trajectories `rows` (this process's first micro-batch) at every trained
    step under the policy as loaded, and compare; the replay's conditioning is the rollout's (DRIFT's noise too)."""
    deltas, bounds = [], []
    with torch.no_grad():
        for j in steps:
            batch = replay.batch(rows, j, policy.device)
            v = policy.velocity(batch.x.to(policy.dtype), batch.timesteps, batch.cond, sampling.guidance_scale)
            delta, bound = step_disagreement(
                method=sampling.method, v=v, x=batch.x, x_next=batch.x_next, step=batch.step,
                noise_level=sampling.noise_level, stored=batch.old_log_prob, roundoff=roundoff)
            deltas.append(delta.cpu().double())
            bounds.append(bound.cpu().double())
    delta, bound = torch.stack(deltas, 1), torch.stack(bounds, 1)  # [trajectory, step]
    share = delta / bound
    worst = int(torch.argmax(share))
    row, col = divmod(worst, share.shape[1])
    return Agreement(mean_abs=float(delta.mean()), max_abs=float(delta.max()), bound=float(bound[row, col]),
                     worst_share=float(share[row, col]), worst_step=steps[col])
