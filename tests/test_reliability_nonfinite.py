"""Nothing trains on NaN: contracts refuse non-finite floats, a NaN reward fails its round, the update refuses to
write or commit non-finite weights, and no NaN enters through the config."""

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from dgrpo_pipelines.main import main
from reliability_helpers import tiny_config
from support import small_config

from dgrpo import artifacts, contracts
from dgrpo.config import ConfigError
from dgrpo.contracts import REWARDS, ROLLOUTS, SCORES, ContractError
from dgrpo.methods.base import COEFFICIENT_COLUMNS
from dgrpo.runs.lineage import Provenance
from dgrpo.runtime.engine import ChainFailed, run_inprocess
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.update import run_update, train
from dgrpo.stages.update.finite import NonFiniteError
from dgrpo.store import LocalStore

PLUGINS = Path(__file__).parent / "plugins"


def _rewards(values, components=None) -> pa.Table:
    n = len(values)
    return pa.table({
        "sample_id": [f"r0/p0/s{i}" for i in range(n)], "group_id": ["r0/p0"] * n, "prompt": ["a red square"] * n,
        "reward": pa.array(values, pa.float64()),
        "components": pa.array(components or [[("quality", 0.5)]] * n, REWARDS.schema.field("components").type)})


def _unchecked_parquet(table: pa.Table, contract) -> bytes:
    """Parquet bytes with the contract's metadata but without our validation: what another team's image writes."""
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(contract.metadata()), sink)
    return sink.getvalue()


@pytest.mark.parametrize("bad, count", [(float("nan"), "1 NaN and 0 infinite"), (float("inf"), "0 NaN and 1 infinite"),
                                        (-float("inf"), "0 NaN and 1 infinite")])
def test_a_non_finite_reward_is_refused_on_write_on_read_and_by_contract_check(bad, count, tmp_path, capsys):
    table = _rewards([0.1, 0.2, bad, 0.4])
    message = rf"column 'reward' holds {count} values \(first at row 2, sample_id 'r0/p0/s2'\)"
    with pytest.raises(ContractError, match=message):
        contracts.to_parquet_bytes(table, REWARDS, "reward output")
    data = _unchecked_parquet(table, REWARDS)
    with pytest.raises(ContractError, match=message):
        contracts.from_parquet_bytes(data, REWARDS, "artifact")
    path = tmp_path / "rewards.parquet"
    path.write_bytes(data)
    assert main(["contract", "check", "reward", str(path)]) == 1
    assert "column 'reward' holds" in capsys.readouterr().err


def test_non_finite_values_inside_lists_and_maps_are_refused():
    with pytest.raises(ContractError, match=r"column 'components' holds 1 NaN .* sample_id 'r0/p0/s1'"):
        contracts.validate(_rewards([0.1, 0.2], [[("quality", 0.5)], [("quality", float("nan"))]]), REWARDS, "x")
    scores = pa.table({"sample_id": ["a", "b"], "group_id": ["g", "g"], "prompt": ["p", "p"],
                       "quality": [0.1, 0.2], "bonus": [0.0, 0.0], "cluster_id": pa.array([0, 0], pa.int32()),
                       "final_reward": [0.1, 0.2],
                       "embedding": pa.array([[1.0, 0.0], [0.0, float("inf")]], pa.list_(pa.float32())),
                       "kept": pa.nulls(2, pa.bool_()), "shaping": pa.nulls(2, pa.float64()),
                       "novelty": pa.nulls(2, pa.float64()), "kl_gate": pa.nulls(2, pa.bool_()),
                       **{name: pa.nulls(2, pa.float64()) for name in COEFFICIENT_COLUMNS}})
    with pytest.raises(ContractError, match=r"column 'embedding' holds 0 NaN and 1 infinite .*sample_id 'b'"):
        contracts.validate(scores, SCORES, "scores")
    contracts.validate(scores.set_column(7, "embedding", pa.array([[1.0, 0.0], None], pa.list_(pa.float32()))),
                       SCORES, "scores")  # a null embedding (nullable column) is not a NaN


def test_rollout_log_probs_may_be_nan_on_deterministic_steps_but_never_infinite():
    """The contract gives NaN a meaning in this one column: the step had no noise, so no log-prob."""
    row = {"sample_id": "r0/p0/s0", "group_id": "r0/p0", "prompt": "p", "round": 0, "sample_index": 0, "seed": 1,
           "image_png": b"", "sigmas": [1.0, 0.5, 0.0], "latents": b"", "conditioning": None}
    contracts.validate(pa.Table.from_pylist([row | {"log_probs": [float("nan"), -1.5]}], schema=ROLLOUTS.schema),
                       ROLLOUTS, "rollouts")
    with pytest.raises(ContractError, match=r"column 'log_probs' holds 0 NaN and 1 infinite .* finite numbers or NaN"):
        contracts.validate(pa.Table.from_pylist([row | {"log_probs": [-float("inf"), -1.5]}],
                                                schema=ROLLOUTS.schema), ROLLOUTS, "rollouts")
    with pytest.raises(ContractError, match="column 'sigmas' holds 1 NaN"):
        contracts.validate(pa.Table.from_pylist([row | {"log_probs": [0.0, 0.0], "sigmas": [1.0, float("nan"), 0.0]}],
                                                schema=ROLLOUTS.schema), ROLLOUTS, "rollouts")


def _cfg(**overrides):
    return tiny_config(rounds=1, **overrides)


def test_one_nan_reward_fails_the_round_before_anything_trains_on_it(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    store = LocalStore(tmp_path / "store")
    options = {"nan_at": 5, "batch": 8}  # the round's 2 x 4 images; the evaluation scores 2 at a time
    ctx = StageContext(_cfg(**{"reward.name": "acme_rewards:flaky", "reward.options": options}), store, "nan")
    with pytest.raises(ChainFailed, match="not retried: a retry from round 1 repeats this error") as failed:
        run_inprocess(ctx)  # at once: pipeline.max_retries (2) is for errors that may pass
    with pytest.raises(ContractError, match=r"reward output 'rewards' of round 1: column 'reward' holds 1 NaN and 0 "
                                            r"infinite values \(first at row 5, sample_id 'r0/p1/s1'\)"):
        raise failed.value.__cause__
    assert store.list("runs/nan/commits") == []
    assert len(store.list("runs/nan/segments")) == 1
    assert not any("update" in k or "reward" in k for k in store.list("runs/nan/events"))


@pytest.fixture(scope="module")
def round_inputs(tmp_path_factory):
    """Round 0's rollouts and scores, made once: the update tests below run only the update."""
    from dgrpo.stages.cluster import run_cluster
    from dgrpo.stages.reward import run_reward
    from dgrpo.stages.rollout import run_rollout

    root = tmp_path_factory.mktemp("round-inputs") / "store"
    ctx = StageContext(_cfg(), LocalStore(root), "diverged")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    rewards = run_reward(ctx, 0, rollouts).outputs["rewards"]
    return root, rollouts, run_cluster(ctx, 0, rollouts, rewards).outputs["scores"]


def _poison_after_first_step(monkeypatch, what: str):
    """The update's first optimizer step, then a NaN in one LoRA weight or in the step's loss."""
    real = train._optimizer_step

    def step(acc, policy, *args, **kwargs):
        stats = real(acc, policy, *args, **kwargs)
        if what == "weight":
            with torch.no_grad():
                next(iter(policy.lora_parameters())).view(-1)[3] = float("nan")
        elif what == "loss":
            stats = stats | {"policy_loss": float("nan")}
        return stats

    monkeypatch.setattr(train, "_optimizer_step", step)


@pytest.mark.parametrize("what, message", [
    ("weight", r"update round 1: LoRA weight '.*lora_A.*' holds 1 non-finite of \d+ values; the round was not "
               r"written or committed"),
    ("loss", r"update round 1: metric 'policy_loss' is nan at optimizer step 0"),
    ("nothing", None),  # the control: the same round, unpoisoned, is written and committed
])
def test_the_update_refuses_to_write_or_commit_non_finite_state(what, message, round_inputs, tmp_path, monkeypatch):
    root, rollouts, scores = round_inputs
    shutil.copytree(root, tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    _poison_after_first_step(monkeypatch, what)
    ctx = StageContext(_cfg(), store, "diverged")
    if message is None:
        out = run_update(ctx, 0, rollouts, scores)
        tensors = artifacts.read_tensors(store, out.outputs["adapter"], "lora_adapter")
        assert all(bool(torch.isfinite(t).all()) for t in tensors.values())
        assert store.list("runs/diverged/commits") == ["runs/diverged/commits/r000000.json"]
        return
    with pytest.raises(NonFiniteError, match=message):
        run_update(ctx, 0, rollouts, scores)
    assert store.list("runs/diverged/commits") == []
    written = [store.get_json(k)["kind"] for k in store.list("lineage")]
    assert "lora_adapter" not in written and "optimizer_state" not in written


@pytest.mark.parametrize("overrides, field", [
    ({"reward.options": {"scale": float("nan")}}, "reward.options.scale"),
    ({"reward.options": {"weights": {"a": float("inf")}}}, "reward.options.weights.a"),
    ({"cluster.embedder_options": {"sizes": [1.0, float("nan")]}}, r"cluster.embedder_options.sizes\[1\]"),
    ({"sampling.guidance_scale": float("nan")}, "sampling.guidance_scale"),
])
def test_no_nan_or_inf_enters_through_the_config(overrides, field):
    with pytest.raises(ConfigError, match=rf"config field '{field}': must be a finite number"):
        small_config(**overrides)


def test_numbers_written_the_natural_way_load():
    """YAML 1.1 reads 1e-4 (no dot) as a string; a person writing it means the number."""
    cfg = small_config(**{"train.learning_rate": "1e-4", "cluster.beta": "2", "train.weight_decay": "0.5e-3"})
    assert (cfg.train.learning_rate, cfg.cluster.beta, cfg.train.weight_decay) == (1e-4, 2.0, 5e-4)
    assert small_config(**{"rounds": "1e3", "eval.every": 5.0}).rounds == 1000
    with pytest.raises(ConfigError, match="config field 'train.learning_rate': expected float, got str 'fast'"):
        small_config(**{"train.learning_rate": "fast"})
    with pytest.raises(ConfigError, match="config field 'rounds': expected int, got float 2.5"):
        small_config(rounds=2.5)


def test_provenance_names_the_round_in_a_contract_error(tmp_path):
    store = LocalStore(tmp_path / "s")
    with pytest.raises(ContractError, match="reward output 'rewards' of round 8: column 'reward'"):
        artifacts.write_table(store, _rewards([np.nan]), REWARDS, Provenance("reward", "r", "0" * 64, round=7))
    assert store.list("objects") == [] and store.list("lineage") == []
