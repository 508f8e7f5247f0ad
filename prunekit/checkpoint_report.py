"""What a checkpoint's sparsity really is: per-layer shape, element-wise sparsity, and which
patterns its zeros satisfy (``prunekit report CHECKPOINT``).

Accepted files (``torch.load(..., weights_only=True)``, never the full unpickler): a model ``state_dict``; a training checkpoint holding one under
``model``, ``state_dict``, ``model_state_dict`` or ``module`` (Lightning's ``state_dict`` included);
a Hugging Face ``model.safetensors``; a Hugging Face model folder or Trainer ``checkpoint-N`` folder
(sharded weights too, and the pruning state the Trainer callback saved beside them). Every floating tensor with at least 2 dimensions whose name
ends in ``weight`` is a layer. The 2-D view is the one the pruner uses for ``Linear`` / ``Conv``
(``[out, k... · in]``); a state dict does not say which 2-D weights are transposed (GPT-2's
``Conv1D``), so those are read as ``[out, in]``.

A pattern is *satisfied* when the zeros are exactly a union of its units: ``NxM`` blocks entirely
zero or entirely kept beside each other (and at least one block zero); ``N:M``: every group of M
consecutive input weights holds at least N zeros (``2:4``-compliant: the layout sparse tensor
cores accelerate); ``channelx1`` / ``1xchannel``: whole input columns / output rows are zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from prunekit.pruner.selection import Layout

__all__ = ["LayerSparsity", "HF_WEIGHT_FILES", "load_weights", "safe_load", "analyse", "satisfied_patterns", "CHECKED_PATTERNS"]

#: the patterns ``report`` checks, in the order they are listed
CHECKED_PATTERNS = ("2:4", "1:4", "4x1", "1x4", "channelx1", "1xchannel")
_STATE_KEYS = ("model", "state_dict", "model_state_dict", "module")


@dataclass(frozen=True)
class LayerSparsity:
    """One layer of a checkpoint: name, shape, element-wise sparsity and satisfied patterns."""

    name: str
    shape: tuple[int, ...]
    sparsity: float
    patterns: tuple[str, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


#: the weight files of a Hugging Face model folder, tried in order (an ``.index.json`` lists shards)
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json", "model.sparse.safetensors")
#: the file the Hugging Face Trainer callback writes beside the weights of a checkpoint
PRUNING_STATE_FILE = "prunekit_pruning.pt"


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensors of a checkpoint and, if it holds one, a prunekit ``Pruning.state_dict()``.

    ``path`` is a file (see the module docstring) or a folder: a Hugging Face model folder or a
    Trainer ``checkpoint-N`` folder, whose weights are read from :data:`HF_WEIGHT_FILES` (sharded
    too) and whose pruning state from ``prunekit_pruning.pt`` beside them, when it is there.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        return _load_folder(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path), None
    obj = safe_load(path)
    pruning = _find_pruning_state(obj)
    tensors = _find_state_dict(obj)
    if tensors is None and pruning is not None:
        raise ValueError(
            f"{path}: this is prunekit's pruning state (step {pruning.get('global_step')}, groups "
            f"{', '.join(map(str, pruning.get('groups', {})))}), not the model's weights; run prunekit report on the "
            f"folder that holds it beside the weights ({' or '.join(HF_WEIGHT_FILES[::2])}), e.g. prunekit report {path.parent}"
        )
    if tensors is None:
        raise ValueError(
            f"{path}: no model weights found; expected a state_dict or a checkpoint with one of the keys {', '.join(_STATE_KEYS)}"
        )
    return tensors, pruning


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A plain safetensors file, or a compact one written by :func:`prunekit.save_sparse` (decoded)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError(f"{path}: reading .safetensors files needs the safetensors package: pip install safetensors") from None
    from prunekit.sparse_checkpoint import is_sparse_checkpoint, load_sparse

    if is_sparse_checkpoint(path):
        return load_sparse(path)
    return dict(load_file(str(path)))


def _load_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """A Hugging Face model folder or Trainer checkpoint: its weights (sharded or not) and the pruning state beside them."""
    import json

    found = next((folder / name for name in HF_WEIGHT_FILES if (folder / name).is_file()), None)
    if found is None:
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
        raise FileNotFoundError(
            f"{folder}: no model weights in this folder (looked for {', '.join(HF_WEIGHT_FILES)}; it holds {present}); "
            f"pass the model folder, a checkpoint-N folder or a weights file"
        )
    if found.name.endswith(".index.json"):
        index = json.loads(found.read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{found}: its weight_map lists no shard files")
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            shard_path = folder / shard
            if Path(shard).name != shard or not shard_path.is_file():
                raise FileNotFoundError(f"{found}: shard {shard!r} is not a file in {folder}")
            tensors.update(_load_safetensors(shard_path) if shard.endswith(".safetensors") else _state_dict_of(shard_path))
    elif found.suffix == ".safetensors":
        tensors = _load_safetensors(found)
    else:
        tensors = _state_dict_of(found)
    pruning = None
    if (folder / PRUNING_STATE_FILE).is_file():
        pruning = _find_pruning_state(safe_load(folder / PRUNING_STATE_FILE))
    return tensors, pruning


def _state_dict_of(path: Path) -> dict[str, torch.Tensor]:
    tensors = _find_state_dict(safe_load(path))
    if tensors is None:
        raise ValueError(f"{path}: no model weights found in this file")
    return tensors


def safe_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never arbitrary objects.

    A file that needs the full unpickler is refused (unpickling runs code chosen by whoever wrote
    the file); the error says how to convert a file one trusts.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every refusal of the safe unpickler means the same to the user
        reason = str(err).strip().splitlines()
        detail = next((line.strip() for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        raise ValueError(
            f"{path}: refusing to load: the file holds Python objects beyond tensors and plain containers "
            f"({detail[:200]}), and unpickling them could run code. prunekit never loads such files. If you trust "
            f"the file, convert it once, e.g. python -c \"import torch; c = torch.load('{path}', weights_only=False); "
            f"torch.save(c['state_dict'] if 'state_dict' in c else c.state_dict(), 'weights.pt')\", "
            f"or save model.state_dict() (or a .safetensors file) in the first place"
        ) from None


def _find_pruning_state(obj: Any) -> dict[str, Any] | None:
    if isinstance(obj, Mapping):
        if "groups" in obj and "global_step" in obj and "config" in obj:
            return dict(obj)
        for value in obj.values():
            if isinstance(value, Mapping):
                found = _find_pruning_state(value)
                if found is not None:
                    return found
    return None


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors
        for key in _STATE_KEYS:
            if key in obj:
                found = _find_state_dict(obj[key])
                if found is not None:
                    return found
    elif hasattr(obj, "state_dict"):
        return _find_state_dict(obj.state_dict())
    return None


def as_2d(weight: torch.Tensor) -> torch.Tensor:
    """The pruner's view: ``[out, in]`` for 2-D weights, ``[out, k... · in]`` for convolutions."""
    return Layout("linear" if weight.dim() == 2 else "conv", tuple(weight.shape)).to_2d(weight)


def satisfied_patterns(zero2d: torch.Tensor) -> tuple[str, ...]:
    """The patterns of :data:`CHECKED_PATTERNS` that the zero set ``zero2d`` (bool, 2-D) satisfies."""
    if not bool(zero2d.any()):
        return ()
    rows, cols = zero2d.shape
    found = []
    for pattern in CHECKED_PATTERNS:
        if ":" in pattern:
            n, m = (int(x) for x in pattern.split(":"))
            if cols % m == 0 and bool((zero2d.reshape(rows, cols // m, m).sum(-1) >= n).all()):
                found.append(pattern)
        elif pattern == "channelx1":
            if bool((zero2d.all(0) == zero2d.any(0)).all()):
                found.append(pattern)
        elif pattern == "1xchannel":
            if bool((zero2d.all(1) == zero2d.any(1)).all()):
                found.append(pattern)
        else:
            br, bc = (int(x) for x in pattern.split("x"))
            if rows % br == 0 and cols % bc == 0:
                blocks = zero2d.reshape(rows // br, br, cols // bc, bc)
                if bool((blocks.all(3).all(1) == blocks.any(3).any(1)).all()):
                    found.append(pattern)
    return tuple(found)


def analyse(tensors: Mapping[str, torch.Tensor]) -> list[LayerSparsity]:
    """One row per weight tensor (floating, at least 2-D, name ending in ``weight``)."""
    rows = []
    for name, tensor in tensors.items():
        if not (name.endswith("weight") and tensor.is_floating_point() and tensor.dim() >= 2):
            continue
        zero = as_2d(tensor) == 0
        rows.append(
            LayerSparsity(
                name=name.removesuffix(".weight"),
                shape=tuple(tensor.shape),
                sparsity=float(zero.float().mean()) if zero.numel() else 0.0,
                patterns=satisfied_patterns(zero),
            )
        )
    return rows
