"""Half precision weights (ties are common: deterministic tie-breaking still hits the target) and CUDA."""

from __future__ import annotations

import pytest
import torch

from prunekit.pruner import prepare_pruning
from pruner_helpers import linear_weights, mlp, train_step, zeros

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("pattern,scope", [("1x1", "local"), ("1x1", "global"), ("4x1", "global"), ("2:4", "local")])
def test_dtypes(device: str, dtype: torch.dtype, pattern: str, scope: str) -> None:
    model = mlp(dtype=dtype).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    target = 0.5 if pattern == "2:4" else 0.9
    cfg = {"pruners": [{"pattern": pattern, "scope": scope, "target_sparsity": target, "criterion": "snip_momentum",
                        "scheduler": {"type": "iterative", "start_step": 0, "end_step": 6, "frequency": 2}}]}
    session = prepare_pruning(model, cfg, opt)
    for step in range(10):
        x_kw = {"dtype": dtype}
        train_step(model, opt, step, **x_kw) if device == "cpu" else _cuda_step(model, opt, step, dtype)
    weights = linear_weights(model)
    for name, w in weights.items():
        mask = session.masks[name]
        assert mask.dtype == torch.bool and mask.device == w.device
        assert (w.detach()[~mask] == 0).all()
    total = sum(w.numel() for w in weights.values())
    pruned = sum(zeros(w) for w in weights.values())
    assert abs(pruned - target * total) <= 4 * len(weights)


def _cuda_step(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int, dtype: torch.dtype) -> None:
    from pruner_helpers import batch

    x, y = batch(step, dtype=dtype)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x.cuda()), y.cuda()).backward()
    opt.step()


def test_bf16_ties_exact_count() -> None:
    """Many equal bf16 magnitudes: still exactly round(0.5 · n) zeros per layer."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 64)).to(torch.bfloat16)
    with torch.no_grad():
        sign = torch.randint(0, 2, (64, 64)) * 2 - 1
        model[0].weight.copy_((torch.randint(1, 4, (64, 64)) * sign).to(torch.bfloat16) * 0.25)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    session = prepare_pruning(model, {"pruners": [{"target_sparsity": 0.5}]}, opt)
    opt.zero_grad()
    model(torch.randn(2, 64, dtype=torch.bfloat16)).sum().backward()
    opt.step()
    assert zeros(model[0].weight) == 2048
    assert int((~session.masks["0"]).sum()) == 2048
