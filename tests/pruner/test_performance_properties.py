"""The properties the pruner's speed and memory depend on (not timings).

* masks are 1 byte per weight (int8 inside, bool views outside); scores at block resolution;
* parameters keep their identity across steps and events;
* nothing is allocated and kept per step (100 steps);
* global scope never concatenates or sorts all scores;
* the chunked code paths give exactly the results of a single chunk;
* masking is exact (NaN/inf gradients become +0) for every floating dtype;
* on CUDA, the per-step path never synchronises with the host.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import nn

from prunekit.pruner import prepare_pruning
from prunekit.pruner import masks as masks_mod
from prunekit.pruner.masks import new_mask, zero_pruned_
from prunekit.pruner.patterns import NMPattern, PRUNED
from pruner_helpers import linear_weights, mlp, train_step


def cfg(pattern: str = "1x1", target: float = 0.75, scope: str = "local", criterion: str = "magnitude",
        start: int = 1, end: int = 7, freq: int = 2) -> dict:
    return {"pruners": [{"pattern": pattern, "target_sparsity": target, "scope": scope, "criterion": criterion,
                         "scheduler": {"type": "iterative", "start_step": start, "end_step": end, "frequency": freq}}]}


def test_masks_are_one_byte_per_weight_and_scores_at_block_resolution() -> None:
    model = mlp((16, 32, 32, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    session = prepare_pruning(model, cfg("4x1", criterion="snip_momentum"), opt)
    for step in range(4):
        train_step(model, opt, step)
    group = session.groups[0]
    for name, w in linear_weights(model).items():
        mask = group.mask8[name]
        assert mask.dtype == torch.int8 and mask.element_size() == 1
        assert mask.shape == w.shape and mask.device == w.device and mask.is_contiguous()
        assert session.masks[name].dtype == torch.bool  # public view: bool, True = kept
        rows, cols = w.shape
        assert group.scores[name].shape == (-(-rows // 4), cols)  # one score per 4x1 block
        assert group.scores[name].dtype == torch.float32
    # scratch: at most one chunk per device, never a weight-sized copy per layer
    assert all(b.numel() <= max(masks_mod.CHUNK, 32 * 32) for b in group._buffers.values())
    for step in range(4, 9):  # after the last event: scores and scratch are dropped
        train_step(model, opt, step)
    assert not group.scores and not group._buffers


def test_parameter_identity_across_steps_and_events() -> None:
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    before = [(id(p), p.data_ptr()) for p in model.parameters()]
    prepare_pruning(model, cfg("2:4", 0.5), opt)
    for step in range(10):
        train_step(model, opt, step)
    assert [(id(p), p.data_ptr()) for p in model.parameters()] == before
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], model.parameters()))


def _live_tensors() -> tuple[int, int]:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return len(ts), sum(t.numel() * t.element_size() for t in ts)


@pytest.mark.parametrize("criterion,pattern", [("magnitude", "1x1"), ("snip_momentum", "4x1")])
def test_no_per_step_allocation_growth_over_100_steps(criterion: str, pattern: str) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(16, 16), torch.randn(16, 8)
    # in the window for all 110 steps: events at 0 and 200, scores accumulate every step
    session = prepare_pruning(model, cfg(pattern, 0.5, criterion=criterion, start=0, end=400, freq=200), opt)

    def steps(n: int) -> None:
        for _ in range(n):
            opt.zero_grad(set_to_none=False)
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    steps(10)
    count, nbytes = _live_tensors()
    steps(100)
    assert _live_tensors() == (count, nbytes)
    assert session.global_step == 110 and len(session.history) == 1


def test_global_scope_never_concatenates_or_sorts_all_scores(monkeypatch) -> None:
    from prunekit.pruner import scope

    monkeypatch.setattr(masks_mod, "CHUNK", 1024)  # many chunks per layer
    monkeypatch.setattr(scope, "_SAMPLE", 512)  # the sample is a small fraction of the scores, as on real models
    monkeypatch.setattr(scope, "_SLACK", 16)
    model = nn.Sequential(nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 96), nn.Tanh(), nn.Linear(96, 32))
    total = sum(w.numel() for w in linear_weights(model).values())
    biggest: dict[str, int] = {"cat": 0, "sort": 0, "unique": 0}
    real = {"cat": torch.cat, "sort": torch.sort, "unique": torch.unique}

    def spy(name):
        def wrapped(*args, **kwargs):
            out = real[name](*args, **kwargs)
            first = out[0] if isinstance(out, tuple) else out
            biggest[name] = max(biggest[name], first.numel())
            return out
        return wrapped

    for name in real:
        monkeypatch.setattr(torch, name, spy(name))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    prepare_pruning(model, {"pruners": [{"pattern": "1x1", "scope": "global", "target_sparsity": 0.9}]}, opt)
    opt.zero_grad()
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    zeros = sum(int((w == 0).sum()) for w in linear_weights(model).values())
    assert zeros == round(0.9 * total)
    # a sample and a narrow bracket only, never a tensor of all scores
    assert max(biggest.values()) <= total // 8, biggest


@pytest.mark.parametrize(
    "pattern,scope,criterion,target",
    [("1x1", "local", "magnitude", 0.8), ("1x1", "global", "snip_momentum", 0.8), ("4x1", "global", "snip", 0.75),
     ("4x1", "local", "snip_momentum", 0.75), ("2:4", "local", "magnitude", 0.5), ("1x1", "local", "gradient", 0.6)],
)
def test_chunked_paths_match_a_single_chunk(monkeypatch, pattern: str, scope: str, criterion: str, target: float) -> None:
    results = []
    for chunk in (1 << 19, 40):  # 40 elements: many chunks, partial last chunks
        monkeypatch.setattr(masks_mod, "CHUNK", chunk)
        masks_mod.clear_buffers()
        model = mlp((16, 24, 24, 8))
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        session = prepare_pruning(model, cfg(pattern, target, scope, criterion, start=1, end=7, freq=2), opt)
        for step in range(10):
            train_step(model, opt, step)
        results.append((session.masks, {k: v.clone() for k, v in model.state_dict().items()}))
    masks_mod.clear_buffers()
    (m1, s1), (m2, s2) = results
    for name in m1:
        assert torch.equal(m1[name], m2[name]), name
    for key in s1:
        assert torch.equal(s1[key], s2[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_zero_pruned_is_exact_for_nan_and_inf(monkeypatch, dtype: torch.dtype) -> None:
    monkeypatch.setattr(masks_mod, "CHUNK", 7)
    t = torch.randn(5, 9).to(dtype)
    t[0, :3] = float("nan")
    t[1, :3] = float("inf")
    t[2, :3] = -0.0
    keep = torch.rand(5, 9) > 0.5
    keep[0, 0] = keep[1, 0] = False
    mask = new_mask(t)
    mask.masked_fill_(~keep, 0)
    expected = torch.where(keep, t, torch.zeros((), dtype=dtype))
    ptr = t.data_ptr()
    zero_pruned_(t, mask)
    assert t.data_ptr() == ptr
    assert torch.equal(t.view(-1)[~keep.view(-1)].abs().sum(), torch.zeros((), dtype=dtype))
    assert (t[~keep].view(torch.int8 if dtype.itemsize == 1 else {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]) == 0).all()  # +0.0
    kept_t, kept_e = t[keep], expected[keep]
    assert torch.equal(kept_t.isnan(), kept_e.isnan())
    assert torch.equal(kept_t.nan_to_num(), kept_e.nan_to_num())


def test_nm_rank_selection_matches_stable_sort() -> None:
    g = torch.Generator().manual_seed(0)
    for n, m in [(2, 4), (1, 4), (3, 4), (4, 4), (1, 2), (3, 8), (2, 8), (7, 8), (2, 3), (3, 6), (5, 16)]:
        rows, cols = 6, 4 * m
        scores = (torch.randint(0, 4, (rows, cols), generator=g).float())  # many ties
        scores[1] = torch.rand(cols, generator=g) * 1e-38  # subnormal differences still order exactly
        scores[3] = torch.randn(cols, generator=g).abs() * 1e30
        mask = torch.full((rows, cols), -1, dtype=torch.int8)
        mask[0, :m] = 0  # one pruned group
        mask[2, m + 1] = 0  # one pruned weight in another
        for reduce in ("mean", "sum", "max"):
            p = NMPattern(rows, cols, n, m)
            grid = p.grid(scores, mask, reduce)
            ref_scores = scores.view(rows, -1, m).masked_fill(mask.view(rows, -1, m) == 0, PRUNED)
            values, order = torch.sort(ref_scores, dim=-1, stable=True)
            low = values[..., :n]
            ref = {"mean": low.sum(-1) / n, "sum": low.sum(-1), "max": low.amax(-1)}[reduce]
            ref = ref.masked_fill((mask.view(rows, -1, m) == 0).any(-1), PRUNED)
            assert torch.allclose(grid, ref), (n, m, reduce)
            keep_all_pruned = torch.zeros(rows, cols // m, dtype=torch.bool)
            keep = p.expand(keep_all_pruned).view(rows, -1, m)
            ref_keep = torch.ones(rows, cols // m, m, dtype=torch.bool)
            ref_keep.scatter_(-1, order[..., :n], False)
            assert torch.equal(keep, ref_keep), (n, m)
            p.grid(scores, mask, reduce)
            kept_groups = torch.rand(rows, cols // m, generator=g) < 0.5
            keep = p.expand(kept_groups).view(rows, -1, m)
            assert torch.equal(keep, ref_keep | kept_groups[..., None]), (n, m)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("criterion,pattern", [("magnitude", "1x1"), ("snip_momentum", "4x1")])
def test_cuda_per_step_path_never_syncs(criterion: str, pattern: str) -> None:
    model = mlp((64, 128, 128, 32)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    session = prepare_pruning(model, cfg(pattern, 0.5, criterion=criterion, start=0, end=40, freq=20), opt)
    x, y = torch.randn(16, 64, device="cuda"), torch.randn(16, 32, device="cuda")

    def step() -> None:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    for _ in range(3):  # events at 0 (nothing pruned yet) happen here; then steps 3..19 are between events
        step()
    session.groups[0].has_pruned = True  # exercise the gradient masking too
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(10):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert session.global_step == 13


@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_adam_second_moments_of_pruned_weights_are_floored_not_zero(eps: float) -> None:
    """exp_avg_sq of pruned weights is a small normal number (sqrt of exact zeros is ~9x slower on CPU),
    pruned weights stay exactly 0 (eps=0 included, where v=0 would give 0/0), kept entries are untouched."""
    from prunekit.pruner.masks import SECOND_MOMENT_FLOOR

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=eps, amsgrad=True)
    session = prepare_pruning(model, {"pruners": [{"target_sparsity": 0.7, "scheduler": {"type": "oneshot", "start_step": 2}}]}, opt)
    for _ in range(12):
        opt.zero_grad()
        model(torch.randn(16, 32)).pow(2).mean().backward()
        opt.step()
    for layer in session.groups[0].layers:
        pruned = session.masks[layer.name].logical_not()
        state = opt.state[layer.weight]
        assert torch.isfinite(layer.weight).all() and (layer.weight.detach()[pruned] == 0).all()
        for key in ("exp_avg_sq", "max_exp_avg_sq"):
            v = state[key][pruned]
            assert (v > 0).all() and (v <= SECOND_MOMENT_FLOOR).all() and (v >= torch.finfo(torch.float32).tiny).all()
        assert (state["exp_avg"][pruned] == 0).all()
        assert (state["exp_avg_sq"][~pruned] > SECOND_MOMENT_FLOOR).all()
