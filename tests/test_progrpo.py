"""Pro-GRPO: Optimal Variance Filtering against brute force, expand-and-prune sampling, the rollouts it writes
(contract, prune decisions in the table and in lineage, NFEs), a round trained on its survivors, and the config's
refusals."""

import dataclasses
import itertools
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from dgrpo_pipelines.cli import app
from support import small_config
from typer.testing import CliRunner

from dgrpo import artifacts, contracts
from dgrpo.config import ConfigError, ModelConfig
from dgrpo.contracts import ROLLOUTS, SCORES
from dgrpo.methods.progrpo import nfe_of_schedule, optimal_variance_subset
from dgrpo.models import load_policy
from dgrpo.models.trajectories import SamplerSpec, sample_sde
from dgrpo.runs import lineage
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import PRUNE_DECISIONS_KIND, run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.exchange import export_table
from dgrpo.stages.update import run_update
from dgrpo.store import ArtifactRef, LocalStore

EXPAND = {"progrpo.mode": "expand_prune", "progrpo.expand_group_size": 12, "progrpo.prune_steps": [1, 3],
          "progrpo.prune_sizes": [10, 8], "sampling.num_steps": 5, "eval.every": 10}
"""12 -> 10 -> 8 trajectories per prompt at steps 1 and 3 of 5; the group of 8 is small_config's."""


def brute_force_max_variance(x: np.ndarray, k: int) -> float:
    return max(float(x[list(c)].var()) for c in itertools.combinations(range(len(x)), k))


@pytest.mark.parametrize("n", range(2, 13))
def test_ovf_matches_brute_force(n):
    """Every k of every G up to 12, on continuous values and on values with many ties. The chosen subset's
    variance must equal the brute-force maximum; the tolerance covers only the summation order of <= 12 float64
    numbers of size ~1 (ties make other subsets of the same true variance come out a few ulps apart)."""
    rng = np.random.default_rng(n)
    for x in (rng.normal(size=n), rng.integers(0, 3, size=n).astype(float), rng.exponential(size=n) ** 3):
        for k in range(1, n + 1):
            chosen = optimal_variance_subset(x, k)
            assert len(chosen) == k == len(set(chosen.tolist()))
            best = brute_force_max_variance(x, k)
            assert abs(float(x[chosen].var()) - best) <= 1e-12 * max(1.0, best), (x, k)


def test_ovf_keeps_extremes_and_a_middle_choice_fails_the_brute_force_check():
    x = np.array([0.50, 0.51, 0.49, 0.90, 0.10, 0.52, 0.48, 0.30])
    chosen = optimal_variance_subset(x, 4)
    assert sorted(x[chosen].tolist()) == [0.1, 0.3, 0.52, 0.9]  # variance 0.0881; the next best split 0.0871
    middle = np.argsort(np.abs(x - np.median(x)))[:4]  # what DRIFT would keep: the reward-concentrated middle
    assert x[middle].var() < brute_force_max_variance(x, 4) - 1e-3


def test_ovf_is_deterministic_on_ties_and_rejects_bad_input():
    assert optimal_variance_subset(np.array([1.0, 1.0, 1.0, 1.0]), 2).tolist() == [2, 3]
    with pytest.raises(ValueError, match="k must be"):
        optimal_variance_subset(np.array([1.0, 2.0]), 3)
    with pytest.raises(ValueError, match="finite"):
        optimal_variance_subset(np.array([1.0, np.nan]), 1)


def test_nfe_of_the_papers_schedule():
    """48 -> 24 -> 12 at steps 5 and 7 of 10: 48 x 6 + 24 x 2 + 12 x 2 = 360 velocity evaluations against 480 for
    48 full trajectories (1.33x fewer)."""
    assert nfe_of_schedule(48, 10, [5, 7], [24, 12]) == 360
    assert nfe_of_schedule(48, 10, [], []) == 480


def test_expand_and_prune_sampling_keeps_the_chosen_and_counts_nfes():
    policy = load_policy(ModelConfig())
    cond = {k: v.expand(6, *v.shape[1:]) for k, v in policy.encode_prompts(["a red square"]).items()}
    seeds = list(range(100, 106))
    spec = SamplerSpec(num_steps=4, shift=None, noise_level=0.7, guidance_scale=4.5)
    full = sample_sde(policy, cond, seeds, spec=spec)
    seen = []

    def prune(step, previews, positions):
        seen.append((step, previews.shape[0], list(positions)))
        return positions[::2]  # keep every other live sample

    pruned = sample_sde(policy, cond, seeds, spec=dataclasses.replace(spec, prune_steps=(1, 2), prune=prune))
    assert seen[0][:2] == (1, 6) and seen[1] == (2, 3, [0, 2, 4])
    assert pruned.positions == [0, 4] and pruned.nfe == nfe_of_schedule(6, 4, [1, 2], [3, 2]) == 6 * 2 + 3 + 2
    assert full.nfe == 24
    # up to the first prune the batch is the same, so the survivors' states are bit for bit those of plain sampling
    assert torch.equal(pruned.latents[:, :2], full.latents[[0, 4], :2])
    assert torch.equal(pruned.log_probs[:, :1], full.log_probs[[0, 4], :1])
    # afterwards the model runs on a smaller batch: equal up to the float32 rounding of a batched matmul
    torch.testing.assert_close(pruned.latents, full.latents[[0, 4]], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def pruned_round(tmp_path_factory):
    ctx = StageContext(small_config(**EXPAND), LocalStore(tmp_path_factory.mktemp("store")), "progrpo")
    return ctx, run_rollout(ctx, 0)


def test_pruned_rollouts_hold_the_survivors_and_every_decision(pruned_round):
    ctx, result = pruned_round
    cfg = ctx.config
    table = artifacts.read_table(ctx.store, result.outputs["rollouts"], ROLLOUTS)
    assert table.num_rows == cfg.sampling.prompts_per_round * cfg.sampling.group_size
    for group in sorted(set(table.column("group_id").to_pylist())):
        rows = table.filter(pa.compute.equal(table.column("group_id"), group)).to_pylist()
        assert len(rows) == 8 and all(0 <= r["sample_index"] < 12 for r in rows)
        record = rows[0]["prune_record"]
        assert all(r["prune_record"] is None for r in rows[1:]) and rows[0]["conditioning"] is not None
        assert [d["step"] for d in record] == [1] * 12 + [3] * 10
        for step, size in ((1, 10), (3, 8)):
            at = [d for d in record if d["step"] == step]
            chosen = optimal_variance_subset(np.array([d["preview_reward"] for d in at]), size)
            assert [d["kept"] for d in at] == [i in set(chosen.tolist()) for i in range(len(at))]
        survivors = [d["sample_index"] for d in record if d["step"] == 3 and d["kept"]]
        assert [r["sample_index"] for r in rows] == survivors
        for r in rows:
            mine = [d["preview_reward"] for d in record if d["sample_index"] == r["sample_index"]]
            assert r["preview_rewards"] == mine
            assert len(r["log_probs"]) == 5 and np.all(np.isfinite(r["log_probs"]))
    assert result.metrics["nfe"] == 2 * nfe_of_schedule(12, 5, [1, 3], [10, 8])
    assert result.metrics["nfe_without_pruning"] == 2 * 12 * 5 and result.metrics["pruned"] == 2 * 4


def test_prune_decisions_are_in_the_lineage_and_the_table_passes_its_contract(pruned_round, tmp_path):
    ctx, result = pruned_round
    ref = result.outputs["rollouts"]
    record = lineage.read_record(ctx.store, ref.sha256)
    assert record.input_kinds["prune_decisions"] == PRUNE_DECISIONS_KIND
    decision_record = lineage.read_record(ctx.store, record.inputs["prune_decisions"])
    assert decision_record.stage == "rollout" and decision_record.round == 0
    decisions = json.loads(ctx.store.get(ArtifactRef(PRUNE_DECISIONS_KIND, decision_record.uri,
                                                     decision_record.sha256, 0)))
    table = artifacts.read_table(ctx.store, ref, ROLLOUTS)
    firsts = {r["group_id"]: r["prune_record"] for r in table.to_pylist() if r["prune_record"] is not None}
    assert decisions["groups"] == firsts
    assert decisions["schedule"] == {"expand_group_size": 12, "prune_steps": [1, 3], "prune_sizes": [10, 8],
                                     "reward": "toy"}
    # what a swapped-in reward stage receives is a contract-valid table of the survivors
    path = tmp_path / "rollouts.parquet"
    assert export_table(ctx, ref, "rollouts", str(path)) == 16
    out = CliRunner().invoke(app, ["contract", "check", "rollouts", str(path)])
    assert out.exit_code == 0 and "valid rollouts v5 table (16 rows)" in out.output, out.output
    broken = table.set_column(table.schema.get_field_index("prune_record"), "prune_record",
                              pa.array([[1]] * 16, pa.list_(pa.int64())))
    with pytest.raises(contracts.ContractError, match="prune_record"):
        contracts.validate(broken, ROLLOUTS, "broken")


def test_a_round_trains_on_the_survivors(pruned_round):
    ctx, result = pruned_round
    rollouts = result.outputs["rollouts"]
    rewards = run_reward(ctx, 0, rollouts).outputs["rewards"]
    scores = run_cluster(ctx, 0, rollouts, rewards).outputs["scores"]
    assert artifacts.read_table(ctx.store, scores, SCORES).num_rows == 16
    update = run_update(ctx, 0, rollouts, scores)
    assert update.metrics["optimizer_steps"] == 1 and np.isfinite(update.metrics["policy_loss"])


def test_ovf_filter_in_the_cluster_stage(store):
    ctx = StageContext(small_config(**{"progrpo.mode": "filter", "progrpo.filter_keep": 4, "sampling.num_steps": 4}),
                       store, "ovf")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    rewards = run_reward(ctx, 0, rollouts).outputs["rewards"]
    result = run_cluster(ctx, 0, rollouts, rewards)
    scores = artifacts.read_table(store, result.outputs["scores"], SCORES).to_pylist()
    assert result.metrics["kept"] == 8 and result.metrics["dropped"] == 8
    for group in {s["group_id"] for s in scores}:
        rows = [s for s in scores if s["group_id"] == group]
        final = np.array([s["final_reward"] for s in rows])
        assert [s["kept"] for s in rows] == np.isin(np.arange(8), optimal_variance_subset(final, 4)).tolist()
    assert run_update(ctx, 0, rollouts, result.outputs["scores"]).metrics["dropped"] == 8


@pytest.mark.parametrize(("overrides", "field"), [
    ({**EXPAND, "drift.outlier_filter": True}, "drift.outlier_filter"),
    ({"progrpo.mode": "filter", "drift.outlier_filter": True}, "drift.outlier_filter"),
    ({**EXPAND, "progrpo.expand_group_size": 8}, "progrpo.expand_group_size"),
    ({**EXPAND, "progrpo.prune_sizes": [10, 9]}, "progrpo.prune_sizes"),
    ({**EXPAND, "progrpo.prune_sizes": [8]}, "progrpo.prune_sizes"),
    ({**EXPAND, "progrpo.prune_steps": [3, 1]}, "progrpo.prune_steps"),
    ({**EXPAND, "progrpo.prune_steps": [1, 5]}, "progrpo.prune_steps"),
    ({"progrpo.mode": "filter", "progrpo.filter_keep": 8}, "progrpo.filter_keep"),
    ({"progrpo.mode": "prune"}, "progrpo.mode"),
])
def test_config_refusals_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"'{field}'") as err:
        small_config(**overrides)
    if field == "drift.outlier_filter":
        assert "both choose a subset of each group" in str(err.value)
