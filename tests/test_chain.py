"""The chain's decision function and guard rails: pure functions, every branch and its negative control."""

import pytest

from dgrpo.config import GuardRails
from dgrpo.runs.records import EvalRecord, StopRecord
from dgrpo.runtime.chain import best_evaluation, check_guard_rails, decide


def _decide(**kw):
    args = {"rounds_total": 10, "rounds_done": 4, "progress": 2, "succeeded": True, "failures_in_a_row": 0,
            "max_retries": 2, "stop": None, "error": ""}
    return decide(**(args | kw))


def test_decide_continues_finishes_retries_and_fails():
    assert _decide().action == "continue" and _decide().submits and _decide().state == "running"
    assert "next segment starts at round 5" in _decide().reason
    done = _decide(rounds_done=10)
    assert (done.action, done.submits, done.state) == ("done", False, "done")
    assert _decide(rounds_done=12, succeeded=False, failures_in_a_row=9).action == "done"  # nothing left to retry
    retry = _decide(succeeded=False, progress=0, failures_in_a_row=2, error="OOMKilled")
    assert retry.action == "retry" and retry.submits and "retry 2 of 2 from round 4" in retry.reason
    assert "OOMKilled" in retry.reason
    failed = _decide(succeeded=False, progress=0, failures_in_a_row=3, error="OOMKilled")
    assert (failed.action, failed.submits, failed.state) == ("failed", False, "failed")
    assert "3 segments in a row" in failed.reason and "OOMKilled" in failed.reason
    assert _decide(succeeded=False, failures_in_a_row=1, max_retries=0).action == "failed"
    # a "successful" segment that trained nothing would loop forever: it counts as a failure
    assert _decide(progress=0, failures_in_a_row=1).action == "retry"
    # an error that a retry repeats (bad data, NaN) ends the chain at once; the same error, transient, is retried
    permanent = _decide(succeeded=False, progress=0, failures_in_a_row=1, error="ContractError: NaN", permanent=True)
    assert (permanent.action, permanent.submits) == ("failed", False) and "not retried" in permanent.reason
    assert _decide(succeeded=False, progress=0, failures_in_a_row=1, error="ContractError: NaN").action == "retry"
    assert _decide(rounds_done=10, succeeded=False, permanent=True).action == "done"


def test_errors_a_retry_repeats_are_told_from_transient_ones():
    from dgrpo.config import ConfigError
    from dgrpo.contracts import ContractError
    from dgrpo.runtime.segment import is_permanent
    from dgrpo.stages.update.finite import NonFiniteError

    assert is_permanent(ContractError("column 'reward' holds 1 NaN")) and is_permanent(NonFiniteError("loss"))
    assert is_permanent(ConfigError("field 'rounds'"))
    try:  # raised from one, as a stage wrapper does
        raise RuntimeError("update round 3 failed") from NonFiniteError("loss")
    except RuntimeError as wrapped:
        assert is_permanent(wrapped)
    assert not is_permanent(RuntimeError("OOMKilled")) and not is_permanent(OSError("connection reset"))
    stop = StopRecord(rule="collapse-floor", round=4, message="diversity 0.01 below 0.05")
    stopped = _decide(stop=stop)
    assert (stopped.action, stopped.state) == ("stopped", "stopped") and "collapse-floor" in stopped.reason
    assert _decide(stop=stop, rounds_done=10).action == "stopped"  # the stop is what a person must see
    terminated = _decide(stop=StopRecord(rule="terminated", round=4, message="KFP run r1 was terminated (CANCELED)"),
                         succeeded=False, progress=0, failures_in_a_row=1)
    assert (terminated.action, terminated.submits) == ("stopped", False)  # an operator's stop, never a retry
    assert terminated.reason.startswith("terminated by an operator: KFP run r1")


def _evals(*rows):
    return [EvalRecord(round=r, metrics=m) for r, m in rows]


def test_collapse_rules_fire_on_the_floor_and_on_the_drop_from_the_base():
    evals = _evals((0, {"diversity": 0.40}), (5, {"diversity": 0.30}), (10, {"diversity": 0.19}))
    assert check_guard_rails(GuardRails(), evals, {}) is None  # every rule off by default
    assert check_guard_rails(GuardRails(diversity_floor=0.1), evals, {}) is None
    stop = check_guard_rails(GuardRails(diversity_floor=0.2), evals, {})
    assert (stop.rule, stop.round) == ("collapse-floor", 10) and stop.values == {
        "metric": "diversity", "value": 0.19, "floor": 0.2}
    assert "0.19" in stop.message and "0.2" in stop.message
    assert check_guard_rails(GuardRails(diversity_max_drop=0.6), evals, {}) is None  # fell 52.5%
    stop = check_guard_rails(GuardRails(diversity_max_drop=0.5), evals, {})
    assert stop.rule == "collapse-drop" and stop.values["base"] == 0.40 and stop.values["value"] == 0.19
    assert "52.5%" in stop.message
    with pytest.raises(ValueError, match=r"pipeline.guard_rails.diversity_metric.*no metric 'mode_entropy'"):
        check_guard_rails(GuardRails(diversity_metric="mode_entropy", diversity_floor=1.0), evals, {})


def test_hacking_fires_only_when_held_out_falls_while_training_reward_rises():
    rules = GuardRails(hacking_evaluations=2)
    evals = _evals((0, {"heldout_reward": 0.60}), (2, {"heldout_reward": 0.58}), (4, {"heldout_reward": 0.55}))
    rising = {0: 0.50, 1: 0.52, 2: 0.60, 3: 0.70}
    stop = check_guard_rails(rules, evals, rising)
    assert stop.rule == "reward-hacking" and stop.values["heldout"] == [0.60, 0.58, 0.55]
    assert stop.values["training_reward"] == [pytest.approx(0.51), pytest.approx(0.65)]
    assert check_guard_rails(rules, evals, {0: 0.6, 1: 0.6, 2: 0.5, 3: 0.5}) is None  # training reward fell too
    recovered = evals[:2] + _evals((4, {"heldout_reward": 0.59}))
    assert check_guard_rails(rules, recovered, rising) is None  # held-out rose again at the last one
    assert check_guard_rails(GuardRails(hacking_evaluations=3), evals, rising) is None  # needs 4 evaluations


def test_best_evaluation_by_the_configured_metric_and_direction():
    evals = _evals((0, {"reward": 0.5, "loss": 3.0}), (5, {"reward": 0.7, "loss": 1.0}), (10, {"reward": 0.7,
                                                                                             "loss": 2.0}))
    assert best_evaluation(GuardRails(), evals).round == 5  # the earliest on a tie
    assert best_evaluation(GuardRails(best_metric="loss", best_mode="min"), evals).round == 5
    assert best_evaluation(GuardRails(best_metric="loss"), evals).round == 0
    assert best_evaluation(GuardRails(), []) is None


def test_the_image_monitor_rule_reads_the_rounds_since_the_previous_evaluation():
    """Training rounds [5, 10) (shown 6..10) average 0.7 dark pixels: above a 0.6 limit, below 0.8; an earlier
    round's 0.99 is outside the window; a floor on colour entropy fires the same way; an unknown monitor is named."""
    evals = _evals((0, {}), (5, {}), (10, {}))
    monitors = {4: {"dark_pixel_share": 0.99, "colour_entropy": 0.5}} | {
        r: {"dark_pixel_share": 0.6 + 0.05 * (r - 5), "colour_entropy": 0.1} for r in range(5, 10)}  # mean 0.7
    assert check_guard_rails(GuardRails(monitor_max={"dark_pixel_share": 0.8}), evals, {}, monitors) is None
    stop = check_guard_rails(GuardRails(monitor_max={"dark_pixel_share": 0.6}), evals, {}, monitors)
    assert (stop.rule, stop.round) == ("degenerate-images", 10)
    assert stop.values == {"monitor": "dark_pixel_share", "value": pytest.approx(0.7), "max": 0.6, "rounds": [6, 10]}
    assert "averaged 0.7 over rounds 6..10, above the limit 0.6" in stop.message
    floor = check_guard_rails(GuardRails(monitor_min={"colour_entropy": 0.2}), evals, {}, monitors)
    assert floor.rule == "degenerate-images" and "below the floor 0.2" in floor.message
    assert check_guard_rails(GuardRails(monitor_min={"colour_entropy": 0.05}), evals, {}, monitors) is None
    assert check_guard_rails(GuardRails(monitor_max={"dark_pixel_share": 0.0}), evals[:1], {}, monitors) is None
    with pytest.raises(ValueError, match=r"pipeline.guard_rails.monitor_max.*no monitor 'blur'"):
        check_guard_rails(GuardRails(monitor_max={"blur": 0.5}), evals, {}, monitors)
