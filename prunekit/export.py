"""Export a 2:4-pruned model for hardware that runs semi-structured sparsity.

:func:`to_semi_structured` replaces the weight of every selected ``nn.Linear`` by
``torch.sparse.to_sparse_semi_structured(weight)`` (NVIDIA sparse tensor cores: compute capability
8.0 or newer, float16 / bfloat16 weights on CUDA). It refuses, naming the layer and the failed
requirement, instead of silently keeping a dense layer: no CUDA, an older GPU, another dtype, a
weight that is not 2:4 sparse, or a shape the kernels do not take.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

from prunekit.errors import PruningError

__all__ = ["to_semi_structured", "SEMI_STRUCTURED_DTYPES"]

#: weight dtypes torch's semi-structured kernels accept (float16 and bfloat16 on sm80+)
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)


def _is_2_to_4(weight: torch.Tensor) -> bool:
    groups = weight.detach().reshape(weight.shape[0], -1, 4)
    return bool(((groups == 0).sum(-1) >= 2).all())


def _check(name: str, weight: torch.Tensor) -> None:
    where = f"layer {name!r} (weight {list(weight.shape)}, {weight.dtype}, {weight.device})"
    if weight.device.type != "cuda":
        raise PruningError(
            f"{where}: semi-structured (2:4) sparse kernels need the weight on a CUDA GPU; move the model with "
            f".cuda() first (on CPU keep the dense, masked model)"
        )
    major, minor = torch.cuda.get_device_capability(weight.device)
    if major < 8:
        raise PruningError(
            f"{where}: 2:4 sparse tensor cores need compute capability >= 8.0 (Ampere or newer), this GPU "
            f"({torch.cuda.get_device_name(weight.device)}) has {major}.{minor}; keep the dense, masked model"
        )
    if weight.dtype not in SEMI_STRUCTURED_DTYPES:
        raise PruningError(
            f"{where}: semi-structured sparsity takes float16 or bfloat16 weights, not {weight.dtype}; convert the "
            f"model with .half() or .to(torch.bfloat16) before exporting"
        )
    if weight.shape[1] % 4 or not _is_2_to_4(weight):
        raise PruningError(
            f"{where}: the weight is not 2:4 sparse (at least 2 zeros in every 4 consecutive inputs); prune it "
            f"with pattern '2:4' and target_sparsity 0.5, and finalize() the session before exporting"
        )


def to_semi_structured(model: nn.Module, op_names: Iterable[str] | None = None) -> nn.Module:
    """Convert the 2:4-sparse ``nn.Linear`` layers of ``model`` in place; returns ``model``.

    ``op_names``: regular expressions of the layers to convert (default: every ``nn.Linear``).
    Every layer is checked before any is converted, so a refusal leaves the model unchanged.
    Raises :class:`PruningError` naming the layer and the requirement that failed.
    """
    from torch.sparse import to_sparse_semi_structured

    patterns = [re.compile(p) for p in op_names] if op_names is not None else None
    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (patterns is None or any(p.search(name) for p in patterns))
    ]
    if not layers:
        raise PruningError("to_semi_structured: no nn.Linear layer selected; check op_names")
    for name, module in layers:
        _check(name, module.weight)
    for name, module in layers:
        try:
            sparse = to_sparse_semi_structured(module.weight.detach())
        except (RuntimeError, ValueError) as exc:
            raise PruningError(
                f"layer {name!r} (weight {list(module.weight.shape)}): torch.sparse.to_sparse_semi_structured refused "
                f"it ({exc}); its shape must meet the kernel's minimum sizes (multiples of 64 are safe): exclude the "
                f"layer with op_names"
            ) from exc
        module.weight = nn.Parameter(sparse, requires_grad=False)
    return model
