"""Loading the policy with a round's LoRA adapter, for the stages that run the model."""

import torch
from diffusers.training_utils import EMAModel

from dgrpo import artifacts
from dgrpo.config import RunConfig
from dgrpo.models import FlowPolicy, load_policy
from dgrpo.stages.common import StageContext, derive_seed
from dgrpo.store import ArtifactRef

ADAPTER_KIND = "lora_adapter"
OPTIMIZER_KIND = "optimizer_state"
EMA_STEP = "ema.optimization_step"
"""Key of the EMA's update count in an optimizer-state artifact, which holds the EMA weights as ema.shadow.<i>."""


def lora_init_seed(config: RunConfig) -> int:
    return derive_seed(config.seed, 1 << 20)


def load_policy_for_round(ctx: StageContext, adapter: ArtifactRef | None, trainable: bool,
                          device: torch.device | None = None) -> FlowPolicy:
    """The base policy with the run's adapter: fresh when training from scratch, loaded when given."""
    policy = load_policy(ctx.config.model, device)
    if adapter is not None or trainable:
        policy.add_lora(ctx.config.lora, seed=lora_init_seed(ctx.config))
    if adapter is not None:
        policy.load_lora_state_dict(artifacts.read_tensors(ctx.store, adapter, ADAPTER_KIND))
    policy.transformer.train(False)
    return policy




def restore_ema(ema: EMAModel, tensors: dict[str, torch.Tensor]) -> None:
    """Load the EMA saved in an optimizer-state artifact's tensors, on the device of `ema`'s weights."""
    device = ema.shadow_params[0].device
    shadow = [tensors[f"ema.shadow.{i}"] for i in range(len(ema.shadow_params))]
    ema.load_state_dict({**ema.state_dict(), "optimization_step": int(tensors[EMA_STEP]), "shadow_params": shadow})
    ema.to(device=device)


def use_ema_weights(ctx: StageContext, policy: FlowPolicy, optimizer_state: ArtifactRef) -> None:
    """Replace the policy's LoRA weights by the EMA kept in the optimizer state (evaluation with the EMA)."""
    tensors = artifacts.read_tensors(ctx.store, optimizer_state, OPTIMIZER_KIND)
    if EMA_STEP not in tensors:
        raise ValueError(f"optimizer state {optimizer_state.uri} holds no EMA weights (train.ema_decay was 0 "
                         f"when it was written); set eval.use_ema: false to evaluate the trained weights")
    ema = EMAModel(policy.lora_parameters(), decay=ctx.config.train.ema_decay)
    restore_ema(ema, tensors)
    ema.copy_to(policy.lora_parameters())
