"""The toy text-to-image model: a tiny caption encoder and a tiny diffusers SD3 transformer.

The transformer is the real `SD3Transformer2DModel`, so code written against SD3 (rectified-flow velocity,
`timestep = t * 1000`) runs unchanged on the toy model. Pixels are the latents: no VAE.
Both modules live in one safetensors file whose metadata carries their configs and the pre-training report.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import SD3Transformer2DModel
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from dgrpo.files import atomic_write_bytes
from dgrpo.toyworld.data import COLORS, SHAPES

PAD_TOKEN = "<pad>"
VOCAB = (PAD_TOKEN, "a", *COLORS, *SHAPES)
MAX_CAPTION_WORDS = 3

TOY_TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 3,
    "out_channels": 3,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "joint_attention_dim": 32,
    "caption_projection_dim": 64,
    "pooled_projection_dim": 32,
    "pos_embed_max_size": 16,
}

TRANSFORMER_PREFIX = "transformer."
TEXT_ENCODER_PREFIX = "text_encoder."
_META_TRANSFORMER = "transformer_config"
_META_TEXT_ENCODER = "text_encoder_config"
_META_REPORT = "report"

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "toy_base.safetensors"
"""The pre-trained toy model shipped inside the package (package data of `dgrpo`)."""


class CheckpointError(ValueError):
    """A toy checkpoint is incomplete or inconsistent; the message names the file."""


class ToyTextEncoder(nn.Module):
    """Learned word embeddings over the caption grammar, shaped like SD3's text conditioning.

    Returns `prompt_embeds` [B, 3, joint_dim] and `pooled_prompt_embeds` [B, pooled_dim]. The empty caption is
    all pad tokens, which gives the learned unconditional embedding used for classifier-free guidance.
    """

    def __init__(self, joint_dim: int = 32, pooled_dim: int = 32, max_length: int = MAX_CAPTION_WORDS):
        super().__init__()
        self.joint_dim, self.pooled_dim, self.max_length = joint_dim, pooled_dim, max_length
        self.vocab = VOCAB
        self.token_embedding = nn.Embedding(len(VOCAB), joint_dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, joint_dim))
        self.norm = nn.LayerNorm(joint_dim)
        self.pool = nn.Sequential(nn.Linear(max_length * joint_dim, pooled_dim), nn.SiLU(),
                                  nn.Linear(pooled_dim, pooled_dim))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments, plus the vocabulary so a checkpoint can detect a grammar change."""
        return {"joint_dim": self.joint_dim, "pooled_dim": self.pooled_dim, "max_length": self.max_length,
                "vocab": list(self.vocab)}

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Word ids [B, max_length], right-padded; unknown words and over-long captions raise ValueError."""
        if isinstance(captions, str):
            raise TypeError("captions must be a list of strings, not a single string")
        rows = [self._token_ids(caption) for caption in captions]
        return torch.tensor(rows, dtype=torch.long, device=self.token_embedding.weight.device)

    def _token_ids(self, caption: str) -> list[int]:
        words = caption.lower().split()
        if len(words) > self.max_length:
            raise ValueError(f"caption {caption!r} has {len(words)} words; at most {self.max_length} allowed")
        for word in words:
            if word not in self.vocab or word == PAD_TOKEN:
                raise ValueError(f"unknown word {word!r} in caption {caption!r}; known: {self.vocab[1:]}")
        ids = [self.vocab.index(word) for word in words]
        return ids + [0] * (self.max_length - len(ids))

    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode captions into (prompt_embeds, pooled_prompt_embeds)."""
        tokens = self.tokenize(captions)
        hidden = self.norm(self.token_embedding(tokens) + self.position_embedding)
        return hidden, self.pool(hidden.flatten(1))


def build_transformer(config: dict[str, Any] = TOY_TRANSFORMER_CONFIG) -> SD3Transformer2DModel:
    """A freshly initialised SD3 transformer with the given config, in eval mode."""
    return SD3Transformer2DModel(**config).eval()


def transformer_config(transformer: SD3Transformer2DModel) -> dict[str, Any]:
    """JSON-safe constructor arguments of a transformer (diffusers' private keys dropped)."""
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of a module."""
    return sum(p.numel() for p in module.parameters())


@dataclass
class ToyCheckpoint:
    """A loaded toy model: both modules in eval mode, float32, plus the pre-training report."""

    transformer: SD3Transformer2DModel
    text_encoder: ToyTextEncoder
    metadata: dict[str, Any]


def _prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    state = module.state_dict()
    return {prefix + k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def save_checkpoint(path: str | os.PathLike, transformer: SD3Transformer2DModel, text_encoder: ToyTextEncoder,
                    metadata: dict[str, Any]) -> Path:
    """Write both modules and the report to one safetensors file, atomically (`dgrpo.files`)."""
    tensors = _prefixed(TRANSFORMER_PREFIX, transformer) | _prefixed(TEXT_ENCODER_PREFIX, text_encoder)
    header = {"format": "pt", _META_TRANSFORMER: json.dumps(transformer_config(transformer)),
              _META_TEXT_ENCODER: json.dumps(text_encoder.config), _META_REPORT: json.dumps(metadata)}
    return atomic_write_bytes(path, save(tensors, metadata=header))


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"toy checkpoint {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}  # noqa: SIM118


def _meta(path: Path, header: dict[str, str], key: str) -> Any:
    if key not in header:
        raise CheckpointError(f"toy checkpoint {path} lacks metadata key {key!r}")
    return json.loads(header[key])


def _load_into(path: Path, module: nn.Module, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"toy checkpoint {path}: missing keys {[prefix + k for k in missing]}, "
                              f"unexpected keys {[prefix + k for k in unexpected]}")
    module.load_state_dict(state)


def load_checkpoint(path: str | os.PathLike = DEFAULT_CHECKPOINT) -> ToyCheckpoint:
    """Load a file written by `save_checkpoint`; modules come back float32 in eval mode."""
    path = Path(path)
    tensors, header = _read(path)
    text_config = _meta(path, header, _META_TEXT_ENCODER)
    if tuple(text_config.pop("vocab", VOCAB)) != VOCAB:
        raise CheckpointError(f"toy checkpoint {path} was trained with another vocabulary")
    transformer = build_transformer(_meta(path, header, _META_TRANSFORMER))
    text_encoder = ToyTextEncoder(**text_config)
    _load_into(path, transformer, TRANSFORMER_PREFIX, tensors)
    _load_into(path, text_encoder, TEXT_ENCODER_PREFIX, tensors)
    report = _meta(path, header, _META_REPORT)
    return ToyCheckpoint(transformer.float().eval(), text_encoder.float().eval(), report)
