"""Stable Diffusion 3.x (3.5 Medium / Large) through diffusers' StableDiffusion3Pipeline."""

import torch
from diffusers import StableDiffusion3Pipeline

from dgrpo.config import ModelConfig
from dgrpo.models.diffusers_policy import DiffusersPolicy, load_pipeline

SD3_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


class SD3Policy(DiffusersPolicy):
    """Prompts through the pipeline's two CLIP encoders and T5; two-pass classifier-free guidance in one batch."""

    lora_targets = SD3_LORA_TARGETS

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        prompts = list(prompts)
        embeds, neg_embeds, pooled, neg_pooled = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=prompts, prompt_3=prompts, do_classifier_free_guidance=True,
            negative_prompt=[""] * len(prompts), **self.encode_prompt_kwargs())
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
                "negative_prompt_embeds": neg_embeds, "negative_pooled_prompt_embeds": neg_pooled}

    def transformer_velocity(self, latents: torch.Tensor, sigma: torch.Tensor,
                             cond: dict[str, torch.Tensor], negative: bool) -> torch.Tensor:
        prefix = "negative_" if negative else ""
        return self._forward(latents, sigma, cond[f"{prefix}prompt_embeds"], cond[f"{prefix}pooled_prompt_embeds"])

    def _forward(self, latents, sigma, embeds, pooled) -> torch.Tensor:
        """The transformer at timestep sigma * 1000, exactly as StableDiffusion3Pipeline calls it."""
        return self.forward_module(hidden_states=latents.to(self.device, self.dtype),
                                timestep=(sigma * 1000).to(self.device),
                                encoder_hidden_states=embeds.to(self.device, self.dtype),
                                pooled_projections=pooled.to(self.device, self.dtype), return_dict=False)[0]

    def velocity(self, latents, sigma, cond, guidance_scale):
        """v_u + g (v_c - v_u) with both branches in one batched pass, as the diffusers pipeline does."""
        if guidance_scale == 1.0:
            return self.transformer_velocity(latents, sigma, cond, negative=False)
        out = self._forward(torch.cat([latents, latents]), torch.cat([sigma, sigma]),
                            torch.cat([cond["negative_prompt_embeds"], cond["prompt_embeds"]]),
                            torch.cat([cond["negative_pooled_prompt_embeds"], cond["pooled_prompt_embeds"]]))
        v_u, v_c = out.chunk(2)
        return v_u + guidance_scale * (v_c - v_u)

    def latent_shape(self) -> tuple[int, ...]:
        f = self.pipe.vae_scale_factor
        return (self.transformer.config.in_channels, self.height // f, self.width // f)


def load_sd3_policy(cfg: ModelConfig, device: torch.device | None, transformer_only: bool) -> SD3Policy:
    skip = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")
    return SD3Policy(load_pipeline(StableDiffusion3Pipeline, cfg, skip if transformer_only else ()), cfg, device)
