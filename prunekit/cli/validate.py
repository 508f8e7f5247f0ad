"""Subcommands about configs: validate, plan, schema, schedulers, pruners."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prunekit.cli.common import AddCommand, build_model, table


def cmd_validate(args: argparse.Namespace) -> int:
    from prunekit.config import load_config

    config = load_config(Path(args.config))  # a file name, never YAML text
    print(f"{args.config}: valid ({len(config.pruners)} pruner group(s))")
    rows = []
    for group in config.pruners:
        sched = group.scheduler
        rows.append([group.name, group.pattern, group.criterion, group.scope, group.target_sparsity, sched.type])
    print(table(["group", "pattern", "criterion", "scope", "target", "scheduler"], rows))
    if args.model:
        model = build_model(args.model)
        print()
        print(_describe_selection(model, config))
    return 0


def _describe_selection(model: Any, config: Any) -> str:
    """Which layers each group prunes, with the 2-D view the pattern is applied to.

    Building the layers checks every selector and every pattern against the model (an N:M pattern
    on a layer whose input size is not a multiple of M is an error naming the layer).
    """
    from prunekit.pruner import Pruning
    from prunekit.pruner.selection import find_classifier_head

    session = Pruning(model, config)
    rows = []
    for group in session.groups:
        for layer in group.layers:
            frozen = " (frozen)" if layer.frozen else ""
            rows.append([group.name, layer.name + frozen, type(layer.module).__name__, "x".join(map(str, layer.weight.shape)), group.pattern_label])
    total = sum(layer.numel for group in session.groups for layer in group.layers)
    text = table(["group", "layer", "type", "shape", "pattern"], rows) + f"\n{len(rows)} layer(s), {total:,} weights"
    head = find_classifier_head(model) if any(g.exclude_head for g in session.config.pruners) else None
    if head is not None:
        text += f"\n{head[0]} ({type(head[1]).__name__}): the classifier head, left dense (exclude_head)"
    session.close()
    return text


def cmd_plan(args: argparse.Namespace) -> int:
    from prunekit.config import load_config
    from prunekit.registry import get_scheduler

    config = load_config(Path(args.config))  # a file name, never YAML text
    curves = {}
    needed = 0
    print("step: the optimizer step an event runs in, counted from 0 (pruning.global_step while it runs, the `step` of a\n"
          "`for step in range(...)` loop, Lightning's logged step); reached at global_step: the count of optimizer steps\n"
          "done once it has run (the Hugging Face Trainer's logged step and checkpoint-N, Lightning's trainer.global_step)\n")
    for group in config.pruners:
        sched = get_scheduler(group.scheduler, max_sparsity_per_op=group.max_sparsity_per_op)
        events = sched.events()
        rows = [[e.step, e.step + 1, f"{e.index}/{e.total}", f"{sched.ratio_at_event(e, group.target_sparsity):.4f}"] for e in events]
        print(f"group {group.name}: {sched!r}, target {group.target_sparsity}, {len(events)} event(s)")
        print(table(["step", "reached at global_step", "prune step", "target sparsity"], rows))
        print()
        curves[group.name] = (sched, group.target_sparsity)
        needed = max(needed, sched.last_event_step + 1)
    print(f"every target is reached after {needed} optimizer steps: train at least {needed} (Trainer / Lightning max_steps >= {needed})")
    if args.plot:
        from prunekit.plotting import plot_schedules

        plot_schedules(curves, args.plot, title=str(args.config))
        print(f"wrote {args.plot}")
    return 0


def cmd_schedulers(args: argparse.Namespace) -> int:
    from prunekit.registry import SCHEDULERS

    rows = []
    for entry in SCHEDULERS.entries():
        kind = "data" if _is_data_scheduler(entry.obj) else "weight"
        params = ""
        if entry.config is not None:
            params = ", ".join(n for n in entry.config.model_fields if n != "type")
        origin = f"plugin {entry.plugin}" if entry.plugin else entry.obj.__module__
        aliases = ", ".join(entry.aliases)
        rows.append([entry.name, kind, aliases, params, entry.description, origin])
    print(table(["name", "kind", "aliases", "parameters", "description", "from"], rows))
    return 0


def _is_data_scheduler(obj: Any) -> bool:
    from prunekit.schedulers.base import Scheduler

    return not (isinstance(obj, type) and issubclass(obj, Scheduler))


def cmd_schema(args: argparse.Namespace) -> int:
    from prunekit.config import config_json_schema

    print(json.dumps(config_json_schema(), indent=2))
    return 0


def cmd_pruners(args: argparse.Namespace) -> int:
    from prunekit.config import PrunerConfig
    from prunekit.registry import PRUNERS, REGULARIZERS

    rows = []
    base = set(PrunerConfig.model_fields)
    for entry in PRUNERS.entries():
        model = entry.config if entry.config is not None else PrunerConfig
        own = ", ".join(k for k in model.model_fields if k not in base) or "-"
        unused = ", ".join(sorted(model.unused_keys)) or "-"
        origin = f"plugin {entry.plugin}" if entry.plugin else entry.obj.__module__
        rows.append([entry.name, own, unused, entry.description, origin])
    print(table(["pruner type", "own keys", "keys not used", "description", "from"], rows))
    print()
    regs = [[e.name, ", ".join(k for k in e.config.model_fields if k != "type") if e.config else "-", e.description] for e in REGULARIZERS.entries()]
    print(table(["regularizer", "keys", "description"], regs))
    return 0


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser (``add(name, function, help)`` returns the subparser)."""
    p = add("validate", cmd_validate, "Validate a config; with --model, show which layers each group prunes.")
    p.add_argument("config", help="YAML file")
    p.add_argument("--model", metavar="MODEL", help="MODULE:FACTORY (a function that builds the model, found in the current "
                   "directory too) or a Hugging Face model folder")
    p = add("plan", cmd_plan, "Print each group's schedule: event steps and target sparsity.")
    p.add_argument("config", help="YAML file")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the sparsity curves (needs matplotlib)")
    add("schedulers", cmd_schedulers, "List registered schedulers (weight and data), plugins included.")
    add("pruners", cmd_pruners, "List registered pruner types and regularizers, plugins included.")
    add("schema", cmd_schema, "Print the JSON Schema of the config (for editor completion).")
