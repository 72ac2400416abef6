"""DRIFT: the robust-z outlier filter, the annealed prompt noise and its exact replay in the update, and the
potential-based shaping; each against hand-computed values, and through the stages."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from support import small_config

from dgrpo import artifacts
from dgrpo.config import ConfigError
from dgrpo.contracts import ROLLOUTS, SCORES
from dgrpo.methods import drift
from dgrpo.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline
from dgrpo.objectives import group_advantages
from dgrpo.rng import Stream, derive_seed
from dgrpo.sampling import Schedule, step_with_logprob
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.exchange import import_table
from dgrpo.stages.shared.policy_io import load_policy_for_round
from dgrpo.stages.update import group_conditioning, run_update
from dgrpo.stages.update import train as update_train
from dgrpo.stages.update.agreement import AgreementError
from dgrpo.store import LocalStore

NOISE = {"drift.prompt_noise": True, "sampling.num_steps": 5}
"""The toy schedule's 5 sigmas 1, 0.75, 0.50, 0.25, 0.001: noise on steps 0 (g = 0) and 1 (g = 1/2) only."""
FAST = {"sampling.num_steps": 4}


# outlier filter ---------------------------------------------------------------------------------------------------
def test_robust_z_by_hand():
    z = drift.robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))  # median 3, MAD 1
    np.testing.assert_allclose(z, 0.6745 * np.array([-2.0, -1.0, 0.0, 1.0, 97.0]), rtol=1e-15)
    assert drift.outlier_kept(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), 2.0).tolist() == [True] * 4 + [False]
    # more than half tie (MAD 0): the mean absolute deviation, 0.8, takes its place; 5 has z = 0.7979 x 4 / 0.8
    z = drift.robust_z(np.array([1.0, 1.0, 1.0, 1.0, 5.0]))
    np.testing.assert_allclose(z, [0, 0, 0, 0, 0.7979 * 4 / 0.8], rtol=1e-15)
    assert drift.outlier_kept(np.array([1.0, 1.0, 1.0, 1.0, 5.0]), 2.0).tolist() == [True] * 4 + [False]
    assert drift.outlier_kept(np.full(6, 0.3), 1.0).all()  # no spread: nothing is an outlier
    # equal up to rounding counts as equal: 0.1 + 0.2 is not an outlier of 0.3
    assert drift.outlier_kept(np.array([0.3, 0.3, 0.3, 0.1 + 0.2]), 1.0).all()


def test_advantages_are_computed_on_the_kept_subset():
    rewards = np.array([0.0, 1.0, 2.0, 10.0, 5.0, 6.0])
    kept = np.array([True, True, True, False, True, True])
    adv = group_advantages(rewards, ["a"] * 4 + ["b"] * 2, False, 5.0, kept)
    expected_a = (np.array([0.0, 1.0, 2.0]) - 1.0) / (np.std([0.0, 1.0, 2.0]) + 1e-4)
    np.testing.assert_allclose(adv[:3], expected_a, rtol=1e-12)
    assert adv[3] == 0.0
    np.testing.assert_allclose(adv[4:], np.array([-0.5, 0.5]) / (0.5 + 1e-4), rtol=1e-12)
    # the global std is the kept samples' too
    glob = group_advantages(rewards, ["a"] * 4 + ["b"] * 2, True, 5.0, kept)
    np.testing.assert_allclose(glob[:3], (np.array([0.0, 1.0, 2.0]) - 1.0) / (rewards[kept].std() + 1e-4))


# prompt noise -----------------------------------------------------------------------------------------------------
def test_annealing_schedule_by_hand():
    t = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.3])
    np.testing.assert_allclose(drift.anneal_gamma(t, 0.6, 0.9), [0, 0, 1 / 3, 2 / 3, 1, 1], atol=1e-15)
    sigmas = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.6, 0.3, 0.0], dtype=torch.float64)  # 0.9 is 0.89999998 in float32
    signal, scale = drift.noise_coefficients(sigmas, 0.6, 0.9, 0.25)
    np.testing.assert_allclose(signal, np.sqrt([0, 0, 1 / 3, 2 / 3, 1, 1]), rtol=1e-6)
    np.testing.assert_allclose(scale, 0.25 * np.sqrt([1, 1, 2 / 3, 1 / 3, 0, 0]), rtol=1e-6)
    assert signal.dtype == scale.dtype == np.float32 and scale[4] == 0 and signal[4] == 1
    seeds = drift.step_seeds(0, 3, 1, 2, scale, "step")
    assert seeds[4:] == [None, None] and len(set(seeds[:4])) == 4
    assert seeds[2] == derive_seed(0, Stream.PROMPT_NOISE, 3, 1, 2, 2)
    first = derive_seed(0, Stream.PROMPT_NOISE, 3, 1, 2, 0)
    assert drift.step_seeds(0, 3, 1, 2, scale, "trajectory")[:4] == [first] * 4


def test_noisy_conditioning_is_the_formula_and_independent_of_the_batch():
    torch.manual_seed(0)
    cond = {"prompt_embeds": torch.randn(3, 5, 4, dtype=torch.float16), "pooled_prompt_embeds": torch.randn(3, 4),
            "negative_prompt_embeds": torch.randn(3, 5, 4), "token_ids": torch.arange(3)}
    seeds, signal, scale = [11, 12, None], [0.5, 0.5, 1.0], [0.3, 0.3, 0.0]
    out = drift.noisy_conditioning(cond, seeds, signal, scale)
    gen = torch.Generator().manual_seed(11)  # keys in sorted order: pooled_prompt_embeds, then prompt_embeds
    eps_pooled = torch.randn(4, generator=gen)
    eps_embeds = torch.randn(5, 4, generator=gen)
    assert torch.equal(out["pooled_prompt_embeds"][0], cond["pooled_prompt_embeds"][0] * 0.5 + eps_pooled * 0.3)
    expected = (cond["prompt_embeds"][0].float() * 0.5 + eps_embeds * 0.3).half()
    assert out["prompt_embeds"].dtype == torch.float16 and torch.equal(out["prompt_embeds"][0], expected)
    for key in ("negative_prompt_embeds", "token_ids"):  # guidance's unconditional branch and integers stay
        assert torch.equal(out[key], cond[key])
    assert torch.equal(out["prompt_embeds"][2], cond["prompt_embeds"][2])  # no noise at this row's step
    assert not torch.equal(out["prompt_embeds"][0], out["prompt_embeds"][1])  # its own seed per row
    alone = drift.noisy_conditioning({k: v[1:2] for k, v in cond.items()}, seeds[1:2], signal[1:2], scale[1:2])
    assert all(torch.equal(alone[k][0], out[k][1]) for k in cond)


def _replayed_log_probs(ctx, table, replay: bool) -> torch.Tensor:
    """Every stored transition's log-prob recomputed from the table alone, on the rollout's own batches (one
    prompt group each) and policy (round 0: the base model, no adapter), with (or without) the replayed noise."""
    cfg = ctx.config
    policy = load_policy_for_round(ctx, None, trainable=False)
    latents = torch.stack([artifacts.tensors_from_bytes(b)["latents"] for b in table.column("latents").to_pylist()])
    groups = table.column("group_id").to_pylist()
    cond_rows = [artifacts.tensors_from_bytes(b) for b in group_conditioning(table, groups)]
    cond = {k: torch.stack([c[k] for c in cond_rows]) for k in cond_rows[0]}
    noise = drift.PromptNoiseReplay.from_rollouts(table)
    sigmas = torch.tensor(table.column("sigmas")[0].as_py())
    schedule = Schedule(sigmas)
    out = torch.empty(table.num_rows, cfg.sampling.num_steps)
    g = cfg.sampling.group_size
    with torch.no_grad():
        for start in range(0, table.num_rows, g):
            rows = list(range(start, start + g))
            for j in range(cfg.sampling.num_steps):
                c = {k: v[rows] for k, v in cond.items()}
                c = noise.conditioning(c, rows, j) if replay else c
                v = policy.velocity(latents[rows, j], sigmas[j].expand(g), c, cfg.sampling.guidance_scale)
                out[rows, j] = step_with_logprob(v, latents[rows, j], schedule.step(j), method="sde",
                                                 noise_level=cfg.sampling.noise_level,
                                                 prev_sample=latents[rows, j + 1]).log_prob
    return out


@pytest.fixture(scope="module")
def noisy_round(tmp_path_factory):
    ctx = StageContext(small_config(**NOISE), LocalStore(tmp_path_factory.mktemp("store")), "drift-noise")
    return ctx, run_rollout(ctx, 0)


@pytest.fixture(scope="module")
def plain_round(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("store"))
    ctx = StageContext(small_config(**FAST), store, "plain")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    scores = run_cluster(ctx, 0, rollouts, run_reward(ctx, 0, rollouts).outputs["rewards"]).outputs["scores"]
    return store, rollouts, scores


def test_rollouts_store_the_noise_seeds_and_replay_is_bit_exact(noisy_round):
    ctx, result = noisy_round
    table = artifacts.read_table(ctx.store, result.outputs["rollouts"], ROLLOUTS)
    rows = table.to_pylist()
    assert rows[0]["prompt_noise_seeds"][:2] == [derive_seed(0, Stream.PROMPT_NOISE, 0, 0, 0, j) for j in range(2)]
    signal, scale = drift.noise_coefficients(torch.tensor(rows[0]["sigmas"]), 0.6, 0.9, 0.25)
    assert rows[0]["prompt_noise_seeds"][2:] == [None] * 3 and scale[2:].tolist() == [0.0] * 3
    assert rows[0]["prompt_noise_signal"] == signal.tolist() and rows[0]["prompt_noise_scale"] == scale.tolist()
    assert signal[0] == 0 and 0.7 < signal[1] < 0.71  # sigma 1: noise only; sigma 0.7508: g = 0.497
    assert result.metrics["prompt_noise_steps"] == 2
    assert result.metrics["prompt_noise_replaced_steps"] == 1  # step 0: the prompt is noise only
    assert result.metrics["prompt_noise_change_max"] > result.metrics["prompt_noise_change_mean"] > 0
    stored = torch.tensor(table.column("log_probs").to_pylist())
    replayed = _replayed_log_probs(ctx, table, replay=True)
    assert torch.equal(replayed, stored)  # same batches, same conditioning, same float32 ops: bit for bit
    clean = _replayed_log_probs(ctx, table, replay=False)  # negative control: the prompt noise ignored
    # clean steps agree, every noisy transition of every sample is off by far more than the update's 1e-6
    assert torch.equal(clean[:, 2:], stored[:, 2:]) and (clean[:, :2] - stored[:, :2]).abs().min() > 1e-4


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_replay_is_bit_exact_on_the_diffusers_backbones(kind, tmp_path):
    """SD3 (CLIP + T5 sequence, pooled, and negatives) and FLUX.1-dev (guidance-distilled: no negative prompt) on
    tiny random-weight pipelines: the stored seeds and factors rebuild the noisy conditioning bit for bit."""
    pipe = tiny_sd3_pipeline() if kind == "sd3" else tiny_flux_pipeline()
    pipe.save_pretrained(tmp_path / kind)
    cfg = small_config(**NOISE | {
        "model.kind": kind, "model.pretrained": str(tmp_path / kind), "model.resolution": 32,
        "model.max_sequence_length": 8, "sampling.num_steps": 3, "sampling.group_size": 2,
        "sampling.guidance_scale": 4.5 if kind == "sd3" else 3.5, "cluster.embedder": None})
    ctx = StageContext(cfg, LocalStore(tmp_path / "store"), kind)
    table = artifacts.read_table(ctx.store, run_rollout(ctx, 0).outputs["rollouts"], ROLLOUTS)
    assert all(seeds[0] is not None for seeds in table.column("prompt_noise_seeds").to_pylist())
    stored = torch.tensor(table.column("log_probs").to_pylist())
    assert torch.equal(_replayed_log_probs(ctx, table, replay=True), stored)
    assert not torch.equal(_replayed_log_probs(ctx, table, replay=False)[:, 0], stored[:, 0])


def test_the_update_recomputes_the_rollouts_log_probs(noisy_round, monkeypatch):
    """The update's first optimizer step runs the unchanged policy, so its recomputed log-probs are the rollout's;
    without the prompt noise's replay they are not, and the agreement gate refuses the round.
    Not bit for bit here, for two reasons that have nothing to do with the prompt noise: the update batches 8
    shuffled trajectories of both groups where the rollout batched one group (a float32 matmul's rounding depends
    on the batch), and it runs the model through peft's LoRA layers (B = 0 adds exact zeros, but the layer's
    arithmetic differs from the bare linear layer the round-0 rollout used). Both move a per-element-mean log-prob
    of size ~1 by a few float32 ulps (measured: < 1e-6). The same bound fails by orders of magnitude when the
    prompt noise is not replayed."""
    ctx, result = noisy_round
    rollouts = result.outputs["rollouts"]
    scores = run_cluster(ctx, 0, rollouts, run_reward(ctx, 0, rollouts).outputs["rewards"]).outputs["scores"]
    seen: list[torch.Tensor] = []
    loss = update_train.clipped_policy_loss

    def watch(log_prob, old_log_prob, adv, clip):
        seen.append((log_prob.detach() - old_log_prob).abs())
        return loss(log_prob, old_log_prob, adv, clip)

    monkeypatch.setattr(update_train, "clipped_policy_loss", watch)
    run_update(ctx, 0, rollouts, scores)  # batch_size 16: one optimizer step, all on the unchanged policy
    assert len(seen) == 2 * 4 and float(torch.cat(seen).max()) <= 1e-6  # 2 micro-batches x 4 trained steps

    seen.clear()  # without the replay the update's policy is not the rollout's: the agreement gate refuses it
    monkeypatch.setattr(drift.PromptNoiseReplay, "from_rollouts", classmethod(lambda cls, traj: None))
    with pytest.raises(AgreementError, match=r"denoising step 0: max \|delta log p\| 0\.\d+ > bound"):
        run_update(StageContext(ctx.config, ctx.store, "no-replay"), 0, rollouts, scores)
    assert seen == []  # refused before any optimizer step


# shaping ----------------------------------------------------------------------------------------------------------
def test_relative_change_by_hand():
    """||y' - y|| / ||y|| per step over the positive floating tensors; negatives and clean steps untouched."""
    y = torch.tensor([[3.0, 4.0]])
    cond = {"prompt_embeds": y, "negative_prompt_embeds": 100 * y, "mask": torch.ones(1, 2, dtype=torch.long)}
    change = drift.relative_change(cond, np.array([0.0, 0.6, 1.0], np.float32), np.array([0.5, 0.2, 0.0], np.float32),
                                   seeds=[7, 8, None])
    for step, (a, c) in enumerate([(0.0, 0.5), (0.6, 0.2)]):
        eps = torch.randn(y.shape, generator=torch.Generator().manual_seed(7 + step), dtype=torch.float32)
        expected = float((a * y + c * eps - y).norm() / y.norm())
        assert change[step] == pytest.approx(expected, rel=1e-6)
    assert change[2] == 0


def test_potential_and_shaping_by_hand():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # cosine distances: d01 = d12 = 1, d02 = 0
    np.testing.assert_allclose(drift.diversity_potential(emb), [0.5, 1.0, 0.5], atol=1e-15)
    np.testing.assert_allclose(drift.diversity_potential(emb, "nearest_distance"), [0.0, 1.0, 0.0], atol=1e-15)
    phi = np.array([0.5, 1.0, 0.5])  # Phi_0 = 2/3
    rewards = np.array([1.0, 2.0, 3.0])
    shaping, clipped = drift.potential_shaping(phi, rewards, 3.0, 0.6, "absolute")
    np.testing.assert_allclose(shaping, [-0.5, 0.6, -0.5], atol=1e-12)  # 3 x (1/3) = 1 is clipped to 0.6
    assert clipped.tolist() == [False, True, False]
    scaled, _ = drift.potential_shaping(phi, rewards, 3.0, 0.6, "reward_std")
    np.testing.assert_allclose(scaled, shaping * rewards.std(), rtol=1e-12)


def test_cluster_stage_filters_shapes_and_shows_it(store):
    ctx = StageContext(small_config(**FAST, **{"drift.outlier_filter": True, "drift.outlier_threshold": 1.0,
                                                "drift.shaping_weight": 2.0}), store, "drift-cluster")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    rewards = run_reward(ctx, 0, rollouts).outputs["rewards"]
    result = run_cluster(ctx, 0, rollouts, rewards)
    rows = artifacts.read_table(store, result.outputs["scores"], SCORES).to_pylist()
    assert result.metrics["dropped"] == sum(not r["kept"] for r in rows) > 0
    assert result.metrics["kept"] + result.metrics["dropped"] == 16
    for group in {r["group_id"] for r in rows}:
        g = [r for r in rows if r["group_id"] == group]
        q = np.array([r["quality"] for r in g])
        kept = np.array([r["kept"] for r in g])
        assert kept.tolist() == drift.outlier_kept(q, 1.0).tolist()
        emb = np.array([r["embedding"] for r in g], dtype=np.float64)
        expected, _ = drift.potential_shaping(drift.diversity_potential(emb[kept]), q[kept], 2.0, 1.0, "reward_std")
        shaping = np.array([r["shaping"] for r in g])
        np.testing.assert_allclose(shaping[kept], expected, rtol=1e-9, atol=1e-12)
        assert np.all(shaping[~kept] == 0)
        np.testing.assert_allclose([r["final_reward"] for r in g], q + shaping, rtol=1e-15)
    assert result.metrics["shaping_abs_mean"] > 0 and "shaping_clipped_share" in result.metrics
    # whether the shaping acts: its spread against the quality's (DRIFT's w is this project's)
    assert result.metrics["shaping_std_over_quality_std"] == pytest.approx(
        result.metrics["shaping_std"] / result.metrics["quality_std_in_group"], rel=1e-12)
    update = run_update(ctx, 0, rollouts, result.outputs["scores"])
    assert update.metrics["dropped"] == result.metrics["dropped"]


def test_without_the_options_the_new_columns_are_null(plain_round):
    store, rollouts, scores = plain_round
    table = artifacts.read_table(store, rollouts, ROLLOUTS)
    for name in ("prompt_noise_seeds", "prompt_noise_signal", "prompt_noise_scale", "preview_rewards",
                 "prune_record"):
        assert table.column(name).null_count == table.num_rows
    s = artifacts.read_table(store, scores, SCORES)
    assert all(s.column(n).null_count == 16 for n in ("kept", "shaping", "novelty", "kl_gate"))


def test_an_option_the_scores_lack_is_an_error_naming_the_column(plain_round):
    """An external cluster stage that leaves `kept` null while the config filters: the update refuses."""
    store, rollouts, scores = plain_round
    filtering = StageContext(small_config(**FAST, **{"drift.outlier_filter": True}), store, "filtering")
    with pytest.raises(ValueError, match="column 'kept' is null for 16 of 16 samples.*drift.outlier_filter"):
        run_update(filtering, 0, rollouts, scores)


def test_a_swapped_in_cluster_stage_that_sets_kept_is_obeyed(plain_round, tmp_path):
    """A team's cluster stage writes a scores v3 Parquet file with its own `kept` flags; imported through the
    exchange boundary, the update (config without any filter) gives the dropped samples no advantage."""
    store, rollouts, scores = plain_round
    ctx = StageContext(small_config(**FAST), store, "external")
    table = artifacts.read_table(store, scores, SCORES)
    kept = [i not in (0, 9) for i in range(table.num_rows)]
    table = table.set_column(table.schema.get_field_index("kept"), SCORES.schema.field("kept"),
                             pa.array(kept, pa.bool_()))
    path = tmp_path / "scores.parquet"
    pq.write_table(table, path)  # written by "their" code: the metadata is what they declare
    imported = import_table(ctx, 0, "cluster", "scores", str(path), {"rollouts": rollouts}, "team/cluster:1")
    seen = []
    advantages = update_train.group_advantages

    def watch(rewards, groups, global_std, clip, kept=None):
        adv = advantages(rewards, groups, global_std, clip, kept)
        seen.append((kept, adv))
        return adv

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(update_train, "group_advantages", watch)
        result = run_update(ctx, 0, rollouts, imported.outputs["scores"])
    assert result.metrics["dropped"] == 2 and seen[0][0].tolist() == kept
    assert seen[0][1][0] == 0 and seen[0][1][9] == 0 and np.count_nonzero(seen[0][1]) >= 12


@pytest.mark.parametrize(("overrides", "field"), [
    ({"drift.prompt_noise": True, "drift.prompt_noise_tau1": 0.9}, "drift.prompt_noise_tau1"),
    ({"drift.outlier_threshold": 0.5}, "drift.outlier_threshold"),
    ({"drift.shaping_weight": 1.0, "cluster.embedder": None}, "cluster.embedder"),
    ({"drift.prompt_noise_resample": "never"}, "drift.prompt_noise_resample"),
])
def test_config_refusals_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        small_config(**overrides)
