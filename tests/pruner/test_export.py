"""prunekit.export.to_semi_structured: refuses clearly everywhere, converts on sm80+ CUDA GPUs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.export import to_semi_structured
from prunekit.pruner import Pruning

_SM80 = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def _pruned_24(device: str, dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128)).to(device=device, dtype=dtype)
    session = Pruning(model, {"pruners": [{"pattern": "2:4", "target_sparsity": 0.5}]})
    session.prune_now()
    session.finalize()
    return model


def test_refuses_on_cpu_naming_layer_and_requirement() -> None:
    model = _pruned_24("cpu", torch.float32)
    with pytest.raises(PruningError, match=r"layer '0'.*CUDA"):
        to_semi_structured(model)
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.layout == torch.strided


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_refuses_float32_and_dense_weights_on_cuda() -> None:
    if _SM80:
        with pytest.raises(PruningError, match=r"float16 or bfloat16"):
            to_semi_structured(_pruned_24("cuda", torch.float32))
        dense = nn.Sequential(nn.Linear(128, 128)).cuda().half()
        with pytest.raises(PruningError, match=r"not 2:4 sparse"):
            to_semi_structured(dense)
    else:
        with pytest.raises(PruningError, match=r"compute capability >= 8.0"):
            to_semi_structured(_pruned_24("cuda", torch.float16))


@pytest.mark.cuda
@pytest.mark.skipif(not _SM80, reason="needs a CUDA GPU with compute capability >= 8.0")
def test_converted_model_matches_dense_output() -> None:
    model = _pruned_24("cuda", torch.float16)
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        dense = model(x)
        to_semi_structured(model)
        sparse = model(x)
    from torch.sparse import SparseSemiStructuredTensor

    assert isinstance(model[0].weight, SparseSemiStructuredTensor)
    assert torch.allclose(dense, sparse, atol=1e-2, rtol=1e-2)
