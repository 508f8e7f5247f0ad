"""torch.compile: nothing of the pruner sits in the forward pass, so a compiled model prunes as eager does."""

from __future__ import annotations

import pytest
import torch

from prunekit.pruner import prepare_pruning
from pruner_helpers import batch, mlp


@pytest.mark.slow
def test_compiled_model_prunes_like_eager() -> None:
    cfg = {"pruners": [{"pattern": "4x1", "target_sparsity": 0.75, "criterion": "snip_momentum",
                        "scheduler": {"type": "iterative", "start_step": 1, "end_step": 7, "frequency": 2}}]}
    results = []
    for compiled in (False, True):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        session = prepare_pruning(model, cfg, opt)
        run = torch.compile(model, backend="aot_eager") if compiled else model
        for step in range(10):
            x, y = batch(step)
            opt.zero_grad()
            torch.nn.functional.mse_loss(run(x), y).backward()
            opt.step()
        results.append((session.masks, model.state_dict()))
    (masks_e, state_e), (masks_c, state_c) = results
    for name in masks_e:
        assert torch.equal(masks_e[name], masks_c[name])
    for key in state_e:
        assert torch.allclose(state_e[key], state_c[key], atol=1e-6), key
