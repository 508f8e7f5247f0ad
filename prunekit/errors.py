"""Exceptions raised by prunekit.

Every error names where the problem is (file, key path, layer name) and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["PrunekitError", "ConfigError", "ConfigProblem", "RegistryError", "PruningError"]


class PrunekitError(Exception):
    """Base class of every exception prunekit raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration.

    ``path`` is the key path inside the configuration (``pruners[1].scheduler.end_step``),
    ``source`` the file it came from (None for dicts and YAML text), ``line`` the 1-based line
    of the offending key in that text (None when unknown).
    """

    path: str
    what: str
    fix: str
    source: str | None = None
    line: int | None = None

    @property
    def where(self) -> str:
        origin = self.source or ("<yaml>" if self.line is not None else "")
        if self.line is not None:
            origin = f"{origin}:{self.line}"
        parts = [p for p in (origin, self.path or "<root>") if p]
        return " ".join(parts)

    def __str__(self) -> str:
        return f"{self.where}: {self.what}; {self.fix}"


class ConfigError(PrunekitError, ValueError):
    """Every problem found in a configuration, reported at once.

    ``str(err)`` lists one problem per line as ``where: what is wrong; how to fix``.
    """

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.problems)
        head = "1 problem in the pruning config:" if count == 1 else f"{count} problems in the pruning config:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


class RegistryError(PrunekitError, KeyError):
    """A registry lookup or registration failed (unknown name, duplicate name, bad entry)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PruningError(PrunekitError, RuntimeError):
    """Pruning cannot proceed as configured (bad layer, missing gradients, misuse of hooks)."""
