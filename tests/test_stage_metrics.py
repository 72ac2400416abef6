"""The metrics a run reports: the evaluation's diversity on held-out and training prompts (mean pairwise distance
and Vendi score), and the update's in-group reward spread and importance-ratio statistics."""

import numpy as np
import pytest
import torch
from support import small_config

from dgrpo import artifacts
from dgrpo.contracts import EVAL_SAMPLES, SCORES, UPDATE_METRICS
from dgrpo.diversity import mean_pairwise_distance, vendi_score
from dgrpo.embedders import load_embedder
from dgrpo.images import png_decode
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.evaluate import reward_source, run_evaluate
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.update import run_update
from dgrpo.stages.update.train import group_reward_spread, ratio_moments, ratio_stats

# "a red square" is a training prompt of the toy config, "a green cross" is not (held out).
SPLIT_EVAL = {"eval.num_steps": 2, "eval.samples_per_prompt": 4,
              "eval.prompts": ["a red square", "a yellow cross", "a green cross", "a blue square"],
              "sampling.prompts": ["a red square", "a yellow cross", "a red cross", "a blue cross"]}


def test_evaluation_reports_vendi_and_distance_on_heldout_and_training_prompts(store):
    ctx = StageContext(small_config(**SPLIT_EVAL), store, "eval")
    result = run_evaluate(ctx, 0)
    metrics = result.metrics
    table = artifacts.read_table(store, result.outputs["samples"], EVAL_SAMPLES)
    images = np.stack([png_decode(b) for b in table.column("image_png").to_pylist()])
    prompts = np.asarray(table.column("prompt").to_pylist())
    emb = load_embedder("toy")(images)
    per = {p: (mean_pairwise_distance(emb[prompts == p]), vendi_score(emb[prompts == p]))
           for p in SPLIT_EVAL["eval.prompts"]}
    train, held = ["a red square", "a yellow cross"], ["a green cross", "a blue square"]
    # The same float64 numbers averaged in the same order: equal by construction.
    assert metrics["train_embedding_diversity"] == np.mean([per[p][0] for p in train])
    assert metrics["heldout_embedding_diversity"] == np.mean([per[p][0] for p in held])
    assert metrics["train_vendi"] == np.mean([per[p][1] for p in train])
    assert metrics["heldout_vendi"] == np.mean([per[p][1] for p in held])
    assert metrics["vendi"] == np.mean([v for _, v in per.values()])
    # Vendi of 4 images counts effective distinct images: between 1 (all alike) and 4
    assert all(1.0 <= v <= 4.0 + 1e-9 for _, v in per.values())
    for key in ("reward", "diversity", "mode_entropy"):
        assert {f"train_{key}", f"heldout_{key}"} <= set(metrics)
    record = store.get_json("runs/eval/eval/r0000.json")
    assert [r["vendi"] for r in record["per_prompt"]] == [per[p][1] for p in SPLIT_EVAL["eval.prompts"]]
    assert record["reward"]["name"] == "toy" and "training reward" in record["reward"]["why"]


def test_evaluation_says_which_reward_it_used_when_the_reward_stage_is_swapped():
    cfg = small_config(**{"pipeline.stages": {"reward": {"image": "registry.example.com/team/reward:1.0",
                                                          "command": ["python", "/app/score.py"]}}})
    source = reward_source(cfg)
    assert source["swapped_stage"] == "registry.example.com/team/reward:1.0"
    assert source["name"] == "toy" and "cannot call" in source["why"] and "reward.name" in source["why"]


def test_group_reward_spread():
    rewards = np.array([1.0, 3.0, 2.0, 2.0, 0.0, 4.0])
    groups = ["a", "a", "b", "b", "c", "c"]
    stats = group_reward_spread(rewards, groups)
    assert stats["reward_group_std"] == pytest.approx((1.0 + 0.0 + 2.0) / 3, abs=1e-15)
    assert stats["zero_std_groups"] == pytest.approx(1 / 3, abs=1e-15)


def test_ratio_statistics_summed_over_micro_batches_equal_the_whole_batch():
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(24, generator=gen) * 50  # log-probs of the size SDE steps have
    new = old + torch.randn(24, generator=gen) * 1e-3  # a policy a little off the sampler
    ratio = torch.exp(new.double() - old.double())
    parts = sum(ratio_moments(new[i:i + 8], old[i:i + 8]) for i in range(0, 24, 8))
    stats = ratio_stats(parts)
    # float64 sums of 24 terms of size ~1e-3: rounding is ~1e-18, far below the 1e-12 bound; a wrong mean or a
    # std of the raw ratio instead of the deviation would be off by ~1e-4 or more.
    assert stats["ratio_mean"] == pytest.approx(float(ratio.mean()), abs=1e-12)
    assert stats["ratio_std"] == pytest.approx(float(ratio.std(unbiased=False)), abs=1e-12)
    assert 5e-4 < stats["ratio_std"] < 2e-3


def test_update_writes_ratio_statistics_and_reward_spread(store):
    ctx = StageContext(small_config(**{"train.batch_size": 8, "sampling.num_steps": 4}), store, "update")  # 2 steps
    rollouts = [run_rollout(ctx, 0, None, 0, 1).outputs["rollouts"]]
    rewards = [run_reward(ctx, 0, rollouts[0]).outputs["rewards"]]
    scores = run_cluster(ctx, 0, rollouts, rewards).outputs["scores"]
    result = run_update(ctx, 0, rollouts, scores)
    rows = artifacts.read_table(ctx.store, result.outputs["metrics"], UPDATE_METRICS).to_pylist()
    assert UPDATE_METRICS.version == 3 and len(rows) == 2
    # On-policy before the first optimizer step: the recomputed log-prob is the sampler's up to float32 rounding
    # of the same computation, so the ratio is 1 within ~1e-5 (approx_kl < 1e-6 says the same).
    assert rows[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["ratio_std"] < 1e-3
    # the second step samples a policy that the first step moved: its ratios spread
    assert rows[1]["ratio_std"] > 10 * rows[0]["ratio_std"]
    assert result.metrics["ratio_std"] == pytest.approx((rows[0]["ratio_std"] + rows[1]["ratio_std"]) / 2, rel=1e-12)
    table = artifacts.read_table(ctx.store, scores, SCORES)
    expected = group_reward_spread(np.asarray(table.column("final_reward").to_pylist()),
                                   table.column("group_id").to_pylist())
    assert {k: result.metrics[k] for k in expected} == expected and expected["reward_group_std"] > 0
