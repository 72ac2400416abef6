"""Real reward models' code paths on tiny random CLIP-style models built from configs and saved offline."""

import json

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from dgrpo.models.tiny import clip_tokenizer
from dgrpo.reward_models import AestheticHead
from dgrpo.rewards import load_reward

PROMPTS = ["a red square", "a photo of a cat", "a blue cross"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-clip")
    tok = clip_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(path)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32,
                                                                                            "width": 32}),
                  tokenizer=tok).save_pretrained(path)
    return path


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (3, 48, 40, 3), dtype=np.uint8)


def _reference_logits(clip_dir, images, prompts):
    from PIL import Image

    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    inputs = proc(text=prompts, images=[Image.fromarray(i) for i in images], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**inputs).logits_per_image.diagonal().double().numpy(), model


def test_pickscore_is_the_clip_logit_over_26(clip_dir, images):
    out = load_reward("pickscore", {"model": str(clip_dir), "processor": str(clip_dir), "batch_size": 2})(
        images, PROMPTS)
    logits, _ = _reference_logits(clip_dir, images, PROMPTS)
    np.testing.assert_allclose(out["raw"], logits, rtol=1e-5)
    np.testing.assert_allclose(out["reward"], logits / 26, rtol=1e-5)


def test_clipscore_is_clipped_cosine_times_weight(clip_dir, images):
    out = load_reward("clipscore", {"model": str(clip_dir)})(images, PROMPTS)
    logits, model = _reference_logits(clip_dir, images, PROMPTS)
    cos = logits / model.logit_scale.exp().item()
    np.testing.assert_allclose(out["raw"], cos, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["reward"], 2.5 * np.maximum(cos, 0), rtol=1e-5, atol=1e-7)


def test_aesthetic_head_on_normalised_image_embeddings(clip_dir, images, tmp_path):
    torch.manual_seed(1)
    head = AestheticHead(16).eval()
    torch.save(head.state_dict(), tmp_path / "head.pth")
    out = load_reward("aesthetic", {"head": str(tmp_path / "head.pth"), "model": str(clip_dir)})(images, PROMPTS)
    from PIL import Image

    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        emb = model.vision_model(**proc(images=[Image.fromarray(i) for i in images], return_tensors="pt")).pooler_output
        emb = model.visual_projection(emb)
        expected = head(emb / emb.norm(dim=-1, keepdim=True)).double().numpy()
    np.testing.assert_allclose(out["raw"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["reward"], expected / 10, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="reward.options"):
        load_reward("aesthetic", {"head": "missing.pth", "model": str(clip_dir)})


def test_hpsv21_scores_with_open_clip(tmp_path, images):
    open_clip = pytest.importorskip("open_clip")
    (tmp_path / "tiny-hps.json").write_text(json.dumps({
        "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                        "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(tmp_path / "tiny-hps.json")
    torch.manual_seed(2)
    net, _, preprocess = open_clip.create_model_and_transforms("tiny-hps", pretrained=None, output_dict=True)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "hps.pt")
    out = load_reward("hpsv2.1", {"checkpoint": str(tmp_path / "hps.pt"), "model_name": "tiny-hps"})(images, PROMPTS)
    from PIL import Image

    with torch.no_grad():
        img = net.encode_image(torch.stack([preprocess(Image.fromarray(i)) for i in images]), normalize=True)
        txt = net.encode_text(open_clip.get_tokenizer("tiny-hps")(PROMPTS), normalize=True)
    np.testing.assert_allclose(out["reward"], (img * txt).sum(-1).double().numpy(), rtol=1e-5, atol=1e-6)
