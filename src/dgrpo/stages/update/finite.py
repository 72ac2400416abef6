"""The update's last check before it writes anything: every metric, LoRA weight and optimizer tensor is finite.

One NaN (a diverging step, a NaN in the inputs) spreads to every LoRA weight within a step or two, and AdamW's
moments keep it forever. Committing such a round would make it the start of every resume, and the run would
still exit 0; so the round fails here, naming the round and the first non-finite metric or tensor.
"""

import math

import torch


class NonFiniteError(RuntimeError):
    """The update produced NaN or inf; nothing of the round was written or committed."""


def check_round_finite(round_index: int, rows: list[dict], tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """Raise NonFiniteError unless every metric of `rows` (one per optimizer step) and every tensor is finite.

    `tensors` maps a label ("LoRA weight", "optimizer state") to a state dict. Metrics come first: a NaN loss is
    the cause a person can act on; the weights it produced follow from it."""
    advice = ("the round was not written or committed; resume continues from the last committed round. Lower "
              "train.learning_rate or train.max_grad_norm, or check the rewards and the rollouts of this round")
    for row in rows:
        for name, value in row.items():
            if name not in ("round", "optimizer_step") and not math.isfinite(value):
                raise NonFiniteError(f"update round {round_index + 1}: metric '{name}' is {value} at optimizer step "
                                     f"{row['optimizer_step']}; {advice}")
    for label, state in tensors.items():
        for name, t in state.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise NonFiniteError(f"update round {round_index + 1}: {label} '{name}' holds {bad} non-finite of "
                                     f"{t.numel()} values; {advice}")
