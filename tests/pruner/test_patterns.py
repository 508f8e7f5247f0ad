"""Patterns on real layers: N:M, blocks (incl. partial edge blocks), channels, Conv2d, Conv1D."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.pruner.criteria import Criterion
from prunekit.registry import CRITERIA
from prunekit.pruner import Pruning, prepare_pruning
from pruner_helpers import zeros


def oneshot(pattern: str, target: float, scope: str = "local", criterion: str = "magnitude", **extra) -> dict:
    return {"pruners": [{"pattern": pattern, "target_sparsity": target, "scope": scope, "criterion": criterion, **extra}]}


def prune_once(model: nn.Module, cfg: dict, x: torch.Tensor) -> Pruning:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    session = prepare_pruning(model, cfg, opt)
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()
    return session


def view2d(w: torch.Tensor) -> torch.Tensor:
    """[out, k... · in] (input channels innermost), DESIGN's 2-D view."""
    if w.dim() == 2:
        return w
    return w.permute(0, *range(2, w.dim()), 1).reshape(w.shape[0], -1)


@pytest.mark.parametrize("criterion", ["magnitude", "snip_momentum"])
def test_exact_2_to_4(criterion: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    prune_once(model, oneshot("2:4", 0.5, criterion=criterion), torch.randn(8, 32))
    for layer in (model[0], model[2]):
        groups = layer.weight.detach().view(layer.weight.shape[0], -1, 4)
        assert ((groups == 0).sum(-1) == 2).all()


def test_1_to_4_and_partial_nm_ratio() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16))
    prune_once(model, oneshot("1:4", 0.25), torch.randn(4, 32))
    assert ((model[0].weight.detach().view(16, 8, 4) == 0).sum(-1) == 1).all()
    # a ratio below N/M prunes N weights in a fraction of the groups
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16))
    prune_once(model, oneshot("2:4", 0.25), torch.randn(4, 32))
    per_group = (model[0].weight.detach().view(16, 8, 4) == 0).sum(-1)
    assert set(per_group.unique().tolist()) == {0, 2}
    assert zeros(model[0].weight) == 128


def test_nm_divisibility_error_names_layer() -> None:
    model = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 8))
    with pytest.raises(PruningError, match=r"layer '0'.*input size is 30.*multiple of 4"):
        Pruning(model, oneshot("2:4", 0.5))


@pytest.mark.parametrize("scope", ["local", "global"])
def test_4x1_blocks_whole(scope: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    prune_once(model, oneshot("4x1", 0.75, scope=scope), torch.randn(8, 16))
    total = 0
    for layer in (model[0], model[2]):
        blocks = (layer.weight.detach() == 0).view(-1, 4, layer.weight.shape[1])
        per_block = blocks.sum(1)
        assert ((per_block == 0) | (per_block == 4)).all()
        total += zeros(layer.weight)
    assert total == int(0.75 * (16 * 32 + 32 * 8))


@pytest.mark.parametrize("pattern,axis", [("channelx1", 0), ("1xchannel", 1)])
def test_channel_patterns(pattern: str, axis: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 8))
    prune_once(model, oneshot(pattern, 0.5), torch.randn(8, 16))
    for layer in (model[0], model[2]):
        z = layer.weight.detach() == 0
        whole = z.all(dim=axis)  # channelx1: columns (all rows zero); 1xchannel: rows
        partial = z.any(dim=axis) & ~whole
        assert not partial.any()
        assert whole.float().mean() == pytest.approx(0.5)


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("pattern", ["4x1", "3x3", "4x4", "channelx1"])
def test_partial_blocks_30x30(scope: str, pattern: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 30))
    target = 0.6
    prune_once(model, oneshot(pattern, target, scope=scope), torch.randn(8, 30))
    r, c = {"4x1": (4, 1), "3x3": (3, 3), "4x4": (4, 4), "channelx1": (30, 1)}[pattern]
    total = 0
    for layer in (model[0], model[2]):
        z = layer.weight.detach() == 0
        for i in range(0, 30, r):
            for j in range(0, 30, c):
                block = z[i : i + r, j : j + c]
                assert block.all() or not block.any(), (pattern, i, j)
        total += int(z.sum())
    # within one (largest) block of the element-wise target, per layer in local scope
    slack = r * c if scope == "global" else 2 * r * c
    assert abs(total - target * 1800) <= slack
    if scope == "local":
        for layer in (model[0], model[2]):
            assert abs(zeros(layer.weight) - target * 900) <= r * c


def test_conv2d_blocks_and_nm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))
    prune_once(model, oneshot("2:4", 0.5), torch.randn(2, 8, 10, 10))
    for conv in (model[0], model[2]):
        w2 = view2d(conv.weight.detach())
        assert ((w2.view(w2.shape[0], -1, 4) == 0).sum(-1) == 2).all()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3))
    prune_once(model, oneshot("4x1", 0.5, scope="global"), torch.randn(2, 8, 10, 10))
    for conv in (model[0], model[2]):
        w2 = view2d(conv.weight.detach())
        per_block = (w2 == 0).view(-1, 4, w2.shape[1]).sum(1)
        assert ((per_block == 0) | (per_block == 4)).all()


class Conv1D(nn.Module):
    """GPT-2 style Linear with a transposed weight [in, out] (as in transformers.pytorch_utils)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def test_transposed_conv1d_blocks_follow_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(16, 12), nn.ReLU(), Conv1D(4, 16))
    prune_once(model, oneshot("4x1", 0.5), torch.randn(4, 12))
    w = model[0].weight.detach()  # [in, out]: 4x1 blocks = 4 consecutive outputs of one input
    per_block = (w == 0).view(12, 4, 4).sum(-1)
    assert ((per_block == 0) | (per_block == 4)).all()
    assert zeros(w) == 96


@pytest.mark.parametrize("scope", ["local", "global"])
def test_partial_blocks_with_tied_scores(scope: str) -> None:
    """Equal scores everywhere: ties resolve by position, partial edge blocks count with their size."""
    model = nn.Sequential(nn.Linear(30, 30))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
    prune_once(model, oneshot("4x1", 0.5, scope=scope), torch.randn(2, 30))
    z = model[0].weight.detach() == 0
    assert abs(int(z.sum()) - 450) <= 2  # 4x1 blocks of 4 rows; the last block row has 2
    assert z[:4].all()  # the first blocks in flat order go first


@pytest.mark.parametrize("reduce,pruned_block", [("mean", 0), ("sum", 0), ("max", 1)])
def test_block_reduction(reduce: str, pruned_block: int) -> None:
    model = nn.Sequential(nn.Linear(1, 8, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([10, 0.1, 0.1, 0.1, 3, 3, 3, 3]).view(8, 1))
    prune_once(model, oneshot("4x1", 0.5, reduce=reduce), torch.randn(2, 1))
    z = (model[0].weight.detach().view(2, 4) == 0).all(dim=1)
    assert z.tolist() == [i == pruned_block for i in range(2)]


@pytest.mark.parametrize(
    "module",
    [nn.Linear(6, 4), nn.Conv1d(6, 4, 3), nn.Conv2d(6, 4, (3, 2)), nn.Conv3d(6, 4, 2), nn.ConvTranspose2d(6, 4, 3), Conv1D(4, 6)],
    ids=lambda m: type(m).__name__,
)
def test_layout_roundtrip_and_rows_are_outputs(module: nn.Module) -> None:
    from prunekit.pruner.selection import Layout, _layout_of

    w = module.weight.detach()
    layout = Layout(_layout_of(module, w), tuple(w.shape))
    w2 = layout.to_2d(w)
    assert w2.shape == (4, w.numel() // 4)  # rows = the 4 output features / channels
    assert torch.equal(layout.from_2d(w2), w)
    assert layout.inner == 6  # input channels are innermost (N:M groups run along them)


@pytest.mark.parametrize("reduce", ["mean", "sum", "max"])
def test_block_scores_equal_each_blocks_reduction_partial_edges_included(reduce: str) -> None:
    """The fast block reduction (strided slices for narrow blocks, a kernel for wide ones) is exact per block."""
    from prunekit.pruner.patterns import BlockPattern

    gen = torch.Generator().manual_seed(0)
    for rows, cols in ((8, 16), (7, 12), (16, 5)):
        for r, c in ((1, 4), (4, 1), (2, 2), (3, 3), (1, 9), (0, 1), (1, 0), (4, 4)):
            pattern = BlockPattern(rows, cols, r, c)
            scores = torch.rand(rows, cols, generator=gen)
            got = pattern.resolution(scores, reduce)
            for i in range(pattern.grid_rows):
                for j in range(pattern.grid_cols):
                    block = scores[i * pattern.r : (i + 1) * pattern.r, j * pattern.c : (j + 1) * pattern.c]
                    want = {"mean": block.mean(), "sum": block.sum(), "max": block.max()}[reduce]
                    assert torch.allclose(got[i, j], want, rtol=1e-6, atol=1e-7), (rows, cols, r, c, i, j)


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("nm", ["2:4", "1:4", "4:8", "1:2", "2:6"])
def test_nm_prunes_the_n_smallest_of_every_group(scope: str, nm: str) -> None:
    n, m = map(int, nm.split(":"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 12))
    with torch.no_grad():
        model[0].weight[:, :12] = 0.5  # ties: the lower index goes first
        model[2].weight[3, 5] = -model[2].weight[3, 4]
    before = {"0": model[0].weight.detach().clone(), "2": model[2].weight.detach().clone()}
    session = prune_once(model, oneshot(nm, n / m, scope=scope), torch.randn(4, 48))
    for name, w in before.items():
        order = torch.sort(w.abs().view(w.shape[0], -1, m), dim=-1, stable=True).indices
        expected = torch.ones(w.shape[0], w.shape[1] // m, m, dtype=torch.bool).scatter_(-1, order[..., :n], False)
        assert torch.equal(session.masks[name], expected.view_as(w)), (name, nm, scope)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_iterative_nm_keeps_pruned_groups_and_takes_the_lowest_next(scope: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    cfg = oneshot("2:4", 0.5, scope=scope, scheduler={"type": "iterative", "start_step": 0, "end_step": 2, "frequency": 1})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    session = prepare_pruning(model, cfg, opt)
    x = torch.randn(4, 32)
    masks, weights = [], []
    for _ in range(3):  # events at steps 0 (ratio 0), 1 (partial) and 2 (0.5)
        weights.append({"0": model[0].weight.detach().abs().clone(), "2": model[2].weight.detach().abs().clone()})
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        masks.append(session.masks)
    ratios = [r.target for r in session.history]
    assert 0 < ratios[1] < ratios[2] == 0.5
    for partial, last in zip(masks[1].values(), masks[2].values()):
        assert not (last & ~partial).any()  # nothing pruned comes back
        assert ((~last).view(last.shape[0], -1, 4).sum(-1) == 2).all()
        assert set((~partial).view(partial.shape[0], -1, 4).sum(-1).unique().tolist()) == {0, 2}
    # the partial event took the groups whose 2 smallest |w| have the lowest mean (per layer, or across both)
    group_scores = {name: w.view(w.shape[0], -1, 4).sort(-1).values[..., :2].mean(-1) for name, w in weights[1].items()}
    taken = {name: (~m).view(m.shape[0], -1, 4).any(-1) for name, m in masks[1].items()}
    for names in ([["0"], ["2"]] if scope == "local" else [["0", "2"]]):
        pruned = torch.cat([group_scores[n][taken[n]] for n in names])
        left = torch.cat([group_scores[n][~taken[n]] for n in names])
        assert pruned.numel() and left.numel() and pruned.max() <= left.min()


class _NewTensorMagnitude(Criterion):
    """|w| as a new tensor: ignores ``out`` (the contract asks to write into it; prunekit copies what is returned)."""

    name = "new_tensor_magnitude"

    def score(self, weight: torch.Tensor, grad: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        return weight.detach().abs().float() + 0.0


@pytest.mark.parametrize("pattern", ["1x1", "4x1", "2:4"])
def test_a_criterion_that_ignores_out_prunes_like_the_builtin(pattern: str) -> None:
    CRITERIA.register(_NewTensorMagnitude.name, _NewTensorMagnitude)
    try:
        masks = []
        for criterion in ("magnitude", _NewTensorMagnitude.name):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
            session = Pruning(model, {"pruners": [{"pattern": pattern, "criterion": criterion, "target_sparsity": 0.5, "scope": "global"}]})
            session.prune_now()
            masks.append(session.masks)
        assert all(torch.equal(masks[0][name], masks[1][name]) for name in masks[0])
    finally:
        CRITERIA.unregister(_NewTensorMagnitude.name)
