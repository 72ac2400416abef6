"""The cluster stage end to end on a small store: embeddings stored once, clusters found, rewards auditable."""

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score
from support import small_config

from dgrpo import artifacts
from dgrpo.contracts import ROLLOUTS, SCORES, ContractError
from dgrpo.diversity import creativity_bonus
from dgrpo.images import png_bytes
from dgrpo.runs.lineage import Provenance
from dgrpo.stages.cluster import run_cluster
from dgrpo.stages.reward import run_reward
from dgrpo.stages.rollout import run_rollout
from dgrpo.stages.shared.context import StageContext
from dgrpo.toyworld.data import render

DIVERSE = {"cluster.method": "diverse", "cluster.beta": 2.0, "cluster.normalization": "zscore",
           "cluster.quality_normalization": "zscore"}


@pytest.fixture(scope="module")
def rollout_round(tmp_path_factory):
    """One real rollout (2 prompts x 8 images) and its rewards, shared by the tests below."""
    from dgrpo.store import LocalStore

    store = LocalStore(tmp_path_factory.mktemp("cluster") / "store")
    ctx = StageContext(small_config(), store, "cluster-test")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    rewards = run_reward(ctx, 0, rollouts).outputs["rewards"]
    return store, rollouts, rewards


def _scores(store, ref):
    return artifacts.read_table(store, ref, SCORES).to_pydict()


def test_diverse_scores_keep_quality_bonus_cluster_and_embedding(rollout_round):
    store, rollouts, rewards = rollout_round
    ctx = StageContext(small_config(**DIVERSE), store, "cluster-test")
    result = run_cluster(ctx, 0, rollouts, rewards)
    s = _scores(store, result.outputs["scores"])
    groups = np.asarray(s["group_id"])
    quality, bonus, final = (np.asarray(s[k]) for k in ("quality", "bonus", "final_reward"))
    assert len(quality) == 16 and all(len(e) == 17 for e in s["embedding"])
    for g in np.unique(groups):
        m = groups == g
        labels = np.asarray(s["cluster_id"])[m]
        np.testing.assert_allclose(bonus[m], 2.0 * creativity_bonus(labels, "zscore"))
        z = (quality[m] - quality[m].mean()) / quality[m].std()
        np.testing.assert_allclose(final[m], z + bonus[m])
    for key in ("quality_std_in_group", "bonus_std_in_group", "clusters_mean", "kernel_width_mean",
                "diversity_mean", "embed_seconds"):
        assert key in result.metrics
    assert result.metrics["bonus_std_in_group"] > 0 or result.metrics["clusters_mean"] == 1


def test_passthrough_without_embedder_stores_null_embeddings(rollout_round):
    store, rollouts, rewards = rollout_round
    ctx = StageContext(small_config(**{"cluster.embedder": None}), store, "cluster-test")
    s = _scores(store, run_cluster(ctx, 0, rollouts, rewards).outputs["scores"])
    assert s["embedding"] == [None] * 16
    assert s["final_reward"] == s["quality"] and set(s["bonus"]) == {0.0} and set(s["cluster_id"]) == {0}


def test_planted_quadrants_are_found_and_the_rare_one_is_paid(rollout_round, store):
    """The 16 rollout images replaced by renders in known quadrants (5/5/5/1), as one group: clusters = quadrants."""
    src_store, rollouts, _ = rollout_round
    table = artifacts.read_table(src_store, rollouts, ROLLOUTS)
    truth = np.array([0] * 5 + [1] * 5 + [2] * 5 + [3])
    rng = np.random.default_rng(0)
    pngs = [png_bytes(np.round((render("a green cross", int(m), rng).transpose(1, 2, 0) + 1) * 127.5)
                      .astype(np.uint8)) for m in truth]
    for name, values in (("image_png", pa.array(pngs, pa.binary())),
                         ("prompt", pa.array(["a green cross"] * 16)), ("group_id", pa.array(["planted"] * 16))):
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), values)
    prov = Provenance(stage="test", run_id="planted", config_sha256="-", round=0, inputs={}, seeds={})
    ctx = StageContext(small_config(**DIVERSE), store, "planted")
    planted = artifacts.write_table(store, table, ROLLOUTS, prov)
    rewards = run_reward(ctx, 0, planted).outputs["rewards"]
    result = run_cluster(ctx, 0, planted, rewards)
    s = _scores(store, result.outputs["scores"])
    assert s["sample_id"] == table.column("sample_id").to_pylist()
    assert adjusted_rand_score(truth, s["cluster_id"]) == 1.0  # k = 4 by eigengap, not given
    bonus = np.asarray(s["bonus"])
    assert bonus[-1] == bonus.max() > bonus[0]
    assert result.metrics["clusters_mean"] == 4 and result.metrics["singletons_mean"] == 1


def test_scores_contract_v2_is_strict(store):
    prov = Provenance(stage="test", run_id="r", config_sha256="-", round=0, inputs={}, seeds={})
    row = {"sample_id": "a", "group_id": "g", "prompt": "p", "quality": 0.5, "bonus": 0.0, "cluster_id": 0,
           "final_reward": 0.5}
    v1 = pa.Table.from_pylist([row], schema=pa.schema([f for f in SCORES.schema if f.name != "embedding"]))
    with pytest.raises(ContractError, match="'embedding'"):
        artifacts.write_table(store, v1, SCORES, prov)
    wrong = v1.append_column("embedding", pa.array([[1.0, 2.0]], pa.list_(pa.float64())))
    with pytest.raises(ContractError, match="embedding.*float"):
        artifacts.write_table(store, wrong, SCORES, prov)
    assert SCORES.version == 5


@pytest.mark.parametrize(("overrides", "field"), [
    ({"cluster.method": "vendi"}, "cluster.method"),
    ({"cluster.method": "diverse", "cluster.embedder": None}, "cluster.embedder"),
    ({"cluster.normalization": "softmax"}, "cluster.normalization"),
    ({"cluster.quality_normalization": "rank"}, "cluster.quality_normalization"),
    ({"cluster.width_heuristic": "silverman"}, "cluster.width_heuristic"),
    ({"cluster.kernel_width": 0.0}, "cluster.kernel_width"),
    ({"cluster.method": "diverse", "cluster.k": 9}, "cluster.k"),  # more clusters than the group's 8 images
    ({"cluster.beta": -1.0}, "cluster.beta"),
])
def test_cluster_config_is_validated(overrides, field):
    from dgrpo.config import ConfigError

    with pytest.raises(ConfigError, match=rf"'{field}'"):
        small_config(**overrides)
