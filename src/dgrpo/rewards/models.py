"""Real image-text reward models, loaded the way their authors publish them (hub id or local path).

Registered by name in `dgrpo.rewards.REWARDS`. Every entry takes uint8 images [B, H, W, 3] and prompts, scores
them in batches of `batch_size` without gradients, and returns "reward" (the optimised, scaled score) and "raw"
(the model's own scale).

- pickscore (Kirstain et al. 2023): yuvalkirstain/PickScore_v1 (CLIP ViT-H-14) with the processor of
  laion/CLIP-ViT-H-14-laion2B-s32B-b79K (resize 224 bicubic, center crop, CLIP mean/std).
  raw = logit_scale.exp() * cos(image, prompt), about 17-23; reward = raw / 26 as in Flow-GRPO.
- clipscore (Hessel et al. 2021): openai/clip-vit-large-patch14 and its processor.
  raw = cos(image, prompt); reward = 2.5 max(raw, 0).
- aesthetic (LAION improved-aesthetic-predictor): the MLP head sac+logos+ava1-l14-linearMSE.pth (`head`: a
  local path or owner/repo/file on the hub) on L2-normalised openai/clip-vit-large-patch14 image embeddings.
  raw = a 1-10 rating; reward = raw / 10. Prompts are ignored.
- hpsv2.1 (Wu et al. 2023): open_clip ViT-H-14 with xswu/HPSv2's HPS_v2.1_compressed.pt and open_clip's val
  transform (224, bicubic, center crop, CLIP mean/std). raw = reward = cos(image, prompt), about 0.2-0.35.
- imagereward (Xu et al. 2023): THUDM/ImageReward's ImageReward.pt and med_config.json (`checkpoint`, `med_config`:
  local paths or owner/repo/file) on transformers' BLIP, ViT-L/16 + a BERT-base text encoder cross-attending to
  the image (dgrpo.rewards.imagereward maps every checkpoint key and fails on any unknown or missing one); tokenizer
  bert-base-uncased with BLIP's [DEC]/[ENC] tokens added, prompts padded/truncated to 35 tokens; images as the
  authors' transform (short side to 224 bicubic, center crop, CLIP mean/std; needs torchvision, extra "rewards").
  raw = (mlp(text [CLS]) - 0.1672) / 1.0333, the authors' standardised score (0 = their data's mean, about -2..2);
  reward = raw * scale with scale 1: already standardised, and Flow-GRPO optimises it unscaled.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dgrpo.rewards import RewardModel


def device_of(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_file(spec: str, revision: str | None = None) -> str:
    """A local file, or "repo_id/filename" on the hub (e.g. "xswu/HPSv2/HPS_v2.1_compressed.pt")."""
    if Path(spec).is_file():
        return spec
    parts = spec.split("/")
    if len(parts) < 3:
        raise FileNotFoundError(f"config field 'reward.options': {spec!r} is neither a file nor 'owner/repo/filename'")
    from huggingface_hub import hf_hub_download

    return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), revision=revision)


def batched(score: Callable[[list[Image.Image], list[str]], dict[str, torch.Tensor]], batch_size: int
             ) -> RewardModel:
    def reward(images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        if len(images) != len(prompts):
            raise ValueError(f"reward: {len(images)} images but {len(prompts)} prompts")
        parts: dict[str, list[np.ndarray]] = {}
        for i in range(0, len(images), batch_size):
            pil = [Image.fromarray(im) for im in images[i:i + batch_size]]
            with torch.no_grad():
                out = score(pil, list(prompts[i:i + batch_size]))
            for k, v in out.items():
                parts.setdefault(k, []).append(v.float().cpu().numpy().astype(np.float64))
        return {k: np.concatenate(v) for k, v in parts.items()}

    return reward


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _features(out) -> torch.Tensor:
    """transformers returns a tensor or (newer versions) an output whose pooled projection is the feature."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class _HFClip:
    """A transformers CLIPModel and its processor, in eval mode on `device`."""

    def __init__(self, model: str, processor: str | None, revision: str | None, device: str | None, dtype: str):
        from transformers import CLIPModel, CLIPProcessor

        self.device = device_of(device)
        self.dtype = getattr(torch, dtype)
        self.processor = CLIPProcessor.from_pretrained(processor or model)
        self.model = CLIPModel.from_pretrained(model, revision=revision, dtype=self.dtype).eval().to(self.device)
        self.model.requires_grad_(False)

    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        return _normalise(_features(self.model.get_image_features(pixel_values=pixels)).float())

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        return _normalise(_features(self.model.get_text_features(**tokens)).float())


def pickscore(model: str = "yuvalkirstain/PickScore_v1", processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
              revision: str | None = None, scale: float = 1 / 26, batch_size: int = 32, device: str | None = None,
              dtype: str = "float32") -> RewardModel:
    """PickScore (Kirstain et al. 2023): the CLIP logit of image and prompt; reward = raw * scale (1/26)."""
    clip = _HFClip(model, processor, revision, device, dtype)

    def score(images, prompts):
        raw = clip.model.logit_scale.exp().float() * (clip.image_features(images) * clip.text_features(prompts)).sum(-1)
        return {"reward": raw * scale, "raw": raw}

    return batched(score, batch_size)


def clipscore(model: str = "openai/clip-vit-large-patch14", processor: str | None = None,
              revision: str | None = None, weight: float = 2.5, batch_size: int = 32, device: str | None = None,
              dtype: str = "float32") -> RewardModel:
    """CLIPScore (Hessel et al. 2021): weight * max(cos(image, prompt), 0); "raw" is the cosine."""
    clip = _HFClip(model, processor, revision, device, dtype)

    def score(images, prompts):
        cos = (clip.image_features(images) * clip.text_features(prompts)).sum(-1)
        return {"reward": weight * cos.clamp(min=0), "raw": cos}

    return batched(score, batch_size)


class AestheticHead(torch.nn.Module):
    """The LAION improved-aesthetic-predictor MLP; its state dict keys are those of the published .pth file."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


def aesthetic(head: str, model: str = "openai/clip-vit-large-patch14", processor: str | None = None,
              revision: str | None = None, scale: float = 0.1, batch_size: int = 32, device: str | None = None,
              dtype: str = "float32") -> RewardModel:
    """LAION aesthetic score: the MLP `head` (.pth, local path or owner/repo/file) on L2-normalised CLIP ViT-L/14
    image embeddings; raw is a 1-10 rating, reward = raw * scale. Prompts are ignored."""
    clip = _HFClip(model, processor, revision, device, dtype)
    mlp = AestheticHead(clip.model.config.projection_dim)
    mlp.load_state_dict(torch.load(resolve_file(head), map_location="cpu", weights_only=True))
    mlp.eval().to(clip.device)

    def score(images, prompts):
        raw = mlp(clip.image_features(images))
        return {"reward": raw * scale, "raw": raw}

    return batched(score, batch_size)


def hpsv21(checkpoint: str = "xswu/HPSv2/HPS_v2.1_compressed.pt", model_name: str = "ViT-H-14",
           batch_size: int = 32, device: str | None = None) -> RewardModel:
    """HPSv2.1 (Wu et al. 2023): open_clip ViT-H-14 with the HPS checkpoint's weights; score = cos(img, txt)."""
    try:
        import open_clip
    except ImportError as exc:  # optional dependency, see pyproject extra "rewards"
        raise ImportError("reward 'hpsv2.1' needs open_clip_torch (pip install 'dgrpo[rewards]')") from exc
    dev = device_of(device)
    net, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, device="cpu",
                                                               output_dict=True)
    state = torch.load(resolve_file(checkpoint), map_location="cpu", weights_only=False)
    net.load_state_dict(state.get("state_dict", state))
    net.eval().requires_grad_(False).to(dev)
    tokenizer = open_clip.get_tokenizer(model_name)

    def score(images, prompts):
        pixels = torch.stack([preprocess(im) for im in images]).to(dev)
        out = net(pixels, tokenizer(prompts).to(dev))
        raw = (out["image_features"] * out["text_features"]).sum(-1)
        return {"reward": raw, "raw": raw}

    return batched(score, batch_size)
