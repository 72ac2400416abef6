"""Real reward models' code paths on tiny random CLIP-style models built from configs and saved offline."""

import json

import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from dgrpo.models.tiny import clip_tokenizer
from dgrpo.rewards import load_reward
from dgrpo.rewards.models import AestheticHead

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


def _original_name(key: str) -> str:
    """Our port's parameter name back to the authors' ImageReward.pt name (the inverse mapping, written out)."""
    import re

    vit = {"layer_norm1": "norm1", "self_attn.qkv": "attn.qkv", "self_attn.projection": "attn.proj",
           "layer_norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    fixed = {"vision.embeddings.class_embedding": "blip.visual_encoder.cls_token",
             "vision.embeddings.position_embedding": "blip.visual_encoder.pos_embed"}
    if key in fixed:
        return fixed[key]
    if m := re.fullmatch(r"vision\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
        return f"blip.visual_encoder.blocks.{m[1]}.{vit[m[2]]}.{m[3]}"
    key = key.replace("vision.embeddings.patch_embedding.", "blip.visual_encoder.patch_embed.proj.")
    key = key.replace("vision.post_layernorm.", "blip.visual_encoder.norm.")
    return key.replace("text.", "blip.text_encoder.", 1) if key.startswith("text.") else key


@pytest.fixture(scope="module")
def imagereward_files(tmp_path_factory):
    """A tiny random ImageReward: ImageReward.pt with the authors' key names, med_config.json, a BERT vocab."""
    from transformers import BertTokenizer

    from dgrpo.rewards.imagereward import ImageRewardModel, text_config, vision_config

    path = tmp_path_factory.mktemp("tiny-imagereward")
    words = ["a", "red", "square", "photo", "of", "cat", "blue", "cross", "dog", "green", "circle"]
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path / "tok")
    (path / "med_config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 40, "vocab_size": len(words) + 7, "pad_token_id": 0,
        "add_cross_attention": True, "encoder_width": 48, "model_type": "bert"}))
    vision = {"hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(3)
    model = ImageRewardModel(vision_config(vision), text_config(str(path / "med_config.json"), 48)).eval()
    with torch.no_grad():
        for p in model.parameters():  # LayerNorms and embeddings too, so a misplaced key changes the score
            p.add_(0.1 * torch.randn_like(p))
    state = {_original_name(k): v for k, v in model.state_dict().items()}
    state.update({"blip.vision_proj.weight": torch.zeros(8, 48), "blip.vision_proj.bias": torch.zeros(8),
                  "blip.text_proj.weight": torch.zeros(8, 32), "blip.text_proj.bias": torch.zeros(8),
                  "blip.text_encoder.embeddings.position_ids": torch.arange(40)[None]})  # in the published file
    torch.save(state, path / "ImageReward.pt")
    options = {"checkpoint": str(path / "ImageReward.pt"), "med_config": str(path / "med_config.json"),
               "tokenizer": str(path / "tok"), "vision": vision, "batch_size": 2}
    return path, model, options


def test_imagereward_loads_the_authors_keys_and_scores(imagereward_files, images):
    pytest.importorskip("torchvision")
    from torchvision import transforms

    from dgrpo.rewards.imagereward import load_tokenizer

    _, model, options = imagereward_files
    reward = load_reward("imagereward", options)
    out = reward(images, PROMPTS)
    assert out["raw"].shape == out["reward"].shape == (3,)
    np.testing.assert_array_equal(out["raw"], reward(images, PROMPTS)["raw"])
    np.testing.assert_array_equal(out["reward"], out["raw"])  # scale 1 as in Flow-GRPO
    from PIL import Image

    prep = transforms.Compose([transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(32), transforms.ToTensor(),
                               transforms.Normalize((0.48145466, 0.4578275, 0.40821073),
                                                    (0.26862954, 0.26130258, 0.27577711))])
    tok = load_tokenizer(options["tokenizer"])
    text = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert text["input_ids"].shape == (3, 35)
    with torch.no_grad():
        expected = model(torch.stack([prep(Image.fromarray(i)) for i in images]), text["input_ids"],
                         text["attention_mask"]).double().numpy()
    np.testing.assert_allclose(out["raw"], expected, rtol=1e-5, atol=1e-6)
    same_image = reward(np.repeat(images[:1], 3, axis=0), PROMPTS)["raw"]
    same_prompt = reward(images, [PROMPTS[0]] * 3)["raw"]
    assert np.ptp(same_image) > 1e-3 and np.ptp(same_prompt) > 1e-3
    assert load_reward("imagereward", {**options, "scale": 0.5})(images, PROMPTS)["reward"] == pytest.approx(
        out["raw"] * 0.5)
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        reward(images, PROMPTS[:2])


def test_imagereward_names_unknown_and_missing_keys(imagereward_files, tmp_path):
    path, _, options = imagereward_files
    state = torch.load(path / "ImageReward.pt", weights_only=True)
    state["blip.itm_head.weight"] = torch.zeros(2, 32)
    del state["blip.visual_encoder.blocks.1.attn.qkv.bias"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"blip\.itm_head\.weight.*vision\.encoder\.layers\.1\.self_attn\.qkv\.bias"):
        load_reward("imagereward", {**options, "checkpoint": str(tmp_path / "bad.pt")})
    with pytest.raises(ValueError, match="size mismatch"):
        load_reward("imagereward", {**options, "vision": {**options["vision"], "intermediate_size": 32}})
