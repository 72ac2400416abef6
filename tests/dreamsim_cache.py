"""A DreamSim weight cache with random weights, written offline in DreamSim's real layout.

Every tensor file holds the real architecture's keys and shapes; the weights are views of one shared random
storage (torch.save writes a shared storage once), so the three ViT-B files take megabytes, not a gigabyte.
The torch.hub part is a stand-in clone of facebookresearch/dino: a hubconf.py that builds DINO's ViT-B/16 (the
copy dreamsim ships) and loads `checkpoints/dino_vitbase16_pretrain.pth` from the hub directory, as the real
hubconf does after its download.
"""

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HUBCONF = '''import os

import torch
from dreamsim.feature_extraction.vision_transformer import vit_base

dependencies = ["torch"]


def dino_vitb16(pretrained=True, **kwargs):
    model = vit_base(patch_size=16, num_classes=0, **kwargs)
    if pretrained:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", "dino_vitbase16_pretrain.pth")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
'''

LORA_CONFIG = {"r": 16, "lora_alpha": 0.5, "lora_dropout": 0.3, "bias": "none", "target_modules": ["qkv", "fc1", "fc2"],
               "peft_type": "LORA"}


def _random_like(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes as views into one random storage; norm weights are ones (a sane ViT)."""
    gen = torch.Generator().manual_seed(seed)
    span = max(s.numel() for s in shapes.values())
    base = torch.randn(span + 997, generator=gen) * 0.02
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        if "norm" in name and name.endswith("weight"):
            out[name] = torch.ones(shape)
        else:
            offset = (i * 131) % 997
            out[name] = base[offset:offset + shape.numel()].view(shape)
    return out


@functools.cache
def _dino_vit_shapes() -> dict[str, torch.Size]:
    from dreamsim.feature_extraction.vision_transformer import vit_base

    return {k: v.shape for k, v in vit_base(patch_size=16).state_dict().items()}


def _vit_shapes(layer_norm_pre: bool) -> dict[str, torch.Size]:
    shapes = dict(_dino_vit_shapes())
    if layer_norm_pre:  # the CLIP-as-DINO loaders replace pos_drop by a LayerNorm(768) before loading
        shapes |= {"pos_drop.weight": torch.Size([768]), "pos_drop.bias": torch.Size([768])}
    return shapes


def write_random_dreamsim_cache(root: Path, seed: int = 0) -> Path:
    """The "ensemble" cache layout of dgrpo.embedders with random weights; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "checkpoints").mkdir(exist_ok=True)
    torch.save(_random_like(_vit_shapes(False), seed), root / "checkpoints" / "dino_vitbase16_pretrain.pth")
    head = {"module.head.mlp.0.weight": torch.Size([2048, 768]), "module.head.mlp.0.bias": torch.Size([2048]),
            "module.head.mlp.2.weight": torch.Size([2048, 2048]), "module.head.mlp.2.bias": torch.Size([2048]),
            "module.head.mlp.4.weight": torch.Size([256, 2048]), "module.head.mlp.4.bias": torch.Size([256]),
            "module.head.last_layer.weight": torch.Size([2048, 256])}
    torch.save({"student": _random_like(head, seed + 1)}, root / "dino_vitb16_pretrain.pth")
    for i, name in enumerate(("clip_vitb16", "open_clip_vitb16")):
        shapes = _vit_shapes(True) | {"proj": torch.Size([768, 512])}
        torch.save({"state_dict": _random_like(shapes, seed + 2 + i)}, root / f"{name}_pretrain.pth.tar")
    hub = root / "facebookresearch_dino_main"
    hub.mkdir(exist_ok=True)
    (hub / "hubconf.py").write_text(HUBCONF)
    lora_dir = root / "ensemble_lora"
    lora_dir.mkdir(exist_ok=True)
    (lora_dir / "adapter_config.json").write_text(json.dumps(LORA_CONFIG))
    save_file(_random_lora(seed + 9), str(lora_dir / "adapter_model.safetensors"))
    return root


def _random_lora(seed: int) -> dict[str, torch.Tensor]:
    """peft's saved keys for LORA_CONFIG on the three ViT-B extractors; B is random (peft would start it at 0)."""
    gen = torch.Generator().manual_seed(seed)
    r = LORA_CONFIG["r"]
    layers = {"attn.qkv": (768, 2304), "mlp.fc1": (768, 3072), "mlp.fc2": (3072, 768)}
    out = {}
    for extractor in range(3):
        for block in range(12):
            for module, (fan_in, fan_out) in layers.items():
                key = f"base_model.model.extractor_list.{extractor}.model.blocks.{block}.{module}"
                out[f"{key}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen) * 0.02
                out[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * 0.02
    return out
