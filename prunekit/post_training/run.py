"""``prunekit.oneshot``: post-training pruning of a model, block after block, from calibration data.

1. The calibration batches run through the model up to its first block; what that block receives
   is recorded (hidden states, on the CPU with ``offload=True``; masks and positions as they are).
2. For each block in order: forward hooks on the block's selected layers gather what their methods
   need while the block runs on every recorded input (SparseGPT: ``H = 2/T·X^T X``; Wanda and OWL:
   ``sum X^2`` per input feature) and are removed; every layer is pruned; the pruned block runs
   again and its outputs replace the recorded inputs: the next block sees the activations of the
   already pruned model, as both papers do. One block's inputs and one block's statistics are in
   memory at a time.
3. With ``allocation: owl`` a first pass over the dense model measures each block's outlier
   ratio (:mod:`prunekit.post_training.owl`) and sets each block's sparsity, keeping the target.

The result holds per-layer rows (shape, method, target, sparsity reached, relative reconstruction
error of the layer's output on its calibration inputs); the pruned weights are zero in the model, so
a ``pattern_lock`` session (:meth:`OneShotResult.pattern_lock_config`) keeps them zero while
fine-tuning, and ``save_pretrained`` / ``state_dict`` keep them. Every token of every batch counts
(padding included): calibrate on unpadded windows, as the papers do.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from prunekit.config import PrunerConfig, load_config
from prunekit.errors import PruningError
from prunekit.post_training.blocks import BlockInputs, Blocks, capture_block_inputs, find_blocks, run_block
from prunekit.post_training.journal import Journal, JournalMode
from prunekit.post_training.owl import outlier_ratio, owl_sparsities
from prunekit.post_training.solvers import magnitude_keep, reconstruction_error, sparse_gpt, wanda_keep, wanda_scores
from prunekit.pruner.selection import Layer, select_layers, unwrap_model
from prunekit.pruner.types.oneshot import ONESHOT_TYPES

__all__ = ["oneshot", "oneshot_layers", "lock_config", "OneShotResult", "OneShotLayer"]


@dataclass(frozen=True)
class OneShotLayer:
    """One pruned layer: ``sparsity`` is the element-wise fraction of zeros of its weight afterwards;
    ``error`` the relative output error ``||(W - W')X||^2 / ||WX||^2`` on the calibration inputs (None
    when not measured)."""

    name: str
    module: str
    group: str
    method: str
    shape: tuple[int, ...]
    target: float
    sparsity: float
    error: float | None
    seconds: float


@dataclass
class OneShotResult:
    """What :func:`oneshot` did: per-layer rows, the blocks' path, the calibration tokens, the time taken
    and, with OWL, each group's sparsity per block. The kept weights are the non-zeros of the model."""

    layers: list[OneShotLayer]
    seconds: float
    blocks: str
    calibration_tokens: int
    block_sparsity: dict[str, list[float]] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Element-wise sparsity over the pruned layers."""
        total = sum(math.prod(l.shape) for l in self.layers)
        return sum(l.sparsity * math.prod(l.shape) for l in self.layers) / total if total else 0.0

    def pattern_lock_config(self) -> dict[str, Any]:
        """A config whose ``pattern_lock`` group keeps exactly these layers' zeros while fine-tuning."""
        return lock_config((l.name, l.module) for l in self.layers)

    def table(self) -> str:
        head = f"{'layer':40s} {'method':10s} {'shape':>12s} {'target':>7s} {'sparsity':>8s} {'error':>9s}"
        rows = [head, "-" * len(head)]
        for l in self.layers:
            err = "-" if l.error is None else f"{l.error:.2e}"
            rows.append(f"{l.name:40s} {l.method:10s} {'x'.join(map(str, l.shape)):>12s} {l.target:7.3f} {l.sparsity:8.2%} {err:>9s}")
        rows.append(f"{len(self.layers)} layers, {self.sparsity:.2%} zero over them; {self.calibration_tokens:,} calibration tokens, {self.seconds:.1f} s")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


class _Stats:
    """Forward-hook statistics of one layer's inputs: ``X^T X`` (when ``hessian``) and ``sum X^2`` per feature."""

    def __init__(self, columns: int, device: torch.device, hessian: bool) -> None:
        self.tokens = 0
        self.sq_sum = torch.zeros(columns, dtype=torch.float32, device=device)
        self.xtx = torch.zeros(columns, columns, dtype=torch.float32, device=device) if hessian else None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.tokens += x.shape[0]
        self.sq_sum += x.square().sum(0)
        if self.xtx is not None:
            self.xtx.addmm_(x.t(), x)

    @property
    def hessian(self) -> torch.Tensor:
        assert self.xtx is not None
        return self.xtx * (2.0 / max(self.tokens, 1))


def _progress(iterable: Iterable[Any], total: int, enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are optional
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False)


def _check_layer(layer: Layer, group: PrunerConfig) -> None:
    if layer.layout.kind not in ("linear", "transposed"):
        raise PruningError(
            f"pruner {group.name!r}, layer {layer.name!r}: {group.type} prunes Linear-like layers (Linear, GPT-2's Conv1D); "
            f"{type(layer.module).__name__} is not one. Exclude it with excluded_op_names"
        )


@torch.no_grad()
def oneshot(
    model: nn.Module,
    config: Any,
    calibration: Iterable[Any],
    *,
    device: str | torch.device | None = None,
    offload: bool = False,
    progress: bool = True,
    measure_error: bool = False,
    journal: JournalMode = "disk",
) -> OneShotResult:
    """Prune ``model`` once, block after block, as the one-shot groups of ``config`` say (see the module docstring).

    ``calibration``: an iterable of batches (tensors of input ids, dicts of tensors, or tuples starting
    with one), iterated once (twice with OWL). ``device``: where the blocks run (default: the model's).
    ``offload``: keep the recorded activations on the CPU between blocks. ``measure_error``: also
    gather ``X^T X`` for Wanda and magnitude layers to report their reconstruction error.
    ``journal``: where the original weights wait until the run succeeds (:mod:`prunekit.post_training.journal`):
    if anything fails, even Ctrl-C, the model is restored exactly. The model runs in eval mode; its
    modules' train/eval modes are restored after.
    """
    start = time.perf_counter()
    cfg = load_config(config)
    module = unwrap_model(model)
    groups, blocks, owned = _plan(module, cfg)
    run_device = torch.device(device) if device is not None else next(module.parameters()).device
    for layer, group in (pair for block_layers in owned for pair in block_layers):
        _check_finite(layer.weight, f"pruner {group.name!r}, layer {layer.name!r}: the weight")
    training = {m: m.training for m in module.modules()}
    module.eval()  # calibration statistics without dropout
    undo = Journal(journal)
    try:
        return _run(module, blocks, owned, groups, calibration, run_device, offload, progress, measure_error, undo, start)
    except BaseException as err:
        restored = undo.restore()
        if undo.mode == "off" and undo.saved:
            _add_note(err, f"prunekit.oneshot: journal='off', so the {undo.saved} layers pruned before this failure stay pruned")
        elif restored:
            _add_note(err, f"prunekit.oneshot: the model is unchanged ({restored} pruned layers were restored from the journal)")
        raise
    finally:
        undo.close()
        for m, mode in training.items():
            m.training = mode


def _run(
    module: nn.Module, blocks: Blocks, owned: list[list[tuple[Layer, PrunerConfig]]], groups: list[PrunerConfig],
    calibration: Iterable[Any], device: torch.device, offload: bool, progress: bool, measure_error: bool,
    journal: Journal, start: float,
) -> OneShotResult:
    data = list(calibration) if any(g.allocation == "owl" for g in groups) else calibration
    block_sparsity = _owl_pass(module, blocks, owned, groups, data, device, offload, progress)
    # magnitude needs no data: without error measurement a run of magnitude groups only reads weights
    needs_data = measure_error or any(g.type != "magnitude" for g in groups)
    inputs = capture_block_inputs(module, blocks.modules[0], data, device, offload) if needs_data else None
    if inputs is not None:
        for i, hidden, _ in inputs.items():
            _check_finite(hidden, f"calibration batch {i}: the inputs of {blocks.name(0)}")
    last = max(i for i, layers in enumerate(owned) if layers)
    rows: list[OneShotLayer] = []
    bar = _progress(range(last + 1), last + 1, progress, "prunekit oneshot")
    for index in bar:
        with _on_device(blocks.modules[index], device) as block:
            layers = owned[index]
            if layers:
                stats = _gather(block, layers, inputs, measure_error) if inputs is not None else {}
                for layer, group in layers:
                    if inputs is not None and layer.name not in stats:
                        raise PruningError(
                            f"pruner {group.name!r}, layer {layer.name!r} never ran while {blocks.name(index)} ran on the "
                            f"calibration data, so there is nothing to prune it from; exclude it with excluded_op_names"
                        )
                    if layer.name in stats:
                        _check_finite(stats[layer.name].sq_sum, f"layer {layer.name!r}: its calibration inputs (after the blocks before it were pruned)")
                journal.save({layer.name: layer.weight for layer, _ in layers})
                for layer, group in layers:
                    if hasattr(bar, "set_postfix_str"):  # a tqdm bar: name the layer being pruned
                        bar.set_postfix_str(f"{layer.name} ({group.type})", refresh=True)
                    per_block = block_sparsity.get(str(group.name))
                    target = per_block[index] if per_block else group.target_sparsity
                    rows.append(_prune_layer(layer, group, target, stats.get(layer.name)))
                del stats
            if inputs is not None and index < last:
                _propagate(block, inputs)
    tokens = inputs.tokens() if inputs is not None else 0
    return OneShotResult(rows, time.perf_counter() - start, blocks.path, tokens, block_sparsity)


@contextmanager
def _on_device(block: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """The block moved to ``device`` while it is processed, and back to where it was after."""
    home = next((p.device for p in block.parameters()), device)
    if home == device:
        yield block
        return
    block.to(device)
    try:
        yield block
    finally:
        block.to(home)


def _check_finite(tensor: torch.Tensor, what: str) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise PruningError(f"{what} has NaN or infinite values; one-shot pruning needs finite weights and activations")


def _add_note(err: BaseException, note: str) -> None:
    if isinstance(err, PruningError) and err.args and isinstance(err.args[0], str):
        err.args = (f"{err.args[0]} ({note})",) + err.args[1:]
    elif hasattr(err, "add_note"):
        err.add_note(note)


def _plan(module: nn.Module, cfg: Any) -> tuple[list[PrunerConfig], Blocks, list[list[tuple[Layer, PrunerConfig]]]]:
    """The one-shot groups, the model's blocks and each block's selected layers; every problem a clear error."""
    groups = [g for g in cfg.pruners if g.type in ONESHOT_TYPES]
    others = [g.name for g in cfg.pruners if g.type not in ONESHOT_TYPES]
    if not groups:
        raise PruningError(
            f"prunekit.oneshot needs pruner groups of a one-shot type ({', '.join(ONESHOT_TYPES)}); the config has "
            f"{', '.join(f'{g.name} ({g.type})' for g in cfg.pruners)}"
        )
    if others:
        raise PruningError(f"groups {others} are not one-shot types; prune them with a training-time Pruning session")
    paths = {g.blocks for g in groups if g.blocks is not None}
    if len(paths) > 1:
        raise PruningError(f"the one-shot groups name different blocks: {sorted(paths)}; name one list of blocks")
    blocks = find_blocks(module, next(iter(paths)) if paths else None)
    owned = _layers_by_block(module, groups, blocks)
    if not any(owned):
        raise PruningError(
            f"the one-shot groups select no layer inside the model's blocks ({blocks.path}.*): check op_names / op_types "
            f"(GPT-2's layers are Conv1D)"
        )
    return groups, blocks, owned


def oneshot_layers(model: nn.Module, config: Any) -> list[tuple[str, str]]:
    """``(name, module class name)`` of every layer :func:`oneshot` would prune with ``config``, in block order."""
    _, _, owned = _plan(unwrap_model(model), load_config(config))
    return [(layer.name, type(layer.module).__name__) for block in owned for layer, _ in block]


def lock_config(layers: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """A config whose ``pattern_lock`` group keeps exactly the zeros of these ``(name, class name)`` layers."""
    import re

    layers = list(layers)
    names = [f"^{re.escape(name)}$" for name, _ in layers]
    return {"pruners": [{"name": "locked", "type": "pattern_lock", "op_names": names, "op_types": sorted({t for _, t in layers})}]}


def _layers_by_block(model: nn.Module, groups: list[PrunerConfig], blocks: Blocks) -> list[list[tuple[Layer, PrunerConfig]]]:
    """The selected layers of every group, by the block that holds them. Without ``op_names`` a group
    takes the layers of its ``op_types`` inside the blocks; a layer named explicitly outside them is an error."""
    owner = {id(p): i for i, b in enumerate(blocks.modules) for p in b.parameters()}
    out: list[list[tuple[Layer, PrunerConfig]]] = [[] for _ in blocks.modules]
    seen: dict[int, str] = {}
    for group in groups:
        for layer in select_layers(model, group):
            _check_layer(layer, group)
            if id(layer.weight) in seen:
                raise PruningError(f"layer {layer.name!r} is selected by groups {seen[id(layer.weight)]!r} and {group.name!r}; a layer belongs to one group")
            seen[id(layer.weight)] = str(group.name)
            index = owner.get(id(layer.weight))
            if index is None and not group.op_names:
                continue  # every layer of op_types: those inside the blocks (embeddings, lm_head stay dense)
            if index is None:
                raise PruningError(
                    f"pruner {group.name!r}, layer {layer.name!r} is outside the model's blocks ({blocks.path}.*): one-shot "
                    f"pruning works block by block; exclude it (excluded_op_names) or select layers inside {blocks.path}"
                )
            out[index].append((layer, group))
    return out


def _gather(
    block: nn.Module, layers: list[tuple[Layer, PrunerConfig]], inputs: BlockInputs, measure_error: bool, propagate: bool = False
) -> dict[str, _Stats]:
    """Run the block on every recorded input with forward hooks on its layers; the hooks are removed after.
    With ``propagate`` (the block is not pruned after) its outputs also become the next block's inputs.

    Layers fed the same tensor (q/k/v projections, gate/up projections) share one :class:`_Stats`:
    ``X^T X`` is computed once for them. Which layers share is settled on the first batch.
    """
    stats: dict[str, _Stats] = {}
    fed: dict[int, tuple[torch.Tensor, _Stats]] = {}  # this batch: id(_Stats) -> (the input it took, itself)

    def record(name: str, columns: int, hessian: bool, device: torch.device, x: torch.Tensor) -> None:
        own = stats.get(name)
        if own is None:
            twin = next((s for t, s in fed.values() if t is x and s.sq_sum.numel() == columns and (s.xtx is not None or not hessian)), None)
            own = stats[name] = twin if twin is not None else _Stats(columns, device, hessian)
        taken = fed.get(id(own))
        if taken is not None:
            if taken[0] is x:
                return  # already counted for this batch through the layer it shares with
            raise PruningError(f"layer {name!r} took a different input than the layers it shared statistics with on the first batch")
        own.add(x)
        fed[id(own)] = (x, own)

    handles = []
    for layer, group in layers:
        hessian = group.type == "sparse_gpt" or measure_error
        hook = partial(record, layer.name, layer.layout.cols, hessian, layer.weight.device)
        handles.append(layer.module.register_forward_hook(lambda mod, args, out, hook=hook: hook(args[0])))
    try:
        for i, hidden, kwargs in inputs.items():
            fed.clear()
            out = run_block(block, hidden, kwargs)
            if propagate:
                inputs.replace(i, out)
    finally:
        fed.clear()
        for handle in handles:
            handle.remove()
    return stats


def _propagate(block: nn.Module, inputs: BlockInputs) -> None:
    """The block's outputs become the next block's inputs (in place: one set of activations in memory)."""
    for i, hidden, kwargs in inputs.items():
        inputs.replace(i, run_block(block, hidden, kwargs))


def _prune_layer(layer: Layer, group: PrunerConfig, target: float, stats: _Stats | None) -> OneShotLayer:
    t0 = time.perf_counter()
    spec = group.pattern_spec
    n, m = (spec.n, spec.m) if spec.kind == "nm" else (0, 0)
    sparsity = n / m if n else target
    view = layer.layout.to_2d(layer.weight.detach())
    dense = torch.empty(view.shape, dtype=torch.float32, device=view.device).copy_(view)  # contiguous [out, in]
    if group.type != "magnitude":
        assert stats is not None, "sparse_gpt and wanda layers always have calibration statistics"
    if group.type == "sparse_gpt":
        try:
            new, keep = sparse_gpt(dense, stats.hessian, sparsity if not n else 0.0, n, m, group.blocksize, group.percdamp)
        except ValueError as err:
            raise PruningError(f"pruner {group.name!r}, layer {layer.name!r}: {err}; raise percdamp or add calibration data") from err
    elif group.type == "wanda":
        keep = wanda_keep(dense, stats.sq_sum, sparsity, n, m, group.compare)
        new = dense * keep
    else:
        keep = magnitude_keep(dense, sparsity, n, m, group.compare)
        new = dense * keep
    view.copy_(new.to(view.dtype))
    error = reconstruction_error(dense, new, stats.hessian) if stats is not None and stats.xtx is not None else None
    zeros = view.numel() - int(torch.count_nonzero(view))
    return OneShotLayer(
        layer.name, type(layer.module).__name__, str(group.name), group.type, tuple(layer.weight.shape), sparsity,
        zeros / view.numel(), error, time.perf_counter() - t0,
    )


def _owl_pass(
    model: nn.Module, blocks: Blocks, owned: list[list[tuple[Layer, PrunerConfig]]], groups: list[PrunerConfig],
    data: Iterable[Any], device: torch.device, offload: bool, progress: bool,
) -> dict[str, list[float]]:
    """Per group with ``allocation: owl``: each block's sparsity from the dense model's outlier ratios."""
    owl = [g for g in groups if g.allocation == "owl"]
    if not owl:
        return {}
    inputs = capture_block_inputs(model, blocks.modules[0], data, device, offload)
    ratios: dict[str, list[tuple[int, int]]] = {str(g.name): [(0, 0)] * len(blocks) for g in owl}
    last = max(i for i, layers in enumerate(owned) if any(g.allocation == "owl" for _, g in layers))
    for index in _progress(range(last + 1), last + 1, progress, "prunekit oneshot (OWL pass)"):
        with _on_device(blocks.modules[index], device) as block:
            layers = [(l, g) for l, g in owned[index] if g.allocation == "owl"]
            if not layers:
                _propagate(block, inputs)
                continue
            # one forward pass: the dense block's outputs are the next block's inputs
            stats = _gather(block, layers, inputs, measure_error=False, propagate=index < last)
            for group in owl:
                scores = [wanda_scores(l.layout.to_2d(l.weight.detach()).float(), stats[l.name].sq_sum) for l, g in layers if g is group]
                if scores:
                    ratios[str(group.name)][index] = outlier_ratio(scores, group.owl_threshold)
    out: dict[str, list[float]] = {}
    for group in owl:
        pairs = ratios[str(group.name)]
        used = [i for i, (_, size) in enumerate(pairs) if size]
        per_block = [group.target_sparsity] * len(blocks)
        values = owl_sparsities([pairs[i][0] / pairs[i][1] for i in used], [pairs[i][1] for i in used], group.target_sparsity, group.owl_lambda)
        for i, v in zip(used, values):
            per_block[i] = v
        out[str(group.name)] = per_block
    return out
