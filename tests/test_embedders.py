"""Embedders: the registry, the toy layout descriptor, and the real DreamSim wrapper on random weights."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from dgrpo.diversity import cosine_distances, spectral_clusters
from dgrpo.embedders import EMBEDDERS, load_embedder
from dgrpo.embedders.dreamsim import check_dreamsim_cache
from dgrpo.toyworld.data import CAPTIONS, render


def rendered(caption: str, modes: list[int], seed: int = 0) -> np.ndarray:
    """uint8 [n, 16, 16, 3] renders of `caption` in the given quadrants."""
    rng = np.random.default_rng(seed)
    images = np.stack([render(caption, m, rng) for m in modes])
    return np.round((images.transpose(0, 2, 3, 1) + 1.0) * 127.5).astype(np.uint8)


def test_registry_names_both_embedders_and_rejects_unknown():
    assert {"toy", "dreamsim"} <= set(EMBEDDERS.names())
    with pytest.raises(ValueError, match="cluster.embedder.*'clip'"):
        load_embedder("clip")
    with pytest.raises(ValueError, match="cluster.embedder_options"):
        load_embedder("toy", {"width": 3})


def test_toy_embedder_separates_quadrants_and_clusters_recover_them():
    modes = [0] * 10 + [1] * 7 + [2] * 5 + [3] * 2
    emb = load_embedder("toy")(rendered(CAPTIONS[3], modes))
    assert emb.shape == (24, 17) and emb.dtype == np.float32
    d = cosine_distances(emb)
    same = np.equal.outer(modes, modes) & ~np.eye(24, dtype=bool)
    assert d[same].max() < 0.45 < d[~np.equal.outer(modes, modes)].min()
    assert adjusted_rand_score(modes, spectral_clusters(d)) == 1.0  # eigengap finds the 4 planted modes


def test_toy_embedder_handles_blank_images_and_rejects_bad_input():
    emb = load_embedder("toy")(np.zeros((3, 16, 16, 3), np.uint8))
    np.testing.assert_allclose(cosine_distances(emb), 0.0, atol=1e-7)  # blanks are alike, and have a direction
    with pytest.raises(ValueError, match="uint8 images"):
        load_embedder("toy")(np.zeros((3, 16, 16, 3), np.float32))


def test_dreamsim_cache_errors_name_the_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cache_dir.*ensemble_lora/adapter_config.json"):
        check_dreamsim_cache(tmp_path, "ensemble")
    with pytest.raises(ValueError, match="dreamsim_type.*'vit_huge'"):
        check_dreamsim_cache(tmp_path, "vit_huge")


def test_dreamsim_wrapper_with_random_weights_runs_on_cpu(tmp_path):
    """The real dreamsim package builds its ensemble from a random-weight cache in its own layout, offline."""
    import torch
    from dreamsim_cache import write_random_dreamsim_cache

    root = write_random_dreamsim_cache(tmp_path / "dreamsim")
    hub_dir = torch.hub.get_dir()
    embedder = load_embedder("dreamsim", {"cache_dir": str(root), "device": "cpu", "batch_size": 2}, cache=False)
    assert torch.hub.get_dir() == hub_dir  # the wrapper puts torch.hub's directory back
    lora_b = [p for n, p in embedder.model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 3 * 12 * 3 and all(float(p.abs().sum()) > 0 for p in lora_b)  # the cached LoRA loaded
    images = np.concatenate([rendered("a red square", [0, 3]), rendered("a red square", [0])])
    images[1] = np.random.default_rng(1).integers(0, 256, size=images[1].shape, dtype=np.uint8)
    emb = embedder(images)
    assert emb.shape == (3, 512 + 512 + 768) and np.all(np.isfinite(emb))  # CLIP, OpenCLIP, DINO features
    d = cosine_distances(emb)
    assert np.all((d >= 0) & (d <= 2))
    assert d[0, 2] < 1e-4 < d[0, 1]  # the same render is at distance ~0, noise is not
