"""Each stage image holds everything its stage can be configured to use, proven without Docker.

scripts/image_envs.py builds every image's environment as a venv from images/base and images/stage under the same
constraints; the pipeline then runs through kfp.local with each task under its own image's python
(tests/stage_image_run.py): once on the toy world, once on a tiny real model (random-weight SD3 with the HPSv2.1
reward on open_clip and DreamSim embeddings). Slow (a venv per image): `make test-images`, not `make test`.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import small_config

from dgrpo.contracts.stages import STAGE_NAMES
from dgrpo.runtime.plan import training_plan
from dgrpo.store import LocalStore

pytestmark = pytest.mark.images

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "build" / "image-envs"
REWARD_LOADERS = ("rollout", "reward", "evaluate")
"""Stages that load the configured reward: reward scores, evaluate scores too, rollout previews (expand-and-prune)."""


def executor_outputs(pipeline_root: Path) -> dict[str, dict]:
    """Each task's KFP executor output (artifact metadata, Metrics included) by task directory name."""
    return {p.parent.name: json.loads(p.read_text()) for p in pipeline_root.rglob("executor_output.json")}


def metrics_of(executor_output: dict) -> dict[str, float] | None:
    metrics = executor_output.get("artifacts", {}).get("metrics")
    return None if metrics is None else metrics["artifacts"][0]["metadata"]


@pytest.fixture(scope="module")
def envs():
    subprocess.run([sys.executable, str(ROOT / "scripts" / "image_envs.py"), "--root", str(ENVS)], check=True)
    return ENVS


def _run(envs: Path, tmp_path: Path, cfg, run_id: str) -> tuple[LocalStore, dict[str, set[str]]]:
    (tmp_path / "config.json").write_text(cfg.to_json())
    subprocess.run([sys.executable, str(Path(__file__).with_name("stage_image_run.py")), str(envs),
                    str(tmp_path / "config.json"), str(tmp_path / "store"), run_id, str(tmp_path / "work")],
                   check=True, cwd=tmp_path)
    dispatched: dict[str, set[str]] = {}
    for line in (tmp_path / "work" / "dispatch.log").read_text().splitlines():
        fn, python = line.split(" ", 1)
        dispatched.setdefault(fn, set()).add(Path(python).parents[1].name)
    return LocalStore(tmp_path / "store"), dispatched


def _check_run(store: LocalStore, run_id: str, cfg, dispatched: dict[str, set[str]], root: Path) -> None:
    events = {(e["stage"], e["round"]) for e in (store.get_json(k) for k in store.list(f"runs/{run_id}/events"))}
    assert events == {(t.stage, t.round) for t in training_plan(cfg)}
    # every stage's task ran under its own image's python, and only there
    assert {s: dispatched[s] for s in STAGE_NAMES} == {s: {s} for s in STAGE_NAMES}
    # every stage's metrics reached KFP as a Metrics artifact, with the keys of its events
    keys: dict[str, set[str]] = {}
    for k in store.list(f"runs/{run_id}/events"):
        event = store.get_json(k)
        keys.setdefault(event["stage"], set()).update(event["metrics"])
    published = {task.split("-")[0]: set(metrics_of(out)) for task, out in executor_outputs(root).items()
                 if metrics_of(out) is not None}
    assert published == keys


def test_every_stage_runs_in_its_image_on_the_toy_world(envs, tmp_path):
    cfg = small_config(**{"rounds": 1, "eval.every": 1, "sampling.num_steps": 4, "sampling.group_size": 4,
                          "train.batch_size": 8, "eval.num_steps": 2, "eval.samples_per_prompt": 3})
    store, dispatched = _run(envs, tmp_path, cfg, "toy")
    _check_run(store, "toy", cfg, dispatched, tmp_path / "work" / "pipeline_root")
    summary = next((tmp_path / "work" / "pipeline_root").rglob("evaluate/summary")).read_text()
    assert "| vendi |" in summary


@pytest.fixture(scope="module")
def tiny_real(tmp_path_factory):
    """A tiny random-weight SD3 pipeline, a tiny open_clip model for HPSv2.1, a random DreamSim cache."""
    from dreamsim_cache import write_random_dreamsim_cache
    from open_clip.model import CLIP

    from dgrpo.models.tiny import tiny_sd3_pipeline

    root = tmp_path_factory.mktemp("tiny-real")
    tiny_sd3_pipeline().save_pretrained(root / "sd3")
    clip = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                            "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (root / "hps").mkdir()
    (root / "hps" / "open_clip_config.json").write_text(json.dumps({"model_cfg": clip, "preprocess_cfg": {}}))
    import torch

    torch.manual_seed(0)
    state = CLIP(**clip).state_dict()
    torch.save(state, root / "hps" / "open_clip_pytorch_model.bin")
    torch.save({"state_dict": state}, root / "hps" / "HPS_v2.1_compressed.pt")
    write_random_dreamsim_cache(root / "dreamsim")
    return root


def test_every_stage_runs_in_its_image_on_a_tiny_real_model(envs, tiny_real, tmp_path):
    cfg = small_config(**{
        "rounds": 1, "eval.every": 1, "model.kind": "sd3", "model.pretrained": str(tiny_real / "sd3"),
        "model.resolution": 32, "model.max_sequence_length": 8, "sampling.num_steps": 3, "sampling.group_size": 2,
        "sampling.prompts_per_round": 2, "train.batch_size": 4, "train.micro_batch_size": 2,
        "reward.name": "hpsv2.1", "reward.options": {"checkpoint": str(tiny_real / "hps" / "HPS_v2.1_compressed.pt"),
                                                     "model_name": f"local-dir:{tiny_real / 'hps'}"},
        "cluster.embedder": "dreamsim", "cluster.embedder_options": {"cache_dir": str(tiny_real / "dreamsim"),
                                                                     "device": "cpu", "batch_size": 4},
        "eval.mode_classifier": None, "eval.num_steps": 2, "eval.samples_per_prompt": 2, "lora.rank": 4})
    store, dispatched = _run(envs, tmp_path, cfg, "sd3")
    _check_run(store, "sd3", cfg, dispatched, tmp_path / "work" / "pipeline_root")
    record = store.get_json("runs/sd3/eval/r0001.json")
    assert record["reward"]["name"] == "hpsv2.1" and "vendi" in record["metrics"]


@pytest.mark.parametrize("stage", REWARD_LOADERS)
def test_stages_that_load_the_reward_import_every_reward(envs, stage):
    """The rewards not run above (pickscore, clipscore, aesthetic, imagereward) import with what they import
    inside their factories: transformers' CLIP and BLIP, torchvision's transforms, open_clip, the hub client."""
    code = ("from dgrpo.rewards import REWARDS\n"
            "import dgrpo.rewards.models, dgrpo.rewards.imagereward\n"
            "import open_clip, ftfy, huggingface_hub, torchvision.transforms\n"
            "from transformers import BertTokenizer, BlipVisionConfig, CLIPModel, CLIPProcessor\n"
            "for name in ('pickscore', 'clipscore', 'aesthetic', 'hpsv2.1', 'imagereward'):\n"
            "    REWARDS.get(name)\n")
    subprocess.run([str(envs / stage / "bin" / "python"), "-c", code], check=True)


def test_a_stage_image_lacks_what_its_stage_does_not_need(envs):
    """The environments are the images' own, not this venv: the reward image has no diffusers (negative control:
    a test that ran everything in one environment would pass the checks above and fail here)."""
    probe = subprocess.run([str(envs / "reward" / "bin" / "python"), "-c", "import diffusers"], capture_output=True)
    assert probe.returncode != 0 and b"No module named 'diffusers'" in probe.stderr
