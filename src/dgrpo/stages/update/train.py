"""One round of Flow-GRPO on the round's trajectories in this process: advantages, clipped loss, LoRA step."""

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object
from diffusers.training_utils import EMAModel
from torch.nn.parallel import DistributedDataParallel

from dgrpo import artifacts
from dgrpo.config import RunConfig
from dgrpo.contracts import ROLLOUTS, SCORES, UPDATE_METRICS
from dgrpo.methods.base import Method, PolicyStep, StepRegularizer, first, methods_of
from dgrpo.models import FlowPolicy
from dgrpo.objectives import clipped_policy_loss, group_advantages, step_kl
from dgrpo.rng import Stream, derive_seed
from dgrpo.sampling import Schedule, ScheduleStep, SDEStep, step_with_logprob
from dgrpo.stages import structure_profile
from dgrpo.stages.shared.context import StageContext, StageResult
from dgrpo.stages.shared.policy_io import ADAPTER_KIND, OPTIMIZER_KIND, load_policy_for_round
from dgrpo.stages.shared.rounds import trained_steps
from dgrpo.stages.shared.shards import as_list, check_same_samples, named_inputs, read_merged, shard_of, uris
from dgrpo.stages.shared.training_state import ema_weights, load_training_state, training_state_to_tensors
from dgrpo.stages.update import agreement, options
from dgrpo.stages.update.finite import check_round_finite
from dgrpo.stages.update.replay import Replay, ReplayBatch
from dgrpo.store import ArtifactRef


def make_optimizer(policy: FlowPolicy, cfg: RunConfig) -> torch.optim.AdamW:
    t = cfg.train
    return torch.optim.AdamW(policy.lora_parameters(), lr=t.learning_rate, betas=tuple(t.adam_betas),
                             weight_decay=t.weight_decay)


def make_accelerator(mixed_precision: str) -> Accelerator:
    """The process's accelerate state: torchrun's process group if launched by it, else a single process.

    A single process may run many rounds with different settings (tests, the experiment), so its accelerate
    singletons are reset first; under torchrun each process runs one round and keeps them.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def _stack_rows(column: list[bytes], key: str | None = None) -> dict[str, torch.Tensor] | torch.Tensor:
    rows = [artifacts.tensors_from_bytes(b) for b in column]
    stacked = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    return stacked[key] if key else stacked


def group_conditioning(traj: pa.Table, groups: list[str]) -> list[bytes]:
    """Each row's conditioning, which the rollouts table stores once per group (on sample_index 0)."""
    stored = traj.filter(pc.is_valid(traj.column("conditioning")))
    of_group = dict(zip(stored.column("group_id").to_pylist(), stored.column("conditioning").to_pylist(),
                        strict=True))
    missing = sorted(set(groups) - set(of_group))
    if missing or len(of_group) != stored.num_rows:
        raise ValueError(f"rollouts column 'conditioning': needs exactly one row per group, groups without: "
                         f"{missing[:3]}, rows with: {stored.num_rows} for {len(of_group)} groups")
    return [of_group[g] for g in groups]


@dataclass(frozen=True)
class UpdateInputs:
    """What one round's update reads."""

    round_index: int
    rollouts: ArtifactRef | list[ArtifactRef]
    scores: ArtifactRef
    adapter: ArtifactRef | None = None
    optimizer_state: ArtifactRef | None = None


def own_rollouts(ctx: StageContext, refs: ArtifactRef | list[ArtifactRef], rank: int, world: int
                 ) -> tuple[list[ArtifactRef], bool]:
    """The rollout shards process `rank` of `world` reads, and whether it trains on all their rows.

    When the round's shards split evenly over the processes (a multiple of them, each as many prompts), process
    `rank` takes shards rank, rank + world, ...: in a fused pod those its own rollout step wrote, still in its
    memory. Otherwise every process reads every shard and takes every world-th trajectory."""
    refs = as_list(refs)
    even = len(refs) % world == 0 and ctx.config.sampling.prompts_per_round % len(refs) == 0
    if world == 1 or not even:
        return refs, world == 1
    refs.sort(key=lambda r: shard_of(ctx.store, r))
    return refs[rank::world], True


def train_round(ctx: StageContext, inputs: UpdateInputs) -> StageResult | None:
    """The round's optimizer steps in this process (one of several under torchrun, or the only one).

    Every process computes the advantages from the whole round's scores, then trains on its own rows
    (`own_rollouts`: its shards' trajectories, or every num_processes-th one), so a group's advantages are
    normalised over all its members wherever they train. Gradients are averaged across processes by
    DistributedDataParallel through accelerate. The main process writes the artifacts; the others return None.
    """
    cfg, t, round_index = ctx.config, ctx.config.train, inputs.round_index
    acc = make_accelerator(t.mixed_precision)
    rank, world = acc.process_index, acc.num_processes
    if world != t.num_processes:
        raise RuntimeError(f"train.num_processes is {t.num_processes} but {world} processes run the update")
    scored = artifacts.read_table(ctx.store, inputs.scores, SCORES)
    refs, whole = own_rollouts(ctx, inputs.rollouts, rank, world)
    all_traj = read_merged(ctx.store, refs, ROLLOUTS)
    covered = scored if not whole or world == 1 else scored.filter(pc.is_in(
        scored.column("group_id"), value_set=all_traj.column("group_id").unique()))
    check_same_samples(all_traj, covered, f"rollouts {uris(refs)}", f"scores {inputs.scores.uri}")
    ids, groups = scored.column("sample_id").to_pylist(), scored.column("group_id").to_pylist()
    methods = methods_of(cfg)
    signals = options.read_signals(methods, ids, groups, scored, f"scores {inputs.scores.uri}")
    rewards = signals.rewards
    adv_all = first([m.advantages(signals=signals) for m in methods])
    if adv_all is None:
        adv_all = group_advantages(rewards, groups, t.global_std, t.adv_clip_max, signals.kept)
    detail_all = first([m.detail_advantages(signals=signals, advantages=adv_all) for m in methods])
    if detail_all is None:
        detail_all = adv_all
    kl_weight_all = first([m.kl_weights(signals=signals) for m in methods])

    traj = all_traj if whole else all_traj.take(list(range(rank, all_traj.num_rows, world)))
    position = {sid: i for i, sid in enumerate(ids)}
    mine = [position[sid] for sid in traj.column("sample_id").to_pylist()]
    replay = Replay(
        latents=_stack_rows(traj.column("latents").to_pylist(), "latents"),
        cond=_stack_rows(group_conditioning(all_traj, traj.column("group_id").to_pylist())),
        old_log_probs=torch.tensor(traj.column("log_probs").to_pylist(), dtype=torch.float32),
        schedule=Schedule(torch.tensor(traj.column("sigmas")[0].as_py(), dtype=torch.float32)),
        advantages=torch.tensor(np.stack([adv_all, detail_all], axis=1)[mine], dtype=torch.float32),
        kl_weight=None if kl_weight_all is None else torch.tensor(kl_weight_all[mine], dtype=torch.float32),
        prompt_noise=first([m.conditioning_replay(rollouts=traj) for m in methods]))
    extras = RoundExtras(methods=methods)

    policy = load_policy_for_round(ctx, inputs.adapter, trainable=True, device=acc.device)
    coefficients = options.recorded_coefficients(scored, f"scores {inputs.scores.uri}")
    profile = structure_profile.resolve(ctx, policy, round_index, rollouts=all_traj, groups=groups,
                                        main=acc.is_main_process, wait=acc.wait_for_everyone, gather=gather_object)
    cfg = options.round_config(cfg, coefficients, profile.structure_steps if profile else t.structure_steps)
    t = cfg.train
    opt = make_optimizer(policy, cfg)
    ema = EMAModel(policy.lora_parameters(), decay=t.ema_decay) if t.ema_decay > 0 else None
    state = None if inputs.optimizer_state is None else artifacts.read_tensors(ctx.store, inputs.optimizer_state,
                                                                                OPTIMIZER_KIND)
    if state is not None:
        load_training_state(opt, ema, state)
    extras.reference = first([m.reference(policy=policy, tensors=state) for m in methods]) or options.BaseReference(
        policy)
    extras.round_start = RoundStart.if_needed(methods, policy)
    if world > 1:  # every process loaded the same weights: DDP need not sync the frozen ones (GBs for FLUX)
        frozen = [n for n, p in policy.transformer.named_parameters() if not p.requires_grad]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            policy.transformer, frozen + [n for n, _ in policy.transformer.named_buffers()])
    policy.wrapped_transformer, opt = acc.prepare(policy.transformer, opt)
    gate = check_agreement(ctx, inputs, acc, policy, replay=replay)

    rows = []
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, Stream.UPDATE_ORDER, round_index))
    n, batch_size = len(replay), t.batch_size // world
    for _ in range(t.inner_epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, max(n - batch_size, 0) + 1, batch_size):  # drops a partial last batch
            stats = _optimizer_step(acc, policy, opt, cfg=cfg, replay=replay, rows=order[start:start + batch_size],
                                    steps=trained_steps(cfg, round_index), extras=extras)
            rows.append({"round": round_index, "optimizer_step": len(rows), **stats})
            if ema is not None and len(rows) % t.ema_every == 0:
                ema.step(policy.lora_parameters())
    policy.wrapped_transformer = None
    ratio_by_step = {j: ratio_stats(acc.reduce(m, reduction="sum")) for j, m in sorted(extras.ratio_by_step.items())}
    extras.reference.after_round(round_index, [r["kl"] for r in rows])
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return None
    check_round_finite(round_index, rows, {"LoRA weight": policy.lora_state_dict(),
                                           "optimizer state": training_state_to_tensors(opt, ema)[0]})
    carried = extras.reference.to_tensors()
    for m in methods:
        carried |= m.carry(coefficients=coefficients)
    result = _write_outputs(ctx, inputs, policy, opt, ema, rows, rewards, groups, carried,
                            profile=profile.ref if profile else None)
    result.metrics |= options.metrics(signals) | extras.reference.metrics(round_index) | gate.metrics()
    result.metrics |= coefficients | ({"structure_steps": float(t.structure_steps)} if profile else {})
    for m in methods:
        result.metrics |= m.update_metrics(ratio_by_step=ratio_by_step)
    return result


def check_agreement(ctx: StageContext, inputs: UpdateInputs, acc: Accelerator, policy: FlowPolicy, *,
                    replay: Replay) -> agreement.Agreement:
    """The agreement gate (`agreement`), before the first optimizer step: this process's first micro-batch
    recomputed at every trained step under the round's input adapter; every process fails if any disagrees."""
    cfg = ctx.config
    dtype = agreement.velocity_dtype(policy, cfg.train.mixed_precision)
    result = agreement.measure(
        policy, replay, sampling=cfg.sampling, roundoff=agreement.UNIT_ROUNDOFF[dtype],
        rows=torch.arange(min(cfg.train.micro_batch_size, len(replay))), steps=trained_steps(cfg, inputs.round_index))
    worst = acc.reduce(torch.tensor([result.worst_share], device=acc.device), reduction="max")
    if float(worst) > 1:
        raise agreement.AgreementError(agreement.refusal(inputs.round_index, result, agreement.rollout_origin(
            ctx.store, inputs.rollouts), dtype))
    return result


@dataclass
class RoundExtras:
    """What the methods add to a round's optimizer steps besides the replay's data: the regularisers' reference,
    the methods themselves (their loss hooks), the round's input weights where a hook needs the old policy's step,
    and each step's summed ratio moments."""

    reference: Any = None
    methods: list[Method] = field(default_factory=list)
    round_start: "RoundStart | None" = None
    ratio_by_step: dict[int, torch.Tensor] = field(default_factory=dict)


class RoundStart:
    """The round's input LoRA weights (the policy that sampled the rollouts), kept only when a method's
    `log_ratio` hook is overridden: `step_mean` recomputes a step's mean under them."""

    def __init__(self, policy: FlowPolicy):
        self.policy = policy
        self.weights = [p.detach().clone() for p in policy.lora_parameters()]

    @classmethod
    def if_needed(cls, methods: list[Method], policy: FlowPolicy) -> "RoundStart | None":
        return cls(policy) if any(type(m).log_ratio is not Method.log_ratio for m in methods) else None

    def step_mean(self, cfg: RunConfig, batch: ReplayBatch) -> torch.Tensor:
        s, params = cfg.sampling, self.policy.lora_parameters()
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, w in zip(params, self.weights, strict=True):
                    p.data.copy_(w)
                v = self.policy.velocity(batch.x.to(self.policy.dtype), batch.timesteps, batch.cond, s.guidance_scale)
                return step_with_logprob(v.float(), batch.x, batch.step, method=s.method, noise_level=s.noise_level,
                                         prev_sample=batch.x_next).prev_sample_mean
        finally:
            for p, w in zip(params, saved, strict=True):
                p.data.copy_(w)


def _write_outputs(ctx: StageContext, inputs: UpdateInputs, policy: FlowPolicy, opt: torch.optim.Optimizer,
                   ema: EMAModel | None, rows: list[dict], rewards: np.ndarray, groups: list[str],
                   carried: dict[str, torch.Tensor], *, profile: ArtifactRef | None) -> StageResult:
    """The round's adapter, optimizer state (with what the reference and the methods carry to the next round),
    metrics table and EMA adapter; their lineage names the structure profile K came from, under auto."""
    cfg, round_index = ctx.config, inputs.round_index
    prov = ctx.provenance("update", round_index, {
        **named_inputs("rollouts", inputs.rollouts), "scores": inputs.scores, "adapter": inputs.adapter,
        "optimizer_state": inputs.optimizer_state, "base_model": ctx.base_model_ref(policy),
        "config": ctx.config_ref(), "structure_profile": profile})
    lora_meta = {"lora_config": json.dumps({"r": cfg.lora.rank, "lora_alpha": cfg.lora.alpha,
                                            "target_modules": cfg.lora.target_modules or policy.lora_targets}),
                 "round": str(round_index), **policy.lora_adapter_metadata()}
    outputs = {"adapter": artifacts.write_tensors(ctx.store, policy.lora_state_dict(), ADAPTER_KIND, prov,
                                                  lora_meta)}
    state, state_meta = training_state_to_tensors(opt, ema)
    state |= carried
    outputs["optimizer_state"] = artifacts.write_tensors(ctx.store, state, OPTIMIZER_KIND, prov, state_meta)
    outputs["metrics"] = artifacts.write_table(ctx.store, pa.Table.from_pylist(rows, schema=UPDATE_METRICS.schema),
                                               UPDATE_METRICS, prov)
    if ema is not None:
        with ema_weights(policy, ema):
            outputs["ema_adapter"] = artifacts.write_tensors(ctx.store, policy.lora_state_dict(), ADAPTER_KIND,
                                                             prov, {**lora_meta, "ema_decay": str(ema.decay)})
    means = {k: float(np.mean([r[k] for r in rows])) for k in (*LOGGED, "ratio_mean", "ratio_std")}
    return StageResult(outputs, {**means, "optimizer_steps": float(len(rows)), "reward_mean": float(rewards.mean()),
                                 **group_reward_spread(rewards, groups)})


LOGGED = ("policy_loss", "kl", "sa_reg", "approx_kl", "clip_fraction")


def group_reward_spread(rewards: np.ndarray, groups: list[str]) -> dict[str, float]:
    """The in-group spread of the reward the update normalises: the mean over groups of its standard deviation,
    and the share of groups whose rewards are all equal (zero advantage: they teach nothing)."""
    g = np.asarray(groups)
    stds = np.array([rewards[g == k].std() for k in np.unique(g)])
    return {"reward_group_std": float(stds.mean()), "zero_std_groups": float(np.mean(stds == 0))}


def ratio_moments(log_prob: torch.Tensor, old_log_prob: torch.Tensor, log_ratio: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """[sum d, sum d^2, count] of d = ratio - 1 over a micro-batch, in float64: the ratio sits near 1, so its
    variance computed from raw second moments in float32 would cancel to noise. `log_ratio`: a method's
    transformed log ratio, replacing log_prob - old_log_prob."""
    lr = (log_prob.detach().double() - old_log_prob.detach().double() if log_ratio is None
          else log_ratio.detach().double())
    d = torch.exp(lr) - 1.0
    return torch.stack([d.sum(), (d * d).sum(), torch.tensor(float(d.numel()), dtype=torch.float64,
                                                              device=d.device)])


def ratio_stats(moments: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation of the importance ratio from summed `ratio_moments` (GRPO-Guard logs both: a
    mean drifting from 1 or a growing spread shows the update leaving the trust region)."""
    total, squares, n = moments.tolist()
    mean_d = total / n
    return {"ratio_mean": 1.0 + mean_d, "ratio_std": max(squares / n - mean_d * mean_d, 0.0) ** 0.5}


def _optimizer_step(acc: Accelerator, policy: FlowPolicy, opt: torch.optim.Optimizer, *, cfg: RunConfig,
                    replay: Replay, rows: torch.Tensor, steps: list[int], extras: RoundExtras) -> dict[str, float]:
    """Accumulate gradients over the micro-batches of `rows` and the trained steps, then take one optimizer step.

    Gradients are all-reduced (averaged over processes) on the last backward pass only; the logged terms are
    averaged over processes too.
    """
    t = cfg.train
    micro = [rows[i:i + t.micro_batch_size] for i in range(0, len(rows), t.micro_batch_size)]
    totals = torch.zeros(len(LOGGED), device=acc.device)
    moments = torch.zeros(3, dtype=torch.float64, device=acc.device)
    scale = 1.0 / (len(steps) * len(micro))
    passes = [(idx, j) for idx in micro for j in steps]
    for n, (idx, j) in enumerate(passes):
        batch = replay.batch(idx, j, policy.device)
        sync = contextlib.nullcontext() if n == len(passes) - 1 else acc.no_sync(policy.wrapped_transformer)
        with sync:
            terms, log_ratio, step, reg_weight = _pass_terms(policy, cfg, batch, extras)
            policy_loss, kl, sa = terms[:3]
            acc.backward((policy_loss + t.beta_kl * kl + reg_weight * sa) * scale)
        totals += torch.stack(terms).detach().float() * scale
        step_moments = ratio_moments(step.log_prob, batch.old_log_prob, log_ratio)
        moments += step_moments
        if j not in extras.ratio_by_step:
            extras.ratio_by_step[j] = torch.zeros(3, dtype=torch.float64, device=acc.device)
        extras.ratio_by_step[j] += step_moments
    grad_norm = acc.clip_grad_norm_(policy.lora_parameters(), t.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    averaged = acc.reduce(totals, reduction="mean").tolist()
    return {**dict(zip(LOGGED, averaged, strict=True)), **ratio_stats(acc.reduce(moments, reduction="sum")),
            "grad_norm": float(grad_norm)}


def _pass_terms(policy: FlowPolicy, cfg: RunConfig, batch: ReplayBatch, extras: RoundExtras
                ) -> tuple[list[torch.Tensor], torch.Tensor | None, SDEStep, float]:
    """One micro-batch at one step: the `LOGGED` terms (policy loss, KL, a method's regulariser, approx KL, clip
    fraction), the methods' log ratio (None: log_prob - old_log_prob), the policy's step and the regulariser's
    weight (0 where none acts).

    The structure steps (`structure_step`) take the advantages' column 0 (the round's), the others column 1 (a
    method's `detail_advantages`; the same values where none sets them)."""
    t, s = cfg.train, cfg.sampling
    v = policy.velocity(batch.x.to(policy.dtype), batch.timesteps, batch.cond, s.guidance_scale)
    step = step_with_logprob(v.float(), batch.x, batch.step, method=s.method, noise_level=s.noise_level,
                             prev_sample=batch.x_next)
    log_ratio = method_log_ratio(cfg, extras, step=step, batch=batch)
    policy_loss, approx_kl, clip_fraction = clipped_policy_loss(
        step.log_prob, batch.old_log_prob, batch.advantages[:, 0 if structure_step(cfg, batch.j) else 1],
        t.clip_range, **({} if log_ratio is None else {"log_ratio": log_ratio}))
    weight = step_weight(extras.methods, j=batch.j, step=batch.step)
    if weight is not None:
        policy_loss = policy_loss * weight
    reg = step_regularizer(extras.methods, cfg=cfg, j=batch.j)
    kl, sa = regularizer_terms(policy, cfg, batch=batch, step=step, reference=extras.reference, regularizer=reg)
    return [policy_loss, kl, sa, approx_kl, clip_fraction], log_ratio, step, 0.0 if reg is None else reg.weight


def method_log_ratio(cfg: RunConfig, extras: RoundExtras, *, step: SDEStep, batch: ReplayBatch
                     ) -> torch.Tensor | None:
    """The log ratio of the first method whose `log_ratio` hook acts, or None (log_prob - old_log_prob)."""
    if extras.round_start is None:
        return None
    old_mean: list[torch.Tensor] = []

    def lazy_old_mean() -> torch.Tensor:
        if not old_mean:
            old_mean.append(extras.round_start.step_mean(cfg, batch))
        return old_mean[0]

    view = PolicyStep(j=batch.j, log_prob=step.log_prob, old_log_prob=batch.old_log_prob, mean=step.prev_sample_mean,
                      std_dev_t=step.std_dev_t, sigma=batch.step.sigma, sigma_next=batch.step.sigma_next,
                      old_mean=lazy_old_mean)
    return first([m.log_ratio(step=view) for m in extras.methods])


def step_weight(methods: list[Method], *, j: int, step: ScheduleStep) -> float | None:
    """The product of the methods' weights of step j's policy loss, or None where no method weighs it."""
    weights = [w for m in methods if (w := m.step_weight(j=j, sigma=step.sigma, sigma_next=step.sigma_next))
               is not None]
    return float(np.prod(weights)) if weights else None


def structure_step(cfg: RunConfig, j: int) -> bool:
    """Whether denoising step j is one of the trajectory's first train.structure_steps, which draw the structure: the
    detail steps after them take a method's `detail_advantages`. Counted in the trajectory, not in the trained steps,
    so an SDE window starting at step 4 trains detail steps only when structure_steps <= 4 (docs/algorithms.md,
    "SA-Reg")."""
    return j < cfg.train.structure_steps


def step_regularizer(methods: list[Method], *, cfg: RunConfig, j: int) -> StepRegularizer | None:
    """The regulariser of the first method that adds one at denoising step j (`Method.step_regularizer`), with
    `cfg` the config the round trains with."""
    return first([m.step_regularizer(j=j, cfg=cfg) for m in methods])


def regularizer_terms(policy: FlowPolicy, cfg: RunConfig, *, batch: ReplayBatch, step: SDEStep,
                      reference: Any = None, regularizer: StepRegularizer | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL, a method's regulariser) of `batch`'s denoising step, where `step` is the policy's; each a batch mean
    (the regulariser unweighted), 0 where not enabled.

    KL (in train.kl_form's form) acts on every trained step, `regularizer` (`step_regularizer`: DiverseGRPO's
    SA-Reg on the structure steps) where a method sets one. The reference is the base model (adapter off; GARDO's
    reset `reference` once it has one) under no_grad, so gradients flow through the policy's step mean alone. The
    batch's `kl_weight` weighs each sample's KL (GARDO's gate).
    """
    t, s = cfg.train, cfg.sampling
    use_kl = t.uses_kl
    zero = torch.zeros((), device=step.prev_sample_mean.device)
    if not (use_kl or regularizer is not None):
        return zero, zero
    with torch.no_grad(), (policy.adapter_disabled() if reference is None else reference.active()):
        v_ref = policy.velocity(batch.x.to(policy.dtype), batch.timesteps, batch.cond, s.guidance_scale)
        ref = step_with_logprob(v_ref, batch.x, batch.step, method=s.method, noise_level=s.noise_level,
                                prev_sample=batch.x_next)
    kl = zero
    if use_kl:
        per_sample = step_kl(step, ref.prev_sample_mean, t.kl_form)
        kl = per_sample.mean() if batch.kl_weight is None else (
            per_sample * batch.kl_weight.to(per_sample.device)).mean()
    sa = zero if regularizer is None else regularizer.term(step.prev_sample_mean, ref.prev_sample_mean).mean()
    return kl, sa
