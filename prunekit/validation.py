"""Turning pydantic validation errors into :class:`~prunekit.errors.ConfigProblem` lines.

Every problem reads ``where: what is wrong; how to fix``. Rules written for prunekit raise
:func:`rule_error`, which carries its own fix; pydantic's built-in errors get a fix derived from
their type (bounds, types, unknown keys with a "did you mean").
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Sequence

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from prunekit.errors import ConfigProblem
from prunekit.registry import suggest

__all__ = ["rule_error", "check_regexes", "check_class_names", "format_path", "problems_from_validation_error"]

Path = tuple[Any, ...]


def rule_error(what: str, fix: str) -> PydanticCustomError:
    """An error for a prunekit rule: ``what`` is wrong, ``fix`` says how to fix it."""
    return PydanticCustomError("prunekit_rule", "{what}", {"what": what, "fix": fix})


def check_regexes(patterns: list[str], key: str) -> list[str]:
    """``patterns`` unchanged when each compiles as a regular expression; else a located rule error."""
    for i, text in enumerate(patterns):
        try:
            re.compile(text)
        except re.error as err:
            raise rule_error(
                f"{key}[{i}] {text!r} is not a valid regular expression ({err})",
                "escape special characters with a backslash (e.g. 'layer\\.0'), or fix the expression",
            ) from None
    return patterns


def check_class_names(names: list[str], key: str, example: str) -> list[str]:
    """``names`` unchanged when each is a Python identifier (a class name); else a located rule error."""
    for i, name in enumerate(names):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise rule_error(f"{key}[{i}] {name!r} is not a class name", f"write a class name such as {example}")
    return names


def format_path(path: Sequence[Any]) -> str:
    """``('pruners', 1, 'scheduler', 'end_step')`` -> ``pruners[1].scheduler.end_step``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _allowed_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return sorted(set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias})


def _fix_for(err: dict[str, Any], allowed: list[str]) -> tuple[str, str]:
    """``(what, fix)`` for one pydantic error dict."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    loc = err["loc"]
    key = loc[-1] if loc else ""
    value = err.get("input")
    if kind == "prunekit_rule":
        return str(ctx["what"]), str(ctx["fix"])
    if kind == "extra_forbidden":
        hint = suggest(str(key), allowed) if allowed else None
        did = f"did you mean '{hint}'? " if hint else ""
        listing = f"allowed keys here: {', '.join(allowed)}" if allowed else "remove it"
        return f"unknown key '{key}'", f"{did}{listing}".strip()
    if kind == "missing":
        return f"required key '{key}' is missing", f"add '{key}' here"
    bounds = {
        "greater_than": ("must be > {gt}", "use a value greater than {gt}"),
        "greater_than_equal": ("must be >= {ge}", "use a value of at least {ge}"),
        "less_than": ("must be < {lt}", "use a value below {lt}"),
        "less_than_equal": ("must be <= {le}", "use a value of at most {le}"),
    }
    if kind in bounds:
        what, fix = bounds[kind]
        return f"{what.format(**ctx)}, got {value!r}", fix.format(**ctx)
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        hint = suggest(str(value), [s.strip(" '") for s in str(expected).replace(" or ", ",").split(",")])
        did = f"did you mean '{hint}'? " if hint and hint != value else ""
        return f"{value!r} is not allowed", f"{did}use one of {expected}"
    type_names = {
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "a whole number",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "dict_type": "a mapping of keys to values",
        "model_type": "a mapping of keys to values",
        "model_attributes_type": "a mapping of keys to values",
        "finite_number": "a finite number",
    }
    if kind in type_names:
        return f"expected {type_names[kind]}, got {value!r}", f"write {type_names[kind]} here"
    return err["msg"], "see the configuration reference (docs/configuration.md)"


def problems_from_validation_error(
    error: ValidationError,
    *,
    prefix: Path = (),
    model_at: Callable[[Path], type[BaseModel] | None] | None = None,
    locate: Callable[[Path], tuple[str | None, int | None]] | None = None,
) -> list[ConfigProblem]:
    """One :class:`ConfigProblem` per pydantic error, located and with a fix.

    ``model_at(path)`` gives the model that owns the key at ``path`` (for the list of allowed keys);
    ``locate(path)`` gives ``(source, line)`` for a key path.
    """
    problems: list[ConfigProblem] = []
    for err in error.errors(include_url=False):
        loc: Path = prefix + tuple(p for p in err["loc"] if not _is_internal_loc(p))
        owner = model_at(loc[:-1]) if model_at is not None and loc else None
        what, fix = _fix_for(err, _allowed_keys(owner))
        source, line = locate(loc) if locate is not None else (None, None)
        problems.append(ConfigProblem(path=format_path(loc), what=what, fix=fix, source=source, line=line))
    return _dedupe(problems)


def _is_internal_loc(part: Any) -> bool:
    # pydantic adds the function name of wrap/function validators to a loc; never a user key
    return isinstance(part, str) and part.startswith("function-")


def _dedupe(problems: Iterable[ConfigProblem]) -> list[ConfigProblem]:
    seen: set[tuple[str, str]] = set()
    out: list[ConfigProblem] = []
    for p in problems:
        key = (p.path, p.what)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
