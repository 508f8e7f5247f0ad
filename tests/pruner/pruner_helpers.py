"""Shared helpers of the pruner tests: tiny models, deterministic data, a training loop."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


def mlp(sizes: tuple[int, ...] = (16, 24, 24, 8), seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """A small tanh MLP (no dead units: every weight gets a gradient) with deterministic initialization."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).to(dtype)


def batch(step: int, n: int = 16, d_in: int = 16, d_out: int = 8, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of optimizer step ``step`` (depends only on the step: resumable)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, d_in, generator=g).to(dtype)
    y = torch.randn(n, d_out, generator=g).to(dtype)
    return x, y


def train_step(model: nn.Module, opt: torch.optim.Optimizer, step: int, **batch_kw: Any) -> None:
    x, y = batch(step, **batch_kw)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def zeros(t: torch.Tensor) -> int:
    return t.numel() - int(torch.count_nonzero(t))


def inc_config(**overrides: Any) -> dict[str, Any]:
    """An INC-style flat config (magnitude 1x1 local unless overridden)."""
    cfg: dict[str, Any] = {
        "target_sparsity": 0.5,
        "pruning_type": "magnitude",
        "pattern": "1x1",
        "pruning_scope": "local",
        "start_step": 0,
        "end_step": 0,
        "pruning_frequency": 1,
    }
    cfg.update(overrides)
    return cfg


def run(model: nn.Module, opt: torch.optim.Optimizer, steps: range, after: Callable[[int], None] | None = None, **kw: Any) -> None:
    for step in steps:
        train_step(model, opt, step, **kw)
        if after is not None:
            after(step)
