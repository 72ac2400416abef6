"""The fine-tune's progress display: one task across rounds and segments, right after a resume, with an ETA."""

import io
import re

import pytest
from dgrpo_pipelines.progress import IN_ROUND_CAP, FineTuneProgress, pipeline_order, stages_per_round
from rich.console import Console
from support import small_config


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _round_events(r: int, shards: int = 2) -> list[dict]:
    events = [{"stage": s, "round": r, "shard": i, "metrics": {"reward_mean": 0.5}} for s in ("rollout", "reward")
              for i in range(shards)]
    return events + [{"stage": "cluster", "round": r, "metrics": {}},
                     {"stage": "update", "round": r, "metrics": {"policy_loss": 0.1, "ratio_std": 2e-3}}]


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, color_system=None), out


def test_stages_per_round_counts_shards():
    assert stages_per_round(small_config(**{"pipeline.shards": 2})) == 2 + 2 + 1 + 1
    assert stages_per_round(small_config()) == 4


def test_a_resumed_fine_tune_counts_from_its_done_rounds_and_never_past_its_total():
    console, out = _console()
    clock = Clock()
    with FineTuneProgress(10, 15, 6, console, get_time=clock) as bar:
        assert bar.completed == 10
        # a late replay of an earlier segment's events moves nothing
        bar.on_event(_round_events(3)[0])
        assert bar.completed == 10
        seen = []
        for r in range(10, 15):
            for event in _round_events(r):
                clock.now += 10
                bar.on_event(event)
                seen.append(bar.completed)
                assert bar.completed <= 15
            bar.on_event({"stage": "evaluate", "round": r + 1, "metrics": {"reward": 0.6}})
        # a stray duplicate update (a retried task) cannot push it past the total either
        bar.on_event(_round_events(14)[-1])
        assert bar.completed == 15
    assert seen == sorted(seen)  # monotone
    # within a round the stage events fill in the fraction, up to IN_ROUND_CAP before the update commits it
    assert seen[:6] == pytest.approx([10 + k / 6 for k in range(1, 6)] + [11])
    text = out.getvalue()
    assert "15/15 rounds" in text and "round   15 update" in text and "ratio_std 0.002" in text
    assert "after round 15 evaluate" in text
    for wrong in ("16/15", "11/10", "/10 rounds"):
        assert wrong not in text


def test_the_eta_is_the_pace_of_this_run_times_the_rounds_left():
    clock = Clock()
    console, _ = _console()
    with FineTuneProgress(10, 15, 4, console, get_time=clock, log_stages=False) as bar:
        for r in (10, 11):  # two rounds of 4 stages, 15 s each stage: 60 s a round
            for event in _round_events(r, shards=1):
                clock.now += 15
                bar.on_event(event)
        assert bar.completed == 12
        # 3 rounds left at 60 s a round; rounds already done before the resume do not count as speed
        assert bar.time_remaining == pytest.approx(180, rel=1e-6)


def test_a_new_segment_raises_the_total_and_keeps_what_is_done():
    console, _ = _console()
    with FineTuneProgress(0, 3, 4, console, log_stages=False) as bar:
        for event in _round_events(0, shards=1)[:3]:
            bar.on_event(event)
        assert bar.completed == pytest.approx(min(3 / 4, IN_ROUND_CAP))
        bar.set_rounds(0, 6)
        assert bar.completed == pytest.approx(0.75) and bar.progress.tasks[0].total == 6
        with pytest.raises(ValueError, match="7 rounds done of 6"):
            bar.set_rounds(7, 6)
    with pytest.raises(ValueError, match="11 rounds done of 10"):
        FineTuneProgress(11, 10, 4, console)


def test_dgrpo_run_without_config_trains_the_shipped_toy_preset(monkeypatch):
    """One toy recipe under one name: `dgrpo run` with no --config is `make run`'s toy.yaml (package data), recipe for
    recipe (not the bare field defaults, whose learning rate and held-out split differ)."""
    import dgrpo_pipelines.local as local
    from dgrpo_pipelines.cli import DEFAULT_RUN_CONFIG, app
    from typer.testing import CliRunner

    from dgrpo.config import load_config
    from dgrpo.toyworld.presets import toy_preset

    seen = []

    def stop_here(cfg, *_args, **_kwargs):
        seen.append(cfg)
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(local, "open_context", stop_here)
    result = CliRunner().invoke(app, ["run", "--engine", "inprocess"])
    assert len(seen) == 1 and "stopped before training" in result.output, result.output
    shipped = load_config(toy_preset("toy"))
    assert DEFAULT_RUN_CONFIG.samefile(toy_preset("toy"))
    assert seen[0].recipe_sha256() == shipped.recipe_sha256() and seen[0].name == shipped.name == "toy"
    assert shipped.recipe_sha256() != load_config(None).recipe_sha256()  # the defaults alone are another recipe


def test_the_base_evaluation_is_called_base_and_rounds_count_from_one():
    console, out = _console()
    with FineTuneProgress(0, 2, 4, console) as bar:
        bar.on_event({"stage": "evaluate", "round": 0, "metrics": {"vendi": 4.5}})
        assert bar.progress.tasks[0].description == "evaluate base"
        for event in _round_events(0, shards=1):
            bar.on_event(event)
        bar.on_event({"stage": "evaluate", "round": 1, "metrics": {"vendi": 4.4}})
        assert bar.progress.tasks[0].description == "evaluate after round 1"
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # the live display's cursor codes
    lines = [line.split()[:3] for line in plain.splitlines() if line.strip() and "ETA" not in line]
    assert lines[0][:2] == ["base", "evaluate"] and ["round", "1", "update"] in lines
    assert ["after", "round", "1"] in lines and not any(line[:2] == ["round", "0"] for line in lines)


def test_one_polls_events_sort_in_pipeline_order_not_key_order():
    keys = ["runs/x/events/r0001-evaluate.json", "runs/x/events/r0000-update.json", "runs/x/events/r0000-cluster.json",
            "runs/x/events/r0000-reward-s001.json", "runs/x/events/r0000-reward-s000.json",
            "runs/x/events/r0000-rollout-s000.json", "runs/x/events/r0000-evaluate.json",
            "runs/x/events/r0001-rollout-s000.json"]
    assert [k.rsplit("/", 1)[1] for k in sorted(keys, key=pipeline_order)] == [
        "r0000-evaluate.json", "r0000-rollout-s000.json", "r0000-reward-s000.json", "r0000-reward-s001.json",
        "r0000-cluster.json", "r0000-update.json", "r0001-evaluate.json", "r0001-rollout-s000.json"]
    assert sorted(keys)[1] == "runs/x/events/r0000-evaluate.json"  # the key order, for contrast: cluster first
    assert sorted(keys)[0].endswith("r0000-cluster.json")
