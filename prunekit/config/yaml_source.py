"""Reading YAML safely, in bounded time and memory, while remembering the line of every key.

Only ``yaml.SafeLoader`` constructs values (a ``!!python/...`` tag is an error); duplicate keys,
which YAML loaders silently collapse, are reported; :meth:`YamlSource.locate` maps a key path such
as ``('pruners', 1, 'scheduler', 'end_step')`` to the file and 1-based line it was written on.

Hostile or careless input is refused with the line it is on, before any work that could grow
without bound: a file over :data:`MAX_CONFIG_BYTES`, bytes that are not UTF-8, a value over
:data:`MAX_SCALAR_CHARS` characters, a number over :data:`MAX_NUMBER_CHARS` characters,
nesting deeper than :data:`~prunekit.config.validation.MAX_DEPTH`, more than
:data:`~prunekit.config.validation.MAX_NODES` values once aliases are expanded (a "billion laughs"
document), an alias used inside the value it names, and keys that are not strings.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import ConfigError, ConfigProblem
from prunekit.config.validation import MAX_DEPTH, MAX_NODES, format_path, short_repr, short_text

__all__ = ["YamlSource", "read_yaml", "ConfigLoader", "MAX_CONFIG_BYTES", "MAX_SCALAR_CHARS", "MAX_NUMBER_CHARS"]

KeyPath = tuple[Any, ...]

#: the largest config file (or YAML text) read
MAX_CONFIG_BYTES = 1 << 20
#: the longest single value
MAX_SCALAR_CHARS = 10_000
#: the longest number (Python refuses integers of over 4300 digits; no config needs 100)
MAX_NUMBER_CHARS = 100

_TAG = "tag:yaml.org,2002:"
_KEY_TAGS = (_TAG + "str", _TAG + "merge")
_TAG_NAMES = {"int": "a number", "float": "a number", "bool": "a boolean", "null": "null (no value)", "timestamp": "a date"}


class _Refused(Exception):
    """A bound was exceeded while reading (carries the YAML mark and key path of the place)."""

    def __init__(self, what: str, fix: str, mark: Any, path: KeyPath = ()) -> None:
        super().__init__(what)
        self.what, self.fix, self.mark, self.path = what, fix, mark, path


class ConfigLoader(yaml.SafeLoader):
    """``SafeLoader`` without YAML 1.1's base-60 numbers, so ``pattern: 2:4`` stays the string '2:4'.

    Composing a document is bounded: depth, the number of values with aliases expanded, the length
    of each value; an alias may not be used inside the value it names. A value that cannot be
    constructed (``2001-13-45`` as a date) is refused with its line.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._sizes: dict[int, tuple[int, int]] = {}
        self._path: list[Any] = []  # key path of the collection being composed
        self._paths: dict[int, KeyPath] = {}  # id(node) -> key path, for errors while constructing

    def _here(self, parent: Any, index: Any) -> KeyPath:
        """The key path of the node composed as ``index`` of ``parent`` (a key: its mapping's path)."""
        if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.ScalarNode):
            return (*self._path, index.value)
        if isinstance(parent, yaml.SequenceNode) and isinstance(index, int):
            return (*self._path, index)
        return tuple(self._path)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        path = self._here(parent, index)
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's own error
                name = short_text(event.anchor)
                if isinstance(target, yaml.CollectionNode) and target.end_mark is None:
                    raise _Refused(
                        f"the alias *{name} refers to itself: it is used inside the value it names",
                        "configs are plain data: remove the alias, or copy the value",
                        event.start_mark,
                        path,
                    )
                count, height = self._measure(target)
                self._count(count, event.start_mark, path, f" (the alias *{name} adds {count:,})")
                if self._depth + height > MAX_DEPTH:
                    raise self._too_deep(event.start_mark, path)
            return super().compose_node(parent, index)
        self._count(1, event.start_mark, path, "")
        if isinstance(event, yaml.ScalarEvent):
            if len(event.value) > MAX_SCALAR_CHARS:
                raise _Refused(
                    f"a value of {len(event.value):,} characters is too long (at most {MAX_SCALAR_CHARS:,}): "
                    f"{short_repr(event.value)}",
                    "shorten it: a config holds names, patterns and numbers",
                    event.start_mark,
                    path,
                )
            node = super().compose_node(parent, index)
            if node.tag in (_TAG + "int", _TAG + "float") and len(node.value) > MAX_NUMBER_CHARS:
                raise _Refused(
                    f"a number of {len(node.value):,} characters is too long (at most {MAX_NUMBER_CHARS}): {short_text(node.value, 40)}",
                    "write a number of usual size (steps are at most 1,000,000,000; ratios lie within [0, 1])",
                    event.start_mark,
                    path,
                )
            self._paths.setdefault(id(node), path)
            return node
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            self._depth += 1
            saved, self._path = self._path, list(path)
            try:
                if self._depth > MAX_DEPTH:
                    raise self._too_deep(event.start_mark, path)
                node = super().compose_node(parent, index)
                self._paths.setdefault(id(node), path)
                return node
            finally:
                self._depth -= 1
                self._path = saved
        return super().compose_node(parent, index)

    def _count(self, count: int, mark: Any, path: KeyPath, detail: str) -> None:
        self._values += count
        if self._values > MAX_NODES:
            raise _Refused(
                f"the document holds more than {MAX_NODES:,} values once aliases are expanded{detail}",
                "a config holds at most a few thousand values: remove the repeated aliases (*name) or the bulk data",
                mark,
                path,
            )

    @staticmethod
    def _too_deep(mark: Any, path: KeyPath) -> _Refused:
        return _Refused(
            f"the document is nested more than {MAX_DEPTH} levels deep",
            "configs are shallow: close the brackets or indentation sooner",
            mark,
            path[:8],
        )

    def _measure(self, node: yaml.Node) -> tuple[int, int]:
        """``(values, nesting height)`` of a composed node with aliases expanded (memoized)."""
        found = self._sizes.get(id(node))
        if found is not None:
            return found
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            self._sizes[id(node)] = (1, 0)
            return 1, 0
        count, height = 1, 0
        for child in children:
            c, h = self._measure(child)
            count, height = count + c, max(height, h)
        self._sizes[id(node)] = found = (count, height + 1)
        return found

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError, TypeError) as err:
            shown = short_text(node.value) if isinstance(node, yaml.ScalarNode) else "this value"
            raise _Refused(
                f"cannot read {shown} ({short_text(str(err), 120)})",
                "write the value in plain form, or quote it to keep it as text",
                node.start_mark,
                self._paths.get(id(node), ()),
            ) from None


_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if not tag.endswith((":int", ":float"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))


@dataclass
class YamlSource:
    """Parsed YAML: the data, where it came from, the line of every key path, and how
    values that are not strings were written (``0x4`` for the number 4)."""

    data: Any
    name: str | None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    written: dict[KeyPath, str] = field(default_factory=dict)

    def locate(self, path: KeyPath) -> tuple[str | None, int | None]:
        """``(file name, line)`` of ``path``, or of its longest prefix written in the file."""
        for cut in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:cut]))
            if line is not None:
                return self.name, line
        return self.name, None

    def written_text(self, path: KeyPath) -> str | None:
        """The text of the non-string value at ``path`` as written in the file, or None."""
        return self.written.get(tuple(path))


def _problem(what: str, fix: str, name: str | None, line: int | None, path: KeyPath = ()) -> ConfigError:
    return ConfigError([ConfigProblem(format_path(path), what, fix, name, line)])


def _read_file(source: Path) -> str:
    """The file's text: at most MAX_CONFIG_BYTES, UTF-8 (errors name the line)."""
    name = str(source)
    try:
        with source.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise _problem(f"config file {name} does not exist", "check the path", None, None) from None
    except OSError as err:
        raise _problem(f"cannot read config file {name}: {err.strerror or err}", "check the file", None, None) from None
    if len(raw) > MAX_CONFIG_BYTES:
        line = raw.count(b"\n", 0, MAX_CONFIG_BYTES) + 1
        total = f"{size / (1 << 20):.1f} MiB" if size > MAX_CONFIG_BYTES else "more"
        raise _problem(
            f"the file is too large ({total}; a config is at most {MAX_CONFIG_BYTES >> 20} MiB, reached on this line)",
            "check that this is the config file; a config holds at most a few thousand values",
            name,
            line,
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise _problem(
            f"the file is not UTF-8 text: byte 0x{raw[err.start]:02x} at column {column} cannot be decoded",
            "save the file as UTF-8",
            name,
            line,
        ) from None


def read_yaml(source: Path | str) -> YamlSource:
    """Parse a YAML file (``Path``) or YAML text (``str``) safely; ConfigError on any problem."""
    name: str | None
    if isinstance(source, Path):
        name, text = str(source), _read_file(source)
    else:
        name, text = None, source
        if len(text) > MAX_CONFIG_BYTES:
            line = text.count("\n", 0, MAX_CONFIG_BYTES) + 1
            raise _problem(
                f"the YAML text is too large ({len(text):,} characters; a config is at most {MAX_CONFIG_BYTES >> 20} MiB)",
                "check that this is the config; a config holds at most a few thousand values",
                name,
                line,
            )
    source_data = YamlSource(data=None, name=name)
    loader: ConfigLoader | None = None
    try:
        loader = ConfigLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise _problem("the config is empty", "write at least 'pruners:' (see configs/)", name, 1)
        source_data.lines[()] = node.start_mark.line + 1
        problems: list[ConfigProblem] = []
        _walk(node, (), source_data, problems, text, 0)
        if problems:
            raise ConfigError(problems)
        source_data.data = loader.construct_document(node)
    except _Refused as err:
        line = err.mark.line + 1 if err.mark is not None else None
        raise _problem(err.what, err.fix, name, line, err.path) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1 if isinstance(err.position, int) else None
        code = ord(err.character) if isinstance(err.character, str) else int(err.character)
        raise _problem(
            f"invalid YAML: the character {chr(code)!r} (code {code:#x}) is not allowed",
            'remove it, or write it as an escape inside double quotes (e.g. "\\x07")',
            name,
            line,
        ) from None
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise _problem(
            f"YAML tag not allowed ({short_text(str(err.problem), 160)})",
            "configs are plain data: remove the '!!' tag",
            name,
            line,
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(err, "problem", None) or str(err)
        raise _problem(f"invalid YAML: {short_text(str(what), 160)}", "fix the YAML syntax on that line", name, line) from None
    except RecursionError:  # the bounds above make this unreachable; never a traceback all the same
        raise _problem(f"the document is nested more than {MAX_DEPTH} levels deep", "configs are shallow", name, None) from None
    finally:
        if loader is not None:
            loader.dispose()
    return source_data


def _source_text(node: yaml.Node, text: str) -> str:
    start, end = node.start_mark.index, node.end_mark.index if node.end_mark is not None else node.start_mark.index
    return short_text(" ".join(text[start:end].split()), 60)


def _walk(node: yaml.Node, path: KeyPath, source: YamlSource, problems: list[ConfigProblem], text: str, depth: int) -> None:
    """Record lines and written texts; report duplicate keys and keys that are not strings."""
    if depth > MAX_DEPTH:  # the composer refused deeper documents already
        return
    name = source.name
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
                problems.append(
                    ConfigProblem(
                        format_path(path),
                        f"a key here is {kind} ({_source_text(key_node, text)}), not a string",
                        "keys must be strings: write 'name: value' (YAML's '? ' complex keys are not config keys)",
                        name,
                        line,
                    )
                )
                continue
            if key_node.tag not in _KEY_TAGS:
                kind = _TAG_NAMES.get(key_node.tag.rsplit(":", 1)[-1], f"the tag {key_node.tag}")
                shown = short_text(key_node.value) if key_node.value else "(empty)"
                problems.append(
                    ConfigProblem(
                        format_path(path),
                        f"the key {shown} is not a string (YAML reads it as {kind})",
                        f"keys must be strings: write a key name here, quoted ('{shown}': ...) if you mean this text",
                        name,
                        line,
                    )
                )
                continue
            key = key_node.value
            if key in seen:
                where = format_path(path + (key,))
                problems.append(
                    ConfigProblem(where, f"key {short_repr(key)} appears twice (lines {seen[key]} and {line})", "keep one of them", name, line)
                )
                continue
            seen[key] = line
            source.lines[path + (key,)] = line
            _walk(value_node, path + (key,), source, problems, text, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            source.lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), source, problems, text, depth + 1)
    elif isinstance(node, yaml.ScalarNode) and node.tag != _TAG + "str":
        source.written[path] = node.value
