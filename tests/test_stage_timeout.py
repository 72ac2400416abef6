"""pipeline.stage_timeout_s: a hung stage fails with one line naming it, in every engine's process."""

import time
from pathlib import Path

import pytest
from support import small_config

from dgrpo.config import ConfigError
from dgrpo.runtime import segment as seg
from dgrpo.runtime.engine import ChainFailed, run_inprocess
from dgrpo.runtime.termination import StageTimeout, time_limit
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore

PLUGINS = str(Path(__file__).parent / "plugins")


def test_a_time_limit_raises_once_it_has_passed_and_not_before():
    with time_limit(5.0, "quick"):
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(StageTimeout, match=r"^slow ran past pipeline.stage_timeout_s \(0.2 s\)$"), \
            time_limit(0.2, "slow"):
        time.sleep(30)
    assert time.monotonic() - started < 5
    with time_limit(None, "unlimited"):
        time.sleep(0.01)


def test_a_hung_reward_plug_in_fails_its_stage_in_one_line(tmp_path, monkeypatch):
    """The base model's evaluation scores once (the limit leaves a loaded machine time for it), then round 0's
    reward hangs."""
    monkeypatch.syspath_prepend(PLUGINS)
    options = {"after_calls": 1, "marker": str(tmp_path / "calls")}
    config = small_config(**{"rounds": 1, "reward.name": "slow_rewards:slow", "reward.options": options,
                             "pipeline.stage_timeout_s": 20, "pipeline.max_retries": 0, "eval.every": 10})
    store = LocalStore(tmp_path / "store")
    started = time.monotonic()
    with pytest.raises(ChainFailed):
        run_inprocess(StageContext(config, store, "hung"))
    assert time.monotonic() - started < 120
    error = seg.errors(store, "hung")[-1]
    assert (error.task, error.round) == ("reward", 0)
    assert error.error.endswith("StageTimeout: reward of round 1 (shard 0) ran past pipeline.stage_timeout_s "
                                   "(20 s)")  # (wrapped as the plug-in's failure, naming it)
    assert not store.exists("runs/hung/lease.json")


def test_the_time_limit_is_positive():
    with pytest.raises(ConfigError, match="pipeline.stage_timeout_s"):
        small_config(**{"pipeline.stage_timeout_s": 0})
