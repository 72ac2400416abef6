"""Tests of the toy world: data, hidden-mode classifier, text encoder, checkpoint format and reward."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dgrpo.toyworld import (
    CAPTIONS,
    MODE_PREFERENCE,
    N_MODES,
    classify_color,
    classify_mode,
    parse_caption,
    render,
    sample_batch,
    toy_reward,
)
from dgrpo.toyworld.data import COLOR_JITTER
from dgrpo.toyworld.model import (
    DEFAULT_CHECKPOINT,
    TOY_TRANSFORMER_CONFIG,
    CheckpointError,
    ToyTextEncoder,
    build_transformer,
    load_checkpoint,
    save_checkpoint,
)
from dgrpo.toyworld.reward import COLOR_FALLOFF


def test_captions_and_grammar():
    assert len(CAPTIONS) == 8 and CAPTIONS[0] == "a red square" and CAPTIONS[-1] == "a yellow cross"
    assert parse_caption("a blue cross") == ("blue", "cross")
    for bad in ["a purple square", "a red circle", "red square", "the red square", "", "a red square now"]:
        with pytest.raises(ValueError, match="not in the toy grammar"):
            parse_caption(bad)


def test_render_range_and_determinism():
    a = render("a green cross", 2, np.random.default_rng(7))
    b = render("a green cross", 2, np.random.default_rng(7))
    assert a.shape == (3, 16, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert a.min() == -1.0 and a.max() <= 1.0
    assert 10 <= (a.max(axis=0) > 0).sum() <= 49
    with pytest.raises(ValueError):
        render("a green cross", 4, np.random.default_rng(0))


def test_classify_mode_and_color_agree_with_truth():
    images, caption_idx, modes = sample_batch(4000, np.random.default_rng(123))
    assert images.dtype == np.float32 and caption_idx.dtype == np.int64 and modes.dtype == np.int64
    assert set(np.unique(modes)) == set(range(N_MODES)) and set(np.unique(caption_idx)) == set(range(8))
    np.testing.assert_array_equal(classify_mode(images), modes)
    np.testing.assert_array_equal(classify_color(images), caption_idx // 2)
    blank = np.full((2, 3, 16, 16), -1.0, dtype=np.float32)
    blank[1, :, 0, :2] = 1.0
    np.testing.assert_array_equal(classify_mode(blank), [-1, -1])


def test_text_encoder_empty_caption_and_unknown_words():
    encoder = ToyTextEncoder().eval()
    prompt, pooled = encoder(["a red square", "", "red cross"])
    assert prompt.shape == (3, 3, 32) and pooled.shape == (3, 32)
    assert torch.isfinite(prompt).all() and torch.isfinite(pooled).all()
    assert not torch.allclose(prompt[0], prompt[1])
    with pytest.raises(ValueError, match="purple"):
        encoder(["a purple square"])
    with pytest.raises(ValueError, match="<pad>"):
        encoder(["a <pad> square"])
    with pytest.raises(ValueError, match="words"):
        encoder(["a red square a"])


def _outputs(transformer, encoder):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        prompt, pooled = encoder(["a red square", ""])
        return transformer(hidden_states=x, encoder_hidden_states=prompt, pooled_projections=pooled,
                           timestep=torch.tensor([500.0, 20.0])).sample


def test_checkpoint_round_trip(tmp_path):
    config = {**TOY_TRANSFORMER_CONFIG, "num_layers": 1}
    transformer, encoder = build_transformer(config), ToyTextEncoder()
    path = save_checkpoint(tmp_path / "toy.safetensors", transformer, encoder, {"steps": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["toy.safetensors"]
    loaded = load_checkpoint(path)
    assert loaded.metadata == {"steps": 3}
    assert not loaded.transformer.training and not loaded.text_encoder.training
    assert loaded.transformer.config.num_layers == 1
    torch.testing.assert_close(_outputs(loaded.transformer, loaded.text_encoder), _outputs(transformer, encoder),
                               rtol=0, atol=0)
    with safe_open(str(path), framework="pt") as f:
        keys, header = list(f.keys()), f.metadata()
    assert all(k.startswith(("transformer.", "text_encoder.")) for k in keys)
    assert json.loads(header["transformer_config"])["num_layers"] == 1


def test_checkpoint_missing_key_names_file(tmp_path):
    path = save_checkpoint(tmp_path / "toy.safetensors", build_transformer(), ToyTextEncoder(), {})
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(path)
    tensors.pop("text_encoder.position_embedding")
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, broken, metadata=header)
    with pytest.raises(CheckpointError, match="broken.safetensors.*text_encoder.position_embedding"):
        load_checkpoint(broken)
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_shipped_checkpoint_loads():
    assert DEFAULT_CHECKPOINT.is_file() and DEFAULT_CHECKPOINT.stat().st_size < 4_000_000
    checkpoint = load_checkpoint()
    config = checkpoint.transformer.config
    for key, value in TOY_TRANSFORMER_CONFIG.items():
        assert config[key] == value, key
    assert next(checkpoint.transformer.parameters()).dtype == torch.float32
    report = checkpoint.metadata
    assert report["eval"]["mean"]["mode_entropy"] >= 0.9
    assert report["eval"]["mean"]["color_correct"] >= 0.95
    assert all(min(m["mode_shares"][:N_MODES]) > 0 for m in report["eval"]["per_caption"].values())
    assert json.loads(DEFAULT_CHECKPOINT.with_suffix(".json").read_text()) == report


def test_reward_ranks_renders_above_noise_and_adds_mode_preference():
    rng = np.random.default_rng(3)
    images, caption_idx, modes = sample_batch(256, rng)
    captions = [CAPTIONS[i] for i in caption_idx]
    real = toy_reward(images, captions)
    noise = toy_reward(rng.uniform(-1, 1, images.shape).astype(np.float32), captions)
    # colour tolerance 0: a render's colour jitter (<= COLOR_JITTER per channel) costs up to jitter / COLOR_FALLOFF
    assert real["quality"].min() >= 1 - COLOR_JITTER / COLOR_FALLOFF - 1e-6 and real["quality"].mean() > 0.7
    assert noise["quality"].mean() < 0.2
    assert real["reward"].dtype == np.float64 and real["mode"].dtype == np.int64
    np.testing.assert_array_equal(real["mode"], modes)
    # the bonus multiplies the quality: a bad image in the favoured quadrant earns little
    np.testing.assert_allclose(real["mode_bonus"], real["quality"] * np.asarray(MODE_PREFERENCE)[modes])
    np.testing.assert_allclose(real["reward"], real["quality"] + real["mode_bonus"])
    blank = toy_reward(np.full((1, 3, 16, 16), -1.0, dtype=np.float32), ["a red cross"])
    assert blank["quality"][0] == 0 and blank["mode"][0] == -1 and blank["reward"][0] == 0


def test_reward_checks_shape_and_colour():
    rng = np.random.default_rng(4)
    images = np.stack([render("a red cross", m, rng) for m in range(N_MODES)])
    exact = np.where(images > -1.0, 1.0, -1.0).astype(np.float32)  # the palette's red itself: no jitter
    exact[:, 1:] = -1.0
    right = toy_reward(exact, ["a red cross"] * 4)["quality"]
    jittered = toy_reward(images, ["a red cross"] * 4)["quality"]
    # tolerance 0: the render's colour jitter is not forgiven, yet costs at most jitter / COLOR_FALLOFF
    assert (jittered < 1.0).all() and (jittered >= 1 - COLOR_JITTER / COLOR_FALLOFF - 1e-6).all()
    wrong_shape = toy_reward(images, ["a red square"] * 4)["quality"]
    wrong_colour = toy_reward(images, ["a green cross"] * 4)["quality"]
    np.testing.assert_allclose(right, 1.0)
    assert (wrong_shape < 0.7).all() and (wrong_colour < 0.1).all()
    custom = toy_reward(exact, ["a red cross"] * 4, mode_preference=(0.0, 0.0, 0.0, 0.5))["mode_bonus"]
    np.testing.assert_allclose(custom, [0.0, 0.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="captions"):
        toy_reward(images, ["a red cross"])
