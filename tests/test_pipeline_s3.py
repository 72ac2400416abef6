"""The pipeline through kfp.local with its artifacts on S3 (SeaweedFS), started the way users do: `dgrpo run
--store s3://...`. kfp.local's own pipeline root stays a local folder; the task subprocesses reach the store
through the environment (endpoint, mounted credentials file), as pods do."""

import dataclasses
import json

import pytest
from dgrpo_pipelines.cli import app
from support import S3_BUCKET, small_config
from typer.testing import CliRunner

from dgrpo import artifacts, contracts
from dgrpo.runs import lineage
from dgrpo.runtime.plan import training_plan
from dgrpo.store import ArtifactRef, open_store

LINEAGE_FIELDS = {"stage", "image", "config_sha256", "code_version", "inputs", "seeds", "round", "run_id"}


@pytest.mark.e2e
def test_a_round_through_kfp_local_on_s3(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("DGRPO_IMAGE", "registry.example/dgrpo-stage:test")  # what a stage image's env says
    cfg = small_config(rounds=1)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(json.dumps(cfg.to_dict()))
    uri = f"s3://{S3_BUCKET}/e2e"
    out = CliRunner().invoke(app, ["run", "--config", str(config_path), "--store", uri, "--output",
                                   str(tmp_path / "out"), "--run-id", "s3e2e"])
    assert out.exit_code == 0, out.output
    assert f"report:    {uri}/runs/s3e2e/report.md" in out.output
    assert not (tmp_path / "out" / "store").exists()  # nothing went to the local default store

    store = open_store(uri)
    events = {(e["stage"], e["round"]): e for e in map(store.get_json, store.list("runs/s3e2e/events"))}
    assert set(events) == {(t.stage, t.round) for t in training_plan(cfg)}
    assert store.exists("runs/s3e2e/report.md")
    final = ArtifactRef(**events[("update", cfg.rounds - 1)]["outputs"]["adapter"])
    assert final.uri.startswith(f"{uri}/objects/")
    scores = ArtifactRef(**events[("cluster", 0)]["outputs"]["scores"])
    assert artifacts.read_table(store, scores, contracts.SCORES).num_rows == 16

    # every stage output carries its store uri and sha256 as KFP artifact metadata (what the KFP UI shows; Argo
    # copies it into each consumer's node status), its lineage record stays in the store
    root = tmp_path / "out" / "runs" / "s3e2e" / "pipeline_root"
    published = {}
    for path in root.rglob("executor_output.json"):
        for name, entry in json.loads(path.read_text()).get("artifacts", {}).items():
            for art in entry["artifacts"]:
                if "sha256" in art.get("metadata", {}):
                    published[(str(path.parent), name)] = art["metadata"]  # tasks repeat per round
    assert len(published) == 6 * cfg.rounds + len(cfg.eval_rounds())  # rollouts, rewards, scores, 3 from update
    adapter_meta = next(m for m in published.values() if m["sha256"] == final.sha256)
    assert all(set(m) == {"dgrpo_uri", "sha256"} for m in published.values())
    assert adapter_meta["dgrpo_uri"] == final.uri
    rec = lineage.read_record(store, adapter_meta["sha256"])
    assert {f.name for f in dataclasses.fields(rec)} >= LINEAGE_FIELDS
    assert rec.image == "registry.example/dgrpo-stage:test"
    assert rec.stage == "update" and rec.round == cfg.rounds - 1
    assert set(rec.inputs) >= {"rollouts", "scores", "base_model"}
    assert rec.config_sha256 == cfg.recipe_sha256() and rec.deployment_sha256 is not None

    # `dgrpo lineage` from the KFP output artifact file walks the chain in S3 back to the base and the config
    artifact_file = next(p for p in root.rglob("new_adapter")
                         if p.is_file() and ArtifactRef.from_json(p.read_text()).sha256 == final.sha256)
    walked = CliRunner().invoke(app, ["lineage", str(artifact_file)])
    assert walked.exit_code == 0, walked.output
    assert "base_model" in walked.output and "config" in walked.output and f"uri {final.uri}" in walked.output
