"""Applying masks in place: weights, gradients and optimizer state.

Masks are bool tensors of the weight's shape on the weight's device (1 byte per weight). Here
they are passed as ``pruned`` (True = pruned, the inverse of the public ``Pruning.masks``):
``masked_fill_`` with it zeroes exactly, even a NaN/inf gradient, and is faster than a multiply
by a bool mask. Everything is done in place under ``torch.no_grad()``, so parameter identity never
changes (optimizers, DDP, ``torch.compile`` and ``state_dict`` keys are unaffected) and nothing
sits in the forward path (no hooks, no parametrizations).

Why pruned weights stay exactly zero:

* at every event the pruned weights **and** every optimizer state tensor of the weight's shape
  (momentum buffers, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``...) are zeroed;
* before every optimizer step the pruned gradients are zeroed.

For SGD (momentum, Nesterov, weight decay), Adam and AdamW (weight decay, AMSGrad) that alone
keeps a pruned weight at exactly 0 (every term of its update is a product with 0). Other
optimizers may move a weight whose gradient is zero (e.g. by a constant), so after their step the
mask is applied again (:func:`apply_mask_`): one more pass over the pruned weights per step, the
price of correctness for any optimizer. :func:`reapply_needed` decides.
"""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["apply_mask_", "mask_grad_", "mask_optimizer_state_", "reapply_needed", "EXACT_ZERO_OPTIMIZERS"]

#: optimizers whose update of a weight with zero value, zero gradient and zero state is exactly 0
EXACT_ZERO_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


@torch.no_grad()
def apply_mask_(weight: torch.Tensor, pruned: torch.Tensor) -> None:
    """``weight[pruned] = 0`` in place."""
    weight.masked_fill_(pruned, 0)


@torch.no_grad()
def mask_grad_(weight: torch.Tensor, pruned: torch.Tensor) -> None:
    """Zero the gradient of the pruned weights in place (no-op without a gradient)."""
    if weight.grad is not None:
        weight.grad.masked_fill_(pruned, 0)


@torch.no_grad()
def mask_optimizer_state_(optimizers: Iterable[torch.optim.Optimizer], weight: torch.Tensor, pruned: torch.Tensor) -> None:
    """Zero the pruned entries of every optimizer state tensor shaped like ``weight``."""
    for optimizer in optimizers:
        state = optimizer.state.get(weight)
        if not state:
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                value.masked_fill_(pruned.to(value.device), 0)


def reapply_needed(optimizers: Iterable[torch.optim.Optimizer]) -> bool:
    """True unless every optimizer is exactly one of :data:`EXACT_ZERO_OPTIMIZERS` (subclasses may differ)."""
    optimizers = list(optimizers)
    return not optimizers or any(type(o) not in EXACT_ZERO_OPTIMIZERS for o in optimizers)
