"""The DRIFT, Pro-GRPO and GARDO presets: built with `base:` on the recipe presets, differing only in what the
method changes."""

from pathlib import Path

import pytest

from dgrpo.config import load_config
from dgrpo.methods.progrpo import nfe_of_schedule
from dgrpo.toyworld.presets import toy_preset

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _preset(name: str) -> Path:
    """A shipped preset by name: the toy ones are package data, the real ones in configs/."""
    return toy_preset(name) if name.startswith("toy") else CONFIGS / f"{name}.yaml"


@pytest.mark.parametrize(("preset", "base", "differs"), [
    ("toy-drift", "toy-flowgrpo", {"drift"}),
    ("toy-progrpo", "toy-flowgrpo", {"progrpo"}),
    ("toy-gardo", "toy-flowgrpo", {"gardo", "reward", "train"}),
    ("sd35m-drift", "sd35m-flowgrpo", {"drift"}),
    ("sd35m-progrpo", "sd35m-flowgrpo", {"progrpo", "sampling"}),
    ("sd35m-gardo", "sd35m-flowgrpo", {"gardo", "reward", "train"}),
])
def test_method_presets_build_on_the_recipe(preset, base, differs):
    cfg, ref = load_config(_preset(preset)).to_dict(), load_config(_preset(base)).to_dict()
    assert cfg["name"] == preset
    assert {k for k in cfg if cfg[k] != ref[k]} == differs | {"name"}


def test_method_presets_turn_their_options_on():
    drift = load_config(toy_preset("toy-drift")).drift
    assert drift.outlier_filter and drift.prompt_noise and drift.shaping_weight > 0
    pro = load_config(CONFIGS / "sd35m-progrpo.yaml")
    assert pro.progrpo.mode == "expand_prune" and pro.sampling.group_size == pro.progrpo.prune_sizes[-1] == 12
    assert nfe_of_schedule(48, 10, pro.progrpo.prune_steps, pro.progrpo.prune_sizes) == 360  # this project's schedule
    toy_pro = load_config(toy_preset("toy-progrpo"))
    assert toy_pro.sampling.group_size == load_config(toy_preset("toy-flowgrpo")).sampling.group_size
    gardo = load_config(CONFIGS / "sd35m-gardo.yaml")
    assert gardo.gardo.novelty_advantage and gardo.gardo.kl_gate and gardo.gardo.reference_reset
    assert gardo.reward.name == "multi" and gardo.gardo.aux_components == ["aesthetic", "imagereward"]
    assert gardo.train.regularizer == "kl" and gardo.cluster.embedder == "dreamsim"


PAPER_PRESETS = ("toy-diversegrpo-paper", "sd35m-diversegrpo", "flux1dev-diversegrpo-paper")


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_run_the_papers_diversegrpo_and_nothing_of_ours(preset):
    """R = Q + beta sqrt(N / n_k) on k fixed clusters of a fixed-width kernel, the group advantage on every step,
    SA-Reg instead of KL, beta in the paper's sweep: by the fields, and by the rewards score_group pays."""
    import numpy as np

    from dgrpo.methods.diversegrpo import score_group

    cfg = load_config(_preset(preset))
    c, t = cfg.cluster, cfg.train
    assert (c.method, c.normalization, c.quality_normalization, c.quality_gate) == ("diverse", "none", "none", False)
    assert (c.k_selection, c.width_heuristic) == ("fixed", "fixed") and c.beta in (1.0, 3.0, 5.0)
    assert (t.regularizer, t.beta_kl, t.detail_baseline) == ("sa", 0.0, "group")
    rng = np.random.default_rng(0)
    quality = rng.normal(0.8, 0.01, 12)
    out = score_group(quality, rng.normal(size=(12, 6)), c, seed=0)
    sizes = np.bincount(out["cluster_id"])
    assert len(sizes) == c.k and float(out["kernel_width"]) == c.kernel_width
    np.testing.assert_array_equal(out["final_reward"], quality + c.beta * np.sqrt(12 / sizes[out["cluster_id"]]))


def test_the_flux_paper_preset_compiles_fused_and_trains_one_round_on_tiny_flux(tmp_path):
    """The preset as shipped compiles to one fused segment; with tiny FLUX, the toy reward and embedder (no
    weights here) and one process, its cluster and update stages run one round."""
    import dataclasses

    import yaml
    from dgrpo_pipelines.training import compile_pipeline

    from dgrpo.models.tiny import tiny_flux_pipeline
    from dgrpo.stages.cluster import run_cluster
    from dgrpo.stages.reward import run_reward
    from dgrpo.stages.rollout import run_rollout
    from dgrpo.stages.shared.context import StageContext
    from dgrpo.stages.update import run_update
    from dgrpo.store import LocalStore

    preset = CONFIGS / "flux1dev-diversegrpo-paper.yaml"
    cfg = load_config(preset)
    assert cfg.pipeline.execution == "fused" and cfg.model.kind == "flux"
    spec, _ = yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "p.yaml").read_text())
    assert "exec-train-segment" in spec["deploymentSpec"]["executors"]

    tiny_flux_pipeline().save_pretrained(tmp_path / "flux")
    cfg = load_config(preset, {
        "model.pretrained": str(tmp_path / "flux"), "model.resolution": 16, "model.max_sequence_length": 8,
        "model.dtype": "float32", "sampling.num_steps": 3, "sampling.group_size": 4, "sampling.prompts_per_round": 2,
        "sampling.batch_size": 4, "sampling.prompts_file": None, "sampling.prompts": ["a red square", "a blue cross"],
        "eval.prompts_file": None, "eval.prompts": ["a red square"], "reward.name": "toy", "cluster.embedder": "toy",
        "cluster.k": 2, "train.batch_size": 8, "train.micro_batch_size": 4, "train.num_processes": 1,
        "train.mixed_precision": "no", "train.structure_steps": 1, "pipeline.shards": 1, "kubernetes.fused.gpus": 1,
        "kubernetes.stages.update.gpus": 1})
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, embedder_options={}))  # no DreamSim
    ctx = StageContext(cfg, LocalStore(tmp_path / "store"), "flux-paper")
    rollouts = run_rollout(ctx, 0).outputs["rollouts"]
    cluster = run_cluster(ctx, 0, rollouts, run_reward(ctx, 0, rollouts).outputs["rewards"])
    assert cluster.metrics["clusters_mean"] == 2 and cluster.metrics["kernel_width_mean"] == 0.25
    update = run_update(ctx, 0, rollouts, cluster.outputs["scores"])
    assert update.metrics["optimizer_steps"] == 1 and update.metrics["agreement_worst_share"] <= 1
    assert update.metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # the first step is on-policy
