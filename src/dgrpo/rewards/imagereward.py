"""ImageReward (Xu et al. 2023) rebuilt on transformers' BLIP, loading the authors' ImageReward.pt key by key.

The authors' model is BLIP: a ViT (timm-style keys under `blip.visual_encoder`) and a BERT text encoder whose
layers cross-attend to the image tokens (`blip.text_encoder`, configured by their med_config.json); the text
encoder's first ([CLS]) output goes through an MLP head (`mlp.layers.*`, the same layers as the LAION aesthetic
head) and the score is (mlp - MEAN) / STD. transformers' `BlipVisionModel` and `BlipTextModel` are these networks;
`convert_checkpoint` renames every checkpoint key onto them and fails on any key it does not know.
"""

import re
from collections.abc import Mapping

import torch
from transformers import BertConfig, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from dgrpo.rewards import RewardModel
from dgrpo.rewards.models import AestheticHead, batched, device_of, resolve_file

MEAN = 0.16717362830052426
"""The authors' normalisation of the head's output (ImageReward.py): score = (mlp - MEAN) / STD."""
STD = 1.0333394966054072
MAX_LENGTH = 35
"""Prompts are padded/truncated to 35 tokens, [CLS] and [SEP] included, as in the authors' `score`."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VIT_LARGE = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
             "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}
"""BLIP's create_vit('large', 224): ViT-L/16, MLP ratio 4, qkv bias, LayerNorm eps 1e-6, exact GELU."""

_IGNORED = re.compile(r"blip\.(vision_proj|text_proj)\.(weight|bias)|blip\.text_encoder\.embeddings\.position_ids")
"""In the published file but unused by the score: BLIP's contrastive projections and BERT's position-id buffer."""

_VIT_BLOCK = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
              "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_TEXT_LAYER = r"(?:attention|crossattention)\.(?:self\.(?:query|key|value)|output\.(?:dense|LayerNorm))" \
              r"|intermediate\.dense|output\.(?:dense|LayerNorm)"
_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"blip\.visual_encoder\.cls_token"), "vision.embeddings.class_embedding"),
    (re.compile(r"blip\.visual_encoder\.pos_embed"), "vision.embeddings.position_embedding"),
    (re.compile(r"blip\.visual_encoder\.patch_embed\.proj\.(weight|bias)"), r"vision.embeddings.patch_embedding.\1"),
    (re.compile(r"blip\.visual_encoder\.blocks\.(\d+)\.(" + "|".join(re.escape(k) for k in _VIT_BLOCK)
                + r")\.(weight|bias)"), "vit-block"),
    (re.compile(r"blip\.visual_encoder\.norm\.(weight|bias)"), r"vision.post_layernorm.\1"),
    (re.compile(r"blip\.text_encoder\.embeddings\.(word_embeddings|position_embeddings|LayerNorm)\.(weight|bias)"),
     r"text.embeddings.\1.\2"),
    (re.compile(r"blip\.text_encoder\.encoder\.layer\.(\d+)\.(" + _TEXT_LAYER + r")\.(weight|bias)"),
     r"text.encoder.layer.\1.\2.\3"),
    (re.compile(r"mlp\.layers\.(\d+)\.(weight|bias)"), r"mlp.layers.\1.\2"),
]


def _rename(key: str) -> str | None:
    """The port's name for an ImageReward.pt key; None for the ignored keys; KeyError for an unknown key."""
    if _IGNORED.fullmatch(key):
        return None
    for pattern, target in _RULES:
        m = pattern.fullmatch(key)
        if m and target == "vit-block":
            return f"vision.encoder.layers.{m[1]}.{_VIT_BLOCK[m[2]]}.{m[3]}"
        if m:
            return m.expand(target)
    raise KeyError(key)


def convert_checkpoint(state: Mapping[str, torch.Tensor], expected: set[str], source: str = "checkpoint"
                       ) -> dict[str, torch.Tensor]:
    """ImageReward.pt's state dict under the port's names; ValueError naming every unknown or missing key."""
    out, unknown = {}, []
    for key, value in state.items():
        try:
            name = _rename(key)
        except KeyError:
            unknown.append(key)
            continue
        if name is not None:
            out[name] = value
    unexpected = sorted(unknown + [k for k in out if k not in expected])
    missing = sorted(expected - out.keys())
    if unexpected or missing:
        raise ValueError(f"reward 'imagereward': {source} does not match the model; unexpected keys {unexpected}, "
                         f"missing keys (transformers names) {missing}")
    return out


def vision_config(overrides: Mapping | None = None) -> BlipVisionConfig:
    """BLIP ViT-L/16 at 224 px, as ImageReward hard-codes it; `overrides` (BlipVisionConfig fields) for tests."""
    return BlipVisionConfig(**{**VIT_LARGE, **(overrides or {})})


def text_config(med_config: str, encoder_width: int) -> BlipTextConfig:
    """The text encoder from the authors' med_config.json (a BertConfig file, read with BertConfig's defaults as
    they do), cross-attending to `encoder_width`-wide image tokens."""
    med = BertConfig.from_json_file(med_config)
    if getattr(med, "position_embedding_type", "absolute") != "absolute" or not getattr(med, "add_cross_attention",
                                                                                         False):
        raise ValueError(f"reward 'imagereward': {med_config} must have absolute positions and add_cross_attention")
    return BlipTextConfig(
        vocab_size=med.vocab_size, hidden_size=med.hidden_size, intermediate_size=med.intermediate_size,
        num_hidden_layers=med.num_hidden_layers, num_attention_heads=med.num_attention_heads,
        max_position_embeddings=med.max_position_embeddings, layer_norm_eps=med.layer_norm_eps,
        hidden_act=med.hidden_act, pad_token_id=med.pad_token_id, encoder_hidden_size=encoder_width,
        hidden_dropout_prob=med.hidden_dropout_prob, attention_probs_dropout_prob=med.attention_probs_dropout_prob,
        bos_token_id=None, eos_token_id=None, sep_token_id=None,  # generation ids, unused by the score
        is_decoder=True)  # is_decoder builds the cross-attention layers; forward runs bidirectionally


class ImageRewardModel(torch.nn.Module):
    """BLIP vision + cross-attending text encoder + the MLP head; forward returns the normalised score [B]."""

    def __init__(self, vision: BlipVisionConfig, text: BlipTextConfig):
        super().__init__()
        vision._attn_implementation = text._attn_implementation = "eager"  # BLIP's masks are additive floats
        self.vision = BlipVisionModel(vision)
        self.text = BlipTextModel(text, add_pooling_layer=False)
        self.mlp = AestheticHead(text.hidden_size)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                ) -> torch.Tensor:
        image = self.vision(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        text = self.text(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
                         encoder_attention_mask=image_mask).last_hidden_state
        return (self.mlp(text[:, 0].float()) - MEAN) / STD


def load_tokenizer(name: str):
    """bert-base-uncased (hub id or local dir) with BLIP's added [DEC] bos and [ENC] tokens, as the authors do."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(name)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def load_model(checkpoint: str, med_config: str, vision: Mapping | None = None) -> ImageRewardModel:
    """The port with ImageReward.pt's weights (local files), in eval mode on the CPU."""
    vcfg = vision_config(vision)
    model = ImageRewardModel(vcfg, text_config(med_config, vcfg.hidden_size))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"reward 'imagereward': {checkpoint} is not a state dict")
    try:
        model.load_state_dict(convert_checkpoint(state, set(model.state_dict()), checkpoint))
    except RuntimeError as exc:  # shapes: torch names each mismatched key
        raise ValueError(f"reward 'imagereward': {checkpoint} does not fit the configured model: {exc}") from exc
    return model.eval().requires_grad_(False)


def imagereward(checkpoint: str = "THUDM/ImageReward/ImageReward.pt",
                med_config: str = "THUDM/ImageReward/med_config.json", tokenizer: str = "bert-base-uncased",
                vision: dict | None = None, revision: str | None = None, scale: float = 1.0, batch_size: int = 32,
                device: str | None = None, dtype: str = "float32") -> RewardModel:
    """ImageReward (Xu et al. 2023): the authors' BLIP checkpoint on transformers' BLIP (this module);
    raw = (mlp(text [CLS] cross-attending the image) - mean) / std, reward = raw * scale (1, as Flow-GRPO)."""
    try:
        from torchvision import transforms
    except ImportError as exc:  # optional dependency, see pyproject extra "rewards"
        raise ImportError("reward 'imagereward' needs torchvision (pip install 'dgrpo[rewards]')") from exc
    dev, compute = device_of(device), getattr(torch, dtype)
    net = load_model(resolve_file(checkpoint, revision), resolve_file(med_config, revision), vision)
    net.vision.to(compute)
    net.text.to(compute)
    net.to(dev)  # the head stays float32, as the authors cast the [CLS] feature to float
    tok = load_tokenizer(tokenizer)
    if len(tok) > net.text.config.vocab_size:
        raise ValueError(f"reward 'imagereward': tokenizer {tokenizer!r} has {len(tok)} tokens, the checkpoint's "
                         f"text encoder {net.text.config.vocab_size}")
    size = net.vision.config.image_size
    preprocess = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(size),
        transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])

    def score(images, prompts):
        pixels = torch.stack([preprocess(im.convert("RGB")) for im in images]).to(dev, compute)
        text = tok(prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        raw = net(pixels, text["input_ids"].to(dev), text["attention_mask"].to(dev))
        return {"reward": raw * scale, "raw": raw}

    return batched(score, batch_size)
