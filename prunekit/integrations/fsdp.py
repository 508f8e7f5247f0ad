"""Saving and loading a pruning session with ``torch.distributed.checkpoint`` (DCP): FSDP2, any world size.

Under FSDP2 a session's masks and scores are DTensors of this rank's rows
(:meth:`prunekit.Pruning.state_dict`); DCP saves each rank's part and loads them into another world
size (resharding). :func:`save_pruning_state` writes the tensors with DCP and the rest of the state
(config, steps, schedulers, history: plain values) as JSON beside them, so nothing of the session
state is pickled; :func:`load_pruning_state` reads the JSON, builds tensors laid out for the *current*
sharding, lets DCP fill them, and loads the whole state (checked first: a refused state changes
nothing). Both are collectives: call them on every rank. Without a process group they work in one
process too. (DCP itself pickles its own ``.metadata`` file: load checkpoints you made.)

Model and optimizer go through DCP as usual (``get_state_dict`` / ``set_state_dict`` of
``torch.distributed.checkpoint.state_dict``); see docs/distributed.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from prunekit.errors import PruningError

__all__ = ["save_pruning_state", "load_pruning_state", "saved_global_step", "STATE_FILE"]

#: the JSON file with everything but the tensors, beside DCP's files
STATE_FILE = "prunekit_state.json"
_TENSOR = "__dcp_tensor__"


def _split(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` with every tensor replaced by a placeholder naming its DCP key (collected in ``tensors``)."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {_TENSOR: path, "shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        return {str(k): _split(v, f"{path}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    return value


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def _rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_pruning_state(pruning: Any, checkpoint_id: str | os.PathLike[str]) -> None:
    """Save ``pruning.state_dict()`` into the folder ``checkpoint_id``: tensors with DCP (each rank its
    shards), the rest as ``prunekit_state.json`` (written by rank 0). Call on every rank."""
    import torch.distributed.checkpoint as dcp

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(pruning.state_dict(), "pruning", tensors)
    folder = Path(checkpoint_id)
    dcp.save(tensors, checkpoint_id=str(folder))
    if _rank0():
        tmp = folder / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(skeleton))
        tmp.replace(folder / STATE_FILE)  # complete or absent, never half written
    _barrier()


def _read_skeleton(folder: Path) -> Any:
    where = folder / STATE_FILE
    try:
        return json.loads(where.read_text())
    except FileNotFoundError:
        raise PruningError(
            f"{where}: no pruning state here; pass the folder save_pruning_state() wrote (it holds {STATE_FILE} "
            f"and DCP's files)"
        ) from None
    except (OSError, ValueError) as err:
        raise PruningError(f"{where}: cannot be read as the JSON save_pruning_state() writes ({err})") from None


def saved_global_step(checkpoint_id: str | os.PathLike[str]) -> int:
    """The ``global_step`` of the state :func:`save_pruning_state` wrote into ``checkpoint_id``."""
    step = _read_skeleton(Path(checkpoint_id)).get("global_step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise PruningError(f"{Path(checkpoint_id) / STATE_FILE}: global_step is missing or not an integer")
    return step


def load_pruning_state(pruning: Any, checkpoint_id: str | os.PathLike[str]) -> None:
    """Load a state :func:`save_pruning_state` wrote (on any number of ranks) into ``pruning`` (call on every rank).

    Raises :class:`~prunekit.errors.PruningError` naming the folder when the state file is missing or
    malformed, and (from :meth:`prunekit.Pruning.load_state_dict`) listing every problem of a state
    that does not fit the session; nothing changes then.
    """
    import torch.distributed.checkpoint as dcp

    folder = Path(checkpoint_id)
    where = folder / STATE_FILE
    skeleton = _read_skeleton(folder)
    if not isinstance(skeleton, dict):
        raise PruningError(f"{where}: expected the JSON object save_pruning_state() writes, got {type(skeleton).__name__}")
    current: dict[str, torch.Tensor] = {}
    _split(pruning.state_dict(), "pruning", current)
    template: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    _collect_template(skeleton, current, template, problems, pruning)
    if problems:
        raise PruningError(f"{where}: the saved state does not fit this session (nothing was changed):\n  " + "\n  ".join(problems))
    dcp.load(template, checkpoint_id=str(folder))
    pruning.load_state_dict(_join(skeleton, template))


def _collect_template(value: Any, current: dict[str, torch.Tensor], template: dict[str, torch.Tensor], problems: list[str], pruning: Any) -> None:
    """Tensors for DCP to load into, laid out like the session's own (its sharding, not the saver's)."""
    if isinstance(value, list):
        for v in value:
            _collect_template(v, current, template, problems, pruning)
        return
    if not isinstance(value, dict):
        return
    if _TENSOR not in value:
        for v in value.values():
            _collect_template(v, current, template, problems, pruning)
        return
    key, shape, dtype = value[_TENSOR], tuple(value.get("shape", ())), getattr(torch, str(value.get("dtype")), None)
    if not isinstance(dtype, torch.dtype):
        problems.append(f"{key}: unknown dtype {value.get('dtype')!r}")
        return
    mine = current.get(key)
    if mine is not None and tuple(mine.shape) == shape:
        template[key] = torch.empty_like(mine, dtype=dtype)
        return
    if mine is not None:
        problems.append(f"{key}: saved with shape {list(shape)}, but this session's is {list(mine.shape)}")
        return
    # scores are saved inside the pruning window only: a session loading them may not hold them yet.
    # A layer's scores load as this rank's rows; anything else (unit scores of heads and channels) whole
    parts = key.split("/")  # pruning/groups/<group>/scores/<layer>
    group = next((g for g in pruning.groups if len(parts) >= 3 and parts[1] == "groups" and g.name == parts[2]), None)
    if group is not None and len(parts) == 5 and parts[3] == "scores" and parts[4] in group.mask8 and len(shape) == 2:
        template[key] = group.empty_scores(parts[4], shape, dtype)
    else:
        template[key] = torch.empty(shape, dtype=dtype)
