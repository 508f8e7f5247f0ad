"""Helpers shared by the subcommands: tables, building a model from --model, importing MODULE:NAME."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["AddCommand", "build_model", "hf_model", "import_attribute", "table"]

#: ``add(name, function, help)``: registers a subcommand and returns its parser
AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_model(spec: str) -> Any:
    """``--model``: a Hugging Face model folder (the class its config names, e.g.
    ``BertForSequenceClassification``; ``AutoModel`` when it names none) or ``MODULE:FACTORY``, the
    module found on ``sys.path`` or in the current directory."""
    if Path(spec).is_dir():
        return hf_model(Path(spec))
    build: Callable[[], Any] = import_attribute(spec, "--model", "my_models:build_model", "or the path of a Hugging Face model folder")
    return build()


def import_attribute(spec: str, option: str, example: str, alternative: str = "") -> Any:
    """``MODULE:NAME`` imported from ``sys.path`` or the current directory (a console script does not
    have the current directory on ``sys.path``)."""
    import importlib

    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"{option} {spec!r}: write MODULE:NAME (e.g. {example}){' ' + alternative if alternative else ''}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"{option} {spec!r}: module {module_name} has no {name!r}") from None


def hf_model(folder: Path) -> Any:
    import json
    import os

    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--model {folder}: a folder without config.json is not a Hugging Face model folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ImportError(f"--model {folder}: loading a Hugging Face model needs transformers: pip install 'prunekit[transformers]'") from None
    architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    return (cls or transformers.AutoModel).from_pretrained(str(folder))
