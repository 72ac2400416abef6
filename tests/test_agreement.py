"""The agreement gate: the update recomputes the rollout's log-probs under the rollout's own adapter before its first
optimizer step, reports the disagreement, and refuses a round whose rollout computed another policy."""

import math

import pytest
import torch
from support import small_config

from dgrpo.models.tiny import tiny_sd3_pipeline
from dgrpo.sampling import ScheduleStep, step_with_logprob
from dgrpo.stages import rollout as rollout_stage
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.update import agreement, run_update
from dgrpo.store import LocalStore

GATE = ("agreement_mean_abs", "agreement_max_abs", "agreement_bound", "agreement_worst_share")


def test_the_bound_is_the_worked_first_order_bound():
    """sum_i |d log p / d v_i  v_i| by hand for the SDE step: d mu_i / d v_i = c_v dt and d log p / d mu_i =
    (x'_i - mu_i) / (D s^2), so the velocity term is KAPPA u sum_i |(x' - mu)_i c_v dt v_i| / (D s^2)."""
    gen = torch.Generator().manual_seed(0)
    x, v, x_next = (torch.randn(2, 3, 4, 4, generator=gen) for _ in range(3))
    sigma, sigma_next, a = 0.8, 0.6, 0.7
    step = step_with_logprob(v, x, ScheduleStep(sigma, sigma_next, 0.9), method="sde", noise_level=a,
                             prev_sample=x_next)
    dt = sigma_next - sigma
    std = a * math.sqrt(sigma / (1 - sigma))
    s = std * math.sqrt(-dt)
    c_v = (1 + std ** 2 * (1 - sigma) / (2 * sigma)) * dt
    by_hand = ((x_next - step.prev_sample_mean) * c_v * v).abs().flatten(1).sum(1) / (48 * s ** 2)
    stored = step.log_prob + torch.tensor([1e-3, 0.0])
    delta, bound = agreement.step_disagreement(method="sde", v=v, x=x, x_next=x_next,
                                               step=ScheduleStep(sigma, sigma_next, 0.9), noise_level=a,
                                               stored=stored, roundoff=2.0 ** -24)
    floor = agreement.SUM_KAPPA * 2.0 ** -24 * math.log2(48) * (step.log_prob.abs() + 1)
    torch.testing.assert_close(bound, agreement.KAPPA * 2.0 ** -24 * by_hand + floor, rtol=1e-5, atol=0)
    torch.testing.assert_close(delta, torch.tensor([1e-3, 0.0]), rtol=1e-3, atol=1e-7)


def _round(ctx: StageContext, update_ctx: StageContext | None = None):
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    scores = run_cluster(ctx, 0, rollouts, run_reward(ctx, 0, rollouts).outputs["rewards"]).outputs["scores"]
    return run_update(update_ctx or ctx, 0, rollouts, scores)


def test_the_normal_path_passes_on_the_toy_and_reports_the_gate(tmp_path):
    # micro-batches of 4 while the rollout batched groups of 8: the recomputation runs in other batches
    cfg = small_config(**{"train.micro_batch_size": 4, "sampling.num_steps": 4})
    metrics = _round(StageContext(cfg, LocalStore(tmp_path / "store"), "agree")).metrics
    assert all(k in metrics for k in GATE)
    assert metrics["agreement_max_abs"] <= 0.2 * metrics["agreement_bound"]
    assert 0 < metrics["agreement_bound"] < 1e-4  # float32: a few 1e-6


def test_a_rollout_with_a_perturbed_weight_is_refused(tmp_path, monkeypatch):
    """One weight of the rollout's transformer 0.1% off (an image with other weights, a bad cast): refused."""
    load = rollout_stage.load_policy_for_round

    def perturbed(*args, **kwargs):
        policy = load(*args, **kwargs)
        weight = next(p for p in policy.transformer.parameters() if p.ndim == 2)
        weight.data.mul_(1.001)
        return policy

    cfg = small_config(**{"sampling.num_steps": 4})
    store = LocalStore(tmp_path / "store")
    ctx = StageContext(cfg, store, "perturbed")
    monkeypatch.setattr(rollout_stage, "load_policy_for_round", perturbed)
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    monkeypatch.setattr(rollout_stage, "load_policy_for_round", load)
    scores = run_cluster(ctx, 0, rollouts, run_reward(ctx, 0, rollouts).outputs["rewards"]).outputs["scores"]
    with pytest.raises(agreement.AgreementError, match=r"update round 1: .* at denoising step \d: max \|delta log p\| "
                                                       r"\S+ > bound \S+ \(float32 rounding\)"):
        run_update(ctx, 0, rollouts, scores)


@pytest.fixture(scope="module")
def sd3_overrides(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd3")
    tiny_sd3_pipeline().save_pretrained(path)
    return {"model.kind": "sd3", "model.pretrained": str(path), "model.resolution": 32,
            "model.max_sequence_length": 8, "sampling.num_steps": 3, "sampling.group_size": 2,
            "sampling.prompts_per_round": 2, "sampling.batch_size": 3, "train.batch_size": 4,
            "train.micro_batch_size": 2, "cluster.embedder": None, "lora.rank": 4, "lora.alpha": 8}


def test_the_normal_path_passes_on_tiny_sd3(sd3_overrides, tmp_path):
    metrics = _round(StageContext(small_config(**sd3_overrides), LocalStore(tmp_path / "store"), "sd3")).metrics
    assert metrics["agreement_max_abs"] <= 0.2 * metrics["agreement_bound"] < 1e-4


def test_a_bfloat16_rollout_for_a_float32_update_is_refused_naming_both_images(sd3_overrides, tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    monkeypatch.setenv("DGRPO_IMAGE", "registry.example/dgrpo-rollout@sha256:aaa")
    rollout_ctx = StageContext(small_config(**sd3_overrides, **{"model.dtype": "bfloat16"}), store, "mixed")
    rollouts = run_rollout(rollout_ctx, 0).outputs["rollouts"]
    scores = run_cluster(rollout_ctx, 0, rollouts,
                         run_reward(rollout_ctx, 0, rollouts).outputs["rewards"]).outputs["scores"]
    monkeypatch.setenv("DGRPO_IMAGE", "registry.example/dgrpo-update@sha256:bbb")
    monkeypatch.setattr(agreement.lineage, "code_version", lambda: "0.1.0+gupdate")
    with pytest.raises(agreement.AgreementError) as refused:
        run_update(StageContext(small_config(**sd3_overrides), store, "mixed"), 0, rollouts, scores)
    line = str(refused.value)
    assert "\n" not in line and "at denoising step " in line and "(float32 rounding)" in line
    assert "rollouts by image registry.example/dgrpo-rollout@sha256:aaa, code 0.1.0+g" in line
    assert "update by image registry.example/dgrpo-update@sha256:bbb, code 0.1.0+gupdate" in line
    delta, bound = (float(x) for x in
                    line.split("max |delta log p| ")[1].split(" (")[0].split(" > bound "))
    assert delta > 10 * bound  # not a near miss


def test_a_float32_rollout_for_a_bfloat16_update_passes(sd3_overrides, tmp_path):
    """The update's own rounding (bfloat16) is then the larger: its bound, not the rollout's, applies."""
    store = LocalStore(tmp_path / "store")
    ctx = StageContext(small_config(**sd3_overrides), store, "finer")
    metrics = _round(ctx, StageContext(small_config(**sd3_overrides, **{"model.dtype": "bfloat16"}), store,
                                       "finer")).metrics
    assert 0 < metrics["agreement_max_abs"] < metrics["agreement_bound"]
