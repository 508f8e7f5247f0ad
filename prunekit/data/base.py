"""``BaseDataSparsifier``: named data (tensors, parameters, embedding weights) with one mask each.

The torch.ao-style data sparsifier, rebuilt without its known defects. Design choices:

* **By reference, no parametrization.** The sparsifier keeps the user's tensor object (for an
  ``nn.Embedding``/``nn.EmbeddingBag``, its ``weight`` parameter) untouched until
  :meth:`~BaseDataSparsifier.squash_mask`, which zeroes the pruned entries *in place*; the user's
  tensor (and the module holding it) sees the result, and a lookup through the module stays a plain
  dense lookup: nothing multiplies the table by the mask on every forward.
* **Compact masks.** One ``torch.bool`` mask per entry (True = kept), on the data's device; state
  dicts pack it to one bit per element. ``get_mask`` hands it out as a
  :class:`~prunekit.data.masks.MaskView`, an alias that still computes like torch.ao's float mask
  (``mask.mean()``, ``1 - mask``); internal paths use the plain tensor.
* **Per-entry state.** ``state[name]`` holds the mask and whatever a subclass keeps next to it
  (torch.ao's tests keep ``step_count`` there); state dicts save and restore every key.
* **Plain Python state.** No monkey-patching and no hidden module, so ``pickle`` and
  ``copy.deepcopy`` keep every flag and every subclass attribute, and names may contain dots.
"""

from __future__ import annotations

import abc
import copy
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Mapping, NamedTuple, Sequence, TypeVar, Union

import torch
from torch import nn

from prunekit.errors import ConfigError, ConfigProblem, PrunekitError, PruningError
from prunekit.registry import Registry, suggest
from prunekit.data.masks import MaskView, pack_mask, unpack_mask
from prunekit.data.plain import from_plain, to_plain

__all__ = [
    "BaseDataSparsifier",
    "DATA_SPARSIFIERS",
    "DataConfigError",
    "DataLike",
    "DataLoadResult",
    "SquashedDataError",
    "UnknownDataError",
    "STATE_DICT_VERSION",
]

#: the data a sparsifier accepts: a tensor (or parameter), or an embedding module (its weight)
DataLike = Union[torch.Tensor, nn.Embedding, nn.EmbeddingBag]

#: data sparsifiers selectable by name (the YAML ``data_sparsity.sparsifier.type``)
DATA_SPARSIFIERS = Registry("data sparsifier")

STATE_DICT_VERSION = 1

F = TypeVar("F", bound=Callable[..., Any])


class UnknownDataError(PrunekitError, ValueError):
    """A data name the sparsifier does not hold."""


class SquashedDataError(PruningError, ValueError):
    """The original values of squashed data were asked for (``get_data(name, return_original=True)``).

    A ``ValueError``, as torch.ao raises there, and a :class:`~prunekit.errors.PruningError`.
    """


class DataConfigError(ConfigError):
    """Problems in a data sparsifier's configuration (constructor defaults or ``add_data`` config)."""

    def _render(self) -> str:
        count = len(self.problems)
        head = "1 problem in the data sparsifier config:" if count == 1 else f"{count} problems in the data sparsifier config:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


@dataclass
class DataLoadResult:
    """What :meth:`BaseDataSparsifier.load_state_dict` did, name by name.

    ``loaded``: names restored from the state dict; ``replaced``: the loaded names that were already
    held (their saved config and mask won; their attached tensor stayed attached); ``kept``: names
    held before and absent from the state dict, left as they were (non-strict loads); ``dropped``:
    such names removed by a strict load; ``detached``: loaded names with no tensor (the state dict had
    no data for them and none was attached); attach one with ``add_data(name, tensor)``.
    """

    loaded: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)


def _counts_steps(step: F) -> F:
    """Wrap a ``step`` method so that each outermost call that returns adds 1 to ``_step_count``.

    Applied to every subclass's ``step`` by ``__init_subclass__``: the count stays right when a
    subclass overrides ``step`` (with or without ``super().step()``), without patching instances.
    """

    @functools.wraps(step)
    def counted(self: "BaseDataSparsifier", *args: Any, **kwargs: Any) -> Any:
        if self.__dict__.get("_in_step", False):
            return step(self, *args, **kwargs)
        self._in_step = True
        try:
            result = step(self, *args, **kwargs)
        finally:
            self._in_step = False
        self._step_count += 1
        return result

    counted._counts_steps = True  # type: ignore[attr-defined]
    return counted  # type: ignore[return-value]


def _extract_tensor(name: str, data: Any) -> torch.Tensor:
    if isinstance(data, (nn.Embedding, nn.EmbeddingBag)):
        data = data.weight
    elif isinstance(data, nn.Module):
        raise TypeError(
            f"add_data({name!r}): {type(data).__name__} modules are not data; pass a tensor such as "
            f"module.weight, or an nn.Embedding / nn.EmbeddingBag"
        )
    if not isinstance(data, torch.Tensor):
        raise TypeError(
            f"add_data({name!r}): expected a tensor, nn.Parameter, nn.Embedding or nn.EmbeddingBag, "
            f"got {type(data).__name__}"
        )
    if data.layout != torch.strided:
        raise TypeError(f"add_data({name!r}): {data.layout} tensors are not supported; pass data.to_dense()")
    return data


class BaseDataSparsifier(abc.ABC):
    r"""Holds named data, one bool mask each (True = kept), and updates the masks on :meth:`step`.

    Args:
        data_list: ``(name, data)`` pairs added with the defaults (see :meth:`add_data`).
        **defaults: the config every entry starts from; ``add_data(name, data, **config)`` overrides
            keys per entry. :meth:`update_mask` receives the entry's config as keyword arguments.

    Subclasses implement :meth:`update_mask` (the one extension point) and may override
    :meth:`validate_config` to check and normalize config keys.
    """

    def __init__(self, data_list: Iterable[tuple[str, DataLike]] | None = None, **defaults: Any) -> None:
        self.defaults: dict[str, Any] = self.validate_config(None, dict(defaults))
        self.data_groups: dict[str, dict[str, Any]] = {}
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        self._data: dict[str, torch.Tensor | None] = {}
        self._squashed: dict[str, bool] = {}  # name -> whether squash_mask applied the mask
        self.enable_mask_update = True
        self._step_count = 0
        self._in_step = False
        for name, data in data_list or ():
            self.add_data(name, data)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "_counts_steps", False):
            cls.step = _counts_steps(step)  # type: ignore[method-assign]

    # ------------------------------------------------------------------ extension points
    @abc.abstractmethod
    def update_mask(self, name: str, data: torch.Tensor, **config: Any) -> torch.Tensor | None:
        """Recompute the mask of ``name`` from ``data`` (the original, unmasked values).

        Either write the new mask into ``self.get_mask(name)`` in place and return None, or return
        a tensor of ``data``'s shape (nonzero = kept) that replaces it. Called under ``no_grad``.
        """

    def validate_config(
        self, name: str | None, config: dict[str, Any], given: Collection[str] | None = None
    ) -> dict[str, Any]:
        """Check and normalize one entry's config (``name`` None: the defaults); returns it.

        ``given`` holds the keys the caller passed explicitly (None: all of them); the others were
        kept from the entry's current config, where a data scheduler may have written values the
        user could not pass (a subclass may check those leniently). Raise :class:`DataConfigError`
        for bad keys or values. The base class accepts any keys.
        """
        return config

    # ------------------------------------------------------------------ adding data
    def add_data(self, name: str, data: DataLike, reuse_mask: bool = True, **config: Any) -> torch.Tensor:
        """Hold ``data`` under ``name``; returns it as the sparsifier would hand it to a model.

        * A new name starts from the defaults updated with ``config`` and an all-kept mask (so
          ``data`` itself comes back, not a copy).
        * An existing name is replaced: it keeps its config (updated with ``config``) and, with
          ``reuse_mask=True``, its mask, which requires the same shape, and the rest of its
          per-entry state (``state[name]``; tensors there follow ``data`` to its device); the return
          value is then ``data`` with that mask applied (a new tensor; ``data`` itself is not
          modified). With ``reuse_mask=False`` the entry starts afresh: an all-kept mask, no state.
        * ``config`` may hold ``mask=`` (a tensor of ``data``'s shape, nonzero = kept) as the
          initial mask; it is copied, not stored in the config.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"add_data: a data name must be a non-empty string, got {name!r}")
        tensor = _extract_tensor(name, data)
        initial = config.pop("mask", None)
        replacing = name in self.data_groups
        base = self.data_groups[name] if replacing else self.defaults
        merged = self.validate_config(name, {**copy.deepcopy(base), **config}, set(config) if replacing else None)
        fresh = True
        kept: dict[str, Any] = {}
        if initial is not None:
            mask = self._checked_mask(name, initial, tensor)
            fresh = False
        elif replacing and reuse_mask:
            mask = self.state[name]["mask"]
            if mask.shape != tensor.shape:
                raise ValueError(
                    f"add_data({name!r}): reuse_mask=True needs the new data to have the old shape "
                    f"{tuple(mask.shape)}, got {tuple(tensor.shape)}; pass reuse_mask=False for a fresh mask, "
                    f"or use another name"
                )
            mask = mask.to(tensor.device)
            kept = _on_device({k: v for k, v in self.state[name].items() if k != "mask"}, tensor.device)
            fresh = False
        else:
            mask = torch.ones(tensor.shape, dtype=torch.bool, device=tensor.device)
        self.data_groups[name] = merged
        if fresh or initial is not None:
            self.__dict__.get("_mask_views", {}).pop(name, None)  # a new mask: drop the old one's view
        self.state[name] = {"mask": mask, **kept}
        self._data[name] = tensor
        self._squashed.pop(name, None)
        return tensor if fresh else self._masked(tensor, mask)

    @staticmethod
    def _checked_mask(name: str, mask: Any, tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(tensor.shape):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(
                f"add_data({name!r}): mask= must be a tensor of the data's shape {tuple(tensor.shape)}, got {shape}"
            )
        return mask.detach().to(device=tensor.device, dtype=torch.bool).clone(memory_format=torch.contiguous_format)

    @staticmethod
    def _masked(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, tensor, torch.zeros((), dtype=tensor.dtype, device=tensor.device))

    # ------------------------------------------------------------------ reading
    def _require(self, name: str) -> None:
        if name not in self.data_groups:
            hint = suggest(name, list(self.data_groups)) if isinstance(name, str) else None
            did = f"did you mean {hint!r}? " if hint else ""
            held = ", ".join(map(repr, self.data_groups)) or "(none)"
            raise UnknownDataError(f"no data named {name!r}; {did}held: {held}")

    def _tensor(self, name: str) -> torch.Tensor:
        tensor = self._data[name]
        if tensor is None:
            raise PruningError(
                f"data {name!r} has no tensor attached (it was loaded from a state dict saved without data); "
                f"attach one with add_data({name!r}, tensor)"
            )
        return tensor

    def get_data(self, name: str, return_original: bool = True) -> torch.Tensor:
        """The data held under ``name``.

        ``return_original=True``: the tensor itself, unmasked (by reference). It raises
        :class:`SquashedDataError` (a ``ValueError``, as in torch.ao) after a
        ``squash_mask(leave_parametrized=True)``, which overwrote the original values in place.
        ``return_original=False``: the data with its mask applied (a new tensor; after a squash, the
        squashed tensor itself).
        """
        self._require(name)
        tensor = self._tensor(name)
        if name in self._squashed:
            if return_original and self._squashed[name]:
                raise SquashedDataError(
                    f"data {name!r} was squashed: squash_mask() zeroed its pruned values in place, so the "
                    f"original values are gone; get_data({name!r}, return_original=False) returns the squashed data"
                )
            return tensor
        return tensor if return_original else self._masked(tensor, self.state[name]["mask"])

    def get_mask(self, name: str) -> MaskView:
        """The mask of ``name`` (True = kept): the live mask :meth:`step` updates in place.

        A :class:`~prunekit.data.masks.MaskView`, an alias of the bool tensor in
        ``state[name]["mask"]`` (writes show through both ways) that computes like torch.ao's float
        mask where bool cannot (``mask.mean()``, ``1 - mask``, ``mask + mask``); its results are
        plain tensors. Inside :meth:`update_mask`, rebinding it as torch.ao's sparsifiers do
        (``mask.data = new_mask``) works too: :meth:`step` copies the new values into the mask.
        """
        self._require(name)
        mask = self.state[name]["mask"]
        views = self.__dict__.setdefault("_mask_views", {})
        view = views.get(name)
        if view is None or not _aliases(view, mask):
            view = views[name] = mask.as_subclass(MaskView)
        if self.__dict__.get("_in_step", False):
            self.__dict__.setdefault("_handed", []).append((name, view))
        return view

    def _plain_mask(self, name: str) -> torch.Tensor:
        """The bool mask tensor of ``name`` itself, for internal paths (no subclass dispatch)."""
        return self.state[name]["mask"]

    @property
    def squashed(self) -> list[str]:
        """Names whose mask has been squashed (they cannot be stepped until added again)."""
        return list(self._squashed)

    # ------------------------------------------------------------------ stepping
    @_counts_steps
    def step(self) -> None:
        """Recompute every mask: ``update_mask(name, data, **config)`` for each entry.

        Does nothing while ``enable_mask_update`` is False (a data scheduler's ``step()`` sets it).
        Raises :class:`~prunekit.errors.PruningError`, before changing anything, when an entry was
        squashed or has no tensor attached.
        """
        if not self.enable_mask_update:
            return
        squashed = [n for n in self.data_groups if n in self._squashed]
        if squashed:
            raise PruningError(
                f"{type(self).__name__}.step(): {', '.join(map(repr, squashed))} "
                f"{'was' if len(squashed) == 1 else 'were'} squashed by squash_mask() and can no longer be "
                f"sparsified; call squash_mask() after the last step(), or attach the data again with add_data(name, tensor)"
            )
        for name in self.data_groups:
            self._tensor(name)
        try:
            with torch.no_grad():
                for name, config in self.data_groups.items():
                    result = self.update_mask(name, self._tensor(name), **config)
                    self._adopt_rebound_masks()
                    if result is not None:
                        self._store_mask(name, result, "returned a mask", "return a mask of the data's shape")
        finally:
            self.__dict__.pop("_handed", None)

    def _adopt_rebound_masks(self) -> None:
        """Copy into the masks the views ``update_mask`` rebound (``get_mask(name).data = new``)."""
        for name, view in self.__dict__.pop("_handed", []):
            mask = self.state.get(name, {}).get("mask")
            if mask is None or _aliases(view, mask):
                continue
            with torch._C.DisableTorchFunctionSubclass():
                rebound = torch.Tensor.as_subclass(view, torch.Tensor)
                self._store_mask(name, rebound, f"set get_mask({name!r}).data to a tensor", "assign a mask of the data's shape")
                view.data = mask  # the view is the live mask again

    def _store_mask(self, name: str, new: torch.Tensor, what: str, fix: str) -> None:
        """Copy ``new`` (nonzero = kept) into the bool mask of ``name``, checking its shape."""
        mask = self.state[name]["mask"]
        if tuple(new.shape) != tuple(mask.shape):
            raise PruningError(
                f"{type(self).__name__}.update_mask({name!r}) {what} of shape {tuple(new.shape)} for data of shape "
                f"{tuple(mask.shape)}; {fix}"
            )
        mask.copy_(new if new.dtype == torch.bool else new != 0)

    def squash_mask(self, names: Sequence[str] | str | None = None, leave_parametrized: bool = True) -> None:
        """Finish ``names`` (default: every entry not squashed yet).

        ``leave_parametrized=True`` zeroes the pruned values of the data in place, so the user's
        tensor (and its module) is sparse from then on; False leaves the data as it is. Either way
        the mask is kept (``get_mask``) and a later :meth:`step` raises until the name is added again.
        """
        if isinstance(names, str):
            names = [names]
        if names is None:
            targets = [n for n in self.data_groups if n not in self._squashed]
        else:
            targets = list(names)
            for name in targets:
                self._require(name)
            again = [n for n in targets if n in self._squashed]
            if again:
                raise PruningError(
                    f"squash_mask: {', '.join(map(repr, again))} already squashed; leave them out, or call "
                    f"squash_mask() without names to finish every remaining entry"
                )
        for name in targets:
            self._tensor(name)
        for name in targets:
            if leave_parametrized:
                tensor = self._tensor(name)
                with torch.no_grad():
                    tensor.masked_fill_(self.state[name]["mask"].logical_not(), 0)
            self._squashed[name] = bool(leave_parametrized)

    # ------------------------------------------------------------------ state
    def state_dict(self, include_data: bool = True) -> dict[str, Any]:
        """A snapshot of the sparsifier made of plain Python values and tensors (copies).

        Keys: ``version``, ``defaults``, ``data_groups`` (name -> config), ``state`` (name -> the
        entry's state: ``mask`` packed to 1 bit per element, see
        :func:`~prunekit.data.masks.pack_mask`, and every other key a subclass keeps there),
        ``data`` (name -> a clone of the data; left out with ``include_data=False``, e.g. when the
        data is a model's parameters that are saved with the model), ``squashed`` (name -> whether
        the mask was applied), ``enable_mask_update`` and ``step_count``. Tensors are cloned, other
        values deep-copied, enum members and NumPy scalars converted (:mod:`prunekit.data.plain`),
        so the result loads with ``torch.load(..., weights_only=True)``.
        """
        out: dict[str, Any] = {
            "version": STATE_DICT_VERSION,
            "defaults": to_plain(self.defaults),
            "data_groups": to_plain(self.data_groups),
            "state": {name: _entry_state_dict(entry) for name, entry in self.state.items()},
            "squashed": dict(self._squashed),
            "enable_mask_update": bool(self.enable_mask_update),
            "step_count": int(self._step_count),
        }
        if include_data:
            out["data"] = {n: t.detach().clone() for n, t in self._data.items() if t is not None}
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> DataLoadResult:
        """Restore a :meth:`state_dict`; the input is never modified nor aliased.

        ``strict=True`` makes the sparsifier hold exactly the saved names (others are dropped);
        ``strict=False`` keeps names that are not in the state dict. The rule for a name held now and
        saved too (both modes): the saved config, entry state (mask and every other key) and squash
        flag win; the tensor attached now stays attached, and saved data for it, if any, is copied
        into it in place (as ``nn.Module.load_state_dict`` does). Tensors of an entry's state go to
        its data's device. A saved name with neither saved data nor an attached tensor is loaded
        detached (see :class:`DataLoadResult`). Every problem is reported at once (``ValueError``)
        before anything changes.
        """
        plan, defaults = self._plan_load(state_dict, strict)
        result = DataLoadResult()
        if strict:
            result.dropped = [n for n in self.data_groups if n not in plan]
        else:
            result.kept = [n for n in self.data_groups if n not in plan]
        groups = {} if strict else dict(self.data_groups)
        states = {} if strict else dict(self.state)
        tensors = {} if strict else dict(self._data)
        squashed = {} if strict else {n: v for n, v in self._squashed.items() if n not in plan}
        for name, entry in plan.items():
            attached = self._data.get(name)
            if name in self.data_groups:
                result.replaced.append(name)
            if attached is not None:
                if entry.saved is not None:
                    with torch.no_grad():
                        attached.copy_(entry.saved)
                tensor: torch.Tensor | None = attached
            else:
                tensor = entry.saved.clone() if entry.saved is not None else None
            if tensor is None:
                result.detached.append(name)
            groups[name] = entry.config
            state = {"mask": entry.mask, **entry.extras}
            states[name] = _on_device(state, tensor.device) if tensor is not None else state
            tensors[name] = tensor
            if entry.squashed is not None:
                squashed[name] = entry.squashed
            result.loaded.append(name)
        self.data_groups, self.state, self._data, self._squashed = groups, states, tensors, squashed
        self.__dict__.pop("_mask_views", None)  # views of the replaced masks
        if defaults is not None:
            self.defaults = defaults
        if "enable_mask_update" in state_dict:
            self.enable_mask_update = bool(state_dict["enable_mask_update"])
        if "step_count" in state_dict:
            self._step_count = int(state_dict["step_count"])
        return result

    def _plan_load(self, sd: Mapping[str, Any], strict: bool) -> tuple[dict[str, "_PlannedEntry"], dict[str, Any] | None]:
        """Validate and copy ``sd``: (name -> entry to load, the defaults to load or None)."""
        problems: list[str] = []
        if not isinstance(sd, Mapping):
            raise ValueError(f"load_state_dict: expected a mapping from state_dict(), got {type(sd).__name__}")
        version = sd.get("version", STATE_DICT_VERSION)
        if version != STATE_DICT_VERSION:
            problems.append(f"version: {version!r} is not supported; save the state again with this prunekit")
        sections = {}
        for key in ("data_groups", "state", "data", "squashed"):
            value = sd.get(key, {} if key in ("data", "squashed") else None)
            if not isinstance(value, Mapping):
                problems.append(f"{key}: expected a mapping of data name to value, got {type(value).__name__}")
                value = {}
            sections[key] = value
        groups, states, data, squashed = (sections[k] for k in ("data_groups", "state", "data", "squashed"))
        for name in groups:
            if name not in states:
                problems.append(f"state[{name!r}]: missing (data_groups has it); save the state dict again")
        for name in list(states) + list(data) + list(squashed):
            if name not in groups:
                problems.append(f"data_groups[{name!r}]: missing (another section has it); save the state dict again")
        defaults = None
        if strict and isinstance(sd.get("defaults"), Mapping):
            defaults = _decoded(dict(sd["defaults"]), "defaults", problems)
        plan: dict[str, _PlannedEntry] = {}
        for name in groups:
            entry = self._plan_entry(name, groups[name], states.get(name), data.get(name), squashed.get(name), problems)
            if entry is not None:
                plan[name] = entry
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "\n  ".join(["", *problems]).lstrip("\n "))
        return plan, defaults

    def _plan_entry(
        self, name: str, config: Any, state: Any, saved: Any, flag: Any, problems: list[str]
    ) -> "_PlannedEntry | None":
        """One saved entry, checked and copied (None, with ``problems`` added, when it cannot load)."""
        if not isinstance(config, Mapping):
            problems.append(f"data_groups[{name!r}]: expected a config mapping, got {type(config).__name__}")
            return None
        if state is None:
            return None
        if not isinstance(state, Mapping) or "mask" not in state:
            got = "a mapping without 'mask'" if isinstance(state, Mapping) else type(state).__name__
            problems.append(f"state[{name!r}]: expected the entry's state, a mapping with a 'mask', got {got}; save the state dict again")
            return None
        count = len(problems)
        decoded_config = _decoded(dict(config), f"data_groups[{name!r}]", problems)
        try:
            mask = self._decode_mask(state["mask"])
        except (ValueError, KeyError, TypeError) as err:
            problems.append(f"state[{name!r}]['mask']: {err}")
            return None
        extras = {k: _decoded(v, f"state[{name!r}][{k!r}]", problems) for k, v in state.items() if k != "mask"}
        if saved is not None and (not isinstance(saved, torch.Tensor) or tuple(saved.shape) != tuple(mask.shape)):
            got = tuple(saved.shape) if isinstance(saved, torch.Tensor) else type(saved).__name__
            problems.append(f"data[{name!r}]: expected a tensor of the mask's shape {tuple(mask.shape)}, got {got}")
            return None
        attached = self._data.get(name)
        if attached is not None and tuple(attached.shape) != tuple(mask.shape):
            problems.append(
                f"state[{name!r}]['mask']: shape {tuple(mask.shape)} does not fit the tensor attached here "
                f"{tuple(attached.shape)}; attach data of the saved shape, or load into another sparsifier"
            )
            return None
        if len(problems) > count:
            return None
        return _PlannedEntry(decoded_config, mask, extras, saved, None if flag is None else bool(flag))

    @staticmethod
    def _decode_mask(mask: Any) -> torch.Tensor:
        """A saved mask (packed, or a dense or sparse tensor) as a new bool tensor."""
        if isinstance(mask, Mapping):
            return unpack_mask(mask)
        if isinstance(mask, torch.Tensor):  # a dense or sparse mask (torch.ao's format)
            return (mask.to_dense() if mask.layout != torch.strided else mask).to(torch.bool).clone(memory_format=torch.contiguous_format)
        raise TypeError(f"expected a packed mask or a tensor, got {type(mask).__name__}")

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        """Every attribute but the cached mask views (aliases, rebuilt on the next ``get_mask``)."""
        state = self.__dict__.copy()
        state.pop("_mask_views", None)
        state.pop("_handed", None)
        return state

    # ------------------------------------------------------------------ display
    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for name, config in self.data_groups.items():
            flag = " [squashed]" if name in self._squashed else ""
            lines.append(f"    {name}{flag}: " + ", ".join(f"{k}={v!r}" for k, v in sorted(config.items())))
        lines.append(")")
        return "\n".join(lines)


def config_problems(name: str | None, problems: list[tuple[str, str, str]]) -> DataConfigError:
    """A :class:`DataConfigError` for ``(key, what, fix)`` triples of entry ``name`` (None: defaults)."""
    where = "defaults" if name is None else f"data_groups[{name!r}]"
    return DataConfigError([ConfigProblem(f"{where}.{key}" if key else where, what, fix) for key, what, fix in problems])


class _PlannedEntry(NamedTuple):
    """One entry :meth:`BaseDataSparsifier.load_state_dict` will load (copies of the saved values)."""

    config: dict[str, Any]
    mask: torch.Tensor
    extras: dict[str, Any]  # the entry's state besides the mask
    saved: torch.Tensor | None  # saved data (copied, or copied into the attached tensor)
    squashed: bool | None


def _entry_state_dict(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's state as saved: the mask packed, every other key through :func:`to_plain`."""
    return {"mask": pack_mask(entry["mask"]), **{k: to_plain(v) for k, v in entry.items() if k != "mask"}}


def _decoded(value: Any, where: str, problems: list[str]) -> Any:
    """:func:`from_plain` of ``value``, or None with the problem added to ``problems``."""
    try:
        return from_plain(value, where)
    except ValueError as err:
        problems.append(str(err))
        return None


def _on_device(state: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``state`` with its tensor values moved to ``device`` (the mask included)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _aliases(view: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether ``view`` still shows exactly ``mask`` (it was not rebound with ``view.data = ...``)."""
    with torch._C.DisableTorchFunctionSubclass():
        return (
            view.data_ptr() == mask.data_ptr()
            and view.dtype == mask.dtype
            and view.shape == mask.shape
            and view.stride() == mask.stride()
        )
