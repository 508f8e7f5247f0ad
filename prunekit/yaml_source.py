"""Reading YAML safely while remembering the line of every key.

Only ``yaml.SafeLoader`` constructs values (a ``!!python/...`` tag is an error); duplicate keys,
which YAML loaders silently collapse, are reported; :meth:`YamlSource.locate` maps a key path such
as ``('pruners', 1, 'scheduler', 'end_step')`` to the file and 1-based line it was written on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import ConfigError, ConfigProblem
from prunekit.validation import format_path

__all__ = ["YamlSource", "read_yaml", "ConfigLoader"]

KeyPath = tuple[Any, ...]


class ConfigLoader(yaml.SafeLoader):
    """``SafeLoader`` without YAML 1.1's base-60 numbers, so ``pattern: 2:4`` stays the string '2:4'."""


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
    """Parsed YAML: the data, where it came from, and the line of every key path."""

    data: Any
    name: str | None
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def locate(self, path: KeyPath) -> tuple[str | None, int | None]:
        """``(file name, line)`` of ``path``, or of its longest prefix written in the file."""
        for cut in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:cut]))
            if line is not None:
                return self.name, line
        return self.name, None


def read_yaml(source: Path | str) -> YamlSource:
    """Parse a YAML file (``Path``) or YAML text (``str``) safely; ConfigError on any problem."""
    name: str | None
    if isinstance(source, Path):
        name = str(source)
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([ConfigProblem("", f"config file {name} does not exist", "check the path")]) from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError([ConfigProblem("", f"cannot read config file {name}: {err}", "check the file")]) from None
    else:
        name, text = None, source
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError([ConfigProblem("", "the config is empty", "write at least 'pruners:' (see configs/)", name, 1)])
        lines: dict[KeyPath, int] = {(): node.start_mark.line + 1}
        problems: list[ConfigProblem] = []
        _walk(node, (), lines, problems, name)
        if problems:
            raise ConfigError(problems)
        data = loader.construct_document(node)
    except yaml.constructor.ConstructorError as err:
        mark = err.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            [ConfigProblem("", f"YAML tag not allowed ({err.problem})", "configs are plain data: remove the '!!' tag", name, line)]
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(err, "problem", None) or str(err)
        raise ConfigError([ConfigProblem("", f"invalid YAML: {what}", "fix the YAML syntax on that line", name, line)]) from None
    finally:
        loader.dispose()
    return YamlSource(data=data, name=name, lines=lines)


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], problems: list[ConfigProblem], name: str | None) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key: Any = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                where = format_path(path + (key,))
                problems.append(
                    ConfigProblem(where, f"key '{key}' appears twice (lines {seen[key]} and {line})", "keep one of them", name, line)
                )
                continue
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, problems, name)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, problems, name)
