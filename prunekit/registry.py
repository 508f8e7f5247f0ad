"""Named registries: ``SCHEDULERS`` (weight and data schedulers), ``PRUNERS`` (pruner types),
``REGULARIZERS``, ``CRITERIA`` and ``PATTERNS``.

A :class:`Registry` is an object, not a bare dict (in the style of mmengine's ``Registry``):

* ``register(name, *, config=..., aliases=(), force=False, description=...)`` works as a class
  decorator; a duplicate name raises :class:`~prunekit.errors.RegistryError` naming the class that
  already holds it, unless ``force=True``;
* lookups of unknown names list the registered names and suggest the closest one;
* third-party packages register through the entry-point group named by ``entry_point_group``
  (``prunekit.schedulers``, ``prunekit.pruners``, ``prunekit.regularizers``, ``prunekit.criteria``),
  loaded lazily on the first lookup.
"""

from __future__ import annotations

import difflib
import threading
import warnings
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Callable, Iterator, Mapping, TypeVar

from pydantic import BaseModel

from prunekit.errors import RegistryError

__all__ = [
    "Registry",
    "RegistryEntry",
    "SCHEDULERS",
    "PRUNERS",
    "REGULARIZERS",
    "CRITERIA",
    "PATTERNS",
    "register_scheduler",
    "get_scheduler",
    "list_schedulers",
    "register_pruner",
    "get_pruner",
    "list_pruners",
    "suggest",
]

T = TypeVar("T")


def suggest(name: str, candidates: list[str] | tuple[str, ...]) -> str | None:
    """The candidate closest to ``name`` (case-insensitive), or None when nothing is close.

    Anything but a string of reasonable length (at most 200 characters) has no suggestion.
    """
    if not isinstance(name, str) or len(name) > 200:
        return None
    lowered = {c.lower(): c for c in candidates}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters (names echoed in messages)."""
    text = repr(value[: limit + 1] if isinstance(value, str) else value)
    if len(text) <= limit:
        return text
    size = f" ({len(value):,} characters)" if isinstance(value, str) else ""
    return f"{text[: limit - 10]}…{size}"


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    return f"{module}.{getattr(obj, '__qualname__', repr(obj))}"


def _first_doc_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


@dataclass(frozen=True)
class RegistryEntry:
    """One registered object with its metadata."""

    name: str
    obj: Any
    config: type[BaseModel] | None = None
    description: str = ""
    aliases: tuple[str, ...] = ()
    plugin: str | None = field(default=None, compare=False)  # entry point that registered it


class Registry:
    """A named collection of classes with configs, aliases, descriptions and plugin loading.

    Mapping-like: ``name in registry`` (names and aliases), ``len(registry)`` and iteration
    (canonical names, sorted), ``registry[name]`` / ``registry.get(name)`` (the class).
    """

    def __init__(
        self,
        name: str,
        *,
        entry_point_group: str | None = None,
        check: Callable[[Any], str | None] | None = None,
    ) -> None:
        self.name = name
        self.entry_point_group = entry_point_group
        self._check = check
        self._entries: dict[str, RegistryEntry] = {}
        self._aliases: dict[str, str] = {}
        self._plugins_loaded = entry_point_group is None
        self._loading_plugin: str | None = None
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- registration
    def register(
        self,
        name: str,
        obj: Any = None,
        *,
        config: type[BaseModel] | None = None,
        aliases: tuple[str, ...] | list[str] = (),
        force: bool = False,
        description: str | None = None,
    ) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a class decorator.

        ``config`` is the pydantic model that validates the entry's parameters (defaults to the
        class attribute ``config_model``); ``description`` defaults to the first docstring line.
        """
        if obj is None:

            def decorator(cls: T) -> T:
                self.register(name, cls, config=config, aliases=aliases, force=force, description=description)
                return cls

            return decorator

        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise RegistryError(f"{self.name}: a registered name must be a non-empty string without surrounding spaces, got {name!r}")
        if config is None:
            config = getattr(obj, "config_model", None)
        if config is not None and not (isinstance(config, type) and issubclass(config, BaseModel)):
            raise RegistryError(
                f"{self.name}: the config of {name!r} must be a pydantic BaseModel subclass, got {config!r}"
            )
        if self._check is not None:
            problem = self._check(obj)
            if problem:
                raise RegistryError(f"{self.name}: cannot register {name!r} ({_qualname(obj)}): {problem}")
        aliases = tuple(aliases)
        with self._lock:
            for key in (name, *aliases):
                holder = self._holder_of(key)
                if holder is not None and holder.obj is not obj and not force:
                    raise RegistryError(
                        f"{self.name}: the name {key!r} is already registered by {_qualname(holder.obj)}; "
                        f"choose another name, or pass force=True to replace it"
                    )
            for key in (name, *aliases):
                holder = self._holder_of(key)
                if holder is None or holder.name == name:
                    continue
                if key == holder.name:  # its canonical name is taken over: the old entry goes
                    self._drop(holder.name)
                else:  # only one of its aliases is taken over: the old entry keeps its name
                    self._aliases.pop(key)
                    self._entries[holder.name] = replace(holder, aliases=tuple(a for a in holder.aliases if a != key))
            if name in self._entries:
                self._drop(name)
            entry = RegistryEntry(
                name=name,
                obj=obj,
                config=config,
                description=description if description is not None else _first_doc_line(obj),
                aliases=aliases,
                plugin=self._loading_plugin,
            )
            self._entries[name] = entry
            for alias in aliases:
                self._aliases[alias] = name
        return obj

    def unregister(self, name: str) -> RegistryEntry:
        """Remove ``name`` (and its aliases); returns the removed entry."""
        with self._lock:
            entry = self.entry(name)
            self._drop(entry.name)
            return entry

    def _drop(self, canonical: str) -> None:
        entry = self._entries.pop(canonical)
        for alias in entry.aliases:
            self._aliases.pop(alias, None)

    def _holder_of(self, key: str) -> RegistryEntry | None:
        canonical = self._aliases.get(key, key)
        return self._entries.get(canonical)

    # ----------------------------------------------------------------- plugins
    def load_plugins(self) -> None:
        """Import every entry point of ``entry_point_group`` once (lazy; called by lookups).

        A plugin module registers its classes when imported (with ``@register_scheduler``); an
        entry point that resolves to a class that is still unregistered is registered under the
        entry point's name. A plugin that fails to import is reported with a warning naming it.
        """
        if self._plugins_loaded:
            return
        with self._lock:
            if self._plugins_loaded:
                return
            self._plugins_loaded = True
            for ep in metadata.entry_points(group=self.entry_point_group):
                origin = f"{ep.name} = {ep.value}"
                self._loading_plugin = origin
                try:
                    loaded = ep.load()
                    if isinstance(loaded, type) and ep.name not in self._entries and not self._contains_obj(loaded):
                        self.register(ep.name, loaded)
                except Exception as exc:  # a broken plugin must not break prunekit itself
                    warnings.warn(
                        f"{self.name}: the plugin entry point '{origin}' (group {self.entry_point_group!r}) "
                        f"failed to load: {type(exc).__name__}: {exc}. Fix or uninstall that package.",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                finally:
                    self._loading_plugin = None

    def _contains_obj(self, obj: Any) -> bool:
        return any(e.obj is obj for e in self._entries.values())

    # ----------------------------------------------------------------- lookups
    def entry(self, name: str) -> RegistryEntry:
        """The entry registered under ``name`` or one of its aliases.

        Raises :class:`RegistryError` listing the registered names and the closest match.
        """
        self.load_plugins()
        if isinstance(name, str):
            holder = self._holder_of(name)
            if holder is not None:
                return holder
        raise RegistryError(self.unknown_message(name))

    def unknown_message(self, name: Any) -> str:
        """The error text for an unknown ``name``: candidates and a 'did you mean'."""
        return f"unknown {self.name} {_short(name)}; {self.unknown_hint(name)}"

    def unknown_hint(self, name: Any) -> str:
        """How to fix an unknown ``name``: the closest registered name and the full list."""
        self.load_plugins()
        keys = sorted([*self._entries, *self._aliases])
        hint = suggest(name, keys) if isinstance(name, str) else None
        did = f"did you mean {hint!r}? " if hint is not None else ""
        return f"{did}registered: {', '.join(keys) if keys else '(none)'}"

    def get(self, name: str) -> Any:
        """The class registered under ``name`` (or an alias)."""
        return self.entry(name).obj

    def config_of(self, name: str) -> type[BaseModel] | None:
        """The config model registered for ``name``."""
        return self.entry(name).config

    def names(self) -> list[str]:
        """Canonical registered names, sorted."""
        self.load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[RegistryEntry]:
        """Every entry, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return isinstance(name, str) and self._holder_of(name) is not None

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        self.load_plugins()
        rows = []
        for entry in self.entries():
            alias = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            rows.append(f"  {entry.name}{alias}: {_qualname(entry.obj)}")
        body = "\n".join(rows) if rows else "  (empty)"
        return f"Registry({self.name!r}, {len(self._entries)} entries)\n{body}"


def _check_scheduler(obj: Any) -> str | None:
    from prunekit.schedulers.base import Scheduler

    data_base = _data_scheduler_base()
    bases: tuple[type, ...] = (Scheduler,) if data_base is None else (Scheduler, data_base)
    if not (isinstance(obj, type) and issubclass(obj, bases)):
        names = " or ".join(b.__name__ for b in bases)
        return f"a scheduler must be a subclass of {names}"
    return None


def _data_scheduler_base() -> type | None:
    try:
        from prunekit.schedulers.data import BaseDataScheduler
    except ImportError:
        return None
    return BaseDataScheduler


def _check_pruner(obj: Any) -> str | None:
    from prunekit.pruner.group import PrunerGroup

    if not (isinstance(obj, type) and issubclass(obj, PrunerGroup)):
        return "a pruner type must be a subclass of prunekit.pruner.PrunerGroup"
    return None


def _check_regularizer(obj: Any) -> str | None:
    from prunekit.regularization import Regularizer

    if not (isinstance(obj, type) and issubclass(obj, Regularizer)):
        return "a regularizer must be a subclass of prunekit.regularization.Regularizer"
    return None


SCHEDULERS = Registry("scheduler", entry_point_group="prunekit.schedulers", check=_check_scheduler)
#: pruner types: how a group's masks evolve (basic, pattern_lock, progressive, block_mask, ...)
PRUNERS = Registry("pruner type", entry_point_group="prunekit.pruners", check=_check_pruner)
CRITERIA = Registry("criterion", entry_point_group="prunekit.criteria")
PATTERNS = Registry("pattern")
#: regularizers applied during pruning (group_lasso, ...)
REGULARIZERS = Registry("regularizer", entry_point_group="prunekit.regularizers", check=_check_regularizer)


def register_scheduler(
    name: str,
    *,
    config: type[BaseModel] | None = None,
    aliases: tuple[str, ...] | list[str] = (),
    force: bool = False,
    description: str | None = None,
) -> Callable[[T], T]:
    """Class decorator registering a scheduler in ``SCHEDULERS``; returns the class unchanged.

    ``config`` is the scheduler's pydantic config model (a subclass of
    :class:`~prunekit.schedulers.base.SchedulerConfig` for weight schedulers); it validates the
    scheduler's parameters wherever the scheduler is named, YAML included.
    """
    return SCHEDULERS.register(name, config=config, aliases=aliases, force=force, description=description)


def get_scheduler(config: Mapping[str, Any] | BaseModel, **context: Any) -> Any:
    """Build a scheduler from ``config`` (a mapping or a validated config), dispatching on ``type``.

    The parameters are validated by the config model the scheduler registered; problems raise
    :class:`~prunekit.errors.ConfigError`. ``context`` is passed to the class's ``from_config``
    (weight schedulers take ``max_sparsity_per_op``; data schedulers take ``data_sparsifier``).
    """
    from prunekit.schedulers.base import validate_scheduler_config

    validated = validate_scheduler_config(config)
    cls = SCHEDULERS.get(validated.type)
    return cls.from_config(validated, **context)


def register_pruner(
    name: str,
    *,
    config: type[BaseModel] | None = None,
    aliases: tuple[str, ...] | list[str] = (),
    force: bool = False,
    description: str | None = None,
) -> Callable[[T], T]:
    """Class decorator registering a pruner type in ``PRUNERS``; returns the class unchanged.

    The class subclasses :class:`~prunekit.pruner.PrunerGroup`; ``config`` (default: its
    ``config_model``) is a subclass of :class:`~prunekit.config.PrunerConfig` whose ``type``
    default is ``name``: a group selects the type with ``type: <name>`` and its parameters are
    validated by that model, YAML included.
    """
    return PRUNERS.register(name, config=config, aliases=aliases, force=force, description=description)


def get_pruner(config: Mapping[str, Any] | BaseModel, model: Any) -> Any:
    """Build the pruner group ``config`` describes on ``model`` (its layers are selected from it).

    ``config`` is one pruner group (a mapping or a validated config), dispatched on ``type``;
    problems raise :class:`~prunekit.errors.ConfigError` (config) or
    :class:`~prunekit.errors.PruningError` (selection). Most code builds whole sessions with
    :class:`~prunekit.Pruning` instead.
    """
    from prunekit.config import validate_pruner_config
    from prunekit.pruner.selection import select_layers

    validated = validate_pruner_config(config)
    cls = PRUNERS.get(validated.type)
    return cls(validated, select_layers(model, validated))


def list_pruners() -> list[tuple[str, str]]:
    """``(name, one-line description)`` for every registered pruner type, sorted by name."""
    return [(e.name, e.description) for e in PRUNERS.entries()]


def list_schedulers() -> list[tuple[str, str]]:
    """``(name, one-line description)`` for every registered scheduler, sorted by name."""
    return [(e.name, e.description) for e in SCHEDULERS.entries()]
