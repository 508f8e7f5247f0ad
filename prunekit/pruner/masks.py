"""Applying masks in place: weights, gradients and optimizer state.

**Storage.** A layer's mask is one ``int8`` tensor of the weight's shape on the weight's device
(1 byte per weight): ``-1`` (all bits set) = kept, ``0`` = pruned. The public ``Pruning.masks``
are bool views computed on access (True = kept).

**Applying.** ``t &= mask`` on the integer view of a floating tensor (``int16`` for 16-bit,
``int32`` for 32-bit, ``int64`` for 64-bit dtypes): ``-1`` sign-extends to all ones, so kept
values keep every bit and pruned ones become exactly ``+0.0``, even where ``t`` holds NaN or inf
(a multiply would leave NaN). On CPU a mixed-dtype op (int8 mask with int32 tensor, or a bool
mask with ``masked_fill_``, ``mul_`` or ``torch.where``) runs at 1-4 GB/s, so the mask is widened
chunk by chunk into a small cached integer buffer that stays in cache (``int8 -> int32`` is a
vectorized copy) and the ``&`` then runs at the speed of a same-dtype multiply (~20 GB/s on this
project's CPU, as fast as multiplying by a float mask that would cost 4 bytes per weight). On
CUDA one mixed-dtype kernel does it (casts are free there). No host synchronisation either way.
Everything is done in place under ``torch.no_grad()``, so parameter identity never changes
(optimizers, DDP, ``torch.compile`` and ``state_dict`` keys are unaffected) and nothing sits in the
forward path (no hooks, no parametrizations).

Why pruned weights stay exactly zero:

* at every event the pruned weights **and** every optimizer state tensor of the weight's shape
  (momentum buffers, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``...) are zeroed, except that
  Adam/AdamW second moments are set to :data:`SECOND_MOMENT_FLOOR` (see there why);
* before every optimizer step the pruned gradients are zeroed.

For SGD (momentum, Nesterov, weight decay), Adam and AdamW (weight decay, AMSGrad) that alone
keeps a pruned weight at exactly 0 (every term of its update is a product with 0). Other
optimizers may move a weight whose gradient is zero (e.g. by a constant), so after their step the
mask is applied again (:func:`apply_mask_`): one more pass over the pruned weights per step, the
price of correctness for any optimizer. :func:`reapply_needed` decides.
"""

from __future__ import annotations

import math
import struct
import threading
from typing import Iterable

import torch

from prunekit.pruner.parallel import parallel_map
from prunekit.pruner.sharding import local_tensor

__all__ = [
    "KEPT",
    "apply_mask_",
    "mask_grad_",
    "mask_optimizer_state_",
    "reapply_needed",
    "floor_second_moments_",
    "second_moment_refresh_period",
    "SECOND_MOMENT_FLOOR",
    "new_mask",
    "kept_bool",
    "pruned_bool",
    "EXACT_ZERO_OPTIMIZERS",
    "CHUNK",
    "zero_pruned_many_",
]

#: optimizers whose update of a weight with zero value, zero gradient and zero state is exactly 0
EXACT_ZERO_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)

#: mask value of a kept weight (``0`` = pruned)
KEPT = -1
#: elements per chunk of the CPU path (a 2 MiB int32 buffer: cache-resident, few Python calls)
CHUNK = 1 << 19

INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
#: the widening buffers, one set per thread (layers are masked on several threads, see ``parallel``)
_local = threading.local()


def new_mask(weight: torch.Tensor) -> torch.Tensor:
    """An all-kept int8 mask of ``weight``'s shape on its device (contiguous)."""
    return torch.full(weight.shape, KEPT, dtype=torch.int8, device=weight.device)


def kept_bool(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor, True = kept (new tensor)."""
    return mask != 0


def pruned_bool(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor, True = pruned (new tensor)."""
    return mask == 0


def widen_buffer(device: torch.device, dtype: torch.dtype, numel: int | None = None) -> torch.Tensor:
    """The buffer a mask chunk of up to ``numel`` elements is widened into: the calling thread's cached
    one (``CHUNK`` elements, per device and integer dtype), or a new one when ``numel`` is larger."""
    numel = CHUNK if numel is None else numel
    if numel > CHUNK:
        return torch.empty(numel, dtype=dtype, device=device)
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    key = (device, dtype)
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        buf = buffers[key] = torch.empty(CHUNK, dtype=dtype, device=device)
    return buf


def clear_buffers() -> None:
    """Free the calling thread's widening buffers (tests that change :data:`CHUNK` call it)."""
    _local.buffers = {}


@torch.no_grad()
def zero_pruned_(t: torch.Tensor, mask: torch.Tensor, chunk: int | None = None) -> None:
    """``t[mask == 0] = 0`` in place, exactly (NaN/inf included); ``mask`` is an int8 mask of ``t``'s shape.

    ``t`` keeps its identity. Fast path: ``t`` and ``mask`` contiguous and ``t`` of a 2/4/8-byte
    floating (or integer) dtype; otherwise a ``masked_fill_`` with a temporary bool mask. On CPU
    the mask is widened ``chunk`` elements at a time (events pass their chunk, so the number of
    operations per layer does not grow with its size; a chunk above ``CHUNK`` allocates its buffer).
    """
    if mask.device != t.device:
        mask = mask.to(t.device)
    int_dtype = INT_OF_SIZE.get(t.element_size())
    if int_dtype is None or t.is_complex() or t.dtype == torch.bool or not (t.is_contiguous() and mask.is_contiguous()):
        t.masked_fill_(mask == 0, 0)
        return
    bits = t.view(int_dtype).view(-1)
    flat = mask.view(-1)
    if t.device.type != "cpu":
        bits.bitwise_and_(flat)  # one kernel; the int8 mask is widened on the fly
        return
    if int_dtype == torch.int8:
        bits.bitwise_and_(flat)
        return
    n = bits.numel()
    chunk = max(1, min(CHUNK if chunk is None else chunk, n))
    buf = widen_buffer(t.device, int_dtype, chunk)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        and_widened_(bits[start:stop], flat[start:stop], buf)


def zero_pruned_many_(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], chunk: int | None = None) -> None:
    """:func:`zero_pruned_` for every ``(tensor, mask)`` pair: contiguous CPU tensors are cut into flat
    pieces of ``chunk`` elements (``CHUNK`` by default) that run in parallel
    (:func:`~prunekit.pruner.parallel.parallel_map`: single-threaded pieces, robust to busy cores);
    the others one by one."""
    chunk = CHUNK if chunk is None else max(1, chunk)
    pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
    for t, mask in pairs:
        if t.device.type == "cpu" and mask.device == t.device and t.is_contiguous() and mask.is_contiguous() and not t.is_complex():
            flat_t, flat_m = t.view(-1), mask.view(-1)
            pieces.extend((flat_t[a : a + chunk], flat_m[a : a + chunk]) for a in range(0, flat_t.numel(), chunk))
        else:
            zero_pruned_(t, mask, chunk)
    parallel_map(lambda piece: zero_pruned_(piece[0], piece[1], chunk), pieces, [p.numel() for p, _ in pieces], [p.device for p, _ in pieces])


def and_widened_(bits: torch.Tensor, mask: torch.Tensor, buf: torch.Tensor) -> None:
    """``bits &= mask`` for a flat integer chunk and its flat int8 mask, through the widening buffer ``buf``.

    The inner step of :func:`zero_pruned_`, without its checks: for loops that already hold
    validated chunks (at most ``buf.numel()`` elements, ``buf`` of ``bits``' dtype).
    """
    wide = buf[: bits.numel()]
    wide.copy_(mask)
    bits.bitwise_and_(wide)


@torch.no_grad()
def fill_pruned_(t: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    """``t[mask == 0] = value`` in place, exactly; returns ``t`` (``mask``: int8 of ``t``'s shape, 0 = pruned).

    Fast path (contiguous float32 on CPU): bitwise, chunk by chunk through the cached widening
    buffer (``bits & mask | ~mask & bits(value)``), so no slow bool kernel runs; otherwise one
    ``masked_fill_``. ``value == 0`` is :func:`zero_pruned_`.
    """
    if value == 0:
        zero_pruned_(t, mask)
        return t
    if t.device.type != "cpu" or t.dtype != torch.float32 or not (t.is_contiguous() and mask.is_contiguous()):
        return t.masked_fill_(mask.to(t.device) == 0, value)
    value_bits = struct.unpack("<i", struct.pack("<f", value))[0]  # the float32 bits, without a tensor op
    bits, flat = t.view(torch.int32).view(-1), mask.view(-1)
    buf = widen_buffer(t.device, torch.int32)
    for start in range(0, bits.numel(), CHUNK):
        stop = min(start + CHUNK, bits.numel())
        wide = buf[: stop - start]
        wide.copy_(flat[start:stop])
        bits[start:stop].bitwise_and_(wide)  # pruned -> +0
        bits[start:stop].bitwise_or_(wide.bitwise_not_().bitwise_and_(value_bits))  # pruned -> value
    return t


def mark_pruned_(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Set the pruned entries of float32 ``scores`` to exactly ``-1.0`` (``PRUNED``) in place; returns ``scores``."""
    return fill_pruned_(scores, mask, -1.0)


@torch.no_grad()
def apply_mask_(weight: torch.Tensor, mask: torch.Tensor, chunk: int | None = None) -> None:
    """Zero the pruned weights in place (``mask``: int8, ``0`` = pruned; ``chunk``: see :func:`zero_pruned_many_`).
    For a sharded (DTensor) weight, ``mask`` is that of this rank's shard."""
    zero_pruned_many_([(local_tensor(weight.data), mask)], chunk)


@torch.no_grad()
def mask_grad_(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the gradient of the pruned weights in place (no-op without a gradient)."""
    grad = weight.grad
    if grad is None:
        return
    grad = local_tensor(grad)
    if grad.layout == torch.sparse_coo:  # nn.Embedding(sparse=True): zero the values at pruned positions
        indices, values = grad._indices(), grad._values()
        if values.numel():
            kept = mask.to(indices.device)[tuple(indices[: grad.sparse_dim()])]
            values.masked_fill_(kept == 0, 0)
        return
    if grad.layout != torch.strided:
        raise TypeError(f"pruning needs dense or sparse COO gradients, got a {grad.layout} gradient")
    zero_pruned_(grad, mask)


@torch.no_grad()
def mask_optimizer_state_(
    optimizers: Iterable[torch.optim.Optimizer], weight: torch.Tensor, mask: torch.Tensor, chunk: int | None = None
) -> None:
    """Zero the pruned entries of every optimizer state tensor shaped like ``weight`` (``chunk``: see :func:`zero_pruned_many_`).
    For a sharded (DTensor) weight: this rank's shard of each state tensor, ``mask`` that of the shard."""
    states = []
    for optimizer in optimizers:
        state = optimizer.state.get(weight)
        if not state:
            continue
        states += [
            (local_tensor(value), mask) for value in state.values()
            if isinstance(value, torch.Tensor) and value.shape == weight.shape and local_tensor(value).shape == mask.shape
        ]
    zero_pruned_many_(states, chunk)


#: what the second-moment state (``exp_avg_sq``, ``max_exp_avg_sq``) of a pruned weight is set to
#: instead of 0. PyTorch's CPU ``sqrt`` (inside every Adam/AdamW step) runs ~9x slower on exact
#: zeros than on normal numbers (measured on this project's CPU), so zero second moments made
#: AdamW steps ~30% slower; and with ``eps=0`` they would give 0/0. The pruned weight's update is
#: ``m / (sqrt(v) + eps)`` with ``m = 0`` exactly, so it stays exactly 0, and ``sqrt(1e-30)`` is far
#: below any ``eps`` should the weight ever train again.
SECOND_MOMENT_FLOOR = 1e-30
SECOND_MOMENT_KEYS = ("exp_avg_sq", "max_exp_avg_sq")
_ADAM_FAMILY: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.Adam, torch.optim.AdamW)


@torch.no_grad()
def floor_second_moments_(optimizers: Iterable[torch.optim.Optimizer], weight: torch.Tensor, mask: torch.Tensor) -> bool:
    """Set the pruned entries of Adam/AdamW's second moments of ``weight`` to :data:`SECOND_MOMENT_FLOOR`.

    Returns True when some optimizer held such state (float32 / bfloat16 / float64 states only:
    float16 cannot hold the floor as a normal number).
    """
    found = False
    for optimizer in optimizers:
        state = optimizer.state.get(weight) if type(optimizer) in _ADAM_FAMILY else None
        if not state:
            continue
        for key in SECOND_MOMENT_KEYS:
            value = state.get(key)
            if isinstance(value, torch.Tensor) and value.shape == weight.shape and value.dtype in (torch.float32, torch.bfloat16, torch.float64):
                fill_pruned_(local_tensor(value), mask, SECOND_MOMENT_FLOOR)
                found = True
    return found


def second_moment_refresh_period(optimizers: Iterable[torch.optim.Optimizer]) -> int | None:
    """Optimizer steps after which a floored second moment has decayed by ``1e-6`` (``None``: no Adam/AdamW).

    Between events the floor decays by ``beta2`` per step (the gradient is 0); refreshing it this
    often keeps it a normal float32 (never a denormal or a zero, both slow in ``sqrt``).
    """
    betas = [float(group["betas"][1]) for o in optimizers if type(o) in _ADAM_FAMILY for group in o.param_groups]
    if not betas:
        return None
    beta2 = min(betas)
    if beta2 <= 0.0:
        return 1
    if beta2 >= 1.0:
        return 1 << 30
    return max(1, int(math.log(1e-6) / math.log(beta2)))


def reapply_needed(optimizers: Iterable[torch.optim.Optimizer]) -> bool:
    """True unless every optimizer is exactly one of :data:`EXACT_ZERO_OPTIMIZERS` (subclasses may differ)."""
    optimizers = list(optimizers)
    return not optimizers or any(type(o) not in EXACT_ZERO_OPTIMIZERS for o in optimizers)
