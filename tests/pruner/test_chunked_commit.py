"""Events commit masks chunk by chunk, score tall blocks in row chunks and stream large grids: same masks.

* every way of holding the scores (materialized grid, grid recomputed per read, tiny chunks) gives
  the masks of one chunk, for every kind of pattern, criterion, scope and layout;
* under ``torch.distributed`` rank 0's choice (packed into bits) wins, and a failed broadcast leaves
  the layer's mask and weight as they were;
* the pieces: a block row folded chunk by chunk, bit packing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit.pruner.group as group_mod
from prunekit.pruner import masks as masks_mod
from prunekit.pruner import prepare_pruning
from prunekit.pruner.grids import pack_bits, unpack_bits
from prunekit.pruner.patterns import BlockPattern, _RowTree, _block_reduce, _tree_rows
from pruner_helpers import train_step


def quarter_mlp(sizes: tuple[int, ...], seed: int = 0) -> nn.Sequential:
    """A tanh MLP with weights on a grid of 1/4: block sums are exact in any order, and scores tie often."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.Tanh()]
    model = nn.Sequential(*layers[:-1])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((p * 4).round() / 4)
    return model


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(8, 12, 3), nn.Tanh(), nn.Conv2d(12, 16, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(16 * 4 * 4, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((p * 4).round() / 4)
    return model


def run(pattern: str, criterion: str, scope: str, target: float, arch: str = "mlp", sync: bool | None = None, **extra) -> tuple[dict, dict]:
    nm = ":" in pattern
    model = small_cnn() if arch == "cnn" else quarter_mlp((24, 32, 24, 16, 8) if nm else (30, 26, 18, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cfg = {"pruners": [{"pattern": pattern, "criterion": criterion, "scope": scope, "target_sparsity": target,
                        "scheduler": {"type": "iterative", "start_step": 1, "end_step": 7, "frequency": 2}, **extra}]}
    if arch == "cnn" and nm:
        cfg["pruners"][0]["op_names"] = ["^2$"]  # input channels 12: a multiple of 2, 4 and 6
    session = prepare_pruning(model, cfg, opt, sync_masks=sync)
    g = torch.Generator().manual_seed(3)
    for _ in range(9):
        x = torch.randn(16, 8, 6, 6, generator=g) if arch == "cnn" else torch.randn(16, 24 if nm else 30, generator=g)
        opt.zero_grad()
        model(x.round()).pow(2).mean().backward()
        opt.step()
    masks = {k: v.clone() for k, v in session.masks.items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    session.close()
    return masks, state


CASES = [
    ("1x1", "snip", "global", 0.7, "mlp"),
    ("4x1", "magnitude", "local", 0.7, "mlp"),
    ("1x2", "gradient", "global", 0.7, "mlp"),
    ("2x1", "snip_momentum", "local", 0.7, "mlp"),
    ("3x5", "snip", "local", 0.6, "mlp"),
    ("8x1", "magnitude", "global", 0.6, "mlp"),
    ("channelx1", "gradient", "global", 0.5, "mlp"),
    ("channelx1", "snip_momentum", "local", 0.5, "mlp"),
    ("1xchannel", "snip", "local", 0.5, "mlp"),
    ("2:4", "snip", "local", 0.4, "mlp"),
    ("1:2", "snip_momentum", "global", 0.4, "mlp"),
    ("2:8", "magnitude", "global", 0.2, "mlp"),
    ("4x1", "snip", "global", 0.6, "cnn"),
    ("channelx1", "magnitude", "local", 0.5, "cnn"),
    ("2:4", "gradient", "local", 0.4, "cnn"),
]


@pytest.mark.parametrize("pattern,criterion,scope,target,arch", CASES)
def test_every_way_of_holding_the_scores_gives_the_masks_of_one_chunk(monkeypatch, pattern, criterion, scope, target, arch) -> None:
    reference = run(pattern, criterion, scope, target, arch)
    variants = {
        "recomputed per read": {"GRID_SHARE": -1.0},
        "recomputed, N:M stay bytes kept": {"GRID_SHARE": 0.3, "FIXED_PER_CHUNK_ELEMENT": 0},
        "materialized": {"GRID_SHARE": 1e9},
        "chunks of 40 (tall blocks folded)": {"CHUNK": 40},
    }
    tall = pattern in ("8x1", "channelx1")
    if tall and criterion != "magnitude":
        # block rows taller than a chunk of 40 are summed in the fold's fixed order, PyTorch's one-call
        # sum of more than 4 rows in another: the same masks unless two block scores are within a
        # rounding error at the threshold. Exact here only for magnitude (weights on a 1/4 grid: exact sums).
        del variants["chunks of 40 (tall blocks folded)"]
    for label, change in variants.items():
        with monkeypatch.context() as m:
            if "CHUNK" in change:
                m.setattr(masks_mod, "CHUNK", change["CHUNK"])
                masks_mod.clear_buffers()
            else:
                for name, value in change.items():
                    m.setattr(group_mod, name, value)
            got = run(pattern, criterion, scope, target, arch)
        masks_mod.clear_buffers()
        for name in reference[0]:
            assert torch.equal(got[0][name], reference[0][name]), (label, name)
        for key in reference[1]:
            assert torch.equal(got[1][key], reference[1][key]), (label, key)


def test_min_and_max_sparsity_per_op_hold_when_the_grids_are_recomputed(monkeypatch) -> None:
    bounds = {"min_sparsity_per_op": 0.4, "max_sparsity_per_op": 0.8}
    reference = run("1x2", "snip", "global", 0.7, **bounds)
    monkeypatch.setattr(group_mod, "GRID_SHARE", -1.0)
    got = run("1x2", "snip", "global", 0.7, **bounds)
    for name, mask in reference[0].items():
        assert torch.equal(got[0][name], mask), name
        sparsity = 1 - mask.float().mean().item()
        assert 0.4 - 1e-6 <= sparsity <= 0.8 + 1e-6, (name, sparsity)


class Broadcast:
    """A stand-in for ``torch.distributed.broadcast``: records what rank 0 sends, or hands it to another rank."""

    def __init__(self, sent: list[torch.Tensor] | None = None, fail_at: int | None = None) -> None:
        self.sent = [] if sent is None else sent
        self.replay = sent is not None
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self, tensor: torch.Tensor, src: int) -> None:
        assert src == 0
        self.calls += 1
        if self.fail_at == self.calls:
            raise RuntimeError("connection reset by peer")
        if self.replay:
            tensor.copy_(self.sent[self.calls - 1])
        else:
            self.sent.append(tensor.clone())


@pytest.mark.parametrize("pattern,criterion", [("1x1", "magnitude"), ("4x1", "snip"), ("1x2", "magnitude"), ("channelx1", "gradient"), ("2:4", "magnitude"), ("1:2", "snip")])
def test_rank_zeros_choice_wins_and_is_small(monkeypatch, pattern: str, criterion: str) -> None:
    import torch.distributed as dist

    def session_on(seed: int):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(32, 48), nn.Tanh(), nn.Linear(48, 16))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        cfg = {"pruners": [{"pattern": pattern, "criterion": criterion, "target_sparsity": 0.5}]}
        return model, opt, prepare_pruning(model, cfg, opt, sync_masks=True)

    rank0 = Broadcast()
    monkeypatch.setattr(dist, "broadcast", rank0)
    model0, opt0, s0 = session_on(0)
    train_step(model0, opt0, 0, d_in=32, d_out=16)
    masks0 = {k: v.clone() for k, v in s0.masks.items()}
    s0.close()
    weights = sum(m.numel() for m in masks0.values())
    assert 0 < sum(t.numel() for t in rank0.sent) <= weights // 8 + 64  # bits, at most one per weight
    monkeypatch.setattr(dist, "broadcast", Broadcast(sent=rank0.sent))
    model1, opt1, s1 = session_on(1)  # other weights: left alone, it would choose other blocks
    train_step(model1, opt1, 0, d_in=32, d_out=16)
    for name, mask in s1.masks.items():
        assert torch.equal(mask, masks0[name]), name
        weight = dict(model1.named_modules())[name].weight
        assert (weight.detach()[~mask] == 0).all()
    s1.close()


@pytest.mark.parametrize("pattern", ["1x1", "4x1", "1x2", "channelx1", "2:4"])
def test_a_failed_broadcast_leaves_the_layer_untouched(monkeypatch, pattern: str) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "broadcast", Broadcast(fail_at=2))  # the second layer's broadcast fails
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.Tanh(), nn.Linear(48, 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    session = prepare_pruning(model, {"pruners": [{"pattern": pattern, "target_sparsity": 0.5}]}, opt, sync_masks=True)
    before = model[2].weight.detach().clone()
    with pytest.raises(RuntimeError, match="connection reset"):
        train_step(model, opt, 0, d_in=32, d_out=16)
    assert session.masks["2"].all()  # the failed layer: mask and weight untouched
    assert torch.equal(model[2].weight.detach(), before)
    first = session.masks["0"]
    assert (model[0].weight.detach()[~first] == 0).all()  # the committed layer: mask and weight agree
    session.close()


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 16, 17, 63, 64, 65, 300])
def test_a_block_row_folded_in_any_chunks_gets_the_same_scores(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    scores = torch.rand(rows, 12, generator=gen) * torch.rand(rows, 1, generator=gen) ** 4
    expected = _tree_rows(scores[None])[0]
    for chunk in (1, 2, 3, 4, 7, 16, rows):
        tree = _RowTree()
        for a in range(0, rows, chunk):
            tree.feed(scores[a : a + chunk])
        assert torch.equal(tree.result(), expected), chunk
    for reduce in ("mean", "sum", "max"):
        pattern = BlockPattern(rows, 12, 0, 5)  # one block row, 5-wide blocks and a partial edge column
        whole = torch.empty(1, pattern.grid_cols)
        for chunk in (1, 3, rows):
            fold = pattern.fold(rows, reduce)
            for a in range(0, rows, chunk):
                fold.add(scores[a : a + chunk])
            folded = torch.empty(1, pattern.grid_cols)
            fold.finish(folded)
            if rows <= 4 or reduce == "max":  # PyTorch's own order: exactly the one-call reduction
                for _, ec, _, gc, br, bc in pattern._parts():
                    _block_reduce(scores[:, ec], br, bc, reduce, whole[:, gc])
                assert torch.equal(folded, whole), (reduce, chunk)
            reference = {"mean": lambda b: b.mean(), "sum": lambda b: b.sum(), "max": lambda b: b.max()}[reduce]
            for j in range(pattern.grid_cols):
                want = reference(scores[:, j * 5 : (j + 1) * 5].double()).float()
                assert torch.allclose(folded[0, j], want, rtol=1e-5), (reduce, chunk, j)


def test_bits_pack_and_unpack() -> None:
    gen = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 9, 1000):
        flags = (torch.rand(n, generator=gen) < 0.5).to(torch.int8)
        bits = pack_bits(flags)
        assert bits.dtype == torch.uint8 and bits.numel() == -(-n // 8)
        assert torch.equal(unpack_bits(bits, n), flags)
