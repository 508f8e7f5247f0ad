"""DataNormSparsifier: the block-norm rule, N:M inside blocks, shapes, ties, validation, parity."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import prunekit.data.blocks as blocks
from prunekit.data import DataConfigError, DataNormSparsifier


def zero_fraction(mask: torch.Tensor) -> float:
    return 1.0 - mask.float().mean().item()


def step_once(data: torch.Tensor, **config: Any) -> torch.Tensor:
    sp = DataNormSparsifier(**{k: v for k, v in config.items() if k == "norm"})
    sp.add_data("x", data, **{k: v for k, v in config.items() if k != "norm"})
    sp.step()
    return sp.get_mask("x")


@pytest.mark.parametrize("block", [(1, 4), (2, 2), (4, 1), (1, 1), (2, 8)])
@pytest.mark.parametrize("zeros", [None, 1, 2])
@pytest.mark.parametrize("level", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_zero_fraction_is_level_times_zeros_over_block_size(block: tuple[int, int], zeros: int | None, level: float) -> None:
    torch.manual_seed(0)
    bs = block[0] * block[1]
    z = bs if zeros is None else min(zeros, bs)
    mask = step_once(torch.randn(16, 32), sparsity_level=level, sparse_block_shape=block, zeros_per_block=z)
    num_blocks = (16 // block[0]) * (32 // block[1])
    expected = round(level * num_blocks) * z / (num_blocks * bs)
    assert zero_fraction(mask) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(level * z / bs, abs=1.0 / num_blocks)


@pytest.mark.parametrize("level, clamped", [(1.7, 1.0), (-0.3, 0.0)])
def test_scheduled_levels_outside_0_1_are_clamped(level: float, clamped: float) -> None:
    sp = DataNormSparsifier(sparsity_level=0.5)
    sp.add_data("x", torch.randn(8, 8))
    sp.data_groups["x"]["sparsity_level"] = level  # what a data scheduler may write
    sp.step()
    assert zero_fraction(sp.get_mask("x")) == clamped


def test_a_scheduled_level_above_1_survives_re_adding_the_data() -> None:
    sp = DataNormSparsifier(sparsity_level=0.5)
    sp.add_data("batch", torch.randn(4, 8))
    sp.data_groups["batch"]["sparsity_level"] = 1.2  # e.g. base * param_lambda(t) of a lambda scheduler
    sp.add_data("batch", torch.randn(4, 8))
    assert sp.data_groups["batch"]["sparsity_level"] == 1.2
    sp.step()
    assert zero_fraction(sp.get_mask("batch")) == 1.0
    with pytest.raises(DataConfigError, match="sparsity_level: must be <= 1"):
        sp.add_data("batch", torch.randn(4, 8), sparsity_level=1.2)  # passed by the user: checked


def test_exact_two_of_four() -> None:
    torch.manual_seed(0)
    data = torch.randn(32, 64)
    mask = step_once(data, sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    groups = mask.view(32, 16, 4)
    assert bool((groups.sum(-1) == 2).all())
    mags = data.abs().view(32, 16, 4)
    two_smallest = mags.argsort(-1)[..., :2]
    assert not bool(groups.gather(-1, two_smallest).any()), "the zeros are the two smallest of each group"


def brute_force_mask(data: torch.Tensor, level: float, block: tuple[int, int], zeros: int, norm: str) -> torch.Tensor:
    """The documented rule written naively (block by block, Python loops)."""
    rows, cols = data.shape
    bh, bw = block
    entries = []
    for i in range(0, rows, bh):
        for j in range(0, cols, bw):
            part = data[i : i + bh, j : j + bw]
            score = (part.abs() if norm == "L1" else part**2).double().mean().item()
            entries.append((score, len(entries), i, j))
    k = round(level * len(entries))
    mask = torch.ones(rows, cols, dtype=torch.bool)
    for _, _, i, j in sorted(entries)[:k]:
        part = data[i : i + bh, j : j + bw]
        order = sorted(range(part.numel()), key=lambda n: (part.flatten()[n].abs().item(), n))
        sub = mask[i : i + bh, j : j + bw].clone().flatten()
        sub[order[:zeros]] = False
        mask[i : i + bh, j : j + bw] = sub.view(part.shape)
    return mask


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize(
    "shape, block, zeros",
    [
        ((8, 12), (2, 3), 6),
        ((8, 12), (2, 3), 2),
        ((7, 10), (2, 4), 8),
        ((7, 10), (3, 4), 5),
        ((5, 9), (1, 4), 3),
        ((7, 10), (1, 3), 2),  # blocks under 4 entries take the two-pass strategy
        ((6, 9), (1, 1), 1),
        ((5, 8), (2, 1), 2),
    ],
)
def test_matches_the_rule_written_naively(norm: str, shape: tuple[int, int], block: tuple[int, int], zeros: int) -> None:
    torch.manual_seed(3)
    data = torch.randn(shape)
    for level in (0.3, 0.6, 1.0):
        got = step_once(data, norm=norm, sparsity_level=level, sparse_block_shape=block, zeros_per_block=zeros)
        assert torch.equal(got, brute_force_mask(data, level, block, zeros, norm)), (level, norm)


def test_l1_and_l2_rank_blocks_differently() -> None:
    data = torch.tensor([[3.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]])  # L1: 3 < 4; L2: 9 > 4
    l1 = step_once(data, norm="L1", sparsity_level=0.5, sparse_block_shape=(1, 4))
    l2 = step_once(data, norm="L2", sparsity_level=0.5, sparse_block_shape=(1, 4))
    assert torch.equal(l1, torch.tensor([[False] * 4 + [True] * 4]))
    assert torch.equal(l2, torch.tensor([[True] * 4 + [False] * 4]))


def test_no_collapse_over_repeated_steps_with_fresh_data() -> None:
    torch.manual_seed(0)
    sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4))
    for _ in range(20):
        batch = torch.randn(8, 16)
        sp.add_data("batch", batch)  # reuse_mask=True, as in the torch.ao README loop
        sp.step()
        assert zero_fraction(sp.get_mask("batch")) == 0.5
        assert torch.equal(sp.get_mask("batch"), step_once(batch, sparsity_level=0.5, sparse_block_shape=(1, 4)))


@pytest.mark.parametrize("shape", [(64,), (64, 1), (1, 64), (1, 64, 1), (2, 4, 8), (4, 2, 2, 4)])
def test_vectors_columns_and_higher_dimensions(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    data = torch.randn(shape)
    mask = step_once(data, sparsity_level=0.5, sparse_block_shape=(1, 4))
    assert mask.shape == data.shape
    assert zero_fraction(mask) == 0.5
    if data.numel() == 64 and data.squeeze().dim() == 1:  # (N,), (N, 1), (1, N): one row of blocks
        flat = mask.reshape(-1).view(16, 4)
        assert bool((flat.all(-1) | ~flat.any(-1)).all()), "blocks run along the vector"
        assert torch.equal(mask.reshape(-1), step_once(data.reshape(-1), sparsity_level=0.5, sparse_block_shape=(1, 4)))


@pytest.mark.parametrize("shape", [(0,), (0, 4), (3, 0), ()])
def test_empty_and_scalar_data(shape: tuple[int, ...]) -> None:
    data = torch.randn(shape)
    mask = step_once(data, sparsity_level=0.9, sparse_block_shape=(1, 4))
    assert mask.shape == data.shape
    sp = DataNormSparsifier(sparsity_level=0.9)
    sp.add_data("x", data)
    sp.step()
    sp.squash_mask()
    assert sp.get_data("x", return_original=False).shape == data.shape


def test_biases_and_norm_parameters_of_a_model() -> None:
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.LayerNorm(6), nn.Linear(6, 1))
    sp = DataNormSparsifier(list(model.named_parameters()), sparsity_level=0.5, sparse_block_shape=(1, 2))
    sp.step()
    sp.squash_mask()
    for name, param in model.named_parameters():
        assert sp.get_mask(name).shape == param.shape
    assert torch.equal(model[0].bias == 0, ~sp.get_mask("0.bias"))
    assert model(torch.randn(4, 8)).shape == (4, 1)


def test_ties_are_broken_by_index_and_the_count_is_exact() -> None:
    data = torch.zeros(4, 8)
    mask = step_once(data, sparsity_level=0.5, sparse_block_shape=(1, 4))
    expected = torch.ones(4, 8, dtype=torch.bool)
    expected[:2] = False  # 8 blocks, all tied: the first 4 by index
    assert torch.equal(mask, expected)


DISTRIBUTIONS = {
    "random": lambda: torch.randn(300, 64),
    "integers": lambda: torch.randint(-3, 4, (300, 64)).float(),
    "zeros": lambda: torch.zeros(300, 64),
    "sorted": lambda: torch.arange(300 * 64, dtype=torch.float32).view(300, 64),
    "half_zero": lambda: torch.cat([torch.zeros(150, 64), torch.randn(150, 64)]),
}
# (1, 4) fp32 blocks store their score table; (1, 2) blocks take two passes over the data
STRATEGIES = {"stored": ((1, 4), "_bracketed_kth"), "two-pass": ((1, 2), "_bracketed_threshold")}


@pytest.mark.parametrize("kind", list(DISTRIBUTIONS))
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("whole", [True, False])
def test_bracketed_selection_equals_direct_selection(monkeypatch: pytest.MonkeyPatch, kind: str, strategy: str, whole: bool) -> None:
    torch.manual_seed(0)
    data = DISTRIBUTIONS[kind]()
    block, bracket = STRATEGIES[strategy]
    zeros = block[1] if whole else 1
    assert blocks.BlockGrid(data, block, "L1").store_scores is (strategy == "stored")
    direct = step_once(data, sparsity_level=0.7, sparse_block_shape=block, zeros_per_block=zeros)
    monkeypatch.setattr(blocks, "_DIRECT_BLOCKS", 16)
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", 1024)  # many chunks, and a small sample
    seen: list[Any] = []
    original = getattr(blocks, bracket)
    monkeypatch.setattr(blocks, bracket, lambda *a: seen.append(original(*a)) or seen[-1])
    bracketed = step_once(data, sparsity_level=0.7, sparse_block_shape=block, zeros_per_block=zeros)
    assert seen and seen[0] is not None, "the bracketed selection ran and found the threshold"
    assert torch.equal(bracketed, direct)
    num_blocks = 300 * 64 // (block[0] * block[1])
    assert zero_fraction(bracketed) == pytest.approx(round(0.7 * num_blocks) * zeros / (300 * 64))


@pytest.mark.parametrize("block, zeros", [((2, 4), 8), ((2, 4), 3), ((1, 3), 3), ((3, 1), 1)])
def test_many_chunks_with_edge_blocks_match_the_rule(monkeypatch: pytest.MonkeyPatch, block: tuple[int, int], zeros: int) -> None:
    torch.manual_seed(2)
    data = torch.randn(61, 22)
    monkeypatch.setattr(blocks, "_DIRECT_BLOCKS", 16)
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", 64)
    got = step_once(data, norm="L2", sparsity_level=0.55, sparse_block_shape=block, zeros_per_block=zeros)
    assert torch.equal(got, brute_force_mask(data, 0.55, block, zeros, "L2"))


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_missed_bracket_falls_back_to_exact_selection(monkeypatch: pytest.MonkeyPatch, strategy: str) -> None:
    torch.manual_seed(0)
    data = torch.randn(300, 64)
    block = STRATEGIES[strategy][0]
    direct = step_once(data, sparsity_level=0.7, sparse_block_shape=block)
    monkeypatch.setattr(blocks, "_DIRECT_BLOCKS", 16)
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", 1024)
    far = torch.tensor(1e9)
    monkeypatch.setattr(blocks, "_bracket", lambda sample, q: (far, far + 1))  # misses every score
    assert torch.equal(step_once(data, sparsity_level=0.7, sparse_block_shape=block), direct)


def test_nan_data_is_an_error_naming_the_data() -> None:
    data = torch.randn(4, 8)
    data[1, 2] = math.nan
    sp = DataNormSparsifier()
    sp.add_data("emb.weight", data)
    with pytest.raises(ValueError, match="data 'emb.weight' contains NaN"):
        sp.step()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_floating_dtypes(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    data = torch.randn(16, 16, dtype=torch.float64).to(dtype)
    mask = step_once(data, sparsity_level=0.5, sparse_block_shape=(2, 2))
    assert zero_fraction(mask) == 0.5
    assert torch.equal(mask, step_once(data.double(), sparsity_level=0.5, sparse_block_shape=(2, 2)))


def test_non_floating_data_is_rejected() -> None:
    sp = DataNormSparsifier()
    sp.add_data("ids", torch.arange(8))
    with pytest.raises(TypeError, match=r"data 'ids' is torch.int64.*\.float\(\)"):
        sp.step()


def test_non_contiguous_data() -> None:
    torch.manual_seed(0)
    base = torch.randn(32, 16)
    view = base.t()
    mask = step_once(view, sparsity_level=0.5, sparse_block_shape=(1, 4))
    assert torch.equal(mask, step_once(view.contiguous(), sparsity_level=0.5, sparse_block_shape=(1, 4)))


@pytest.mark.parametrize(
    "kwargs, where, what",
    [
        ({"sparsity_level": 1.5}, "defaults.sparsity_level", "must be <= 1"),
        ({"sparsity_level": -0.1}, "defaults.sparsity_level", "must be >= 0"),
        ({"sparse_block_shape": (0, 4)}, "defaults", "two sizes within"),
        ({"sparse_block_shape": (1, 4), "zeros_per_block": 5}, "defaults", "zeros_per_block 5 exceeds the 4 entries"),
        ({"zeros_per_block": -1}, "defaults.zeros_per_block", "must be >= 0"),
        ({"norm": "L3"}, "defaults.norm", "unknown norm 'L3'"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any], where: str, what: str) -> None:
    with pytest.raises(DataConfigError) as info:
        DataNormSparsifier(**kwargs)
    assert where in str(info.value) and what in str(info.value)


def test_add_data_validation_names_the_data_and_the_key() -> None:
    sp = DataNormSparsifier()
    with pytest.raises(DataConfigError) as info:
        sp.add_data("emb.weight", torch.randn(4, 4), sparsity=0.3, sparse_block_shape=(2, 2), zeros_per_block=9)
    text = str(info.value)
    assert "data_groups['emb.weight'].sparsity: unknown key 'sparsity'; did you mean 'sparsity_level'?" in text
    assert "emb.weight" not in sp.data_groups
    with pytest.raises(DataConfigError, match=r"data_groups\['emb.weight'\]: zeros_per_block 9 exceeds"):
        sp.add_data("emb.weight", torch.randn(4, 4), sparse_block_shape=(2, 2), zeros_per_block=9)
    sp.add_data("emb.weight", torch.randn(4, 4), sparse_block_shape=[2, 2])
    assert sp.data_groups["emb.weight"]["sparse_block_shape"] == (2, 2)


def test_sparsified_embedding_lookup_is_a_plain_lookup() -> None:
    """No parametrization, hook or mask multiply stays on the module: a lookup is a dense lookup."""
    emb = nn.Embedding(100, 16)
    weight = emb.weight
    sp = DataNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4))
    sp.add_data("emb", emb)
    sp.step()
    sp.squash_mask()
    assert emb.weight is weight and type(emb.weight) is nn.Parameter
    assert not torch.nn.utils.parametrize.is_parametrized(emb)
    assert not emb._forward_hooks and not emb._forward_pre_hooks
    assert zero_fraction(emb.weight.detach() != 0) == 0.5


@pytest.mark.parametrize("zeros", [4, 2, 1])
@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_same_masks_as_torch_ao_on_divisible_shapes(zeros: int, norm: str) -> None:
    upstream = pytest.importorskip("torch.ao.pruning._experimental.data_sparsifier")
    torch.manual_seed(5)
    data = torch.randn(16, 32)
    for level in (0.25, 0.5, 0.75):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = upstream.DataNormSparsifier(sparsity_level=level, sparse_block_shape=(1, 4), zeros_per_block=zeros, norm=norm)
            theirs.add_data("x", data.clone())
            theirs.step()
        ours = step_once(data, norm=norm, sparsity_level=level, sparse_block_shape=(1, 4), zeros_per_block=zeros)
        assert torch.equal(ours, theirs.get_mask("x").bool()), (level, zeros, norm)
