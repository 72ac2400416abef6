"""FLUX.1 through diffusers' FluxPipeline.

FLUX.1-dev is guidance-distilled: the CFG scale goes into the transformer's guidance embedding and each step is
one pass (no negative prompt). A FLUX model without a guidance embedding (schnell-like) gets two-pass true CFG
with the empty negative prompt. Latents are stored unpacked [C, h, w] (the SDE math is elementwise, so packing
is only a layout) and packed into 2x2 patches around each transformer call, as the pipeline does.
"""

import numpy as np
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from dgrpo.config import ModelConfig
from dgrpo.models.diffusers_policy import DiffusersPolicy, load_pipeline

FLUX_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                     "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")


class FluxPolicy(DiffusersPolicy):
    lora_targets = FLUX_LORA_TARGETS

    @property
    def guidance_embeds(self) -> bool:
        return bool(self.transformer.config.guidance_embeds)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        prompts = list(prompts)
        kwargs = self.encode_prompt_kwargs()
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=prompts, prompt_2=prompts, **kwargs)
        cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if not self.guidance_embeds:
            negative = [""] * len(prompts)
            neg_embeds, neg_pooled, _ = self.pipe.encode_prompt(prompt=negative, prompt_2=negative, **kwargs)
            cond |= {"negative_prompt_embeds": neg_embeds, "negative_pooled_prompt_embeds": neg_pooled}
        return cond

    def _forward(self, latents: torch.Tensor, sigma: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor,
                 guidance: float | None) -> torch.Tensor:
        """Pack, call the transformer at timestep sigma (the pipeline's t / 1000), unpack."""
        b, c, h, w = latents.shape
        packed = self.pipe._pack_latents(latents.to(self.device, self.dtype), b, c, h, w)
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, self.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        g = None if guidance is None else torch.full((b,), guidance, device=self.device, dtype=torch.float32)
        out = self.forward_module(hidden_states=packed, timestep=(sigma * 1000).to(self.device, self.dtype) / 1000,
                               guidance=g, pooled_projections=pooled.to(self.device, self.dtype),
                               encoder_hidden_states=embeds.to(self.device, self.dtype), txt_ids=txt_ids,
                               img_ids=img_ids, return_dict=False)[0]
        return self.pipe._unpack_latents(out, self.height, self.width, self.pipe.vae_scale_factor)

    def transformer_velocity(self, latents, sigma, cond, negative):
        prefix = "negative_" if negative else ""
        return self._forward(latents, sigma, cond[f"{prefix}prompt_embeds"], cond[f"{prefix}pooled_prompt_embeds"],
                             None)

    def velocity(self, latents, sigma, cond, guidance_scale):
        """FLUX.1-dev: one pass with the guidance embedding; otherwise true CFG (one pass when g == 1)."""
        if self.guidance_embeds:
            return self._forward(latents, sigma, cond["prompt_embeds"], cond["pooled_prompt_embeds"], guidance_scale)
        return super().velocity(latents, sigma, cond, guidance_scale)

    def latent_shape(self) -> tuple[int, ...]:
        f = self.pipe.vae_scale_factor
        return (self.transformer.config.in_channels // 4, 2 * (self.height // (f * 2)), 2 * (self.width // (f * 2)))

    def _schedule_kwargs(self, scheduler, num_steps: int) -> dict:
        """FluxPipeline's schedule: sigmas linspace(1, 1/T), shifted by the resolution-dependent mu."""
        c = scheduler.config
        kwargs = {"sigmas": None if c.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_steps, num_steps)}
        if c.use_dynamic_shifting:
            _, h, w = self.latent_shape()
            kwargs["mu"] = calculate_shift((h // 2) * (w // 2), c.get("base_image_seq_len", 256),
                                           c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
                                           c.get("max_shift", 1.15))
        return kwargs


def load_flux_policy(cfg: ModelConfig, device: torch.device | None, transformer_only: bool) -> FluxPolicy:
    skip = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    return FluxPolicy(load_pipeline(FluxPipeline, cfg, skip if transformer_only else ()), cfg, device)
