"""DreamSim embeddings (`dreamsim` package) from a local weight cache; nothing is downloaded.

Layout of `cache_dir` for the default dreamsim_type "ensemble" (DINO ViT-B/16 + CLIP ViT-B/16 + OpenCLIP
ViT-B/16, fine-tuned jointly with LoRA):

    cache_dir/
      dino_vitb16_pretrain.pth            DINO checkpoint with its projection head ('student' weights)
      clip_vitb16_pretrain.pth.tar        CLIP ViT-B/16 converted to DINO's ViT layout ({'state_dict': ...})
      open_clip_vitb16_pretrain.pth.tar   OpenCLIP ViT-B/16, same layout
      ensemble_lora/                      DreamSim's LoRA: adapter_config.json, adapter_model.{safetensors,bin}
      facebookresearch_dino_main/         torch.hub clone of github.com/facebookresearch/dino (hubconf.py, ...)
      checkpoints/dino_vitbase16_pretrain.pth   the DINO backbone torch.hub downloads for that repo

The first four are the unzipped DreamSim release archive (dreamsim_ensemble_checkpoint.zip); DreamSim points
torch.hub's directory at cache_dir for its DINO backbones, so the last two are what `torch.hub.load(
'facebookresearch/dino:main', 'dino_vitb16')` leaves in a hub directory. Fill CACHE once with network:
`python -m dgrpo.runtime.model_cache fill --dreamsim CACHE:ensemble` (on a cluster, the model-cache fill Job does,
into the claim; docs/models.md).
Single-backbone types need `<type>_pretrain.pth[.tar]` and `<type>_single_lora/` instead (see DREAMSIM_FILES).
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dgrpo.embedders import check_images

_HUB_DINO = ("facebookresearch_dino_main/hubconf.py", "checkpoints/dino_vitbase16_pretrain.pth")
_HUB_DINOV2 = ("facebookresearch_dinov2_main/hubconf.py", "checkpoints/dinov2_vitb14_pretrain.pth")
DREAMSIM_FILES: dict[str, tuple[str, ...]] = {
    "ensemble": ("dino_vitb16_pretrain.pth", "clip_vitb16_pretrain.pth.tar", "open_clip_vitb16_pretrain.pth.tar",
                 "ensemble_lora/adapter_config.json", *_HUB_DINO),
    "dino_vitb16": ("dino_vitb16_pretrain.pth", "dino_vitb16_single_lora/adapter_config.json", *_HUB_DINO),
    "dinov2_vitb14": ("dinov2_vitb14_pretrain.pth", "dinov2_vitb14_single_lora/adapter_config.json",
                      *_HUB_DINOV2),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora/adapter_config.json"),
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora/adapter_config.json"),
    "synclr_vitb16": ("synclr_vit_b_16.pth", "synclr_vitb16_single_lora/adapter_config.json"),
}
"""Files DreamSim reads from cache_dir per dreamsim_type (hub entries included); checked before loading, so a
missing file is an error naming it rather than a download attempt."""


def check_dreamsim_cache(cache_dir: str | Path, dreamsim_type: str) -> Path:
    if dreamsim_type not in DREAMSIM_FILES:
        raise ValueError(f"config field 'cluster.embedder_options.dreamsim_type': unknown type {dreamsim_type!r} "
                         f"(known: {', '.join(DREAMSIM_FILES)})")
    root = Path(cache_dir).expanduser()
    missing = [f for f in DREAMSIM_FILES[dreamsim_type] if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"config field 'cluster.embedder_options.cache_dir': {root} lacks DreamSim "
                                f"{dreamsim_type} files {missing} (layout: dgrpo.embedders docstring)")
    return root


class DreamSimEmbedder:
    """DreamSim (`dreamsim` package) on a local weight cache; embeddings are DreamSim's normalised ones."""

    def __init__(self, cache_dir: str, dreamsim_type: str = "ensemble", device: str = "auto", batch_size: int = 32):
        import dreamsim

        root = check_dreamsim_cache(cache_dir, dreamsim_type)
        if batch_size < 1:
            raise ValueError(f"config field 'cluster.embedder_options.batch_size': must be >= 1, got {batch_size}")
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        self.batch_size = batch_size
        hub_dir = torch.hub.get_dir()  # dreamsim re-points torch.hub at cache_dir; put it back afterwards
        try:
            self.model, self.preprocess = dreamsim.dreamsim(pretrained=True, device=str(self.device),
                                                            cache_dir=str(root), dreamsim_type=dreamsim_type)
        finally:
            torch.hub.set_dir(hub_dir)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = check_images(images)
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.cat([self.preprocess(Image.fromarray(img)) for img in images[start:start + self.batch_size]])
            out.append(self.model.embed(batch.to(self.device)).float().cpu().reshape(len(batch), -1))
        return torch.cat(out).numpy()

