"""The policy interface every backbone implements, and its shared LoRA handling.

A policy wraps a flow-matching transformer and knows how to encode prompts (with the negative prompt that
classifier-free guidance needs), predict the guided velocity, draw initial latents and decode images. LoRA is
added with peft onto `transformer`; the reference model for KL is the same transformer with the adapter off.
"""

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from peft import LoraConfig as PeftLoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from dgrpo.config import LoraConfig
from dgrpo.sampling import flow_sigmas

LORA_PREFIX = "transformer."
LORA_METADATA_KEY = "lora_adapter_metadata"
"""The safetensors metadata key under which diffusers' `load_lora_weights` reads the adapter's peft config."""


@dataclass(frozen=True)
class BaseModelId:
    """Identifies the base weights in lineage: where they come from and a hash of them."""

    uri: str
    sha256: str


class FlowPolicy(ABC):
    transformer: torch.nn.Module
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    """The backbone's default LoRA target modules, used when `lora.target_modules` is not set."""
    wrapped_transformer: torch.nn.Module | None = None
    """The transformer as `accelerate.prepare` returned it (data-parallel, autocast) while the update trains."""

    @property
    def forward_module(self) -> torch.nn.Module:
        """What `transformer_velocity` calls: the prepared wrapper while training, else the transformer itself."""
        return self.transformer if self.wrapped_transformer is None else self.wrapped_transformer

    @property
    @abstractmethod
    def base_model(self) -> BaseModelId: ...

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Per-prompt conditioning tensors (batch first), including the negative prompt's."""

    @abstractmethod
    def transformer_velocity(self, latents: torch.Tensor, sigma: torch.Tensor,
                             cond: dict[str, torch.Tensor], negative: bool) -> torch.Tensor:
        """One transformer pass on the positive (or negative) conditioning."""

    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latents."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents [B, ...] to uint8 images [B, H, W, 3]."""

    def decode_batches(self, latents: torch.Tensor, batch_size: int | None) -> np.ndarray:
        """`decode`, `batch_size` latents at a time (all at once for None): sampling.batch_size bounds the decoder's
        memory as it bounds the transformer's."""
        size = batch_size or len(latents)
        return np.concatenate([self.decode(latents[i:i + size]) for i in range(0, len(latents), size)])

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor],
                 guidance_scale: float) -> torch.Tensor:
        """Guided velocity v = v_u + g (v_c - v_u); one pass when g == 1."""
        v_c = self.transformer_velocity(latents, sigma, cond, negative=False)
        if guidance_scale == 1.0:
            return v_c
        v_u = self.transformer_velocity(latents, sigma, cond, negative=True)
        return v_u + guidance_scale * (v_c - v_u)

    def sigmas(self, num_steps: int, shift: float | None = None) -> torch.Tensor:
        """The T+1 sigmas of the sampling schedule; `shift` None means the model's own (here 1.0)."""
        return flow_sigmas(num_steps, 1.0 if shift is None else shift)

    def initial_latents(self, seeds: list[int]) -> torch.Tensor:
        """Gaussian latents, one generator per sample so a sample depends only on its own seed."""
        return torch.stack([torch.randn(self.latent_shape(), generator=torch.Generator().manual_seed(s))
                            for s in seeds]).to(self.device)

    # LoRA -----------------------------------------------------------------------------------------------
    def add_lora(self, cfg: LoraConfig, seed: int) -> None:
        """Attach a fresh trainable adapter (B = 0, so the policy starts equal to the base model)."""
        self.transformer.requires_grad_(False)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.transformer.add_adapter(PeftLoraConfig(
                r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                target_modules=list(cfg.target_modules or self.lora_targets)))
        for p in self.lora_parameters():
            p.data = p.data.float()

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.transformer.named_parameters() if "lora_" in n]

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter in diffusers' LoRA format (keys prefixed 'transformer.')."""
        return {LORA_PREFIX + k: v.detach().clone() for k, v in get_peft_model_state_dict(self.transformer).items()}

    def lora_adapter_metadata(self) -> dict[str, str]:
        """Safetensors metadata that lets diffusers' `pipe.load_lora_weights` rebuild the adapter (rank, alpha)."""
        config = self.transformer.peft_config["default"].to_dict()
        packed = {f"{LORA_PREFIX}{k}": sorted(v) if isinstance(v, set) else v for k, v in config.items()}
        return {"format": "pt", LORA_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True, default=str)}

    def load_lora_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not self.lora_parameters():
            raise RuntimeError("load_lora_state_dict: call add_lora first")
        stripped = {k.removeprefix(LORA_PREFIX): v for k, v in state.items()}
        result = set_peft_model_state_dict(self.transformer, stripped)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"LoRA state has keys the model does not: {unexpected[:3]}")

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """The reference (base) model: the same transformer with the adapter off."""
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()
