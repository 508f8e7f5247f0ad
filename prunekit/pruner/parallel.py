"""Work items in parallel, each on one thread: how events and the per-step passes use several cores.

An event (and the per-step gradient masking and ``snip_momentum`` accumulation) is a few dozen
elementwise operations per chunk of every layer. Run as PyTorch intra-op parallel regions, every
operation waits at a barrier for all its threads; when another process holds a core (a data-loader
worker, a second job) every barrier waits for a descheduled thread, and the pass becomes several
times slower than on one thread. :func:`parallel_map` runs whole work items instead: the layers of
an event (each layer's chunks in order on one thread, so its temporaries stay a share of its own
bytes), or the pieces of a per-step pass. ``torch.get_num_threads()`` worker threads take items
from a shared queue, largest first, and run their operations single-threaded
(``torch.set_num_threads(1)`` while the map runs, so the kernels never open a parallel region). A
worker on a busy core simply takes fewer items: nothing waits for it but the item it holds.

Serial (in the calling thread, with its intra-op threads) when one thread is configured, when there
is one item or little work (below :data:`MIN_PARALLEL_ELEMENTS`), when one item is more than half of
the work (workers would wait for it), on other devices than the CPU
(kernels there are asynchronous; a worker thread would also have another current stream), inside
a worker (no nesting), while another thread's map is running (the thread count is process-wide),
and around ``torch.distributed`` collectives (callers keep them in order).

Side effect: the thread count is process-wide. While a map runs, other threads of the process also
see one thread (MKL's matrix products in them run single-threaded), and a thread that starts its
first parallel work then keeps one thread (OpenMP sets it per thread, once). Under a dispatch or
function mode (a profiler, an operation counter) maps run serially: worker threads would not see it.

Results never depend on the schedule: each item reads shared inputs and writes its own part of
the outputs, results come back in the items' order, and buffers that chunks share are per thread
(:func:`thread_key`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch

__all__ = ["parallel_map", "workers_for", "thread_key", "in_worker", "MIN_PARALLEL_ELEMENTS", "MIN_EVENT_LAYER"]

T = TypeVar("T")
R = TypeVar("R")

#: elements (summed over the items) below which the pool's start-up (~0.1 ms) is not worth it
MIN_PARALLEL_ELEMENTS = 1 << 20
#: mean elements per layer below which events stay serial: an event runs ~70 operations per chunk
#: of 1/32 of a layer, and below ~48K-element chunks the Python overhead of each operation (held
#: under the GIL) outweighs its kernel: on layers of 1M weights two workers were slower than torch's
#: two intra-op threads on an idle machine (12 x 1024^2, 1x1: 203 vs 154 ms) and barely faster with
#: a busy core; from 2M weights on they were up to ~40% slower idle and 1.6-3.7x faster busy
#: (``benchmarks/bench_threads.py``)
MIN_EVENT_LAYER = 3 << 19  # 1.5M

_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
#: held while a map runs on workers: the thread count it lowers is process-wide
_map_lock = threading.Lock()


def thread_key() -> int:
    """The calling thread's identity, for buffers that layers share (one set per thread)."""
    return threading.get_ident()


def in_worker() -> bool:
    """True inside a :func:`parallel_map` worker (where another map runs serially)."""
    return getattr(_local, "worker", False)


def workers_for(sizes: Sequence[int], devices: Sequence[torch.device], min_mean: int = 0) -> int:
    """How many threads :func:`parallel_map` uses for items of ``sizes`` elements: 1 when the mean
    item is below ``min_mean`` elements, and never more than ``sum / max`` (the largest item alone
    takes that share of the work: more workers would wait for it, and one dominating item runs with
    the intra-op threads instead)."""
    count, elements = len(sizes), sum(sizes)
    if count < 2 or elements < max(MIN_PARALLEL_ELEMENTS, min_mean * count) or in_worker():
        return 1
    if any(d.type != "cpu" for d in devices):
        return 1
    return max(1, min(torch.get_num_threads(), count, elements // max(1, max(sizes))))


def _get_pool(size: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < size:  # noqa: SLF001 - the pool's own size
            old, _pool = _pool, ThreadPoolExecutor(max_workers=size, thread_name_prefix="prunekit")
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], sizes: Sequence[int], devices: Sequence[torch.device], min_mean: int = 0
) -> list[R]:
    """``[fn(item) for item in items]``, computed by up to ``torch.get_num_threads()`` single-threaded
    workers (module docstring); ``sizes`` (elements per item) order the queue, largest first;
    ``devices``: where the items' tensors live (anything but the CPU runs serially); ``min_mean``:
    serial when the mean item is smaller (see :data:`MIN_EVENT_LAYER`).

    The first exception raised by ``fn`` is re-raised after the workers have finished the items they
    hold (no new item is started after it); so is one raised in the caller while it waits (a
    ``KeyboardInterrupt``): nothing runs on after the call returns. The caller's grad and inference
    modes hold in the workers; under a dispatch or function mode (a profiler, a FakeTensor mode, an
    operation counter), which a worker thread would not see, the map runs serially.
    """
    n = workers_for(sizes, devices, min_mean)
    if n == 1 or torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack():  # noqa: SLF001
        return [fn(item) for item in items]
    if not _map_lock.acquire(blocking=False):  # another thread's map holds the thread count
        return [fn(item) for item in items]
    try:
        return _run_on_workers(fn, items, sizes, n)
    finally:
        _map_lock.release()


def _run_on_workers(fn: Callable[[T], R], items: Sequence[T], sizes: Sequence[int], n: int) -> list[R]:
    """:func:`parallel_map` on ``n`` workers (the caller holds ``_map_lock``)."""
    order = sorted(range(len(items)), key=lambda i: -sizes[i])
    results: list[R | None] = [None] * len(items)
    errors: list[BaseException] = []
    queue = iter(order)
    lock = threading.Lock()
    grad_enabled, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def work() -> None:
        _local.worker = True
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad_enabled):
                while True:
                    with lock:
                        if errors:
                            return
                        i = next(queue, None)
                    if i is None:
                        return
                    try:
                        results[i] = fn(items[i])
                    except BaseException as err:  # re-raised in the caller's thread
                        with lock:
                            errors.append(err)
                        return
        finally:
            _local.worker = False

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' kernels never open a parallel region
    if torch.get_num_threads() != 1:  # a backend that cannot change it now: the workers would not help
        torch.set_num_threads(before)
        return [fn(item) for item in items]
    futures = []
    try:
        pool = _get_pool(n)
        for _ in range(n):
            futures.append(pool.submit(work))
        for future in futures:
            future.result()
    except BaseException as err:  # an interrupt (or a failed submit) in the caller: stop the workers first
        with lock:
            errors.append(err)
        _wait_uninterrupted(futures)
        raise
    finally:
        torch.set_num_threads(before)
    if errors:
        raise errors[0]
    return results  # type: ignore[return-value]


def _wait_uninterrupted(futures: list) -> None:
    """Wait until every worker has stopped, even through further interrupts (they stop after the item
    they hold: leaving earlier would let them change tensors after the caller's exception)."""
    pending = list(futures)
    while pending:
        try:
            pending[0].exception()
            pending.pop(0)
        except BaseException:  # noqa: BLE001 - another Ctrl-C: keep waiting, it is re-raised by the caller
            continue
