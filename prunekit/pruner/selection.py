"""Selecting the prunable layers of a model and viewing their weights as 2-D ``[out, in']``.

A layer is selected when its class matches ``op_types`` (an entry matches a class whose
``__name__``, or the name of one of its base classes, starts with it: ``Linear`` selects
``nn.MultiheadAttention``'s ``out_proj``, a ``NonDynamicallyQuantizableLinear``), its name matches
one of ``op_names`` (``re.search``; empty selects every layer of ``op_types``) and none of
``excluded_op_names``. Names are those of the unwrapped model: a ``DistributedDataParallel`` /
``DataParallel`` ``module.`` prefix is never required.

``exclude_head`` leaves the model's classifier head dense, as Intel Neural Compressor did
(:func:`find_classifier_head`): matched by the module itself, not by an unanchored name, and a
weight tied to it (an ``lm_head`` sharing the token embeddings) is left dense under every name.

Weights are viewed as 2-D ``[out, in']`` (:class:`Layout`):

* ``Linear`` (and any 2-D weight ``[out, in]``): the weight itself;
* ``Conv1d/2d/3d`` ``[out, in, *k]``: ``[out, k... · in]`` (input channels innermost, as INC);
* transposed-weight ``Conv1D`` of GPT-2 style models ``[in, out]``: its transpose;
* ``ConvTranspose*`` ``[in, out, *k]``: ``[out, k... · in]``.

A parameter shared by several modules (tied weights) is selected once, under the first name;
the other names are kept in :attr:`Layer.aliases`.
"""

from __future__ import annotations

import difflib
import math
import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from prunekit.config import PrunerConfig
from prunekit.errors import PruningError
from prunekit.pruner.sharding import RowShard, local_tensor, row_shard

__all__ = ["Layout", "Layer", "unwrap_model", "select_layers", "find_classifier_head"]

logger = logging.getLogger("prunekit")

LayoutKind = Literal["linear", "conv", "transposed", "conv_transposed"]


@dataclass(frozen=True)
class Layout:
    """How a weight of ``shape`` is viewed as the 2-D matrix ``[rows = out, cols = in']``.

    ``inner`` is the size of the innermost (consecutive) input dimension of the view: N:M groups
    run along it, so it must be a multiple of M.
    """

    kind: LayoutKind
    shape: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.shape[1] if self.kind in ("transposed", "conv_transposed") else self.shape[0]

    @property
    def cols(self) -> int:
        if self.kind in ("transposed", "conv_transposed"):
            return self.shape[0] * math.prod(self.shape[2:])
        return math.prod(self.shape[1:])  # (also when a shard holds no rows)

    @property
    def inner(self) -> int:
        return self.shape[0] if self.kind in ("transposed", "conv_transposed") else self.shape[1]

    def to_2d(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (weight layout) as ``[rows, cols]``; a view for linear and transposed layouts."""
        if self.kind == "linear":
            return t.view(self.rows, self.cols)
        if self.kind == "transposed":
            return t.t()
        d = t.dim()
        if self.kind == "conv":  # [O, I, *k] -> [O, *k, I]
            return t.permute(0, *range(2, d), 1).reshape(self.rows, self.cols)
        return t.permute(1, *range(2, d), 0).reshape(self.rows, self.cols)  # [I, O, *k] -> [O, *k, I]

    def from_2d(self, t2: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_2d`: a contiguous tensor of the weight's shape."""
        if self.kind == "linear":
            return t2.reshape(self.shape).contiguous()
        if self.kind == "transposed":
            return t2.t().contiguous()
        k = self.shape[2:]
        d = len(self.shape)
        if self.kind == "conv":  # [O, *k, I] -> [O, I, *k]
            return t2.reshape(self.shape[0], *k, self.shape[1]).permute(0, d - 1, *range(1, d - 1)).contiguous()
        # [O, *k, I] -> [I, O, *k]
        return t2.reshape(self.shape[1], *k, self.shape[0]).permute(d - 1, 0, *range(1, d - 1)).contiguous()


@dataclass(eq=False)
class Layer:
    """One selected layer: its module name, module, weight parameter and 2-D layout."""

    name: str
    module: nn.Module
    weight: nn.Parameter
    #: the 2-D view of this rank's tensor (for a sharded weight, of its local rows)
    layout: Layout
    aliases: list[str] = field(default_factory=list)
    #: this rank's rows when FSDP2 shards the weight (``None``: the whole weight is here)
    shard: RowShard | None = None

    @property
    def numel(self) -> int:
        """Elements of this rank's tensor (the local shard of a sharded weight)."""
        return math.prod(self.layout.shape)

    @property
    def weight_bytes(self) -> int:
        """Bytes of this rank's weight values (the local shard of a sharded weight)."""
        return self.numel * self.weight.element_size()

    @property
    def total_numel(self) -> int:
        """Elements of the whole weight (over every shard)."""
        return self.shard.total_numel if self.shard is not None else self.numel

    @property
    def data(self) -> torch.Tensor:
        """The weight's values held by this rank (outside autograd; in-place changes change the weight)."""
        return self.weight.detach() if self.shard is None else local_tensor(self.weight)

    @property
    def grad(self) -> torch.Tensor | None:
        """This rank's part of the weight's gradient (``None`` before the first backward pass)."""
        grad = self.weight.grad
        return None if grad is None else local_tensor(grad)

    @property
    def frozen(self) -> bool:
        return not self.weight.requires_grad


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers (or the model itself)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def _layout_of(module: nn.Module, weight: torch.Tensor) -> LayoutKind:
    cls = type(module).__name__
    if cls.startswith("ConvTranspose"):
        return "conv_transposed"
    # transformers' Conv1D stores [in, out] and exposes nf = out features
    if weight.dim() == 2 and cls == "Conv1D" and getattr(module, "nf", None) == weight.shape[1]:
        return "transposed"
    return "linear" if weight.dim() == 2 else "conv"


def _type_matches(module: nn.Module, op_types: list[str]) -> bool:
    """True when the module's class or one of its base classes has a name starting with an entry."""
    names = [cls.__name__ for cls in type(module).__mro__ if cls not in (nn.Module, object)]
    return any(name.startswith(t) for name in names for t in op_types)


#: classes INC took for a classifier head, and the modules it looked past
_HEAD_TYPES = (nn.Linear, nn.Conv2d)
_HEAD_SKIPPED = (nn.Dropout,)


def find_classifier_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The classifier head as INC 3.7.1 found it: the last module registered in the model (Dropout
    modules aside) when it is a ``Linear`` or ``Conv2d``; None otherwise (a model ending in an
    activation, a ``Conv1d``, or without such layers). Subclasses count (INC compared exact names)."""
    last: tuple[str, nn.Module] | None = None
    for name, module in unwrap_model(model).named_modules():
        if not name or isinstance(module, _HEAD_SKIPPED) or len(module._modules) > 0:
            continue
        last = (name, module)
    if last is not None and isinstance(last[1], _HEAD_TYPES):
        return last
    return None


def select_layers(model: nn.Module, config: PrunerConfig) -> list[Layer]:
    """The layers of ``model`` (unwrapped) that pruner group ``config`` selects, in module order.

    Raises :class:`PruningError` when nothing is selected (listing close module names), or when a
    module that matches has no prunable weight (a ``weight`` parameter with 2 or more dims).
    """
    model = unwrap_model(model)
    group = config.name or "pruner"
    names = [re.compile(p) for p in config.op_names]
    excluded = [re.compile(p) for p in config.excluded_op_names]
    selected: list[Layer] = []
    by_param: dict[int, Layer] = {}
    head_weight = None
    if getattr(config, "exclude_head", False):
        head = find_classifier_head(model)
        if head is not None:
            head_weight = getattr(head[1], "weight", None)
            logger.info("pruner %r: the classifier head %r is left dense (exclude_head)", group, head[0])
    all_names: list[str] = []
    typed_names: list[str] = []
    for name, module in model.named_modules(remove_duplicate=False):
        if not name:
            continue
        all_names.append(name)
        if not _type_matches(module, config.op_types):
            continue
        typed_names.append(name)
        if names and not any(p.search(name) for p in names):
            continue
        if any(p.search(name) for p in excluded):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.dim() < 2:
            if names:  # named explicitly: say why it cannot be pruned
                raise PruningError(
                    f"pruner {group!r}: layer {name!r} ({type(module).__name__}) has no prunable weight "
                    f"(a weight parameter with 2 or more dimensions); exclude it with excluded_op_names: ['^{re.escape(name)}$']"
                )
            continue
        if head_weight is not None and weight is head_weight:  # the head, under any name it is tied to
            continue
        if id(weight) in by_param:  # tied weights: prune once
            by_param[id(weight)].aliases.append(name)
            continue
        kind = _layout_of(module, weight)
        shard = row_shard(name, weight, kind)
        layer = Layer(name, module, weight, Layout(kind, tuple(local_tensor(weight).shape)), shard=shard)
        by_param[id(weight)] = layer
        selected.append(layer)
    if not selected:
        message = _nothing_selected(group, config, all_names, typed_names, model)
        if getattr(config, "unmatched_selectors", "error") == "warn":  # INC-form configs: INC only logged it
            warnings.warn(message + "; the group prunes nothing", UserWarning, stacklevel=3)
            return []
        raise PruningError(message)
    _check_every_selector_matches(group, config, all_names, typed_names)
    return selected


def _close_names(pattern: str, candidates: list[str]) -> list[str]:
    plain = re.sub(r"[\\^$.*+?()\[\]{}|]", "", pattern) or pattern
    return difflib.get_close_matches(plain, candidates, n=5, cutoff=0.4)


def _check_every_selector_matches(group: str, config: PrunerConfig, all_names: list[str], typed_names: list[str]) -> None:
    """Each ``op_names`` entry must match a layer of ``op_types``; each exclusion must match a module.

    A typo in one entry of a list otherwise goes unnoticed (a misspelt exclusion prunes the layer it
    was meant to protect).
    """
    problems = []
    for key, patterns, candidates, kind in (
        ("op_names", config.op_names, typed_names, f"layer of op_types {config.op_types!r}"),
        ("excluded_op_names", config.excluded_op_names, all_names, "module"),
    ):
        for i, pattern in enumerate(patterns):
            compiled = re.compile(pattern)
            if any(compiled.search(name) for name in candidates):
                continue
            close = _close_names(pattern, candidates)
            hint = f"close names: {', '.join(close)}" if close else f"{kind}s: {', '.join(candidates[:10])}"
            problems.append(f"{key}[{i}] {pattern!r} matches no {kind} ({hint})")
    if problems:
        patterns = [*config.op_names, *config.excluded_op_names]
        message = (
            f"pruner {group!r}: " + "; ".join(problems) + ". Fix or remove these entries "
            "(names are those of the unwrapped model, without 'module.')" + _prefix_hint(patterns, all_names)
        )
        if getattr(config, "unmatched_selectors", "error") == "warn":  # INC-form configs: INC only logged it
            warnings.warn(message, UserWarning, stacklevel=4)
            return
        raise PruningError(message)


def _nothing_selected(group: str, config: PrunerConfig, all_names: list[str], typed_names: list[str], model: nn.Module) -> str:
    what = f"op_names={config.op_names!r}" if config.op_names else "every layer"
    msg = f"pruner {group!r}: no layer matches ({what}, op_types={config.op_types!r}"
    if config.excluded_op_names:
        msg += f", excluded_op_names={config.excluded_op_names!r}"
    msg += ")"
    close: list[str] = []
    for pattern in config.op_names:
        close += _close_names(pattern, all_names)
    close = list(dict.fromkeys(close))
    if close:
        msg += f"; close module names: {', '.join(close)}"
    if typed_names:
        msg += f"; layers of op_types: {', '.join(typed_names[:10])}{' ...' if len(typed_names) > 10 else ''}"
    elif _type_matches(model, config.op_types):
        msg += (
            f"; the model itself is a {type(model).__name__}: prunekit prunes the layers inside a model, "
            f"so wrap it (nn.Sequential(model)) and select '0'"
        )
    else:
        msg += f"; the model has no module of op_types {config.op_types!r}"
    return msg + ". Fix op_names / op_types (names are those of the unwrapped model, without 'module.')" + _prefix_hint(config.op_names, all_names)


def _prefix_hint(patterns: list[str], names: list[str]) -> str:
    """When patterns that match nothing would match the names without their first component (a
    LightningModule's ``model.``), say how to select relative to that submodule."""
    prefixes: set[str] = set()
    for pattern in patterns:
        compiled = re.compile(pattern)
        if any(compiled.search(n) for n in names):
            continue
        prefixes |= {n.split(".", 1)[0] for n in names if "." in n and compiled.search(n.split(".", 1)[1])}
    if len(prefixes) != 1:
        return ""
    prefix = prefixes.pop()
    return (
        f". These patterns match the names below {prefix!r} (e.g. a LightningModule's self.{prefix}): pass "
        f"PruningCallback(config, root={prefix!r}) to select inside it, as the Hugging Face Trainer sees the model, "
        f"or write the names with the '{prefix}.' prefix"
    )
