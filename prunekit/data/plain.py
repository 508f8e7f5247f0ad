"""State-dict values that ``torch.load(..., weights_only=True)`` reads, and back.

``weights_only`` unpickling admits tensors, ``torch.Size``, dtypes, devices, numbers, strings,
bytes, None and dicts, lists, tuples and sets of them. Data sparsity state holds two more kinds of
values that users put in configs, and :func:`to_plain` converts them:

* an ``enum.Enum`` member becomes ``{ENUM_KEY: "module:QualName", "name": member name}``;
  :func:`from_plain` finds the class again among the modules already imported (nothing is imported
  nor run: import the module that defines the enum before loading);
* a NumPy scalar becomes the Python number it holds.

Tensors are detached clones; other values are deep copies, so neither direction aliases its input.
Values of other types are copied as they are: ``weights_only`` loads them only if their class was
allowed with ``torch.serialization.add_safe_globals``.
"""

from __future__ import annotations

import copy
import enum
import sys
from typing import Any, Mapping

import torch

__all__ = ["ENUM_KEY", "to_plain", "from_plain"]

#: the key marking a saved enum member
ENUM_KEY = "__prunekit_enum__"


def to_plain(value: Any) -> Any:
    """A copy of ``value`` made of what ``torch.load(weights_only=True)`` reads (module docstring)."""
    if isinstance(value, torch.Tensor):
        with torch._C.DisableTorchFunctionSubclass():
            return torch.Tensor.as_subclass(value, torch.Tensor).detach().clone()
    if isinstance(value, enum.Enum):
        cls = type(value)
        return {ENUM_KEY: f"{cls.__module__}:{cls.__qualname__}", "name": value.name}
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, torch.Size):
        return value
    if isinstance(value, tuple):
        return tuple(to_plain(item) for item in value)
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    return copy.deepcopy(value)


def from_plain(value: Any, where: str = "value") -> Any:
    """The value :func:`to_plain` made ``value`` from (a copy); ``where`` names it in errors.

    Raises ``ValueError`` (naming ``where``) for an enum marker whose class is not imported or has
    no such member.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, Mapping):
        if ENUM_KEY in value:
            return _enum_member(value, where)
        return {key: from_plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, torch.Size):
        return value
    if isinstance(value, tuple):
        return tuple(from_plain(item, f"{where}[{i}]") for i, item in enumerate(value))
    if isinstance(value, list):
        return [from_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return copy.deepcopy(value)


def _enum_member(marker: Mapping[str, Any], where: str) -> enum.Enum:
    ref, name = marker.get(ENUM_KEY), marker.get("name")
    if set(marker) != {ENUM_KEY, "name"} or not isinstance(ref, str) or ":" not in ref or not isinstance(name, str):
        raise ValueError(f"{where}: a malformed saved enum {dict(marker)!r}; save the state again")
    module_name, qualname = ref.split(":", 1)
    found: Any = sys.modules.get(module_name)
    if found is None:
        raise ValueError(
            f"{where}: holds {qualname}.{name} of module {module_name!r}, which is not imported; import "
            f"{module_name} before loading (saved enums are looked up, never imported)"
        )
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if not (isinstance(found, type) and issubclass(found, enum.Enum)):
        raise ValueError(f"{where}: {module_name}.{qualname} is not an enum class; load with the code that saved it")
    member = found.__members__.get(name)
    if member is None:
        members = ", ".join(found.__members__) or "(none)"
        raise ValueError(f"{where}: {qualname} has no member {name!r} (it has: {members}); load with the code that saved it")
    return member
