"""What the KFP UI shows of a stage: its metrics as a Metrics artifact, and the evaluation's Markdown summary."""

import json

import pytest
from conftest import small_config
from dgrpo_components.stages import evaluate, resume
from kfp import dsl, local

from dgrpo.runtime.report import evaluation_markdown
from dgrpo.store import LocalStore


def executor_outputs(pipeline_root) -> dict[str, dict]:
    """Each task's KFP executor output (artifact metadata, Metrics included) by task directory name."""
    return {p.parent.name: json.loads(p.read_text()) for p in pipeline_root.rglob("executor_output.json")}


def metrics_of(executor_output: dict) -> dict[str, float] | None:
    metrics = executor_output.get("artifacts", {}).get("metrics")
    return None if metrics is None else metrics["artifacts"][0]["metadata"]


@pytest.mark.e2e
def test_evaluate_publishes_its_metrics_and_a_markdown_summary(tmp_path):
    cfg = small_config(**{"eval.num_steps": 2, "eval.samples_per_prompt": 3})

    @dsl.pipeline(name="evaluate-only")
    def pipeline(store_uri: str, run_id: str, config_json: str = cfg.to_json()):
        start = resume(config_json=config_json, store_uri=store_uri, run_id=run_id, resume_from="").outputs["start"]
        evaluate(config_json=config_json, store_uri=store_uri, run_id=run_id, round_index=0, start=start)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    pipeline(store_uri=str(tmp_path / "store"), run_id="kfp-ui")

    store = LocalStore(tmp_path / "store")
    event = store.get_json("runs/kfp-ui/events/r0000-evaluate.json")
    published = metrics_of(executor_outputs(tmp_path / "root")["evaluate"])
    assert published == event["metrics"]
    assert {"vendi", "heldout_vendi", "train_vendi", "heldout_embedding_diversity"} <= set(published)
    summary = next((tmp_path / "root").rglob("evaluate/summary")).read_text()
    assert summary == evaluation_markdown(store.get_json("runs/kfp-ui/eval/r0000.json"))
    assert summary.startswith("## Evaluation after round 0") and "| vendi |" in summary
