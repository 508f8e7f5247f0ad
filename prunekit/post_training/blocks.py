"""Finding a model's sequence of blocks, and the inputs the first block receives.

One-shot pruning processes a model block by block (a decoder layer of a language model), feeding
each block the calibration activations produced by the blocks before it. :func:`find_blocks` finds
that sequence from the module structure: the paths Hugging Face models use (``model.layers`` of
Llama/Qwen/Gemma/Mistral, ``transformer.h`` of GPT-2, ``model.decoder.layers`` of OPT,
``gpt_neox.layers``, ``transformer.blocks``), or else the largest ``nn.ModuleList`` of identical
blocks; ``blocks:`` in the config names the path explicitly. A model without such a list is a
clear error, never an empty loop (INC's search divided by zero there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from prunekit.errors import PruningError

__all__ = ["Blocks", "find_blocks", "BlockInputs", "capture_block_inputs", "run_block", "as_model_inputs"]

#: where Hugging Face models keep their blocks, tried in order
KNOWN_PATHS = ("model.layers", "model.model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers", "transformer.blocks", "layers", "h")


@dataclass
class Blocks:
    """The blocks of a model: the path of their container and the blocks in order."""

    path: str
    modules: list[nn.Module]

    def __len__(self) -> int:
        return len(self.modules)

    def name(self, index: int) -> str:
        return f"{self.path}.{index}"


def _get(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def find_blocks(model: nn.Module, path: str | None = None) -> Blocks:
    """The model's blocks: at ``path`` (dotted, e.g. ``model.layers``), at a known path, or the largest
    ``nn.ModuleList`` whose entries all have the same class. Raises :class:`PruningError` when none."""
    if path is not None:
        found = _get(model, path)
        if not isinstance(found, (nn.ModuleList, nn.Sequential)) or len(found) == 0:
            lists = ", ".join(n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)) or "none"
            raise PruningError(
                f"blocks: {path!r} is not a non-empty nn.ModuleList of {type(model).__name__} (module lists: {lists}); "
                f"name the list of the model's blocks"
            )
        return Blocks(path, list(found))
    for known in KNOWN_PATHS:
        found = _get(model, known)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return Blocks(known, list(found))
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
    if best is None:
        raise PruningError(
            f"cannot find the blocks of {type(model).__name__}: no nn.ModuleList of identical blocks (tried "
            f"{', '.join(KNOWN_PATHS)}); one-shot pruning feeds blocks one after another, so name the list with "
            f"blocks: <dotted path> in the config, or prune the model's layers with a training-time session"
        )
    return Blocks(best[1], list(best[2]))


def as_model_inputs(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A calibration batch as ``(args, kwargs)`` of the model: a tensor (input ids), a dict of tensors
    (``model(**batch)``), or a tuple/list whose first element is one of those (labels are dropped)."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, dict):
        return (), {k: v for k, v in batch.items() if k != "labels"}
    raise PruningError(
        f"a calibration batch must be a tensor of input ids, a dict of tensors or a tuple starting with one, got "
        f"{type(batch).__name__}"
    )


class _Captured(Exception):
    """Stops the model's forward pass once the first block's inputs are recorded."""


@dataclass
class BlockInputs:
    """What the current block receives for every calibration batch: the hidden states (replaced by
    the block's outputs as blocks are processed) and the other arguments (masks, positions), which
    stay the same from block to block."""

    hidden: list[torch.Tensor]
    kwargs: list[dict[str, Any]]
    offload: bool
    device: torch.device

    def __len__(self) -> int:
        return len(self.hidden)

    def items(self) -> Iterator[tuple[int, torch.Tensor, dict[str, Any]]]:
        for i, (h, kw) in enumerate(zip(self.hidden, self.kwargs)):
            yield i, h.to(self.device, non_blocking=True), kw

    def replace(self, index: int, output: torch.Tensor) -> None:
        """A block's output for batch ``index`` becomes the next block's input (kept where inputs are kept)."""
        self.hidden[index] = output.detach().to("cpu" if self.offload else self.device)

    def tokens(self) -> int:
        return sum(h.shape[0] * (h.shape[1] if h.dim() > 2 else 1) for h in self.hidden)


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_move(v, device) for v in value)
    if isinstance(value, list):
        return [_move(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


@torch.no_grad()
def capture_block_inputs(model: nn.Module, first: nn.Module, calibration: Iterable[Any], device: torch.device, offload: bool) -> BlockInputs:
    """Run the model on every calibration batch up to ``first``; record what ``first`` receives.

    Batches go to the device of the model's first parameter; the recorded hidden states are kept on
    ``device`` (the CPU with ``offload``), the other arguments on ``device``.
    """
    hidden: list[torch.Tensor] = []
    kwargs: list[dict[str, Any]] = []
    store = torch.device("cpu") if offload else device

    def hook(module: nn.Module, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        h = args[0] if args else kw.pop("hidden_states")
        hidden.append(h.detach().to(store))
        rest = {k: v for k, v in kw.items() if k not in ("hidden_states", "past_key_value", "past_key_values", "cache", "layer_past")}
        rest.update({f"__arg{i}": a for i, a in enumerate(args[1:], start=1)})
        kwargs.append(_move(rest, device))
        raise _Captured

    source = next(model.parameters()).device
    takes_use_cache = "use_cache" in _forward_params(model)
    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in calibration:
            args, kw = as_model_inputs(batch)
            args, kw = _move(args, source), _move(kw, source)
            if takes_use_cache:
                kw.setdefault("use_cache", False)
            try:
                model(*args, **kw)
            except _Captured:
                continue
            raise PruningError("the model's forward pass never reached its first block; check blocks: in the config")
    finally:
        handle.remove()
    if not hidden:
        raise PruningError("the calibration data is empty: pass an iterable of batches (tensors of input ids or dicts)")
    return BlockInputs(hidden, kwargs, offload, device)


def _forward_params(model: nn.Module) -> tuple[str, ...]:
    import inspect

    try:
        return tuple(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return ()


def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """The block's output hidden states for one batch (tuple outputs: their first element)."""
    args = [hidden] + [kwargs[k] for k in sorted((k for k in kwargs if k.startswith("__arg")), key=lambda k: int(k[5:]))]
    kw = {k: v for k, v in kwargs.items() if not k.startswith("__arg")}
    out = block(*args, **kw)
    return out[0] if isinstance(out, (tuple, list)) else out
