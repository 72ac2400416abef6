"""DiverseGRPO as one method module (issue 26, item 2): its hooks act only where its options are on, and take a
controller's round coefficients (beta for the bonus, lambda for SA-Reg)."""

import dataclasses

import numpy as np
import pytest
from support import small_config

from dgrpo.config import ConfigError
from dgrpo.methods.base import Coefficients, RoundSignals, methods_of
from dgrpo.methods.diversegrpo import DiverseGRPO, score_group
from dgrpo.objectives import cluster_advantages, sa_regularizer

DIVERSE = {"cluster.method": "diverse", "cluster.k": 2}


def test_it_is_a_built_in_every_run_consults():
    assert isinstance(methods_of(small_config())[0], DiverseGRPO)


def test_the_bonus_hook_pays_with_the_rounds_beta():
    rng = np.random.default_rng(0)
    quality, embeddings = rng.normal(size=8), rng.normal(size=(8, 5))
    assert DiverseGRPO(small_config()).cluster_group(quality=quality, embeddings=embeddings, seed=3,
                                                     coefficients=None) is None  # pass-through
    cfg = small_config(**DIVERSE)
    method = DiverseGRPO(cfg)
    plain = method.cluster_group(quality=quality, embeddings=embeddings, seed=3, coefficients=None)
    expected = score_group(quality, embeddings, cfg.cluster, 3)
    assert np.array_equal(plain.final_reward, expected["final_reward"])
    assert plain.kernel_width == float(expected["kernel_width"])
    round_beta = Coefficients(beta=cfg.cluster.beta / 4, sa_lambda=1.0, diversity_target=0.5,
                              diversity_smoothed=0.5, metrics={})
    controlled = method.cluster_group(quality=quality, embeddings=embeddings, seed=3, coefficients=round_beta)
    by_hand = score_group(quality, embeddings, dataclasses.replace(cfg.cluster, beta=round_beta.beta), 3)
    assert np.array_equal(controlled.final_reward, by_hand["final_reward"])
    assert np.array_equal(controlled.cluster_id, plain.cluster_id) and not np.array_equal(controlled.bonus, plain.bonus)


def test_sa_reg_acts_on_the_structure_steps_with_the_rounds_lambda():
    cfg = small_config(**DIVERSE, **{"train.regularizer": "sa", "train.structure_steps": 2})
    method = DiverseGRPO(cfg)
    assert method.step_regularizer(j=1, cfg=cfg).term is sa_regularizer
    assert method.step_regularizer(j=2, cfg=cfg) is None
    round_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, sa_lambda=0.25))
    assert method.step_regularizer(j=0, cfg=round_cfg).weight == 0.25
    assert DiverseGRPO(small_config()).step_regularizer(j=0, cfg=small_config()) is None


def test_the_cluster_baseline_replaces_the_detail_steps_advantages_only_when_asked():
    rewards = np.array([1.0, 2.0, 0.5, 3.0, 0.0, 1.5])
    groups, clusters = ["a"] * 3 + ["b"] * 3, np.array([0, 0, 1, 0, 1, 1])
    signals = RoundSignals(rewards=rewards, groups=groups, kept=None, cluster_ids=clusters, novelty=None, kl_gate=None)
    base = np.zeros(6)
    assert DiverseGRPO(small_config(**DIVERSE)).detail_advantages(signals=signals, advantages=base) is None
    cfg = small_config(**DIVERSE, **{"train.detail_baseline": "cluster", "train.structure_steps": 1})
    t = cfg.train
    assert np.array_equal(DiverseGRPO(cfg).detail_advantages(signals=signals, advantages=base),
                          cluster_advantages(rewards, groups, clusters, t.global_std, t.adv_clip_max))


def test_its_checks_run_when_the_config_loads():
    with pytest.raises(ConfigError, match="'cluster.k'"):
        small_config(**{"cluster.method": "diverse", "cluster.k": 9})
    with pytest.raises(ConfigError, match="'train.structure_steps'.*auto"):
        small_config(**{"train.structure_steps": "auto", "cluster.embedder": None})
