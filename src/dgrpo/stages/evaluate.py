"""Evaluate stage: deterministic sampling on held-out prompts and seeds; quality, mode coverage, diversity.

Diversity per prompt: mean pairwise pixel distance and, when cluster.embedder is configured (DreamSim for real
images), the mean pairwise embedding distance and the Vendi score of the embeddings (the effective number of
distinct images). Every measure is averaged over all prompts, over the held-out prompts (`heldout_*`) and over the
training prompts (`train_*`): a method that keeps diversity only on the prompts it trained on has not learned it.
"""


import numpy as np
import pyarrow as pa
import torch

from dgrpo import artifacts
from dgrpo.config import RunConfig
from dgrpo.contracts import EVAL_SAMPLES
from dgrpo.diversity import mean_pairwise_distance, vendi_score
from dgrpo.embedders import load_embedder
from dgrpo.images import image_grid, png_bytes
from dgrpo.metrics import load_mode_classifier, mode_coverage, pairwise_diversity
from dgrpo.models.trajectories import sample_ode
from dgrpo.rewards import load_reward
from dgrpo.rng import Stream, derive_seed
from dgrpo.runs.evaluations import write_evaluation
from dgrpo.runs.records import EvalRecord
from dgrpo.stages.shared.context import StageContext, StageResult, emit_event
from dgrpo.stages.shared.policy_io import load_policy_for_round
from dgrpo.stages.shared.training_state import use_ema_weights
from dgrpo.store import ArtifactRef

EVAL_BATCH = 128


def run_evaluate(ctx: StageContext, round_index: int, adapter: ArtifactRef | None = None,
                 optimizer_state: ArtifactRef | None = None) -> StageResult:
    """Evaluate the policy of `adapter`, or the EMA of its weights kept in `optimizer_state` (eval.use_ema)."""
    cfg, e = ctx.config, ctx.config.eval
    policy = load_policy_for_round(ctx, adapter, trainable=False)
    ema_state = optimizer_state if e.use_ema and cfg.train.ema_decay > 0 else None
    if ema_state is not None:
        use_ema_weights(ctx, policy, ema_state)
    prompts = list(e.prompts)
    group_of = torch.arange(len(prompts)).repeat_interleave(e.samples_per_prompt)
    seeds = [derive_seed(e.seed, Stream.EVAL_NOISE, i % e.samples_per_prompt) for i in range(len(group_of))]
    base_cond = policy.encode_prompts(prompts)
    images = []
    for start in range(0, len(group_of), EVAL_BATCH):
        idx = group_of[start:start + EVAL_BATCH]
        cond = {k: v[idx] for k, v in base_cond.items()}
        x = sample_ode(policy, cond, seeds[start:start + EVAL_BATCH], e.num_steps, cfg.sampling.shift,
                       e.guidance_scale)
        images.append(policy.decode(x))
    images = np.concatenate(images)
    prompt_list = [prompts[p] for p in group_of.tolist()]
    scores = load_reward(cfg.reward.name, cfg.reward.options)(images, prompt_list)
    modes = None
    if e.mode_classifier is not None:
        classify = load_mode_classifier(e.mode_classifier)
        n_modes = classify.n_modes
        modes = classify(images)

    embeddings = None
    if cfg.cluster.embedder is not None:  # DiverseGRPO's diversity measure: the embedder the cluster stage uses
        embeddings = load_embedder(cfg.cluster.embedder, cfg.cluster.embedder_options)(images)

    train_prompts = set(cfg.sampling.prompts)
    per_prompt = []
    for p, prompt in enumerate(prompts):
        mask = (group_of == p).numpy()
        row = {"prompt": prompt, "held_out": prompt not in train_prompts,
               "reward": float(scores["reward"][mask].mean()), "diversity": pairwise_diversity(images[mask])}
        if embeddings is not None:
            row["embedding_diversity"] = mean_pairwise_distance(embeddings[mask])
            row["vendi"] = vendi_score(embeddings[mask])
        if "quality" in scores:
            row["quality"] = float(scores["quality"][mask].mean())
        if modes is not None:
            row["mode_entropy"], row["modes_over_10pct"] = mode_coverage(modes[mask], n_modes)
            row["mode_shares"] = (np.bincount(modes[mask] + 1, minlength=n_modes + 1)[1:] / mask.sum()).tolist()
        per_prompt.append(row)
    metrics = _summarise(per_prompt)

    table = pa.Table.from_pylist([{
        "sample_id": f"eval{round_index}/p{p}/s{i % e.samples_per_prompt}", "group_id": f"eval{round_index}/p{p}",
        "prompt": prompts[p], "round": round_index, "held_out": prompts[p] not in train_prompts,
        "image_png": png_bytes(images[i]), "reward": float(scores["reward"][i]),
        "mode": None if modes is None else int(modes[i]),
    } for i, p in enumerate(group_of.tolist())], schema=EVAL_SAMPLES.schema)
    prov = ctx.provenance("evaluate", round_index, {"adapter": adapter, "ema_state": ema_state,
                                                     "base_model": ctx.base_model_ref(policy)},
                          seeds={"eval_seed": e.seed})
    samples_ref = artifacts.write_table(ctx.store, table, EVAL_SAMPLES, prov)
    rows = [images[(group_of == p).numpy()][: e.grid_columns] for p in range(len(prompts))]
    scale = max(1, 64 // images.shape[1])  # the toy's 16 px images shown at 64 px; a real model's as they are
    grid_ref = artifacts.write_blob(ctx.store, image_grid(rows, scale=scale), "eval_grid", ".png", prov)
    result = StageResult({"samples": samples_ref, "grid": grid_ref}, metrics)
    emit_event(ctx, "evaluate", round_index, result)
    write_evaluation(ctx.store, ctx.run_id, EvalRecord(
        round=round_index, metrics=metrics, per_prompt=per_prompt, reward=reward_source(cfg), grid=grid_ref,
        grid_columns=e.grid_columns, eval_seed=e.seed))
    return result


SUMMARISED = ("reward", "quality", "mode_entropy", "modes_over_10pct", "diversity", "embedding_diversity", "vendi")
"""Per-prompt measures that the stage's metrics average."""


def _summarise(per_prompt: list[dict]) -> dict[str, float]:
    """Means over prompts: over all of them, over the held-out ones (`heldout_`) and the training ones (`train_`)."""
    keys = [k for k in SUMMARISED if k in per_prompt[0]]
    metrics = {k: float(np.mean([r[k] for r in per_prompt])) for k in keys}
    for prefix, rows in (("heldout_", [r for r in per_prompt if r["held_out"]]),
                         ("train_", [r for r in per_prompt if not r["held_out"]])):
        if rows:
            metrics |= {f"{prefix}{k}": float(np.mean([r[k] for r in rows])) for k in keys}
    return metrics


def reward_source(cfg: RunConfig) -> dict[str, str]:
    """Which reward the evaluation scores with, and why: with a swapped reward stage it cannot be the same code."""
    swapped = cfg.pipeline.swaps().get("reward")
    if swapped is None:
        return {"name": cfg.reward.name, "why": "the training reward (reward.name), as the reward stage uses"}
    what = swapped.component or swapped.image
    return {"name": cfg.reward.name, "swapped_stage": str(what),
            "why": f"the reward stage is swapped for {what}, a separate container the evaluate stage cannot call; "
                   f"the evaluation scores with reward.name {cfg.reward.name!r} instead. Point reward.name at the "
                   "same model (a registry name or package.module:factory path) to evaluate with it"}
