"""One registry type: built-ins by import path, refusal of duplicates, and plug-ins from a team's own package."""

from pathlib import Path

import numpy as np
import pytest
from support import small_config

from dgrpo import artifacts
from dgrpo.contracts import REWARDS as REWARDS_CONTRACT
from dgrpo.embedders import EMBEDDERS
from dgrpo.metrics import MODE_CLASSIFIERS
from dgrpo.models import POLICIES
from dgrpo.registry import Registry, RegistryError
from dgrpo.rewards import REWARDS, load_reward
from dgrpo.runtime.engine import run_inprocess
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import ArtifactRef, LocalStore

PLUGINS = Path(__file__).parent / "plugins"


def test_a_name_registered_twice_is_refused():
    registry = Registry("widget", "widget.name", {"builtin": "json:dumps"})
    registry.register("mine")(len)
    with pytest.raises(RegistryError, match="'mine' is already registered"):
        registry.register("mine")(len)
    with pytest.raises(RegistryError, match="'builtin' is already registered"):
        registry.register("builtin")(len)
    with pytest.raises(RegistryError, match="reserved"):
        registry.register("pkg.mod:f")


def test_names_resolve_to_builtins_registrations_and_import_paths():
    registry = Registry("widget", "widget.name", {"dumps": "json:dumps"})
    registry.register("length")(len)
    import json

    assert registry.get("dumps") is json.dumps and registry.get("length") is len
    assert registry.get("json:loads") is json.loads
    assert registry.names() == ["dumps", "length"]
    with pytest.raises(RegistryError, match=r"config field 'widget.name': unknown widget 'nope' \(known: dumps, "
                                            r"length; or a 'package.module:factory' path\)"):
        registry.get("nope")
    with pytest.raises(RegistryError, match="cannot import module 'no_such_module'"):
        registry.get("no_such_module:f")
    with pytest.raises(RegistryError, match="has no attribute 'nothing'"):
        registry.get("json:nothing")
    with pytest.raises(RegistryError, match="not callable"):
        registry.get("json:__name__")


def test_builtins_of_every_registry_import():
    """Each built-in's import path is right; the core reaches the toy world only through these strings."""
    for registry in (POLICIES, REWARDS, EMBEDDERS, MODE_CLASSIFIERS):
        for name in registry.names():
            assert callable(registry.get(name)), (registry.kind, name)


def test_a_reward_from_a_team_package_trains_a_round(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))
    scores = load_reward("acme_rewards:brightness", {"scale": 2.0})(np.full((2, 4, 4, 3), 255, np.uint8), ["a", "b"])
    assert scores["reward"].tolist() == [2.0, 2.0]

    store = LocalStore(tmp_path / "store")
    cfg = small_config(rounds=1, **{"reward.name": "acme_rewards:brightness", "reward.options": {"scale": 2.0},
                                    "eval.every": 10, "eval.num_steps": 2})
    ctx = StageContext(cfg, store, "acme")
    out = run_inprocess(ctx)
    assert store.list("runs/acme/commits") == ["runs/acme/commits/r000000.json"]
    event = store.get_json("runs/acme/events/r0000-reward.json")
    rewards = artifacts.read_table(store, ArtifactRef(**event["outputs"]["rewards"]), REWARDS_CONTRACT)
    components = rewards.column("components").to_pylist()
    assert all(dict(c)["brightness"] * 2.0 == pytest.approx(r) for c, r in
               zip(components, rewards.column("reward").to_pylist(), strict=True))
    assert out["adapter"] is not None
