"""The ``prunekit`` command (also ``python -m prunekit``): one module per subcommand family
(:mod:`~prunekit.cli.validate`, :mod:`~prunekit.cli.report`, :mod:`~prunekit.cli.oneshot`,
:mod:`~prunekit.cli.slim`, :mod:`~prunekit.cli.sensitivity`, :mod:`~prunekit.cli.demo`), each with
a ``register(add)`` that adds its subcommands in the order they are listed.

Exit codes: 0 success, 2 a config error (its lines printed, no traceback), 1 any other failure
(one line; ``--debug`` shows the traceback). The ``config`` argument of ``validate`` and ``plan``
is always a file name, and a config error lists at most :data:`MAX_PRINTED_PROBLEMS` problems.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Callable, Sequence

from prunekit.cli import demo, oneshot, report, sensitivity, slim, validate
from prunekit.cli.validate import _describe_selection
from prunekit.errors import ConfigError

__all__ = ["main", "build_parser", "MAX_PRINTED_PROBLEMS", "_describe_selection"]

#: a config error prints at most this many problems (a hostile file can have thousands)
MAX_PRINTED_PROBLEMS = 50

EXAMPLES = {
    "validate": "prunekit validate configs/multi_group.yaml\n  prunekit validate my.yaml --model my_models:build_model",
    "plan": "prunekit plan configs/iterative_90.yaml\n  prunekit plan configs/multi_group.yaml --plot schedule.png",
    "schedulers": "prunekit schedulers\n  prunekit schedulers --plugin my_package.schedulers",
    "pruners": "prunekit pruners\n  prunekit pruners --plugin my_package.pruners",
    "oneshot": "prunekit oneshot path/to/hf-model --text corpus.txt --method sparse_gpt --sparsity 0.5 --out pruned/\n"
    "  prunekit oneshot models/ --gguf-file model.gguf --text wiki.txt.bz2 --config configs/llm_sparse_gpt_2of4.yaml",
    "schema": "prunekit schema > prunekit.schema.json",
    "demo": "prunekit demo\n  prunekit demo --quick --out /tmp/demo\n  prunekit demo llm",
    "report": "prunekit report checkpoints/last.pt\n  prunekit report out/checkpoint-500",
    "sensitivity": "prunekit sensitivity configs/recipes/bert_unstructured_90.yaml --model my_models:build --eval my_eval:accuracy "
    "--target 0.8 --out per_layer.yaml --plot sensitivity.png",
    "slim": "prunekit slim out/checkpoint-500 --out slim/",
    "compress": "prunekit compress out/checkpoint-500\n  prunekit compress pruned.pt --out pruned.sparse.safetensors",
}


def _import_plugins(modules: Sequence[str]) -> None:
    import importlib

    for module in modules:
        importlib.import_module(module)


# ------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Config-driven pruning for PyTorch: validate configs, plan schedules, inspect checkpoints.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  " + "\n  ".join(e.splitlines()[0] for e in EXAMPLES.values()),
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of unexpected errors")
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE", help="import MODULE first (it may register schedulers)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog="example:\n  " + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    for family in (validate, demo, report, slim, sensitivity, oneshot):
        family.register(add)
    return parser


def _config_error_text(err: ConfigError) -> str:
    """The error's lines, at most MAX_PRINTED_PROBLEMS problems, each cut to 1000 characters."""
    lines = [line if len(line) <= 1000 else line[:990] + " …" for line in str(err).splitlines()]
    if len(lines) > MAX_PRINTED_PROBLEMS + 1:
        hidden = len(lines) - 1 - MAX_PRINTED_PROBLEMS
        lines = lines[: MAX_PRINTED_PROBLEMS + 1] + [f"  … and {hidden} more problem(s)"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _import_plugins(args.plugin)
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(_config_error_text(err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line; --debug for the traceback
        if args.debug:
            raise
        message = textwrap.shorten(f"{type(err).__name__}: {err}", width=2000)
        print(f"prunekit {args.command}: {message} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
