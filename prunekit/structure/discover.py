"""Finding coupled structures from a model's modules.

* **Attention heads** (kind ``head``):
  - BERT-style encoders: a module with ``query``, ``key``, ``value`` Linear children (``BertSelfAttention``
    and its relatives) whose parent has ``output.dense``: unit = one head (``attention_head_size``
    rows of q, k, v and their biases, the same columns of ``output.dense``).
  - Llama/Qwen/Gemma/Mistral-style decoders: ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` and a
    ``head_dim``: unit = one key/value head with its ``num_attention_heads / num_key_value_heads``
    query heads (grouped-query attention keeps them together).
  - GPT-2: ``c_attn`` / ``c_proj`` (transformers' ``Conv1D``, weights stored ``[in, out]``), ``num_heads``:
    unit = one head (its q, k and v columns of ``c_attn``, its rows of ``c_proj``).
  - ``nn.MultiheadAttention`` with packed ``in_proj_weight``: unit = one head.
* **FFN channels** (kind ``channel``), one intermediate neuron each: ``intermediate.dense`` →
  ``output.dense`` (BERT), ``gate_proj`` + ``up_proj`` → ``down_proj`` (Llama), ``c_fc`` → ``c_proj``
  (GPT-2), ``fc1`` → ``fc2``, ``linear1`` → ``linear2`` (``nn.TransformerEncoderLayer``), ``lin1`` →
  ``lin2`` (DistilBERT).
* **Conv filters** (kind ``channel``), traced with ``torch.fx``: a ``Conv2d`` (``groups=1``) whose
  output reaches exactly one ``Conv2d`` (``groups=1``) or ``Linear`` through nothing but an optional
  ``BatchNorm2d`` and channel-wise modules (activations, dropout, pooling, flatten); a filter is its
  output channel, the batch-norm entries and the next layer's input channel (its columns after a
  flatten). An output that meets a residual add or a concatenation is coupled to other layers and is
  not a unit.
* **Declared units** (:func:`declared_units`): ``units:`` in a group's YAML names the layers by regex.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.structure.units import Member, UnitGroup

__all__ = ["discover", "attention_units", "ffn_units", "conv_units", "declared_units"]


def _is_linear(module: Any) -> bool:
    return isinstance(module, nn.Linear)


def _is_conv1d(module: Any) -> bool:
    """transformers' ``Conv1D``: ``weight [in, out]``, ``nf`` = out features."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def _out_dim(module: nn.Module) -> int:
    return 1 if _is_conv1d(module) else 0


def _in_dim(module: nn.Module) -> int:
    return 0 if _is_conv1d(module) else 1


def _out_features(module: nn.Module) -> int:
    return module.weight.shape[_out_dim(module)]


def _in_features(module: nn.Module) -> int:
    return module.weight.shape[_in_dim(module)]


def _foreign_width(module: nn.Module, members: Iterable[str], prefix: str, widths: set[int]) -> str | None:
    """A parameter of ``module`` outside the member layers with a dimension of a unit width (a norm over
    all heads, a norm between an FFN's layers): removing units would have to shrink it too, so the
    structure is not discovered. Returns its name, or None."""
    owned = {m[len(prefix) + 1:] if prefix else m for m in members}
    for name, param in module.named_parameters():
        layer = name.rpartition(".")[0]
        if layer in owned:
            continue
        if any(d in widths for d in param.shape):
            return name
    return None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _produce(name: str, module: nn.Module, size: int, offset: int = 0) -> list[Member]:
    members = [Member(name, "weight", _out_dim(module), size, "produce", offset)]
    if getattr(module, "bias", None) is not None:
        members.append(Member(name, "bias", 0, size, "produce", offset))
    return members


def _consume(name: str, module: nn.Module, size: int) -> list[Member]:
    return [Member(name, "weight", _in_dim(module), size, "consume")]


# ---------------------------------------------------------------------------------------- attention
def attention_units(model: nn.Module) -> list[UnitGroup]:
    """Head groups of every attention module the model has (see the module docstring)."""
    groups: list[UnitGroup] = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        group = (
            _bert_heads(name, module, modules)
            or _llama_heads(name, module)
            or _gpt2_heads(name, module)
            or _mha_heads(name, module)
        )
        if group is not None:
            groups.append(group)
    return groups


def _bert_heads(name: str, module: nn.Module, modules: dict[str, nn.Module]) -> UnitGroup | None:
    q, k, v = (getattr(module, a, None) for a in ("query", "key", "value"))
    if not all(_is_linear(m) for m in (q, k, v)):
        return None
    head = getattr(module, "attention_head_size", None)
    parent = name.rpartition(".")[0]
    out_name = _join(parent, "output.dense")
    out = modules.get(out_name)
    if not isinstance(head, int) or head <= 0 or not _is_linear(out) or q.out_features % head:
        return None
    heads = q.out_features // head
    if k.out_features != q.out_features or v.out_features != q.out_features or out.in_features != q.out_features:
        return None
    members = [*_produce(_join(name, "query"), q, head), *_produce(_join(name, "key"), k, head),
               *_produce(_join(name, "value"), v, head), *_consume(out_name, out, head)]
    if _foreign_width(module, [m.module for m in members], name, {q.out_features}):
        return None
    attrs = {name: {"num_attention_heads": 1, "all_head_size": head}}
    return UnitGroup(_join(parent) or name, "head", heads, members, attrs, owners=(name, parent) if parent else (name,))


def _llama_heads(name: str, module: nn.Module) -> UnitGroup | None:
    q, k, v, o = (getattr(module, a, None) for a in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if not all(_is_linear(m) for m in (q, k, v, o)):
        return None
    head_dim = getattr(module, "head_dim", None)
    if not isinstance(head_dim, int) or head_dim <= 0 or q.out_features % head_dim or k.out_features % head_dim:
        return None
    heads, kv_heads = q.out_features // head_dim, k.out_features // head_dim
    if kv_heads == 0 or heads % kv_heads or v.out_features != k.out_features or o.in_features != q.out_features:
        return None
    group = heads // kv_heads  # query heads per key/value head
    members = [*_produce(_join(name, "q_proj"), q, group * head_dim), *_produce(_join(name, "k_proj"), k, head_dim),
               *_produce(_join(name, "v_proj"), v, head_dim), *_consume(_join(name, "o_proj"), o, group * head_dim)]
    if _foreign_width(module, [m.module for m in members], name, {q.out_features, k.out_features}):
        return None  # e.g. a norm over all query heads (OLMo2's q_norm): not removable head by head
    attrs: dict[str, dict[str, int]] = {}
    for attr, per_unit in (("num_heads", group), ("num_key_value_heads", 1), ("num_attention_heads", group)):
        if isinstance(getattr(module, attr, None), int):
            attrs.setdefault(name, {})[attr] = per_unit
    return UnitGroup(name, "head", kv_heads, members, attrs, owners=(name,))


def _gpt2_heads(name: str, module: nn.Module) -> UnitGroup | None:
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    if not (_is_conv1d(c_attn) and _is_conv1d(c_proj)) or getattr(module, "is_cross_attention", False):
        return None
    heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    split = getattr(module, "split_size", None)
    if not all(isinstance(x, int) and x > 0 for x in (heads, head_dim, split)) or heads * head_dim != split:
        return None
    if _out_features(c_attn) != 3 * split or _in_features(c_proj) != split:
        return None
    members: list[Member] = []
    for part in range(3):  # q, k, v are consecutive blocks of c_attn's outputs
        members += _produce(_join(name, "c_attn"), c_attn, head_dim, offset=part * split)
    members += _consume(_join(name, "c_proj"), c_proj, head_dim)
    return UnitGroup(name, "head", heads, members, {name: {"num_heads": 1, "split_size": head_dim}}, owners=(name,))


def _mha_heads(name: str, module: nn.Module) -> UnitGroup | None:
    if not isinstance(module, nn.MultiheadAttention) or module.in_proj_weight is None:
        return None
    if module.bias_k is not None or module.add_zero_attn:
        return None  # extra key/value entries that prunekit's slimmed attention does not reproduce
    heads, head_dim = module.num_heads, module.head_dim
    embed = module.embed_dim
    members: list[Member] = []
    for part in range(3):
        members.append(Member(name, "in_proj_weight", 0, head_dim, "produce", part * embed))
        if module.in_proj_bias is not None:
            members.append(Member(name, "in_proj_bias", 0, head_dim, "produce", part * embed))
    members += _consume(_join(name, "out_proj"), module.out_proj, head_dim)
    return UnitGroup(name, "head", heads, members, {}, owners=(name,))


# ---------------------------------------------------------------------------------------- FFN
#: (producer child paths, consumer child path) of FFN blocks, relative to their parent module
FFN_LAYOUTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("intermediate.dense",), "output.dense"),  # BERT, RoBERTa, ELECTRA, MiniLM
    (("gate_proj", "up_proj"), "down_proj"),  # Llama, Qwen, Mistral, Gemma
    (("up_proj",), "down_proj"),
    (("c_fc",), "c_proj"),  # GPT-2
    (("fc1",), "fc2"),  # OPT, ViT-style MLPs
    (("linear1",), "linear2"),  # nn.TransformerEncoderLayer / DecoderLayer
    (("lin1",), "lin2"),  # DistilBERT
)


def ffn_units(model: nn.Module, head_layers: set[str] | None = None) -> list[UnitGroup]:
    """Channel groups of every FFN block (see the module docstring); ``head_layers``: layers that
    belong to attention heads (never an FFN's), found here when not given."""
    if head_layers is None:
        head_layers = {m.module for g in attention_units(model) for m in g.members}
    groups: list[UnitGroup] = []
    for name, module in model.named_modules():
        for producers, consumer in FFN_LAYOUTS:
            try:
                prods = [module.get_submodule(p) for p in producers]
                cons = module.get_submodule(consumer)
            except AttributeError:
                continue
            layers = [*prods, cons]
            if not all(_is_linear(m) or _is_conv1d(m) for m in layers):
                continue
            width = _out_features(prods[0])
            if any(_out_features(p) != width for p in prods) or _in_features(cons) != width:
                continue
            if any(_join(name, p) in head_layers for p in (*producers, consumer)):
                continue
            members: list[Member] = []
            for path, prod in zip(producers, prods):
                members += _produce(_join(name, path), prod, 1)
            members += _consume(_join(name, consumer), cons, 1)
            ffn_module = module.get_submodule("intermediate") if producers == ("intermediate.dense",) else module
            ffn_prefix = _join(name, "intermediate") if producers == ("intermediate.dense",) else name
            if _foreign_width(ffn_module, [m.module for m in members], ffn_prefix, {width}):
                continue  # something of the FFN's width sits between the layers (a norm): not channel by channel
            if producers == ("intermediate.dense",):  # BERT: the FFN is not a module of its own
                group_name, owners = _join(name, "intermediate"), (_join(name, "intermediate"), name)
            else:
                group_name, owners = name, (name,)
            groups.append(UnitGroup(group_name, "channel", width, members, {}, owners=owners))
            break
    return groups


# ---------------------------------------------------------------------------------------- CNNs
_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.ELU, nn.Mish, nn.Tanh,
                nn.Sigmoid, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d)
_CHANNELWISE_FUNCTIONS = {"relu", "relu6", "silu", "gelu", "hardswish", "leaky_relu", "dropout", "max_pool2d", "avg_pool2d",
                          "adaptive_avg_pool2d", "adaptive_max_pool2d", "sigmoid", "tanh", "elu", "mish"}


def conv_units(model: nn.Module) -> tuple[list[UnitGroup], dict[str, str]]:
    """Filter groups of Conv2d chains, and for every other Conv2d why it is not one (``{name: reason}``).

    Traced with ``torch.fx.symbolic_trace``; a model that cannot be traced has no conv units (the
    reason is given for each of its convs).
    """
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        return [], {}
    try:
        graph = _LayerLeafTracer().trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure: no conv units, said per conv
        reason = f"the model cannot be traced by torch.fx ({type(err).__name__}: {str(err)[:120]})"
        return [], {n: reason for n in convs}
    modules = dict(model.named_modules())
    groups, reasons = [], {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in convs:
            continue
        conv = convs[node.target]
        if conv.groups != 1:
            reasons[node.target] = f"a grouped conv (groups={conv.groups}): its channels are tied to its inputs (a depthwise conv goes with the conv before it)"
            continue
        found = _follow(node, modules)
        if isinstance(found, str):
            reasons[node.target] = found
            continue
        norms, consumer, spatial = found
        if spatial == 0:  # a Linear after a flatten: channel c owns columns c·k .. (c+1)·k (channels-first flatten)
            width = modules[consumer].in_features
            if width % conv.out_channels:
                reasons[node.target] = (f"its {conv.out_channels} channels reach {consumer!r} ({width} inputs, not a multiple) "
                                        f"through a flatten: the layout between them is not channel by channel")
                continue
            spatial = width // conv.out_channels
        members = _produce(node.target, conv, 1)
        for norm in norms:
            per_channel = modules[norm]
            members += [Member(norm, p, 0, 1, "norm") for p in ("weight", "bias", "running_mean", "running_var")
                        if getattr(per_channel, p, None) is not None]
        members.append(Member(consumer, "weight", 1, spatial, "consume"))
        groups.append(UnitGroup(node.target, "channel", conv.out_channels, members, {}, owners=(node.target,)))
    return groups, reasons


class _LayerLeafTracer(torch.fx.Tracer):
    """``torch.fx`` tracing that keeps subclasses of Conv2d / BatchNorm2d / Linear (e.g. a
    ``Conv2dStaticSamePadding``) as single calls instead of tracing into their ``forward``."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) or super().is_leaf_module(m, qualname)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _follow(node: Any, modules: dict[str, nn.Module]) -> tuple[list[str], str, int] | str:
    """From a conv's output to the one layer that reads it: (per-channel modules between: batch norms
    and depthwise convs; the consumer; columns per channel) or why not."""
    norms: list[str] = []
    flattened = False
    while True:
        users = list(node.users)
        if len(users) != 1:
            return f"its output is used {len(users)} times (a branch, e.g. a residual shortcut): coupled to other layers"
        node = users[0]
        if node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, nn.BatchNorm2d) and not flattened:
                norms.append(node.target)
                continue
            if _is_depthwise(module) and not flattened:  # channel c in, channel c out: the unit passes through
                norms.append(node.target)
                continue
            if isinstance(module, _CHANNELWISE):
                continue
            if isinstance(module, nn.Flatten):
                flattened = True
                continue
            if isinstance(module, nn.Conv2d) and module.groups == 1 and not flattened:
                return norms, node.target, 1
            if isinstance(module, nn.ZeroPad2d) and not flattened:
                continue
            if isinstance(module, nn.Linear) and flattened:
                return norms, node.target, 0  # columns per channel: in_features / channels, checked by the caller
            return f"its output reaches {type(module).__name__} {node.target!r}, which is not a conv (groups=1) or a Linear after a flatten"
        if node.op == "call_function" and getattr(node.target, "__name__", "") in _CHANNELWISE_FUNCTIONS:
            continue
        if node.op in ("call_function", "call_method") and getattr(node.target, "__name__", node.target) in ("flatten",):
            flattened = True
            continue
        what = getattr(node.target, "__name__", node.target)
        return f"its output reaches {what!r} (an add or concatenation couples it to other layers)"


# ---------------------------------------------------------------------------------------- declared
def declared_units(model: nn.Module, specs: Iterable[Any], where: str) -> list[UnitGroup]:
    """Unit groups a config declares (``units:`` entries: ``outputs``, ``inputs``, ``norms`` regexes, ``size``)."""
    modules = dict(model.named_modules())
    groups = []
    for i, spec in enumerate(specs):
        here = f"{where}.units[{i}]"

        def find(patterns: list[str], key: str) -> list[str]:
            found = [n for n in modules if n and any(re.search(p, n) for p in patterns)]
            if patterns and not found:
                raise PruningError(f"{here}.{key}: {patterns!r} match no module; names are those of model.named_modules()")
            return found

        outputs, inputs, norms = find(spec.outputs, "outputs"), find(spec.inputs, "inputs"), find(spec.norms, "norms")
        members: list[Member] = []
        widths = set()
        for key, names in (("outputs", outputs), ("inputs", inputs)):
            for name in names:
                module = modules[name]
                if not (_is_linear(module) or _is_conv1d(module) or isinstance(module, nn.Conv2d)):
                    raise PruningError(f"{here}.{key}: {name!r} is a {type(module).__name__}; declare Linear, Conv1D or Conv2d layers")
                widths.add(_out_features(module) if key == "outputs" else _in_features(module))
                members += _produce(name, module, spec.size) if key == "outputs" else _consume(name, module, spec.size)
        for name in norms:
            module = modules[name]
            widths.add(getattr(module, "num_features", -1))
            members += [Member(name, p, 0, spec.size, "norm") for p in ("weight", "bias", "running_mean", "running_var")
                        if getattr(module, p, None) is not None]
        if len(widths) != 1:
            raise PruningError(
                f"{here}: the declared layers do not agree on the coupled width (outputs of {outputs}, inputs of {inputs}, "
                f"norms {norms}: {sorted(widths)}); every output, norm and input must have the same number of channels"
            )
        width = widths.pop()
        if width % spec.size:
            raise PruningError(f"{here}: the width {width} is not a multiple of size {spec.size}")
        groups.append(UnitGroup(spec.name or f"declared{i}", spec.kind, width // spec.size, members, {}, owners=tuple(outputs)))
    return groups


def discover(model: nn.Module, kind: str) -> tuple[list[UnitGroup], dict[str, str]]:
    """Every unit group of ``kind`` (``head`` or ``channel``) the model has, and why convs are not units."""
    if kind == "head":
        return attention_units(model), {}
    ffn = ffn_units(model)
    convs, reasons = conv_units(model)
    return ffn + convs, reasons
