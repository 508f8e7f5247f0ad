"""Compact sparse checkpoints: a pruned model's zeros stored as a bitmask, in safetensors.

A floating-point tensor with zeros is stored as two tensors: ``<name>::values``, its nonzero entries
in row-major order, and ``<name>::bitmask``, one bit per element (1 = nonzero; bit 7 of byte 0 is
element 0), ``ceil(numel / 8)`` bytes. It is stored that way only when that is smaller, i.e. when

    nnz · itemsize + ceil(numel / 8) < numel · itemsize,

so above a sparsity of 1/(8 · itemsize) (3.1% for fp32, 6.25% for fp16/bf16); every other tensor is
stored as it is. A tensor that shares its memory with an earlier one (tied embeddings) is stored once
and named as an alias. The layout of every tensor lives in the file's metadata, so the file decodes
back to the exact ``state_dict`` it came from (a ``-0.0`` comes back as ``0.0``): load it into a plain
model, no prunekit module needed at inference time.

Why a bitmask and not N:M indices: for 2:4 the two cost the same (4 bits of metadata per group of 4
either way) and the bitmask also serves 1x1, 4x1, channel and any other pattern. Sparse kernels that
want 2:4 metadata build it from the decoded weights (:func:`prunekit.export.to_semi_structured`).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from prunekit.errors import PrunekitError

__all__ = ["SparseCheckpointError", "SparseCheckpointStats", "load_sparse", "save_sparse", "is_sparse_checkpoint"]

FORMAT = "prunekit.sparse"
VERSION = "1"
SPARSE_FILE = "model.sparse.safetensors"
_SHIFTS = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)


class SparseCheckpointError(PrunekitError, ValueError):
    """A compact checkpoint that cannot be written, read or loaded as asked."""


@dataclass
class SparseCheckpointStats:
    """What :func:`save_sparse` wrote: ``dense_bytes`` is what the tensors take uncompressed."""

    path: Path
    tensors: int
    compacted: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    dense_bytes: int = 0
    file_bytes: int = 0

    @property
    def saved_bytes(self) -> int:
        return self.dense_bytes - self.file_bytes

    def __str__(self) -> str:
        share = self.file_bytes / self.dense_bytes if self.dense_bytes else 1.0
        return (
            f"{self.path}: {self.tensors} tensors, {len(self.compacted)} stored as bitmask + values; "
            f"{_mib(self.file_bytes)} instead of {_mib(self.dense_bytes)} dense ({share:.1%}; {_mib(self.saved_bytes)} saved)"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("compact sparse checkpoints are safetensors files: pip install 'prunekit[sparse]' (or safetensors)") from None
    return safetensors.torch


def pack_bits(nonzero: torch.Tensor) -> torch.Tensor:
    """A flat bool tensor as bytes, 8 elements per byte, the first element in the highest bit."""
    pad = (-nonzero.numel()) % 8
    bits = torch.nn.functional.pad(nonzero.reshape(-1).to(torch.uint8), (0, pad)).view(-1, 8)
    packed = torch.zeros(bits.shape[0], dtype=torch.uint8)
    for column, shift in enumerate(_SHIFTS.tolist()):
        packed |= bits[:, column] << shift
    return packed


def unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The inverse of :func:`pack_bits`: the first ``numel`` bits as a flat bool tensor."""
    return ((packed.unsqueeze(1) >> _SHIFTS) & 1).view(-1)[:numel].bool()


def _worth_compacting(tensor: torch.Tensor, nonzeros: int) -> bool:
    itemsize = tensor.element_size()
    return nonzeros * itemsize + math.ceil(tensor.numel() / 8) < tensor.numel() * itemsize


def save_sparse(source: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> SparseCheckpointStats:
    """Write ``source`` (a model, whose ``state_dict()`` is taken, or a state dict) to ``path``
    (a file, or a folder that gets :data:`SPARSE_FILE`) with its zeros stored as bitmasks.

    Returns what was written and the bytes saved. The file is written next to its final name and
    renamed into place, so an existing file is never left half-written.
    """
    state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    path = Path(path)
    if path.is_dir():
        path = path / SPARSE_FILE
    if path.suffix != ".safetensors":
        raise SparseCheckpointError(f"{path}: a compact checkpoint is a .safetensors file; name it e.g. {SPARSE_FILE}")
    stored: dict[str, torch.Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    stats = SparseCheckpointStats(path=path, tensors=len(state))
    seen: dict[tuple, str] = {}
    storages = Counter(t.untyped_storage().data_ptr() for t in state.values() if isinstance(t, torch.Tensor) and t.numel())
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise SparseCheckpointError(f"{name!r} is a {type(tensor).__name__}, not a tensor; save_sparse stores tensors only")
        if "::" in name:
            raise SparseCheckpointError(f"{name!r}: '::' is reserved for the compact encoding; rename the tensor")
        tensor = tensor.detach()
        stats.dense_bytes += tensor.numel() * tensor.element_size()
        entry: dict[str, Any] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        key = _memory_key(tensor)
        if key is not None and key in seen:
            layout[name] = {**entry, "encoding": "alias", "of": seen[key]}
            stats.aliases.append(name)
            continue
        if key is not None:
            seen[key] = name
        tensor = tensor.to("cpu")
        if tensor.is_floating_point() and tensor.numel() > 0:
            nonzero = tensor.reshape(-1) != 0
            count = int(nonzero.sum())
            if _worth_compacting(tensor, count):
                stored[f"{name}::values"] = tensor.reshape(-1)[nonzero]
                stored[f"{name}::bitmask"] = pack_bits(nonzero)
                layout[name] = {**entry, "encoding": "bitmask", "nonzeros": count}
                stats.compacted.append(name)
                continue
        shares_memory = tensor.numel() > 0 and storages[tensor.untyped_storage().data_ptr()] > 1
        stored[name] = tensor.contiguous().clone() if shares_memory else tensor.contiguous()  # safetensors refuses shared memory
        layout[name] = {**entry, "encoding": "dense"}
    metadata = {"format": FORMAT, "version": VERSION, "layout": json.dumps(layout)}
    partial = path.with_name(path.name + ".partial")
    try:
        _safetensors().save_file(stored, str(partial), metadata=metadata)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    stats.file_bytes = path.stat().st_size
    return stats


def _memory_key(tensor: torch.Tensor) -> tuple | None:
    """Identifies a view of memory: two state-dict entries with the same key are one tensor (tied)."""
    if tensor.numel() == 0:
        return None
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device)


def is_sparse_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file written by :func:`save_sparse` (reads the header only)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with _safetensors().safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - not a readable safetensors file: not ours (the plain reader says why)
        return False


def load_sparse(path: str | os.PathLike[str], into: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The dense state dict stored in a compact checkpoint (a file, or a folder holding :data:`SPARSE_FILE`).

    With ``into``, also load it into that model, strictly: the names and shapes are checked against
    the model's first, so a file that does not fit leaves the model untouched.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SPARSE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    st = _safetensors()
    with st.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise SparseCheckpointError(
                f"{path}: not a compact prunekit checkpoint (its metadata has no format={FORMAT!r}); "
                f"a plain safetensors file loads with safetensors.torch.load_file"
            )
        if metadata.get("version") != VERSION:
            raise SparseCheckpointError(f"{path}: compact checkpoint version {metadata.get('version')!r}; this prunekit reads version {VERSION}")
        try:
            layout = json.loads(metadata["layout"])
        except (KeyError, json.JSONDecodeError) as err:
            raise SparseCheckpointError(f"{path}: the layout in its metadata is missing or not JSON ({err})") from None
        present = set(f.keys())
        state: dict[str, torch.Tensor] = {}
        for name, entry in layout.items():
            state[name] = _decode(path, name, entry, f, present, state)
    if into is not None:
        _load_into(path, into, state)
    return state


def _decode(path: Path, name: str, entry: Mapping[str, Any], f: Any, present: set[str], done: Mapping[str, torch.Tensor]) -> torch.Tensor:
    def fail(what: str) -> SparseCheckpointError:
        return SparseCheckpointError(f"{path}: tensor {name!r}: {what}; the file is damaged or was not written by prunekit.save_sparse")

    try:
        shape = torch.Size(entry["shape"])
        dtype = getattr(torch, entry["dtype"])
        encoding = entry["encoding"]
    except (KeyError, TypeError, AttributeError):
        raise fail(f"layout entry {dict(entry)!r} lacks a valid shape, dtype or encoding") from None
    if not isinstance(dtype, torch.dtype):
        raise fail(f"unknown dtype {entry['dtype']!r}")
    if encoding == "alias":
        target = entry.get("of")
        if target not in done:
            raise fail(f"alias of {target!r}, which is not stored before it")
        return done[target]
    if encoding == "dense":
        if name not in present:
            raise fail("missing")
        tensor = f.get_tensor(name)
        if tensor.shape != shape or tensor.dtype != dtype:
            raise fail(f"stored as {tuple(tensor.shape)} {tensor.dtype}, the layout says {tuple(shape)} {dtype}")
        return tensor
    if encoding != "bitmask":
        raise fail(f"unknown encoding {encoding!r}")
    for part in ("values", "bitmask"):
        if f"{name}::{part}" not in present:
            raise fail(f"its {part} are missing")
    values, packed = f.get_tensor(f"{name}::values"), f.get_tensor(f"{name}::bitmask")
    numel = shape.numel()
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != math.ceil(numel / 8):
        raise fail(f"bitmask of {packed.numel()} {packed.dtype} for {numel} elements")
    nonzero = unpack_bits(packed, numel)
    count = int(nonzero.sum())
    if values.dtype != dtype or values.dim() != 1 or values.numel() != count or count != entry.get("nonzeros", count):
        raise fail(f"{values.numel()} {values.dtype} values for a bitmask with {count} set bits")
    tensor = torch.zeros(numel, dtype=dtype)
    tensor[nonzero] = values
    return tensor.view(shape)


def _load_into(path: Path, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing from the file: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"not in the model: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(f"different shapes: {'; '.join(wrong[:8])}")
    if problems:
        raise SparseCheckpointError(
            f"{path} does not fit {type(model).__name__} ({'; '.join(problems)}); the model was left unchanged. "
            f"Build the model the checkpoint was saved from (same config), or call load_sparse(path) for the tensors alone"
        )
    model.load_state_dict(state, strict=True)
