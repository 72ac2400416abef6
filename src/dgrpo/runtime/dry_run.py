"""`dgrpo plan CONFIG`: what a fine-tune would run and cost, before anything runs.

Segments, tasks and pods come from the training plan and the Workflow size model (`dgrpo.runtime.plan`,
`dgrpo.runtime.workflow_size`), the GPUs from the `kubernetes` settings. Two numbers are estimates, and say so:
GPU-hours, from an assumed cost per image (by default the SD3.5-M projection of docs/kubernetes.md, "The cost of a
round": 0.50 images per GPU-second staged, 0.62 fused, on H100s), and the store's growth per round, from the
rollout table's latents (images x (steps + 1) latents x latent values x 4 bytes; the trajectory's other columns
are small beside them).
"""

import math
from dataclasses import asdict, dataclass

from dgrpo.config import RunConfig
from dgrpo.contracts.stages import ROUND_STAGES, stage_spec
from dgrpo.runtime.plan import segment_shape, segment_tasks
from dgrpo.runtime.workflow_size import size_model

GPU_SECONDS_PER_IMAGE = {"staged": 1 / 0.50, "fused": 1 / 0.62}
"""The assumed cost of one training image in GPU-seconds (rollout, reward, update; evaluation excluded): SD3.5-M
at 512 px, 10 steps, projected in docs/kubernetes.md "The cost of a round". Measure yours and pass it."""
LATENT_CHANNELS = {"sd3": 16, "flux": 16}
"""Latent channels of the diffusers backbones (VAE downscale 8): FLUX's packed 2x2 patches hold the same values."""
DIFFUSERS_DEFAULT_RESOLUTION = 1024
"""The pipelines' default image size when `model.resolution` is unset (SD3.5 and FLUX.1: 1024 px)."""


@dataclass(frozen=True)
class PlannedSegment:
    index: int
    first_round: int
    """Rounds completed when it starts (0: it also evaluates the base model)."""
    rounds: int
    evaluations: int
    tasks: int
    pods: int


@dataclass(frozen=True)
class Plan:
    execution: str
    rounds: int
    rounds_per_run: int
    shards: int
    segments: list[PlannedSegment]
    peak_gpus: int
    """GPUs held at once: the fused pod's, or the largest stage's times its shards (staged stages run in turn)."""
    images_per_round: int
    gpu_seconds_per_image: float
    gpu_hours: float
    latents_per_image: int
    """A rollout keeps every step's latents: sampling.num_steps + 1."""
    latent_values: int
    store_bytes_per_round: int


def latent_values(config: RunConfig) -> int:
    """Values of one image's latents: from the backbone's shape for sd3 and flux, else from the policy itself."""
    kind = config.model.kind
    if kind in LATENT_CHANNELS:
        side = (config.model.resolution or DIFFUSERS_DEFAULT_RESOLUTION) // 8
        return LATENT_CHANNELS[kind] * side * side
    from dgrpo.models import load_policy  # the toy model, or a plug-in: its own shape

    return math.prod(load_policy(config.model).latent_shape())


def peak_gpus(config: RunConfig) -> int:
    k8s = config.kubernetes
    if config.pipeline.execution == "fused":
        return k8s.resolve_fused().gpus or 0
    per_stage = [(k8s.resolve(s).gpus or 0) * (config.pipeline.shards if stage_spec(s).sharded else 1)
                 for s in (*ROUND_STAGES, "evaluate")]
    return max(per_stage)


def make_plan(config: RunConfig, gpu_seconds_per_image: float | None = None) -> Plan:
    """The fine-tune's segments from round 0, its GPUs, GPU-hours and store growth per round."""
    execution, per_run = config.pipeline.execution, config.pipeline.rounds_per_run
    model = size_model(config, segment_shape(config))
    evals = set(config.eval_rounds())
    segments = []
    for index, start in enumerate(range(0, config.rounds, per_run), start=1):
        rounds = range(start, min(start + per_run, config.rounds))
        evaluations = int(start == 0 and 0 in evals) + sum(r + 1 in evals for r in rounds)
        pods = model.fixed_pods if execution == "fused" else (
            model.fixed_pods + len(rounds) * model.round_pods + evaluations * model.evaluation_pods)
        segments.append(PlannedSegment(index, start, len(rounds), evaluations, segment_tasks(config, start), pods))
    images = config.sampling.prompts_per_round * config.sampling.group_size
    cost = GPU_SECONDS_PER_IMAGE[execution] if gpu_seconds_per_image is None else gpu_seconds_per_image
    gpus = peak_gpus(config)
    values, latents = latent_values(config), config.sampling.num_steps + 1
    return Plan(execution, config.rounds, per_run, config.pipeline.shards, segments, gpus, images, cost,
                config.rounds * images * cost / 3600 if gpus else 0.0, latents, values,
                images * latents * values * 4)


def plan_dict(plan: Plan) -> dict:
    return asdict(plan)


def format_plan(plan: Plan, source: str, assumed: bool) -> str:
    seg_rounds = " or ".join(str(n) for n in sorted({s.rounds for s in plan.segments}, reverse=True))
    lines = [f"plan of {source}: {plan.rounds} rounds, {plan.execution}, segments of up to {plan.rounds_per_run} "
             f"rounds ({len(plan.segments)} KFP runs), {plan.shards} shard(s)",
             "  segment  rounds      evals  tasks  pods"]
    shown = plan.segments if len(plan.segments) <= 8 else plan.segments[:3] + [None] + plan.segments[-3:]
    for s in shown:
        if s is None:
            lines.append(f"  ... {len(plan.segments) - 6} more segments like these ...")
            continue
        span = f"{s.first_round + 1}-{s.first_round + s.rounds}"
        lines.append(f"  {s.index:>7}  {span:<10} {s.evaluations:>6}  {s.tasks:>5}  {s.pods:>4}")
    lines.append(f"  (rounds counted from 1; segment 1 also evaluates the base model; {seg_rounds} rounds a segment; "
                 "pods: Argo pod nodes, a driver and an executor per task)")
    total_gb = plan.store_bytes_per_round * plan.rounds / 1e9
    lines += [f"  GPUs at once: {plan.peak_gpus}",
              f"  GPU-hours (estimate): {plan.gpu_hours:,.1f} = {plan.rounds} rounds x {plan.images_per_round} "
              f"images x {plan.gpu_seconds_per_image:.2f} GPU-s an image ("
              + ("assumed: the SD3.5-M projection of docs/kubernetes.md, \"The cost of a round\"; pass "
                 "--gpu-seconds-per-image with your measured figure" if assumed else "given")
              + ")" + ("" if plan.peak_gpus else "; no GPU requested, so none counted"),
              f"  store growth (estimate): {plan.store_bytes_per_round / 1e6:,.1f} MB a round of rollouts "
              f"({plan.images_per_round} images x {plan.latents_per_image} latents x {plan.latent_values:,} "
              f"values x 4 bytes), {total_gb:,.1f} GB over {plan.rounds} rounds"]
    return "\n".join(lines)
