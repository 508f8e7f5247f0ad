"""The number of operations one mask update dispatches does not grow with the layer's size.

An event reads a layer in at most ``EVENT_CHUNKS`` chunks (``grids.event_chunk``), so its operation
count per layer is bounded; thousands of small operations are what made events collapse when
another process held a core (the performance issue). This counts every ATen operation an event
dispatches (``TorchDispatchMode``; views and slices included) on one layer of 1M, 4M and 8M
weights and fails when the largest dispatches more than 15% more than the smallest: a count that
grew with the size would be 8x. (Tall blocks such as ``channelx1`` add a few operations per
factor of 4 in rows: their block sums run in a fixed 4-ary tree.) Not a timing test.

Dispatch modes are per thread, so these run with one torch thread (everything in the caller).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from prunekit.pruner import Pruning

SHAPES = [(1024, 1024), (2048, 2048), (4096, 2048)]
CASES = [
    ("1x1", "magnitude", "local", 0.9),
    ("1x1", "snip", "global", 0.9),
    ("4x1", "magnitude", "local", 0.9),
    ("1x2", "magnitude", "local", 0.9),
    ("4x4", "snip", "global", 0.9),
    ("2:4", "magnitude", "local", 0.5),
    ("2:4", "gradient", "local", 0.25),
    ("2:4", "magnitude", "global", 0.5),
    ("channelx1", "gradient", "global", 0.5),
    ("1xchannel", "magnitude", "local", 0.5),
]


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _event_ops(shape: tuple[int, int], pattern: str, criterion: str, scope: str, target: float) -> int:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(shape[1], shape[0], bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, shape[1])).sum().backward()
    opt.step()  # momentum state of the weight's shape: the event masks it too
    cfg = {"pruners": [{"pattern": pattern, "criterion": criterion, "scope": scope, "target_sparsity": target}]}
    session = Pruning(model, cfg).attach(opt)
    with _Count() as count:
        session.prune_now()
    session.close()
    return count.ops


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("pattern,criterion,scope,target", CASES)
def test_operations_per_event_do_not_grow_with_the_layer(one_thread, pattern, criterion, scope, target) -> None:
    counts = [_event_ops(shape, pattern, criterion, scope, target) for shape in SHAPES]
    assert max(counts) <= 1.15 * counts[0], f"operations per event on {SHAPES}: {counts}"
    assert counts[0] < 25_000, counts  # and the bound itself stays modest
