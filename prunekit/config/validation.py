"""Turning pydantic validation errors into :class:`~prunekit.errors.ConfigProblem` lines.

Every problem reads ``where: what is wrong; how to fix``. Rules written for prunekit raise
:func:`rule_error`, which carries its own fix; pydantic's built-in errors get a fix derived from
their type (bounds, types, unknown keys with a "did you mean", keys that are not strings).

Also here, because every config model shares them:

* :class:`StrictNumbersModel`: the base of prunekit's config models; a boolean is never accepted
  where a field expects a number (pydantic would read ``true`` as 1), in YAML, dicts and keywords;
* :func:`check_regexes`: selectors must compile, and must not backtrack catastrophically
  (``(a+)+``, ``(a|aa)*``, ``(.*a){20}``): Python's ``re`` has no time limit;
* :func:`short_repr`: input values echoed in messages are cut to about 80 characters;
* :func:`data_shape_problems`: a config given as Python data is bounded in depth and size, and
  never refers to itself.
"""

from __future__ import annotations

import re
import reprlib
import types
from typing import Annotated, Any, Callable, Iterable, Mapping, Sequence, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from pydantic_core.core_schema import ValidationInfo

from prunekit.errors import ConfigProblem
from prunekit.config.regex_safety import regex_backtracking_risk
from prunekit.registry import suggest


__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "StrictNumbersModel",
    "check_class_names",
    "check_regexes",
    "data_shape_problems",
    "format_path",
    "problems_from_validation_error",
    "regex_backtracking_risk",
    "rule_error",
    "short_repr",
    "short_text",
]

Path = tuple[Any, ...]

#: the most values (scalars, lists, mappings; aliases expanded) a config may hold
MAX_NODES = 100_000
#: the deepest a config may nest lists and mappings
MAX_DEPTH = 64
#: echoed input values are cut to about this many characters
SHORT = 80


# ---------------------------------------------------------------------------- messages
def short_repr(value: Any, limit: int = SHORT) -> str:
    """``repr(value)``, cut to about ``limit`` characters with an ellipsis and the full length.

    Cheap on huge values: strings are cut before ``repr``, containers through :mod:`reprlib`.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[: limit - 10]!r}… ({len(value):,} characters)"
    limited = reprlib.Repr()
    limited.maxstring, limited.maxother, limited.maxlevel = limit, limit, 3
    limited.maxlist = limited.maxtuple = limited.maxset = limited.maxdict = 8
    text = limited.repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} items" if isinstance(value, (list, tuple, dict, set, frozenset)) else f"{len(text):,} characters"
    return f"{text[: limit - 10]}… ({size})"


def short_text(text: str, limit: int = SHORT) -> str:
    """``text`` itself (no quotes), cut to about ``limit`` characters with an ellipsis and its length."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 10]}… ({len(text):,} characters)"


def rule_error(what: str, fix: str) -> PydanticCustomError:
    """An error for a prunekit rule: ``what`` is wrong, ``fix`` says how to fix it."""
    return PydanticCustomError("prunekit_rule", "{what}", {"what": what, "fix": fix})


def format_path(path: Sequence[Any]) -> str:
    """``('pruners', 1, 'scheduler', 'end_step')`` -> ``pruners[1].scheduler.end_step``.

    A key of over 60 characters is shown cut, with an ellipsis.
    """
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            text = str(part) if not isinstance(part, str) or len(part) <= 60 else f"{part[:50]}…"
            out += f".{text}" if out else text
    return out


# ---------------------------------------------------------------------------- booleans are not numbers
def _number_kind(annotation: Any) -> str | None:
    """'an integer' / 'a number' when ``annotation`` takes numbers and no booleans, else None."""
    if annotation is bool or annotation is Any:
        return None
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    origin = get_origin(annotation)
    if origin is Annotated:
        return _number_kind(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        members = [a for a in get_args(annotation) if a is not type(None)]
        if any(a is bool or a is Any for a in members):
            return None
        kinds = {k for a in members if (k := _number_kind(a)) is not None}
        return None if not kinds else ("a number" if "a number" in kinds else "an integer")
    return None


def _is_boolean(value: Any) -> bool:
    """``bool`` or NumPy's ``bool_``: values pydantic would take for the numbers 0 and 1."""
    return isinstance(value, bool) or (type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"))


def _bool_where_number(annotation: Any, value: Any, depth: int = 0) -> tuple[str, Path] | None:
    """``(kind, path inside value)`` of a boolean given where ``annotation`` expects a number."""
    if depth > 8:
        return None
    if _is_boolean(value):
        kind = _number_kind(annotation)
        return (kind, ()) if kind is not None else None
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _bool_where_number(args[0], value, depth + 1)
    if origin is Union or origin is types.UnionType:
        for member in args:
            found = _bool_where_number(member, value, depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(value, (list, tuple)) and origin in (list, tuple, set, frozenset, Sequence):
        for i, item in enumerate(value):
            if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
                if i >= len(args):
                    return None
                member = args[i]
            else:
                member = args[0] if args else Any
            found = _bool_where_number(member, item, depth + 1)
            if found is not None:
                return found[0], (i, *found[1])
        return None
    if isinstance(value, Mapping) and origin in (dict, Mapping) and len(args) == 2:
        for key, item in value.items():
            found = _bool_where_number(args[1], item, depth + 1)
            if found is not None:
                return found[0], (key, *found[1])
    return None


class StrictNumbersModel(BaseModel):
    """Base of prunekit's config models: a boolean is refused where a field takes a number.

    pydantic reads ``True`` as 1 for an ``int`` or ``float`` field, so ``end_step: true`` would
    quietly mean step 1. Every field whose annotation is a number (``int``, ``float``, optional,
    annotated, unions of numbers, and lists/tuples/dicts of them) refuses booleans with a located
    message; ``bool`` fields and unions that include ``bool`` are untouched. Subclasses (third-party
    scheduler configs too) inherit the rule for their own fields.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or type(value) in (int, float, str):
            return value
        name = info.field_name
        field = cls.model_fields.get(name) if name else None
        if field is None:
            return value
        found = _bool_where_number(field.annotation, value)
        if found is None:
            return value
        kind, inner = found
        at = f" at {format_path((name, *inner))}" if inner else ""
        default = field.default
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not inner:
            example = default
        else:
            example = 10 if kind == "an integer" else 0.5
        raise rule_error(
            f"expected {kind}{at}, got a boolean ({short_repr(_boolean_in(value, inner))})",
            f"write {kind} here, e.g. {name}: {example} (YAML reads true/false, yes/no and on/off as booleans)",
        )


def _boolean_in(value: Any, inner: Path) -> Any:
    for part in inner:
        value = value[part]
    return value


# ---------------------------------------------------------------------------- regular expressions
def check_regexes(patterns: list[str], key: str) -> list[str]:
    """``patterns`` unchanged when each compiles and cannot backtrack catastrophically.

    Otherwise a located rule error: a syntax error says how to escape; a pattern whose matching
    time can grow exponentially with the module name (a repeat inside a repeat, or alternatives
    inside a repeat, that can match the same characters: ``(a+)+``, ``(a|aa)*``, ``(.*a){20}``)
    says how to rewrite it. The check is static (about 0.1 ms for a usual pattern).
    """
    for i, text in enumerate(patterns):
        try:
            re.compile(text)
            risk = regex_backtracking_risk(text)
        except (re.error, OverflowError, RecursionError, ValueError) as err:
            reason = "it nests too deeply" if isinstance(err, RecursionError) else str(err)
            raise rule_error(
                f"{key}[{i}] {short_repr(text)} is not a valid regular expression ({short_text(reason, 200)})",
                "escape special characters with a backslash (e.g. 'layer\\.0'), or fix the expression",
            ) from None
        if risk is not None:
            raise rule_error(
                f"{key}[{i}] {short_repr(text)} can take exponential time to match: {risk}, so a module name that "
                f"almost matches makes Python's re (which has no time limit) try exponentially many ways",
                "rewrite it so each character can be matched one way only: '(a+)+' -> 'a+', '(a|aa)*' -> 'a*', "
                "'(.*a){20}' -> '.*a', '(\\w+\\s?)+' -> '[\\w\\s]+'; or make the inner repeat atomic ('(?>a+)+', 'a++')",
            )
    return patterns


def check_class_names(names: list[str], key: str, example: str) -> list[str]:
    """``names`` unchanged when each is a Python identifier (a class name); else a located rule error."""
    for i, name in enumerate(names):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise rule_error(f"{key}[{i}] {short_repr(name)} is not a class name", f"write a class name such as {example}")
    return names


# ---------------------------------------------------------------------------- Python data
def data_shape_problems(data: Any, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> list[ConfigProblem]:
    """The first problem with the shape of ``data`` (a config as Python data), or ``[]``.

    Refused: nesting deeper than ``max_depth`` lists/mappings, more than ``max_nodes`` values
    (shared values counted each time they appear), a list or mapping that contains itself.
    """
    count = 0
    on_path: set[int] = set()

    def visit(value: Any, path: Path, depth: int) -> ConfigProblem | None:
        nonlocal count
        count += 1
        if count > max_nodes:
            return ConfigProblem(
                format_path(path), f"the config holds more than {max_nodes:,} values", "split the config, or list fewer values"
            )
        if isinstance(value, Mapping):
            children: Iterable[tuple[Any, Any]] = value.items()
        elif isinstance(value, (list, tuple, set, frozenset)):
            children = enumerate(value)
        else:
            return None
        if id(value) in on_path:
            return ConfigProblem(
                format_path(path), "this value refers to itself (a recursive structure)", "configs are plain data: remove the cycle"
            )
        if depth >= max_depth:
            return ConfigProblem(
                format_path(path), f"the config is nested more than {max_depth} levels deep", "configs are shallow: flatten this value"
            )
        on_path.add(id(value))
        try:
            for key, child in children:
                found = visit(child, (*path, key), depth + 1)
                if found is not None:
                    return found
        finally:
            on_path.discard(id(value))
        return None

    found = visit(data, (), 0)
    return [found] if found is not None else []


# ---------------------------------------------------------------------------- pydantic errors
def _allowed_keys(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return sorted(set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias})


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"


def _key_problem(key: Any) -> tuple[str, str]:
    return (
        f"the key {short_repr(key)} is {_kind_of(key)}, not a string",
        "keys must be strings: write the key's name as text (e.g. 'pattern')",
    )


def _fix_for(err: Mapping[str, Any], allowed: list[str], written: str | None = None) -> tuple[str, str]:
    """``(what, fix)`` for one pydantic error dict; ``written`` is the value's YAML text, if known."""
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
        shown = f"'{key}'" if len(str(key)) <= SHORT else short_repr(str(key))
        return f"unknown key {shown}", f"{did}{listing}".strip()
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
        return f"{what.format(**ctx)}, got {short_repr(value)}", fix.format(**ctx)
    if kind == "literal_error":
        expected = ctx.get("expected", "")
        hint = suggest(str(value), [s.strip(" '") for s in str(expected).replace(" or ", ",").split(",")])
        did = f"did you mean '{hint}'? " if hint and hint != value else ""
        return f"{short_repr(value)} is not allowed", f"{did}use one of {expected}"
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
        what = f"expected {type_names[kind]}, got {short_repr(value)}"
        if kind == "string_type" and written is not None and not isinstance(value, str):
            shown = short_text(written)
            quoted = f"{key}: '{shown}'" if isinstance(key, str) else f"'{shown}'"
            return f"{what} (YAML reads {shown} as {_kind_of(value)})", f"quote it to keep the text: {quoted}"
        return what, f"write {type_names[kind]} here"
    if kind in ("value_error", "assertion_error"):
        message = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return short_text(message, 300), "fix this value (the config model's own check refused it)"
    return short_text(str(err["msg"]), 300), "see the configuration reference (docs/configuration.md)"


def problems_from_validation_error(
    error: ValidationError,
    *,
    prefix: Path = (),
    model_at: Callable[[Path], type[BaseModel] | None] | None = None,
    locate: Callable[[Path], tuple[str | None, int | None]] | None = None,
    user_path: Callable[[Path], Path] | None = None,
    written: Callable[[Path], str | None] | None = None,
) -> list[ConfigProblem]:
    """One :class:`ConfigProblem` per pydantic error, located and with a fix (duplicates dropped).

    ``model_at(path)`` gives the model that owns the key at ``path`` (for the list of allowed keys);
    ``user_path(path)`` maps a validated key path to the one the user wrote (defaults, INC keys);
    ``locate(path)`` gives ``(source, line)`` for a user key path; ``written(path)`` the value's
    text as written in the YAML file (to explain e.g. that ``0x4`` was read as the number 4).
    A key that is not a string is reported at the mapping that holds it.
    """
    problems: list[ConfigProblem] = []
    for err in error.errors(include_url=False):
        loc: Path = prefix + tuple(p for p in err["loc"] if not _is_internal_loc(p))
        key_loc: Path | None = None
        if err["type"] == "invalid_key" and loc:
            key_loc = loc
        elif err["type"] == "string_type" and loc and loc[-1] == "[key]":
            loc = key_loc = loc[:-1]
        user = user_path(loc) if user_path is not None else loc
        if key_loc is not None:
            what, fix = _key_problem(err.get("input"))
            shown = user[:-1]
        else:
            owner = model_at(loc[:-1]) if model_at is not None and loc else None
            text = written(user) if written is not None else None
            what, fix = _fix_for(err, _allowed_keys(owner), text)
            shown = user
        source, line = locate(user) if locate is not None else (None, None)
        problems.append(ConfigProblem(path=format_path(shown), what=what, fix=fix, source=source, line=line))
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
