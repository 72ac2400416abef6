"""Loading the policy with a round's LoRA adapter, for the stages that run the model."""

import torch

from dgrpo import artifacts
from dgrpo.config import RunConfig
from dgrpo.models import FlowPolicy, load_policy
from dgrpo.rng import Stream, derive_seed
from dgrpo.stages.shared.context import StageContext
from dgrpo.store import ArtifactRef

ADAPTER_KIND = "lora_adapter"
OPTIMIZER_KIND = "optimizer_state"


def lora_init_seed(config: RunConfig) -> int:
    return derive_seed(config.seed, Stream.LORA_INIT)


def load_policy_for_round(ctx: StageContext, adapter: ArtifactRef | None, trainable: bool,
                          device: torch.device | None = None) -> FlowPolicy:
    """The base policy with the run's adapter: fresh when training from scratch, loaded when given. A trainable
    policy (the update's) comes without text encoders: it replays the rollouts' stored conditioning."""
    policy = load_policy(ctx.config.model, device, transformer_only=trainable)
    if adapter is not None or trainable:
        policy.add_lora(ctx.config.lora, seed=lora_init_seed(ctx.config))
    if adapter is not None:
        policy.load_lora_state_dict(artifacts.read_tensors(ctx.store, adapter, ADAPTER_KIND))
    policy.transformer.train(False)
    return policy
