"""Physically removing pruned heads and channels: a smaller dense model of ordinary modules.

:func:`plan_slim` finds every coupled structure of the model (:mod:`prunekit.structure.discover`)
and marks a unit removable when all of its *consume* slices are exactly zero (the columns of an
attention output projection or an FFN down projection, the input channel of the next conv): such a
unit contributes nothing, so removing its rows, columns, biases and norm entries leaves every output
unchanged (up to float reassociation in the smaller matrix products). One unit of every structure is
always kept. :meth:`SlimPlan.apply` replaces the affected ``Linear``, ``Conv1D``, ``Conv2d`` and
``BatchNorm2d`` modules by smaller ones of the same class, updates the attributes that count heads
(``num_attention_heads``, ``all_head_size``, ``num_heads``, ``split_size``) and, for Hugging Face
models, the config: ``intermediate_size`` / ``n_inner`` and, for models with an explicit
``head_dim`` (Llama family), the head counts, whenever every layer keeps the same number; the
shapes of every changed module are also recorded in ``config.prunekit_slim`` so that
:func:`load_slimmed` rebuilds any slimmed model (per-layer head counts included) from its folder.

``nn.MultiheadAttention`` cannot hold fewer heads than its embedding size allows, so its pruned heads
are removed by replacing it with :class:`SlimMultiheadAttention` (same call signature, fewer heads).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import PruningError
from prunekit.structure.discover import attention_units, conv_units, declared_units, ffn_units
from prunekit.structure.units import UnitGroup

__all__ = ["SlimMultiheadAttention", "SlimPlan", "SlimReport", "load_slimmed", "plan_slim", "slim"]


@dataclass
class StructureRow:
    name: str
    kind: str
    units: int
    kept: int


@dataclass
class SlimPlan:
    """What :func:`slim` will remove: per structure, the units kept (indices)."""

    model: nn.Module
    structures: list[tuple[UnitGroup, torch.Tensor]]

    @property
    def rows(self) -> list[StructureRow]:
        return [StructureRow(g.name, g.kind, g.units, int(keep.numel())) for g, keep in self.structures]

    def removed_params(self) -> int:
        """Parameters the removal takes away (every member, biases and norms included)."""
        removed = 0
        for module_name, dims in _removals(self.structures).items():
            module = self.model.get_submodule(module_name)
            for param_name, param in module.named_parameters(recurse=False):
                shape = list(param.shape)
                after = math.prod(len_after(shape, d, dims.get((param_name, d))) for d in range(len(shape))) if shape else 1
                removed += param.numel() - after
        return removed

    def table(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return _structure_table(self.rows, params, params - self.removed_params())

    def apply(self, example_inputs: Any = None) -> "SlimReport":
        """Remove the units. With ``example_inputs`` (passed as ``model(*example_inputs)``,
        ``model(**example_inputs)`` or ``model(example_inputs)``), also count the multiply-adds of one
        forward pass before and after, and check that the outputs did not change (in eval mode); when
        they did, or the forward pass fails, every module, attribute and config value is put back and
        :class:`PruningError` says by how much."""
        model = self.model
        _refuse_live_session(model)
        params_before = sum(p.numel() for p in model.parameters())
        rows = self.rows
        before = _forward(model, example_inputs) if example_inputs is not None else None
        undo = _apply(model, self.structures)
        report = SlimReport(model, rows, params_before, sum(p.numel() for p in model.parameters()))
        if before is not None:
            try:
                after = _forward(model, example_inputs)
                _check_same(before[1], after[1])
            except BaseException:
                undo()
                raise
            report.macs_before, report.macs_after = before[0], after[0]
        return report


def _forward(model: nn.Module, example_inputs: Any) -> tuple[int, list[torch.Tensor]]:
    """(multiply-adds, output tensors) of one forward pass in eval mode (modes restored after)."""
    from torch.utils.flop_counter import FlopCounterMode

    modes = {m: m.training for m in model.modules()}
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            if isinstance(example_inputs, dict):
                out = model(**example_inputs)
            elif isinstance(example_inputs, (tuple, list)):
                out = model(*example_inputs)
            else:
                out = model(example_inputs)
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return counter.get_total_flops() // 2, _tensors(out)


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    return []


def _check_same(before: list[torch.Tensor], after: list[torch.Tensor]) -> None:
    if len(before) != len(after) or any(a.shape != b.shape for a, b in zip(before, after)):
        raise PruningError("slim changed the shapes of the model's outputs; the model was restored")
    for b, a in zip(before, after):
        loose = b.dtype in (torch.float16, torch.bfloat16)
        if not torch.allclose(a.float(), b.float(), rtol=2e-2 if loose else 1e-3, atol=1e-2 if loose else 1e-4):
            diff = (a.float() - b.float()).abs().max().item()
            raise PruningError(
                f"slim changed the model's outputs (max abs difference {diff:.3g}): something between the layers of a structure "
                f"is not channel-wise (a norm or softmax over the units); the model was restored. Remove that structure from "
                f"the model's pruning, or report the architecture"
            )


@dataclass
class SlimReport:
    """The slimmed model and what changed: per structure the units kept, parameters and multiply-adds."""

    model: nn.Module
    rows: list[StructureRow]
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None

    def table(self) -> str:
        lines = [_structure_table(self.rows, self.params_before, self.params_after)]
        if self.macs_before == 0 or self.macs_after == 0:
            lines.append("multiply-adds: not counted (the forward pass ran fused kernels that torch.utils.flop_counter does not see)")
        elif self.macs_before is not None and self.macs_after is not None:
            lines.append(f"multiply-adds of one forward pass: {self.macs_before:,} -> {self.macs_after:,} "
                         f"({1 - self.macs_after / max(self.macs_before, 1):.1%} removed)")
        return "\n".join(lines)


def _structure_table(rows: Sequence[StructureRow], params_before: int, params_after: int) -> str:
    """Units kept per structure, and the parameters before and after."""
    lines = [f"{'structure':<48} {'kind':<8} {'kept':>11}"]
    lines += [f"{r.name or '<model>':<48} {r.kind:<8} {r.kept:>5} / {r.units:<5}" for r in rows]
    lines.append(f"parameters: {params_before:,} -> {params_after:,} ({1 - params_after / params_before:.1%} removed)")
    return "\n".join(lines)


def len_after(shape: list[int], dim: int, removed: set[int] | None) -> int:
    return shape[dim] - (len(removed) if removed else 0)


def plan_slim(model: nn.Module, config: Any = None) -> SlimPlan:
    """Every structure of ``model`` and which of its units stay (see the module docstring); with a
    pruning ``config``, also the groups its ``units:`` entries declare."""
    sharded = [name for name, p in model.named_parameters() if type(p).__name__ == "DTensor"]
    if sharded:
        raise PruningError(
            f"{sharded[0]} (and {len(sharded) - 1} more) is sharded by FSDP2 (a DTensor); slim() replaces whole weights "
            f"with smaller ones: gather the model first (torch.distributed.checkpoint.state_dict.get_model_state_dict("
            f"model, options=StateDictOptions(full_state_dict=True)), loaded into an unsharded copy) and slim that copy. "
            f"Nothing was changed"
        )
    heads = attention_units(model)
    head_layers = {m.module for g in heads for m in g.members}
    structures = heads + ffn_units(model, head_layers) + conv_units(model)[0]
    if config is not None:
        from prunekit.config import load_config

        for group in load_config(config).pruners:
            structures += declared_units(model, group.units, f"pruner {group.name!r}")
    plan = []
    for group in structures:
        zero = group.consumed_zero(model)
        keep = (~zero).nonzero().flatten()
        if keep.numel() == 0:  # every unit contributes nothing: one stays so that no layer has zero width
            keep = torch.tensor([0])
        plan.append((group, keep))
    return SlimPlan(model, plan)


def slim(model: nn.Module, config: Any = None) -> nn.Module:
    """Remove every pruned head and channel of ``model`` in place and return it (see :func:`plan_slim`;
    ``config``: the pruning config, for the structures its ``units:`` declare).

    Finalize (or close) the pruning session first: the session masks the Parameters that are replaced.
    """
    return plan_slim(model, config).apply().model


# ------------------------------------------------------------------------------------- applying
def _refuse_live_session(model: nn.Module) -> None:
    from prunekit.pruner.session import _owner_of

    owned = [n for n, p in model.named_parameters() if _owner_of(p) is not None]
    if owned:
        raise PruningError(
            f"a live pruning session prunes {owned[0]} (and {len(owned) - 1} more); call finalize() on it before slim(): "
            f"slim replaces those Parameters with smaller ones. Nothing was changed"
        )


def _removals(structures: Sequence[tuple[UnitGroup, torch.Tensor]]) -> dict[str, dict[tuple[str, int], set[int]]]:
    """``{module: {(tensor name, dim): indices removed}}`` over every structure."""
    out: dict[str, dict[tuple[str, int], set[int]]] = {}
    for group, keep in structures:
        removed_units = sorted(set(range(group.units)) - set(keep.tolist()))
        if not removed_units:
            continue
        for member in group.members:
            indices = {i for u in removed_units for i in member.indices(u)}
            out.setdefault(member.module, {}).setdefault((member.param, member.dim), set()).update(indices)
    return out


_CONFIG_KEYS = ("prunekit_slim", "intermediate_size", "n_inner", "ffn_dim", "dim_feedforward", "num_attention_heads", "num_key_value_heads")


@torch.no_grad()
def _apply(model: nn.Module, structures: Sequence[tuple[UnitGroup, torch.Tensor]]) -> Callable[[], None]:
    """Replace the modules, set the attributes and the config; returns a function that undoes all of it."""
    removals = _removals(structures)
    replacements: dict[str, nn.Module] = {}
    for module_name, removed in removals.items():  # every new module is built before anything changes
        replacements[module_name] = _smaller(model.get_submodule(module_name), removed)
    originals = {name: model.get_submodule(name) for name in replacements}
    kept_units = {g.name: int(keep.numel()) for g, keep in structures}
    old_attrs = [(model.get_submodule(m), a, getattr(model.get_submodule(m), a, None))
                 for g, _ in structures for m, attrs in g.attributes.items() for a in attrs]
    config = getattr(model, "config", None)
    missing = object()
    old_config = {k: getattr(config, k, missing) for k in _CONFIG_KEYS} if config is not None else {}

    def undo() -> None:
        for name in sorted(originals, key=lambda n: -n.count(".")):  # children first, then their parents
            _set_module(model, name, originals[name])
        for module, attr, value in old_attrs:
            setattr(module, attr, value)
        for key, value in old_config.items():
            if value is missing:
                if hasattr(config, key):
                    delattr(config, key)
            else:
                setattr(config, key, value)

    try:
        for module_name in sorted(replacements, key=lambda n: n.count(".")):  # a parent before its children
            _set_module(model, module_name, replacements[module_name])
        for group, _ in structures:
            for module_name, attrs in group.attributes.items():
                module = model.get_submodule(module_name)
                for attr, per_unit in attrs.items():
                    setattr(module, attr, per_unit * kept_units[group.name])
        _update_hf_config(model, structures, replacements)
    except BaseException:
        undo()
        raise
    return undo


def _keep_index(size: int, removed: set[int] | None, device: torch.device) -> torch.Tensor:
    return torch.tensor([i for i in range(size) if not removed or i not in removed], dtype=torch.long, device=device)


def _select(tensor: torch.Tensor, removed: dict[tuple[str, int], set[int]], name: str) -> torch.Tensor:
    out = tensor.detach()
    for (param, dim), indices in removed.items():
        if param == name and indices:
            out = out.index_select(dim, _keep_index(out.shape[dim], indices, out.device))
    return out.clone()


def _smaller(module: nn.Module, removed: dict[tuple[str, int], set[int]]) -> nn.Module:
    """A copy of ``module`` with the removed indices gone: a shallow copy of the same object (its class,
    its own attributes, hooks and submodules kept) with new, smaller Parameters and buffers, and the
    size attributes of ``Linear`` / ``Conv1D`` / ``Conv2d`` / ``BatchNorm2d`` updated."""
    if isinstance(module, nn.MultiheadAttention):
        return SlimMultiheadAttention.from_pruned(module, removed)
    if not isinstance(module, (nn.Linear, nn.Conv2d, nn.BatchNorm2d)) and type(module).__name__ != "Conv1D":
        raise PruningError(f"slim: cannot shrink a {type(module).__name__}; the structure discovery should not have picked it")
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._modules = dict(module._modules)
    for name, value in module._parameters.items():
        if value is not None:
            new._parameters[name] = nn.Parameter(_select(value, removed, name), requires_grad=value.requires_grad)
    for name, value in module._buffers.items():
        if value is not None and value.dim() > 0:
            new._buffers[name] = _select(value, removed, name)
    weight = new._parameters.get("weight")
    if isinstance(module, nn.Linear):
        new.out_features, new.in_features = weight.shape
    elif isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        new.out_channels = weight.shape[0]
        new.in_channels = weight.shape[0] if depthwise else weight.shape[1] * module.groups
        if depthwise:
            new.groups = weight.shape[0]
    elif isinstance(module, nn.BatchNorm2d):
        new.num_features = (new._buffers.get("running_mean") if module.running_mean is not None else weight).shape[0]
    else:  # transformers' Conv1D: weight [nx, nf]
        new.nx, new.nf = weight.shape
    return new


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# ------------------------------------------------------------------------------------- HF configs
def _update_hf_config(model: nn.Module, structures: Sequence[tuple[UnitGroup, torch.Tensor]], replacements: dict[str, nn.Module]) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return
    record = dict(getattr(config, "prunekit_slim", None) or {})
    shapes = dict(record.get("modules", {}))
    for name, module in replacements.items():
        shapes[name] = {key: list(value.shape) for key, value in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
                        if value is not None}
    attributes = dict(record.get("attributes", {}))
    kept = {g.name: int(k.numel()) for g, k in structures}
    for group, _ in structures:
        for module_name, attrs in group.attributes.items():
            attributes[module_name] = {attr: per_unit * kept[group.name] for attr, per_unit in attrs.items()}
    config.prunekit_slim = {"modules": shapes, "attributes": attributes}
    channels = {kept[g.name] for g, _ in structures if g.kind == "channel" and g.name and not _is_conv(model, g)}
    if len(channels) == 1:
        width = channels.pop()
        for key in ("intermediate_size", "n_inner", "ffn_dim", "dim_feedforward"):
            if getattr(config, key, None) is not None or key == "n_inner" and hasattr(config, "n_inner"):
                setattr(config, key, width)
                break
    head_groups = [(g, kept[g.name]) for g, _ in structures if g.kind == "head"]
    head_dim = getattr(config, "head_dim", None)
    if head_groups and isinstance(head_dim, int) and len({k for _, k in head_groups}) == 1:
        kv = head_groups[0][1]
        per_kv = (getattr(config, "num_attention_heads", 0) // max(getattr(config, "num_key_value_heads", 0) or 1, 1)) or 1
        if getattr(config, "num_key_value_heads", None) is not None:
            config.num_attention_heads, config.num_key_value_heads = kv * per_kv, kv


def _is_conv(model: nn.Module, group: UnitGroup) -> bool:
    return isinstance(model.get_submodule(group.members[0].module), nn.Conv2d)


def load_slimmed(model: nn.Module, folder: str | os.PathLike[str]) -> nn.Module:
    """Load a slimmed Hugging Face model saved with ``save_pretrained``: ``model`` is built from the
    folder's config (``AutoModelFor....from_config(AutoConfig.from_pretrained(folder))``); its modules
    are resized to the shapes recorded in ``config.prunekit_slim`` and the weights are loaded strictly."""
    folder = Path(folder)
    record = getattr(getattr(model, "config", None), "prunekit_slim", None)
    if not record:
        raise PruningError(f"{folder}: the model's config has no prunekit_slim record; it was not saved from a slimmed model")
    for name, shapes in record.get("modules", {}).items():
        module = model.get_submodule(name)
        removed = {}
        for key, shape in shapes.items():
            current = getattr(module, key)
            for dim, (have, want) in enumerate(zip(current.shape, shape)):
                if want > have:
                    raise PruningError(f"{folder}: {name}.{key} is recorded as {shape}, larger than the config builds ({list(current.shape)})")
                if want < have:
                    removed[(key, dim)] = set(range(want, have))
        if removed:
            _set_module(model, name, _smaller(module, removed))
    for name, attrs in record.get("attributes", {}).items():
        module = model.get_submodule(name)
        for attr, value in attrs.items():
            setattr(module, attr, value)
    from prunekit.checkpoint_report import load_weights

    tensors, _ = load_weights(folder)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied and not any(k.endswith(t) for t in tied)]
    if missing or unexpected:
        raise PruningError(f"{folder}: the weights do not fit the slimmed model (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


# ------------------------------------------------------------------------------------- MHA
class SlimMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with some heads removed: ``num_heads`` heads of ``head_dim`` each
    project ``embed_dim`` inputs to ``num_heads·head_dim`` and back. Same forward signature (self- and
    cross-attention with equal key/value dims, ``batch_first``, ``key_padding_mask``, ``attn_mask``
    of shape ``[L, S]``, ``need_weights`` averaged over heads)."""

    _qkv_same_embed_dim = False  # keeps nn.TransformerEncoderLayer off its fused fast path

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = False, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, device=device, dtype=dtype))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner, device=device, dtype=dtype)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_pruned(cls, mha: nn.MultiheadAttention, removed: dict[tuple[str, int], set[int]]) -> "SlimMultiheadAttention":
        kept_rows = mha.in_proj_weight.shape[0] - len(removed.get(("in_proj_weight", 0), ()))
        heads = kept_rows // 3 // mha.head_dim
        new = cls(mha.embed_dim, heads, mha.head_dim, bias=mha.in_proj_bias is not None, dropout=mha.dropout,
                  batch_first=mha.batch_first, device=mha.in_proj_weight.device, dtype=mha.in_proj_weight.dtype)
        with torch.no_grad():
            new.in_proj_weight.copy_(_select(mha.in_proj_weight, removed, "in_proj_weight"))
            if new.in_proj_bias is not None:
                new.in_proj_bias.copy_(_select(mha.in_proj_bias, removed, "in_proj_bias"))
        new.out_proj = mha.out_proj  # its columns are a member of the same structure: shrunk as a module of its own
        new.in_proj_weight.requires_grad_(mha.in_proj_weight.requires_grad)
        if new.in_proj_bias is not None and mha.in_proj_bias is not None:
            new.in_proj_bias.requires_grad_(mha.in_proj_bias.requires_grad)
        new.train(mha.training)
        return new

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = True, attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        inner = self.num_heads * self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.split(inner)
        b_q, b_k, b_v = self.in_proj_bias.split(inner) if self.in_proj_bias is not None else (None, None, None)
        batch, length, _ = query.shape

        def heads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            return F.linear(x, w, b).view(batch, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
        mask = None
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dtype != torch.bool else torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill_(attn_mask, float("-inf"))
            if mask.dim() == 3:
                raise ValueError("SlimMultiheadAttention takes an attn_mask of shape [L, S]; a per-head mask names heads that were removed")
        elif is_causal:
            mask = torch.full((length, k.shape[2]), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
        if key_padding_mask is not None:
            pad = key_padding_mask if key_padding_mask.dtype != torch.bool else torch.zeros_like(key_padding_mask, dtype=q.dtype).masked_fill_(key_padding_mask, float("-inf"))
            pad = pad[:, None, None, :]
            mask = pad if mask is None else mask + pad
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        weights = scores.softmax(-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout)
        out = (weights @ v).transpose(1, 2).reshape(batch, length, inner)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights
