"""Fused execution (pipeline.execution fused): a segment's rounds in one task, the same objects as staged."""

from pathlib import Path

import pytest
import yaml
from dgrpo_pipelines.training import compile_pipeline
from support import small_config

from dgrpo.config import ConfigError, load_config
from dgrpo.runtime import fused
from dgrpo.runtime import segment as seg
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.rounds import ROUND, STEP_CALLS
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import LocalStore

CONFIGS = Path(__file__).parents[1] / "configs"


def objects(store: LocalStore) -> set[str]:
    """The content-addressed objects a run wrote (tables, adapters, optimizer states, grids): their sha256s."""
    return {key.rsplit("/", 1)[-1].split(".")[0] for key in store.list("objects")}


def test_the_round_shape_is_the_stage_table():
    assert [s.stage for s in ROUND] == ["rollout", "reward", "cluster", "update"]
    assert [s.sharded for s in ROUND] == [True, True, False, False]
    assert {s.stage: s.inputs for s in ROUND} == {"rollout": (), "reward": ("rollouts",),
                                                  "cluster": ("rollouts", "rewards"), "update": ("rollouts", "scores")}
    assert set(STEP_CALLS) == {s.stage for s in ROUND}


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the compiled pipeline, at any depth, by name."""
    out: dict[str, dict] = {}

    def walk(tasks: dict) -> None:
        for name, task in tasks.items():
            out[name] = task
            comp = spec["components"][task["componentRef"]["name"]]
            walk(comp.get("dag", {}).get("tasks", {}))

    walk(spec["root"]["dag"]["tasks"])
    return out


@pytest.mark.parametrize("preset", ["sd35m-pickscore.yaml", "flux1dev-pickscore.yaml", "sd35m-diversegrpo.yaml"])
def test_a_fused_preset_compiles_to_a_handful_of_tasks_whatever_rounds_per_run(tmp_path, preset):
    sizes = set()
    for rounds_per_run in (20, 200):
        config = load_config(CONFIGS / preset, {"pipeline.rounds_per_run": rounds_per_run})
        assert config.pipeline.execution == "fused"
        spec, platform = yaml.safe_load_all(compile_pipeline(config, tmp_path / "p.yaml").read_text())
        tasks = _tasks(spec)
        assert {n for n, t in tasks.items() if "dag" not in spec["components"][t["componentRef"]["name"]]} == {
            "finish-segment", "open-segment", "train-segment"}
        sizes.add(len(tasks))
        assert not tasks["train-segment"].get("cachingOptions", {}).get("enableCache")  # it trains
        assert "exec-train-segment" in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        resources = spec["deploymentSpec"]["executors"]["exec-train-segment"]["container"]["resources"]
        assert resources["accelerator"]["resourceCount"] == str(config.kubernetes.fused.gpus)
        assert config.train.num_processes == config.kubernetes.fused.gpus
    assert len(sizes) == 1  # rounds_per_run does not change the compiled segment's tasks


def test_a_container_swap_under_fused_is_refused_naming_the_field(tmp_path):
    component = tmp_path / "reward.yaml"
    component.write_text("name: r\n")
    with pytest.raises(ConfigError, match=r"pipeline\.stages\.reward.*pipeline\.execution: staged.*'fused'"):
        small_config(**{"pipeline.execution": "fused", "pipeline.stages": {"reward": {"component": str(component)}}})


def test_the_in_process_engine_refuses_a_container_swap_before_claiming_the_run(tmp_path):
    component = tmp_path / "reward.yaml"
    component.write_text("name: r\n")
    store = LocalStore(tmp_path / "store")
    config = small_config(**{"pipeline.stages": {"reward": {"component": str(component)}}})
    with pytest.raises(ConfigError, match=r"pipeline\.stages\.reward.*in-process engine"):
        run_inprocess(StageContext(config, store, "swapped"))
    assert store.list("runs") == []  # nothing claimed: the run id stays free


def test_the_fused_image_holds_every_stage_package():
    """The fused task runs in the evaluate image: its requirements hold those of every round stage."""
    folder = Path(__file__).parents[1] / "images" / "stage"

    def requirements(stage: str) -> set[str]:
        lines = (folder / f"requirements-{stage}.txt").read_text().splitlines()
        return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()}

    evaluate = requirements("evaluate")
    for step in ROUND:
        assert requirements(step.stage) <= evaluate, step.stage


def _segment_in_processes(store: LocalStore, run_id: str, config_sha256: str) -> seg.SegmentEnd:
    """One segment as the fused task runs it with train.num_processes > 1: torchrun workers, then the exit step."""
    state, base_due = seg.open_segment(store, run_id, config_sha256, f"fused-{run_id}")
    fused.launch(store, state, base_due)
    return seg.finish_segment(store, run_id, config_sha256, f"fused-{run_id}", "SUCCEEDED")


@pytest.mark.e2e
def test_two_fused_processes_write_what_the_staged_stages_write(tmp_path):
    """2 processes (gloo) split the rollout and reward shards and embed their own images, the first clusters from
    the gathered embeddings (and the diversity probe each shard carries), both train data-parallel on their own
    shards: the same objects, bit for bit, as the in-process engine whose update runs the same 2 data-parallel
    processes."""
    from dgrpo.runtime import fine_tune

    target = {"fraction": 0.95, "base_rounds": 1, "probe_prompts": 2, "probe_images": 4}
    knobs = {"rounds": 2, "pipeline.shards": 2, "train.num_processes": 2, "eval.every": 2, "eval.num_steps": 2,
             "eval.samples_per_prompt": 2, "cluster.method": "diverse", "train.regularizer": "sa",
             "methods": {"diversity_target": target}}
    config = small_config(**knobs)
    staged = LocalStore(tmp_path / "staged")
    run_inprocess(StageContext(config, staged, "ft"))
    store = LocalStore(tmp_path / "fused")
    record = fine_tune.start(store, config, "ft")
    end = _segment_in_processes(store, "ft", record.config_sha256)
    assert end.decision.action == "done", end
    assert objects(store) == objects(staged)
    assert store.get_json("runs/ft/commits/r000001.json")["adapter"]["sha256"] == \
        staged.get_json("runs/ft/commits/r000001.json")["adapter"]["sha256"]
    events = {k.rsplit("/", 1)[-1] for k in store.list("runs/ft/events")}
    assert events == {k.rsplit("/", 1)[-1] for k in staged.list("runs/ft/events")}
    probed = [store.get_json(f"runs/ft/events/r{r:04d}-cluster.json")["metrics"] for r in (0, 1)]
    assert all(m["diversity_probe"] == m["diversity_measured"] for m in probed)


@pytest.mark.e2e
def test_a_failing_fused_worker_is_recorded_and_fails_the_segment(tmp_path, monkeypatch):
    from dgrpo.runtime import fine_tune

    plugins = str(Path(__file__).parent / "plugins")
    monkeypatch.syspath_prepend(plugins)
    monkeypatch.setenv("PYTHONPATH", plugins)  # the torchrun workers import the reward plug-in

    config = small_config(**{"rounds": 1, "pipeline.shards": 2, "train.num_processes": 2,
                             "reward.name": "flaky_rewards:flaky",
                             "reward.options": {"marker": str(tmp_path / "calls"), "fail_times": 1}})
    store = LocalStore(tmp_path / "store")
    record = fine_tune.start(store, config, "ft")
    state, base_due = seg.open_segment(store, "ft", record.config_sha256, "k")
    with pytest.raises(fused.SegmentWorkersFailed, match="2 fused processes failed"):
        fused.launch(store, state, base_due)
    errors = seg.errors(store, "ft")
    assert errors and {e.segment for e in errors} == {state.segment}
    assert any("flaky reward: injected failure" in e.error for e in errors)


def test_a_fused_segment_logs_its_steps_and_publishes_every_round(tmp_path, capsys):
    """The fused task's body, as kfp.local or a pod runs it: a log line per step, every round's metrics as
    `r<round>.<stage>.<metric>` and a Markdown table of them."""
    from dgrpo.runtime import component_io as cio
    from dgrpo.runtime import fine_tune

    config = small_config(**{"rounds": 2, "eval.every": 2, "eval.num_steps": 2, "eval.samples_per_prompt": 2})
    store = LocalStore(tmp_path / "store")
    record = fine_tune.start(store, config, "ft")
    state, base_due = seg.open_segment(store, "ft", record.config_sha256, "k")
    segment_file = tmp_path / "segment"
    segment_file.write_text(state.to_json())

    class Artifact:
        def __init__(self, path):
            self.path, self.metadata = str(path), {}

    class Sink(dict):
        def log_metric(self, key, value):
            self[key] = value

    sink, summary = Sink(), Artifact(tmp_path / "summary.md")
    cio.train_fused(str(store.root), "ft", Artifact(segment_file), base_due, sink, summary)
    update = store.get_json("runs/ft/events/r0001-update.json")["metrics"]
    assert {k: v for k, v in sink.items() if k.startswith("r0001.update.")} == {
        f"r0001.update.{k}": float(v) for k, v in update.items()}
    text = Path(summary.path).read_text()
    assert "| metric | round 1 | round 2 |" in text and "## Evaluation after round 2" in text
    assert "## Evaluation of the base model" in text  # evaluated in this segment
    log = capsys.readouterr().out.splitlines()
    assert log[:4] == [f"fused segment {state.segment} of ft: rounds 1-2", "base: evaluate", "round 1: begin_round",
                       "round 1: rollout (shard 0)"]  # rounds shown from 1, as everywhere
    assert "round 2: update" in log and "after round 2: evaluate" in log


@pytest.mark.parametrize("shards, prompts, rank, expected", [
    (4, 4, 1, ([1, 3], True)),  # even: rank 1 trains on shards 1 and 3, those its rollout step wrote
    (2, 2, 0, ([0], True)),
    (3, 3, 1, ([0, 1, 2], False)),  # 3 shards over 2 processes: every process reads all, takes every 2nd row
    (2, 3, 0, ([0, 1], False)),  # shards of 2 and 1 prompts: uneven rows would stall DistributedDataParallel
])
def test_each_update_process_reads_its_own_shards_when_they_split_evenly(monkeypatch, shards, prompts, rank,
                                                                          expected):
    from dgrpo.stages.update import train
    from dgrpo.store import ArtifactRef

    refs = [ArtifactRef("rollouts", f"file:///s/objects/0{i}/x", sha256=f"{i}" * 64, size=1) for i in range(shards)]
    monkeypatch.setattr(train, "shard_of", lambda store, ref: int(ref.sha256[0]))
    ctx = StageContext(small_config(**{"sampling.prompts_per_round": prompts, "pipeline.shards": shards}),
                       None, "ft")
    own, whole = train.own_rollouts(ctx, list(reversed(refs)), rank, 2)
    assert ([int(r.sha256[0]) for r in own] if whole else sorted(int(r.sha256[0]) for r in own), whole) == expected
