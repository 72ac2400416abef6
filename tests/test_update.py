"""The update stage: its inputs, data parallel across processes (torchrun + accelerate on CPUs, gloo), mixed
precision, and the EMA of the LoRA weights."""

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from support import small_config

from dgrpo import artifacts
from dgrpo.config import ConfigError
from dgrpo.contracts import ROLLOUTS, SCORES
from dgrpo.objectives import cluster_advantages, group_advantages
from dgrpo.runtime.engine import run_inprocess
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.evaluate import run_evaluate
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.policy_io import ADAPTER_KIND, OPTIMIZER_KIND, load_policy_for_round
from dgrpo.stages.shared.rounds import trained_steps
from dgrpo.stages.shared.training_state import EMA_STEP
from dgrpo.stages.update import group_conditioning, run_update
from dgrpo.stages.update import train as update_train
from dgrpo.store import LocalStore


def _scored_round(ctx: StageContext):
    """Round 0's rollouts (two shards) and scores."""
    rollouts = [run_rollout(ctx, 0, None, i, 2).outputs["rollouts"] for i in range(2)]
    rewards = [run_reward(ctx, 0, r).outputs["rewards"] for r in rollouts]
    return rollouts, run_cluster(ctx, 0, rollouts, rewards).outputs["scores"]


def _tensors(ctx: StageContext, ref, kind=ADAPTER_KIND) -> dict[str, torch.Tensor]:
    return artifacts.read_tensors(ctx.store, ref, kind)


def test_rollouts_store_the_conditioning_once_per_group(ctx):
    rollouts, _ = _scored_round(ctx)
    table = artifacts.read_table(ctx.store, rollouts[0], ROLLOUTS)
    first = [row["sample_index"] == 0 for row in table.select(["sample_index"]).to_pylist()]
    assert [c is not None for c in table.column("conditioning").to_pylist()] == first
    groups = table.column("group_id").to_pylist()
    assert len(group_conditioning(table, groups)) == len(groups)
    broken = table.filter(pc.invert(pc.is_valid(table.column("conditioning"))))  # drop the rows that carry it
    with pytest.raises(ValueError, match="column 'conditioning'.*groups without"):
        group_conditioning(broken, broken.column("group_id").to_pylist())


EPS32 = torch.finfo(torch.float32).eps


def _gradients(opt_state: dict[str, torch.Tensor], names: list[str], beta1: float) -> dict[str, torch.Tensor]:
    """Each LoRA tensor's gradient in the round's one optimizer step (AdamW's first moment is (1 - beta1) g), by
    adapter key: optimizer parameter i is the i-th LoRA tensor in the model's order, `names`."""
    return {name: opt_state[f"state.{i}.exp_avg"] / (1 - beta1) for i, name in enumerate(names)}


def assert_same_update(reference: tuple[dict, dict], other: tuple[dict, dict], cfg, n_terms: int) -> None:
    """`other` (adapter, optimizer state) is the update `reference` made, up to float32 summation order.

    Two gloo processes sum every gradient element in another order than one process does (each accumulates its
    half of the trajectories, then the all-reduce averages the halves), so float32 results differ by rounding,
    never by more than the classic bound for reordering a sum of `n_terms` terms: n_terms x eps32 x their
    magnitude. The terms are per-trajectory, per-step contributions of the size of the gradient itself, so the
    bound is taken against the largest gradient element of each tensor.

    The adapter is checked through AdamW's first step, u = lr g / (|g| + eps): a gradient error d moves it by
    at most lr eps d / (|g| - d + eps)^2 (its derivative), and by at most 2 lr where d can flip g's sign.
    Elsewhere the step does not depend on the gradient's scale, so the check on the gradients is what catches
    gradients summed instead of averaged across processes.
    """
    (adapter_a, opt_a), (adapter_b, opt_b) = reference, other
    beta1, lr, adam_eps = cfg.train.adam_betas[0], cfg.train.learning_rate, 1e-8
    names = list(load_policy_for_round(StageContext(cfg, None, ""), None, trainable=True).lora_state_dict())
    assert sorted(names) == sorted(adapter_a) == sorted(adapter_b)
    grads_a, grads_b = _gradients(opt_a, names, beta1), _gradients(opt_b, names, beta1)
    tolerance = {}
    for key, g in grads_a.items():
        tolerance[key] = n_terms * EPS32 * float(g.abs().max())
        error = float((grads_b[key] - g).abs().max())
        assert error <= tolerance[key], f"gradient {key}: differs by {error:.3g} > {tolerance[key]:.3g}"
    for name, g in grads_a.items():
        weight = adapter_a[name]
        assert g.shape == weight.shape, name
        d = tolerance[name]
        bound = lr * adam_eps * d / ((g.abs() - d).clamp(min=0) + adam_eps) ** 2
        bound = torch.minimum(bound, torch.full_like(bound, 2 * lr)) + 4 * EPS32 * (weight.abs() + lr)
        excess = (adapter_b[name] - weight).abs() - bound
        assert float(excess.max()) <= 0, f"adapter {name}: exceeds its bound by {float(excess.max()):.3g}"


def test_two_processes_train_the_round_a_single_process_does(tmp_path, monkeypatch):
    """One optimizer step over all 16 trajectories: each process holds half of every prompt group, so the
    result equals a single process's only if the advantages were normalised over the whole groups and the
    gradients averaged across processes. Negative controls: the same check rejects gradients summed instead
    of averaged, and prompt groups normalised per process."""
    store = LocalStore(tmp_path / "store")
    overrides = {"train.batch_size": 16, "train.micro_batch_size": 4, "train.learning_rate": 1e-2,
                 "train.max_grad_norm": 1e6,  # no clipping: a clipped gradient would hide a wrong scale
                 "cluster.method": "diverse"}
    single = StageContext(small_config(**overrides), store, "single")
    rollouts, scores = _scored_round(single)
    one = run_update(single, 0, rollouts, scores).outputs
    double = StageContext(small_config(**overrides, **{"train.num_processes": 2}), store, "double")
    two = run_update(double, 0, rollouts, scores)

    cfg = single.config
    n_terms = cfg.sampling.prompts_per_round * cfg.sampling.group_size * cfg.num_train_steps
    reference = (_tensors(single, one["adapter"]), _tensors(single, one["optimizer_state"], OPTIMIZER_KIND))
    assert any(v.abs().sum() > 0 for k, v in reference[0].items() if "lora_B" in k)  # B starts at 0: it moved
    assert_same_update(reference, (_tensors(double, two.outputs["adapter"]),
                                   _tensors(double, two.outputs["optimizer_state"], OPTIMIZER_KIND)), cfg, n_terms)
    assert two.metrics["optimizer_steps"] == 1
    assert store.list("runs/double/commits") == ["runs/double/commits/r000000.json"]
    assert [k.rsplit("/", 1)[1] for k in store.list("runs/double/events")] == ["r0000-update.json"]

    # negative control 1: gradients summed across the two processes instead of averaged (AdamW's first step is
    # scale-free, so the adapter alone would not show it; the optimizer's moments do)
    summed = {k: v * 2 if k.endswith(".exp_avg") else v * 4 if k.endswith(".exp_avg_sq") else v
              for k, v in reference[1].items()}
    with pytest.raises(AssertionError, match="gradient"):
        assert_same_update(reference, (reference[0], summed), cfg, n_terms)

    # negative control 2: each process normalises its own half of every prompt group (rows rank, rank + 2, ...)
    def per_process(rewards, groups, global_std, clip, kept=None):
        adv = np.empty(len(rewards))
        for rank in range(2):
            rows = np.arange(rank, len(rewards), 2)
            adv[rows] = group_advantages(rewards[rows], [groups[i] for i in rows], global_std, clip)
        return adv

    monkeypatch.setattr(update_train, "group_advantages", per_process)
    wrong_ctx = StageContext(small_config(**overrides), store, "per-process")
    wrong = run_update(wrong_ctx, 0, rollouts, scores).outputs
    with pytest.raises(AssertionError, match="gradient"):
        assert_same_update(reference, (_tensors(wrong_ctx, wrong["adapter"]),
                                       _tensors(wrong_ctx, wrong["optimizer_state"], OPTIMIZER_KIND)), cfg, n_terms)


def test_a_failing_worker_fails_the_stage(tmp_path):
    store = LocalStore(tmp_path / "store")
    ctx = StageContext(small_config(**{"train.num_processes": 2}), store, "broken")
    rollouts, scores = _scored_round(ctx)
    store._path(scores.uri.removeprefix(store.uri + "/")).unlink()  # the workers cannot read the scores
    with pytest.raises(RuntimeError, match="data-parallel workers failed"):
        run_update(ctx, 0, rollouts, scores)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"train.num_processes": 3, "train.batch_size": 24}, "train.num_processes"),
    ({"train.num_processes": 4, "train.batch_size": 16, "train.micro_batch_size": 8}, "train.batch_size"),
    ({"train.mixed_precision": "fp8"}, "train.mixed_precision"),
    ({"train.ema_decay": 1.0}, "train.ema_decay"),
])
def test_parallel_settings_are_validated(overrides, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        small_config(**overrides)


@pytest.mark.parametrize(("precision", "dtype"), [("no", torch.float32), ("bf16", torch.bfloat16)])
def test_mixed_precision_autocasts_the_transformer(tmp_path, monkeypatch, precision, dtype):
    """The attention projections compute in bf16 under autocast; the LoRA weights stay float32."""
    seen: list[torch.dtype] = []
    load = update_train.load_policy_for_round

    def load_and_watch(*args, **kwargs):
        policy = load(*args, **kwargs)
        layer = next(m for n, m in policy.transformer.named_modules() if n.endswith("attn.to_q"))
        layer.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype) if torch.is_grad_enabled() else None)
        return policy

    monkeypatch.setattr(update_train, "load_policy_for_round", load_and_watch)
    ctx = StageContext(small_config(**{"train.mixed_precision": precision}), LocalStore(tmp_path / "s"), "mp")
    rollouts, scores = _scored_round(ctx)
    out = run_update(ctx, 0, rollouts, scores)
    assert seen and set(seen) == {dtype}
    adapter = _tensors(ctx, out.outputs["adapter"])
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in adapter.values())


def test_ema_is_kept_carried_across_runs_and_evaluated(tmp_path):
    store = LocalStore(tmp_path / "store")
    cfg = {"train.batch_size": 8, "train.ema_decay": 0.9, "train.ema_every": 1, "eval.every": 10,
           "eval.num_steps": 2}
    whole = run_inprocess(StageContext(small_config(**cfg), store, "whole"))
    state = _tensors(StageContext(small_config(**cfg), store, "x"), whole["optimizer_state"], OPTIMIZER_KIND)
    assert int(state[EMA_STEP]) == 4  # 2 optimizer steps per round, 2 rounds
    adapter = _tensors(StageContext(small_config(**cfg), store, "x"), whole["adapter"])
    shadow = [v for k, v in sorted(state.items()) if k.startswith("ema.shadow.")]
    assert len(shadow) == len(adapter) and not all(
        torch.equal(s, a) for s, a in zip(shadow, adapter.values(), strict=True))

    first = StageContext(small_config(**cfg, rounds=1), store, "ft")
    run_inprocess(first)
    resumed = run_inprocess(StageContext(small_config(**cfg, rounds=2), store, "ft"), resume_from="ft")
    assert resumed["optimizer_state"].sha256 == whole["optimizer_state"].sha256

    ema_ctx = StageContext(small_config(**cfg), store, "eval-ema")
    trained_ctx = StageContext(small_config(**cfg, **{"eval.use_ema": False}), store, "eval-trained")
    with_ema = run_evaluate(ema_ctx, 2, whole["adapter"], whole["optimizer_state"]).metrics
    without = run_evaluate(trained_ctx, 2, whole["adapter"], whole["optimizer_state"]).metrics
    assert with_ema != without
    events = store.get_json("runs/whole/events/r0001-update.json")
    assert "ema_adapter" in events["outputs"]


def test_evaluating_an_ema_that_was_never_kept_is_an_error(tmp_path):
    store = LocalStore(tmp_path / "store")
    plain = run_inprocess(StageContext(small_config(rounds=1, **{"eval.every": 10, "eval.num_steps": 2}),
                                       store, "plain"))
    ctx = StageContext(small_config(**{"train.ema_decay": 0.9}), store, "e")
    with pytest.raises(ValueError, match="holds no EMA weights"):
        run_evaluate(ctx, 1, plain["adapter"], plain["optimizer_state"])


def test_more_processes_than_the_update_pod_has_gpus_is_an_error():
    with pytest.raises(ConfigError, match="'train.num_processes'.*2 GPUs"):
        small_config(**{"train.num_processes": 4, "train.micro_batch_size": 4, "kubernetes.stages.update.gpus": 2})
    small_config(**{"train.num_processes": 2, "kubernetes.stages.update.gpus": 2})


def test_detail_steps_take_the_cluster_baseline(tmp_path, monkeypatch):
    """train.detail_baseline "cluster" with structure_steps 1: the first trained step of every trajectory gets its
    group-normalised advantage, every later step the one centred on its cluster; with "group" all steps get the
    group's (the negative control: the two sets of values differ on this round)."""
    store = LocalStore(tmp_path / "store")
    overrides = {"cluster.method": "diverse", "cluster.k": 2, "train.structure_steps": 1, "train.regularizer": "sa",
                 "sampling.num_steps": 4}
    seen = []
    loss = update_train.clipped_policy_loss

    def watch(log_prob, old_log_prob, advantages, clip_range):
        seen.append(advantages.clone())
        return loss(log_prob, old_log_prob, advantages, clip_range)

    monkeypatch.setattr(update_train, "clipped_policy_loss", watch)
    for baseline in ("cluster", "group"):
        ctx = StageContext(small_config(**overrides, **{"train.detail_baseline": baseline}), store, baseline)
        rollouts, scores = _scored_round(ctx)
        seen.clear()
        run_update(ctx, 0, rollouts, scores)
        steps = ctx.config.num_train_steps
        per_step = [torch.cat(seen[p::steps]).sort().values for p in range(steps)]  # passes cycle through steps
        table = artifacts.read_table(store, scores, SCORES)
        rewards, groups = table.column("final_reward").to_numpy(), table.column("group_id").to_pylist()
        assert len(set(table.column("cluster_id").to_pylist())) == 2
        by_group = torch.tensor(np.sort(group_advantages(rewards, groups, True, 5.0)), dtype=torch.float32)
        by_cluster = torch.tensor(np.sort(cluster_advantages(rewards, groups, table.column("cluster_id").to_numpy(),
                                                             True, 5.0)), dtype=torch.float32)
        assert not torch.allclose(by_group, by_cluster, atol=1e-3)
        torch.testing.assert_close(per_step[0], by_group)
        for later in per_step[1:]:
            torch.testing.assert_close(later, by_cluster if baseline == "cluster" else by_group)


def test_detail_baseline_needs_clusters():
    with pytest.raises(ConfigError, match="'train.detail_baseline'.*cluster.method"):
        small_config(**{"train.detail_baseline": "cluster"})
    with pytest.raises(ConfigError, match="'train.detail_baseline'.*first train.structure_steps \\(4\\).*only 4"):
        small_config(**{"train.detail_baseline": "cluster", "cluster.method": "diverse", "train.structure_steps": 4,
                        "sampling.num_steps": 4})


def test_detail_column_follows_the_trajectory_step_under_an_sde_window(tmp_path, monkeypatch):
    """An SDE window starting after step 0 with structure_steps 2: the column is chosen by the denoising step (step 1
    is a structure step, steps 2 and 3 are detail steps), as SA-Reg is, not by the position within the window."""
    overrides = {"cluster.method": "diverse", "cluster.k": 2, "train.structure_steps": 2, "train.regularizer": "sa",
                 "train.detail_baseline": "cluster", "sampling.num_steps": 4, "sampling.sde_window_size": 2,
                 "sampling.sde_window_range": [1, 4]}
    seen = []
    loss = update_train.clipped_policy_loss
    monkeypatch.setattr(update_train, "clipped_policy_loss", lambda lp, old, advantages, clip: (
        seen.append(advantages.clone()), loss(lp, old, advantages, clip))[1])
    ctx = StageContext(small_config(**overrides), LocalStore(tmp_path / "store"), "window")
    steps = trained_steps(ctx.config, 0)
    assert steps == [1, 2]  # the seeded window: a structure step at position 0, a detail step at position 1
    rollouts, scores = _scored_round(ctx)
    run_update(ctx, 0, rollouts, scores)
    table = artifacts.read_table(ctx.store, scores, SCORES)
    rewards, groups = table.column("final_reward").to_numpy(), table.column("group_id").to_pylist()
    by_group = torch.tensor(np.sort(group_advantages(rewards, groups, True, 5.0)), dtype=torch.float32)
    by_cluster = torch.tensor(np.sort(cluster_advantages(rewards, groups, table.column("cluster_id").to_numpy(),
                                                         True, 5.0)), dtype=torch.float32)
    assert not torch.allclose(by_group, by_cluster, atol=1e-3)
    for p, j in enumerate(steps):
        torch.testing.assert_close(torch.cat(seen[p::len(steps)]).sort().values, by_group if j < 2 else by_cluster)
