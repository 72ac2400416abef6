"""What the update carries from round to round besides the adapter: AdamW's state and the EMA of the LoRA.

Both live in one safetensors artifact (kind "optimizer_state"): the optimizer's tensors as state.<param>.<name>,
the EMA weights as ema.shadow.<i> with its update count under EMA_STEP. EMAModel is diffusers' (decay
min(ema_decay, (1+n)/(10+n)) at update n, as Flow-GRPO's EMA).
"""

import contextlib
import json
from collections.abc import Iterator

import torch
from diffusers.training_utils import EMAModel

from dgrpo import artifacts
from dgrpo.models import FlowPolicy
from dgrpo.stages.shared.context import StageContext
from dgrpo.stages.shared.policy_io import OPTIMIZER_KIND
from dgrpo.store import ArtifactRef

EMA_STEP = "ema.optimization_step"


def training_state_to_tensors(opt: torch.optim.Optimizer, ema: EMAModel | None
                              ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The optimizer state (and the EMA weights) as safetensors tensors, with the param groups as metadata."""
    state = opt.state_dict()
    tensors = {f"state.{i}.{name}": t for i, s in state["state"].items() for name, t in s.items()}
    if ema is not None:
        tensors |= {f"ema.shadow.{i}": p.detach().clone() for i, p in enumerate(ema.shadow_params)}
        tensors[EMA_STEP] = torch.tensor(ema.optimization_step)
    return tensors, {"param_groups": json.dumps(state["param_groups"])}


def load_training_state(opt: torch.optim.Optimizer, ema: EMAModel | None, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what `training_state_to_tensors` saved; an EMA starts from the weights if the state has none."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith("state."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = t
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    if ema is not None and EMA_STEP in tensors:
        restore_ema(ema, tensors)


@contextlib.contextmanager
def ema_weights(policy: FlowPolicy, ema: EMAModel) -> Iterator[None]:
    """The policy with its LoRA weights swapped for the EMA's, restored afterwards."""
    params = policy.lora_parameters()
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


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
