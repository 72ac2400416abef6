"""The embedded default policy: the toy world's tiny SD3 transformer, with pixels as latents."""

from pathlib import Path

import numpy as np
import torch

from dgrpo.config import ModelConfig
from dgrpo.models.policy import BaseModelId, FlowPolicy
from dgrpo.store import sha256_file
from dgrpo.toyworld.model import DEFAULT_CHECKPOINT, load_checkpoint


class ToyPolicy(FlowPolicy):
    def __init__(self, checkpoint: Path, device: torch.device | None = None):
        """On the CPU unless `device` says otherwise: the toy model is too small to gain from a GPU in sampling."""
        ckpt = load_checkpoint(checkpoint)
        self.device = device or torch.device("cpu")
        self.transformer = ckpt.transformer.to(self.device)
        self.text_encoder = ckpt.text_encoder.requires_grad_(False).to(self.device)
        self._base = BaseModelId(uri=checkpoint.resolve().as_uri(), sha256=sha256_file(checkpoint))
        cfg = self.transformer.config
        self._shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)

    @property
    def base_model(self) -> BaseModelId:
        return self._base

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, pooled = self.text_encoder(list(prompts))
        neg_embeds, neg_pooled = self.text_encoder([""] * len(prompts))
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
                "negative_prompt_embeds": neg_embeds, "negative_pooled_prompt_embeds": neg_pooled}

    def transformer_velocity(self, latents: torch.Tensor, sigma: torch.Tensor,
                             cond: dict[str, torch.Tensor], negative: bool) -> torch.Tensor:
        prefix = "negative_" if negative else ""
        return self.forward_module(
            hidden_states=latents, encoder_hidden_states=cond[f"{prefix}prompt_embeds"],
            pooled_projections=cond[f"{prefix}pooled_prompt_embeds"], timestep=sigma * 1000,
        ).sample

    def velocity(self, latents, sigma, cond, guidance_scale):
        """Both CFG branches in one batched pass, which is cheaper on a CPU than two."""
        if guidance_scale == 1.0:
            return super().velocity(latents, sigma, cond, guidance_scale)
        both = {"prompt_embeds": torch.cat([cond["negative_prompt_embeds"], cond["prompt_embeds"]]),
                "pooled_prompt_embeds": torch.cat([cond["negative_pooled_prompt_embeds"],
                                                   cond["pooled_prompt_embeds"]])}
        out = self.transformer_velocity(torch.cat([latents, latents]), torch.cat([sigma, sigma]), both, False)
        v_u, v_c = out.chunk(2)
        return v_u + guidance_scale * (v_c - v_u)

    def latent_shape(self) -> tuple[int, ...]:
        return self._shape

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        images = ((latents.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()


def load_toy_policy(cfg: ModelConfig, device: torch.device | None, transformer_only: bool) -> ToyPolicy:
    """The toy's text encoder is tiny and part of its checkpoint, so it is always loaded."""
    path = Path(cfg.pretrained) if cfg.pretrained else DEFAULT_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"config field 'model.pretrained': toy checkpoint {path} does not exist")
    return ToyPolicy(path, device)
