"""What the SD3 and FLUX policies share: a diffusers pipeline, loaded from a hub id or a local directory.

The transformer and text encoders run in the configured dtype and are frozen; the VAE decodes in float32, as
Flow-GRPO does; the SDE step runs in float32 in `dgrpo.sampling`. The trained LoRA lives on `transformer`.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from dgrpo.config import ModelConfig
from dgrpo.models.policy import BaseModelId, FlowPolicy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(pipeline_class: type[DiffusionPipeline], cfg: ModelConfig, skip: tuple[str, ...] = ()
                  ) -> DiffusionPipeline:
    """`pipeline_class.from_pretrained` on `model.pretrained` (hub id or local directory) at `model.revision`,
    without the components named in `skip` (never read from disk)."""
    if not cfg.pretrained:
        raise ValueError(f"config field 'model.pretrained': policy {cfg.kind!r} needs a hub id or a local directory")
    local = Path(cfg.pretrained)
    if local.exists() and not (local / "model_index.json").is_file():
        raise FileNotFoundError(f"config field 'model.pretrained': {local} has no model_index.json "
                                f"(not a diffusers pipeline directory)")
    return pipeline_class.from_pretrained(cfg.pretrained, revision=cfg.revision, dtype=DTYPES[cfg.dtype],
                                          **dict.fromkeys(skip))


def _manifest_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        digest.update(f"{f.relative_to(path).as_posix()}\0{f.stat().st_size}\0".encode())
        if f.suffix == ".safetensors":
            with f.open("rb") as fh:
                digest.update(fh.read(int.from_bytes(fh.read(8), "little")))
    return digest.hexdigest()


def pipeline_identity(pipe: DiffusionPipeline, cfg: ModelConfig | None) -> BaseModelId:
    """Where the base weights come from, and a hash that changes when they do.

    A directory (local, or the hub snapshot the pipeline was loaded from) hashes its manifest: every file's
    relative path and size plus the full header of each safetensors file (tensor names, dtypes, shapes,
    offsets); hashing the weights' bytes would cost minutes per stage for FLUX. A hub snapshot's uri carries its
    resolved commit. An in-memory pipeline (tests) hashes its transformer and VAE parameters.
    """
    name = pipe.config.get("_name_or_path") or (cfg.pretrained if cfg else "")
    if name and Path(name).is_dir():
        return BaseModelId(uri=Path(name).resolve().as_uri(), sha256=_manifest_sha256(Path(name)))
    if name:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(name, revision=cfg.revision if cfg else None, local_files_only=True))
        return BaseModelId(uri=f"hf://{name}@{snapshot.name}", sha256=_manifest_sha256(snapshot))
    digest = hashlib.sha256()
    for component in (pipe.transformer, pipe.vae):
        for key, tensor in sorted(component.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return BaseModelId(uri=f"memory://{type(pipe).__name__}", sha256=digest.hexdigest())


class DiffusersPolicy(FlowPolicy):
    """A policy over a diffusers text-to-image pipeline; subclasses add prompt encoding and the transformer call."""

    def __init__(self, pipe: DiffusionPipeline, cfg: ModelConfig, device: torch.device | None = None):
        self.pipe = pipe
        self.config = cfg
        self.dtype = DTYPES[cfg.dtype]
        self.device = device or default_device()
        self.transformer = pipe.transformer
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False).eval()
                dtype = torch.float32 if name == "vae" else self.dtype
                if next(module.parameters()).dtype != dtype:
                    module.to(dtype=dtype)
                module.to(self.device)
        self.vae = pipe.vae
        self._base = pipeline_identity(pipe, cfg)
        self.height = self.width = cfg.resolution or pipe.default_sample_size * pipe.vae_scale_factor

    @property
    def base_model(self) -> BaseModelId:
        return self._base

    def _scheduler(self, shift: float | None) -> FlowMatchEulerDiscreteScheduler:
        overrides = {} if shift is None else {"shift": shift, "use_dynamic_shifting": False}
        return FlowMatchEulerDiscreteScheduler.from_config(self.pipe.scheduler.config, **overrides)

    def sigmas(self, num_steps: int, shift: float | None = None) -> torch.Tensor:
        """The pipeline scheduler's sigmas for `num_steps`, with the model's shift unless `shift` overrides it."""
        scheduler = self._scheduler(shift)
        kwargs = self._schedule_kwargs(scheduler, num_steps)
        scheduler.set_timesteps(None if kwargs.get("sigmas") is not None else num_steps, **kwargs)
        return scheduler.sigmas.to(torch.float32).cpu()

    def _schedule_kwargs(self, scheduler: FlowMatchEulerDiscreteScheduler, num_steps: int) -> dict:
        return {}

    def encode_prompt_kwargs(self) -> dict:
        """The arguments every `pipe.encode_prompt` call shares; fails if the text encoders were not loaded."""
        if getattr(self.pipe, "text_encoder", None) is None:
            raise RuntimeError("this policy was loaded without text encoders (transformer_only), it cannot encode "
                               "prompts")
        kwargs = {"device": self.device, "num_images_per_prompt": 1}
        if self.config.max_sequence_length is not None:
            kwargs["max_sequence_length"] = self.config.max_sequence_length
        return kwargs

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents to uint8 images through the VAE, undoing its scaling and shift factors."""
        vae_cfg = self.vae.config
        z = latents.to(self.device, torch.float32) / vae_cfg.scaling_factor + (vae_cfg.shift_factor or 0.0)
        images = self.vae.decode(z, return_dict=False)[0]
        images = self.pipe.image_processor.postprocess(images, output_type="np")
        return (images * 255).round().astype(np.uint8)

    def lora_adapter_metadata(self) -> dict[str, str]:
        meta = super().lora_adapter_metadata()
        meta["base_model"] = json.dumps({"uri": self._base.uri, "sha256": self._base.sha256})
        return meta
