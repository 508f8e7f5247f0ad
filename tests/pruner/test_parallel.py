"""Layers and chunks on several threads (prunekit/pruner/parallel.py) give exactly the serial results.

The thresholds that keep small work serial are set to 0 here, so these tiny models take the
parallel paths: events with layers in parallel (local scope; global scope's grids, counting and
bracket passes and commits), the per-step gradient masking in pieces and ``snip_momentum``'s
accumulation in row ranges. Every case is compared bit for bit with one thread, after training.
"""

from __future__ import annotations

import threading

import pytest
import torch

import prunekit.pruner.parallel as parallel
from prunekit.errors import PruningError
from prunekit.pruner import prepare_pruning
from prunekit.pruner.criteria import Criterion
from prunekit.registry import CRITERIA
from pruner_helpers import mlp, train_step
from test_chunked_commit import CASES, run


@pytest.fixture
def forced(monkeypatch):
    """Parallel paths for any size and balance, two threads; records how many workers each map used."""
    monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 0)
    monkeypatch.setattr(parallel, "MIN_EVENT_LAYER", 0)
    import prunekit.pruner.group as group_mod
    import prunekit.pruner.scope as scope_mod

    monkeypatch.setattr(group_mod, "MIN_EVENT_LAYER", 0)
    monkeypatch.setattr(scope_mod, "MIN_EVENT_LAYER", 0)
    used: list[int] = []
    original = parallel.workers_for

    def recording(sizes, devices, min_mean=0) -> int:
        n = original(sizes, devices, min_mean)
        if n == 1 and len(sizes) > 1 and not parallel.in_worker() and torch.get_num_threads() > 1:
            n = 2  # these tiny layers are unequal: the balance rule alone would keep them serial
        used.append(n)
        return n

    monkeypatch.setattr(parallel, "workers_for", recording)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield used
    torch.set_num_threads(before)


def _serial(fn):
    """``fn()`` with one torch thread: every map in the caller (the forcing above needs two threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("pattern,criterion,scope,target,arch", CASES)
def test_layers_in_parallel_give_the_serial_masks_and_weights(forced, pattern, criterion, scope, target, arch) -> None:
    reference = _serial(lambda: run(pattern, criterion, scope, target, arch))
    assert set(forced) == {1}  # the reference ran serially
    forced.clear()
    got = run(pattern, criterion, scope, target, arch)
    single_small_layer = arch == "cnn" and ":" in pattern  # one conv of 1,728 weights: one piece, nothing to share
    assert max(forced) == (1 if single_small_layer else 2)  # the parallel path really ran
    assert torch.get_num_threads() == 2  # and gave the threads back
    for name in reference[0]:
        assert torch.equal(got[0][name], reference[0][name]), name
    for key in reference[1]:
        assert torch.equal(got[1][key], reference[1][key]), key


@pytest.mark.parametrize("criterion", ["magnitude", "snip_momentum"])
def test_adamw_state_and_gradients_match_in_parallel(forced, criterion) -> None:
    def train() -> tuple[dict, dict]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(40, 48), torch.nn.Tanh(), torch.nn.Linear(48, 40), torch.nn.Tanh(), torch.nn.Linear(40, 8))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        cfg = {"pruners": [{"pattern": "1x1", "criterion": criterion, "target_sparsity": 0.8,
                            "scheduler": {"type": "iterative", "start_step": 1, "end_step": 7, "frequency": 2}}]}
        session = prepare_pruning(model, cfg, opt)
        g = torch.Generator().manual_seed(5)
        for _ in range(10):
            opt.zero_grad()
            model(torch.randn(16, 40, generator=g)).pow(2).mean().backward()
            opt.step()
        state = {f"{i}.{k}": v.clone() for i, p in enumerate(model.parameters()) for k, v in opt.state[p].items() if torch.is_tensor(v)}
        grads = {f"{i}.grad": p.grad.clone() for i, p in enumerate(model.parameters())}
        session.close()
        return {k: v.clone() for k, v in model.state_dict().items()}, {**state, **grads}

    reference = _serial(train)
    assert set(forced) == {1}
    forced.clear()
    got = train()
    assert max(forced) == 2
    for a, b in zip(reference, got):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


class _Recording(Criterion):
    """Magnitude, recording where and how it ran; raises on demand."""

    name = "recording_for_parallel_test"
    seen: list[tuple[str, bool]] = []
    fail_on: int | None = None

    def score(self, weight, grad, out=None):
        type(self).seen.append((threading.current_thread().name, torch.is_grad_enabled()))
        if type(self).fail_on is not None and weight.shape[-1] == type(self).fail_on:
            raise ValueError("criterion failed on purpose")
        return torch.abs(weight, out=out) if out is not None else weight.abs()


@pytest.fixture
def recording():
    CRITERIA.register(_Recording.name, _Recording)
    _Recording.seen, _Recording.fail_on = [], None
    yield _Recording
    CRITERIA.unregister(_Recording.name)


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))


@pytest.mark.parametrize("scope", ["local", "global"])
def test_workers_run_without_autograd_on_prunekit_threads(forced, recording, scope) -> None:
    session = prepare_pruning(_model(), {"pruners": [{"pattern": "4x1", "criterion": recording.name, "scope": scope, "target_sparsity": 0.5}]})
    session.prune_now()
    threads = {name for name, _ in recording.seen}
    assert any(name.startswith("prunekit") for name in threads), threads
    assert not any(grad_mode for _, grad_mode in recording.seen)  # the event's no_grad holds in the workers


def test_a_failing_layer_raises_in_the_caller_and_restores_the_threads(forced, recording) -> None:
    model = _model()
    session = prepare_pruning(model, {"pruners": [{"pattern": "4x1", "criterion": recording.name, "target_sparsity": 0.5}]})
    recording.fail_on = 32  # the layer Linear(32, 8) (scored in 2-D row chunks)
    with pytest.raises(ValueError, match="on purpose"):
        session.prune_now()
    assert torch.get_num_threads() == 2
    weights = dict(model.named_parameters())
    # every layer is untouched or completely pruned; the failing one is untouched
    assert int(torch.count_nonzero(weights["4.weight"])) == weights["4.weight"].numel()
    for name in ("0.weight", "2.weight"):
        zeros = weights[name].numel() - int(torch.count_nonzero(weights[name]))
        assert zeros in (0, weights[name].numel() // 2), (name, zeros)
    recording.fail_on = None
    session.prune_now()  # the retry runs the event
    assert all(
        weights[n].numel() - int(torch.count_nonzero(weights[n])) == weights[n].numel() // 2 for n in ("0.weight", "2.weight", "4.weight")
    )


def test_small_work_and_one_thread_stay_serial(monkeypatch) -> None:
    cpu = [torch.device("cpu")] * 3
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        mib = [1 << 20] * 3
        assert parallel.workers_for(mib, cpu) == 2
        assert parallel.workers_for([1000] * 3, cpu) == 1  # below MIN_PARALLEL_ELEMENTS
        assert parallel.workers_for(mib, cpu, min_mean=2 << 20) == 1  # layers too small for an event
        assert parallel.workers_for([1 << 30], cpu[:1]) == 1
        assert parallel.workers_for([200 << 20, 1 << 20], cpu[:2]) == 1  # one layer is nearly all the work
        assert parallel.workers_for([45 << 20, 16 << 20, 16 << 20, 16 << 20], cpu + cpu[:1]) == 2
        assert parallel.workers_for(mib, [torch.device("meta")] * 3) == 1  # only CPU work is threaded
        torch.set_num_threads(1)
        assert parallel.workers_for(mib, cpu) == 1
    finally:
        torch.set_num_threads(before)


def test_a_nested_map_runs_serially_inside_a_worker(forced) -> None:
    inner: list[int] = []

    def outer(i: int) -> int:
        parallel.parallel_map(lambda j: inner.append(threading.get_ident()) or j, [0, 1, 2], [1 << 20] * 3, [torch.device("cpu")] * 3)
        return threading.get_ident()

    idents = parallel.parallel_map(outer, [0, 1, 2, 3], [1 << 20] * 4, [torch.device("cpu")] * 4)
    assert len(inner) == 12
    assert set(inner) <= set(idents)  # each inner map ran in the worker that called it
    assert torch.get_num_threads() == 2


def test_an_error_raised_in_a_worker_is_not_lost(forced) -> None:
    def fn(i: int) -> int:
        if i == 3:
            raise PruningError("item 3")
        return i

    with pytest.raises(PruningError, match="item 3"):
        parallel.parallel_map(fn, list(range(8)), [1 << 20] * 8, [torch.device("cpu")] * 8)
    assert torch.get_num_threads() == 2
    assert parallel.parallel_map(lambda i: i * i, list(range(8)), [1 << 20] * 8, [torch.device("cpu")] * 8) == [i * i for i in range(8)]


def test_maps_from_two_threads_at_once_keep_the_thread_count(forced) -> None:
    """The thread count is process-wide: a map started while another thread's map runs stays serial,
    so every map restores what it found and the count ends as it began."""
    started, release = threading.Event(), threading.Event()
    results: dict[str, list[int]] = {}

    def slow(i: int) -> int:
        started.set()
        release.wait(5)
        return i

    def first() -> None:
        results["first"] = parallel.parallel_map(slow, [0, 1], [1 << 20] * 2, [torch.device("cpu")] * 2)

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(5)
    results["second"] = parallel.parallel_map(lambda i: i + 10, [0, 1, 2], [1 << 20] * 3, [torch.device("cpu")] * 3)
    release.set()
    t.join(5)
    assert results == {"first": [0, 1], "second": [10, 11, 12]}
    assert torch.get_num_threads() == 2


def test_an_event_under_inference_mode_works_on_workers(forced) -> None:
    with torch.inference_mode():  # a post-training session, tensors created under inference mode
        model = _model()
        session = prepare_pruning(model, {"pruners": [{"pattern": "1x1", "target_sparsity": 0.5}]})
        session.prune_now()
    assert max(forced) == 2
    assert all(abs(row.sparsity - 0.5) < 0.01 for row in session.report())


def test_an_interrupt_while_waiting_stops_the_workers_before_returning(forced, monkeypatch) -> None:
    from concurrent.futures import Future

    done: list[int] = []
    interrupted = []
    real_result = Future.result

    def interrupting(self, timeout=None):
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real_result(self, timeout)

    def slow(i: int) -> int:
        threading.Event().wait(0.05)
        done.append(i)
        return i

    monkeypatch.setattr(Future, "result", interrupting)
    with pytest.raises(KeyboardInterrupt):
        parallel.parallel_map(slow, list(range(12)), [1 << 20] * 12, [torch.device("cpu")] * 12)
    finished = len(done)
    threading.Event().wait(0.3)
    assert len(done) == finished < 12  # nothing ran on after the call returned; the rest never started
    assert torch.get_num_threads() == 2
    assert parallel.parallel_map(lambda i: -i, [1, 2], [1 << 20] * 2, [torch.device("cpu")] * 2) == [-1, -2]


def _one_large_layer(pattern: str, criterion: str, scope: str, target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A second layer much smaller than the first (which then holds most of the event's work), weights on a
    grid of 1/8 (many exact ties), trained through three events; the large layer's mask and weight."""
    model = mlp((640, 1022, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((p * 8).round() / 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    only_first = {"op_names": ["^0$"]} if pattern == "2:4" else {}  # the small layer's 1022 inputs hold no groups of 4
    config = {"pruners": [{"pattern": pattern, "criterion": criterion, "scope": scope, "target_sparsity": target,
                           "scheduler": {"type": "iterative", "start_step": 1, "end_step": 5, "frequency": 2}, **only_first}]}
    session = prepare_pruning(model, config, opt)
    for step in range(6):
        train_step(model, opt, step, n=8, d_in=640, d_out=8)
    mask = session.masks["0"].clone()
    session.close()
    return mask, model[0].weight.detach().clone()


@pytest.mark.parametrize("pattern,criterion,scope,target,split", [
    ("1x1", "magnitude", "local", 0.9, True), ("1x1", "snip", "global", 0.7, True), ("4x1", "snip_momentum", "global", 0.75, True),
    ("4x1", "magnitude", "local", 0.6, False), ("2:4", "magnitude", "local", 0.5, False), ("1xchannel", "gradient", "global", 0.5, False),
])
def test_one_large_layer_is_read_in_pieces_on_workers_with_the_serial_result(monkeypatch, pattern, criterion, scope, target, split) -> None:
    """An event whose work one layer dominates (the layers alone cannot keep two workers busy) reads that
    layer's grid in pieces of whole chunks, one piece per worker (counting, bracket and histogram
    passes), when the grid is computed as it is read (1x1 scores, accumulated block scores);
    materialized grids (blocks of float32 weights) are read whole. Either way the masks are the serial ones (1022 rows: a partial
    last 4x1 block row)."""
    import prunekit.pruner.group as group_mod
    import prunekit.pruner.scope as scope_mod

    for module in (parallel, group_mod, scope_mod):  # this small layer takes the paths of a large one
        monkeypatch.setattr(module, "MIN_EVENT_LAYER", 0)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_ELEMENTS", 0)
    reference = _serial(lambda: _one_large_layer(pattern, criterion, scope, target))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    original = scope_mod.split_grid
    pieces: list[int] = []

    def recording(grid, count):
        result = original(grid, count)
        pieces.append(len(result) if result else 0)
        return result

    monkeypatch.setattr(scope_mod, "split_grid", recording)
    try:
        got = _one_large_layer(pattern, criterion, scope, target)
    finally:
        torch.set_num_threads(before)
    assert max(pieces, default=0) == (2 if split else 0)  # the large layer was read in two pieces, or whole
    assert torch.equal(got[0], reference[0]) and torch.equal(got[1], reference[1])
