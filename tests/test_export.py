"""`dgrpo export`: a tiny-SD3 fine-tune's adapter as a folder the diffusers pipeline loads with
`load_lora_weights(folder)` and that reproduces the policy's own images; its model card has the Hub's front matter,
the recipe, the evaluation and the lineage."""

import pytest
import torch
from huggingface_hub import ModelCard
from support import small_config
from typer.testing import CliRunner

from dgrpo import artifacts
from dgrpo.config import load_config
from dgrpo.models import load_policy
from dgrpo.models.tiny import tiny_sd3_pipeline
from dgrpo.models.trajectories import sample_ode
from dgrpo.runs.commits import trained_state
from dgrpo.runtime.engine import run_inprocess
from dgrpo.runtime.export import WEIGHTS_NAME, front_matter
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.policy_io import ADAPTER_KIND
from dgrpo.stages.shared.training_state import use_ema_weights
from dgrpo.store import LocalStore

PROMPTS = ["a red square", "a blue cross"]
RUN = "sd3-ft"


@pytest.fixture(scope="module")
def fine_tune(tmp_path_factory):
    """One round of a tiny SD3 fine-tune, evaluated before and after with the EMA of its LoRA weights (as the SD3.5
    recipe); the best adapter by lowest reward is round 1's (so --best has an adapter to export)."""
    root = tmp_path_factory.mktemp("export")
    tiny_sd3_pipeline().save_pretrained(root / "base")
    cfg = small_config(**{
        "rounds": 1, "eval.every": 1, "eval.samples_per_prompt": 2, "eval.num_steps": 3,
        "model.kind": "sd3", "model.pretrained": str(root / "base"), "model.resolution": 32,
        "model.max_sequence_length": 8, "sampling.num_steps": 3, "sampling.group_size": 2,
        "sampling.prompts_per_round": 2, "sampling.batch_size": 3, "train.batch_size": 4,
        "train.micro_batch_size": 2, "cluster.embedder": None, "train.learning_rate": 1e-2, "lora.rank": 4,
        "lora.alpha": 8, "pipeline.guard_rails.best_mode": "min", "train.ema_decay": 0.9,
        "train.ema_every": 1})
    store = LocalStore(root / "store")
    run_inprocess(StageContext(cfg, store, RUN))
    return root, cfg, store


def _export(store, out, *args):
    from dgrpo_pipelines.cli import app

    return CliRunner().invoke(app, ["export", RUN, "--store", str(store.root), "-o", str(out), *args])


def test_exported_folder_loads_into_diffusers_and_reproduces_the_policy(fine_tune, tmp_path):
    """The export holds what the evaluation scored: the EMA weights, as the evaluate stage sets them."""
    root, cfg, store = fine_tune
    result = _export(store, tmp_path / "out", "--round", "1")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    state = trained_state(store, RUN)
    assert (out / WEIGHTS_NAME).read_bytes() != store.get(state.adapter)  # the EMA, not the trained weights

    policy = load_policy(cfg.model)
    policy.add_lora(cfg.lora, seed=0)
    policy.load_lora_state_dict(artifacts.read_tensors(store, state.adapter, ADAPTER_KIND))
    use_ema_weights(StageContext(cfg, store, RUN), policy, state.optimizer_state)
    g, steps = cfg.eval.guidance_scale, 3
    expected = sample_ode(policy, policy.encode_prompts(PROMPTS), [1, 2], steps, None, g)

    pipe = type(policy.pipe).from_pretrained(root / "base")
    base = pipe(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=g, height=32, width=32,
                max_sequence_length=8, output_type="latent",
                generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    pipe.load_lora_weights(str(out))
    got = pipe(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=g, height=32, width=32,
               max_sequence_length=8, output_type="latent",
               generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    # the same float32 operations in the same order on both sides; a tolerance of a few float32 ulps of the
    # latents' magnitude allows for a kernel's reassociation, far below the adapter's own effect
    scale = expected.abs().max().item()
    tol = 16 * torch.finfo(torch.float32).eps * scale
    assert (base - expected).abs().max() > 1000 * tol  # the adapter changes the images
    torch.testing.assert_close(got, expected, rtol=0, atol=tol)
    images = policy.decode(expected)
    with torch.no_grad():
        decoded = pipe.vae.decode(got / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor).sample
    pixels = (pipe.image_processor.postprocess(decoded, output_type="np") * 255).round()
    assert abs(pixels - images).max() <= 1  # uint8 rounding of values within float32 noise


def test_model_card_front_matter_recipe_evaluation_and_lineage(fine_tune, tmp_path):
    _, cfg, store = fine_tune
    result = _export(store, tmp_path / "best", "--best")
    assert result.exit_code == 0, result.output
    assert "round 1" in result.output
    card = ModelCard.load(tmp_path / "best" / "README.md")
    assert card.data.library_name == "diffusers" and "lora" in card.data.tags
    assert card.data.base_model is None  # a local base path is no Hub id: left as a comment to fill in
    text = card.text
    raw = (tmp_path / "best" / "README.md").read_text()
    assert raw.startswith("---\n") and "# license:" in raw and "# base_model:" in raw
    assert "pipe.load_lora_weights" in text and "StableDiffusion3Pipeline" in text
    assert "| `lora.rank` | `4` |" in text and "| `model.kind` | `sd3` |" in text
    assert "| `train.clip_range`" not in text  # defaults are left out
    assert "| metric | base | round 1 |" in text
    assert "![evaluation images after round 1](evaluation_0001.png)" in text
    assert (tmp_path / "best" / "evaluation_0001.png").read_bytes()[:4] == b"\x89PNG"
    adapter = trained_state(store, RUN).adapter
    assert f"- round 1: adapter `{adapter.sha256[:12]}`" in text
    assert f"- base: model `{(store.root.parent / 'base').resolve().as_uri()}`" in text


def test_trained_exports_the_stored_adapter_as_it_is(fine_tune, tmp_path):
    _, _, store = fine_tune
    result = _export(store, tmp_path / "trained", "--trained")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "trained" / WEIGHTS_NAME).read_bytes() == store.get(trained_state(store, RUN).adapter)
    assert "the evaluations below scored their EMA" in (tmp_path / "trained" / "README.md").read_text()


def test_export_refuses_the_base_model_an_unknown_round_and_a_used_folder(fine_tune, tmp_path):
    _, _, store = fine_tune
    for args, message in ((["--round", "0"], "round 0 is the base model"),
                          (["--round", "2"], "has 1 committed rounds")):
        result = _export(store, tmp_path / "x", *args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert not (tmp_path / "x").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    result = _export(store, tmp_path / "used")
    assert result.exit_code == 1 and "not an empty directory" in result.output
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["keep.txt"]


def test_front_matter_names_a_hub_base_model():
    cfg = load_config("configs/sd35m-flowgrpo.yaml")
    card = ModelCard(front_matter(cfg) + "\n# card\n")
    assert card.data.base_model == cfg.model.pretrained and card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "text-to-image" and card.data.get("license") is None
