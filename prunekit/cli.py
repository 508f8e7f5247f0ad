"""The ``prunekit`` command (also ``python -m prunekit``).

Exit codes: 0 success, 2 a config error (its lines printed, no traceback), 1 any other failure
(one line; ``--debug`` shows the traceback). The ``config`` argument of ``validate`` and ``plan``
is always a file name, and a config error lists at most :data:`MAX_PRINTED_PROBLEMS` problems.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

from prunekit.errors import ConfigError

__all__ = ["main", "build_parser", "MAX_PRINTED_PROBLEMS"]

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


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _import_plugins(modules: Sequence[str]) -> None:
    import importlib

    for module in modules:
        importlib.import_module(module)


# ------------------------------------------------------------------------------------- commands
def cmd_validate(args: argparse.Namespace) -> int:
    from prunekit.config import load_config

    config = load_config(Path(args.config))  # a file name, never YAML text
    print(f"{args.config}: valid ({len(config.pruners)} pruner group(s))")
    rows = []
    for group in config.pruners:
        sched = group.scheduler
        rows.append([group.name, group.pattern, group.criterion, group.scope, group.target_sparsity, sched.type])
    print(_table(["group", "pattern", "criterion", "scope", "target", "scheduler"], rows))
    if args.model:
        model = _build_model(args.model)
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
    text = _table(["group", "layer", "type", "shape", "pattern"], rows) + f"\n{len(rows)} layer(s), {total:,} weights"
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
        print(_table(["step", "reached at global_step", "prune step", "target sparsity"], rows))
        print()
        curves[group.name] = (sched, group.target_sparsity)
        needed = max(needed, sched.last_event_step + 1)
    print(f"every target is reached after {needed} optimizer steps: train at least {needed} (Trainer / Lightning max_steps >= {needed})")
    if args.plot:
        from prunekit.plotting import plot_schedules

        plot_schedules(curves, args.plot, title=str(args.config))
        print(f"wrote {args.plot}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from prunekit.demo import DEFAULT_CONFIGS, run_from_args
    from prunekit.demo_llm import llm_options_given
    from prunekit.demo_llm import run_from_args as run_llm

    if args.which == "llm":
        if args.configs != DEFAULT_CONFIGS:
            raise ValueError("--configs is for the MLP demo (prunekit demo); prunekit demo llm takes --model/--text")
        return run_llm(args)
    given = llm_options_given(args)
    if given:
        raise ValueError(f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of prunekit demo llm, not of the MLP demo")

    return run_from_args(args)


def cmd_report(args: argparse.Namespace) -> int:
    from prunekit.checkpoint_report import analyse, load_weights

    tensors, pruning = load_weights(args.checkpoint)
    rows = analyse(tensors)
    if not rows:
        raise ValueError(f"{args.checkpoint}: no weight tensors with 2 or more dimensions")
    targets: dict[str, str] = {}
    if pruning is not None:
        for group_name, group in pruning["groups"].items():
            for layer in group.get("layers", []):
                targets[layer] = f"{group_name} ({group.get('ratio', 0):.3f})"
    table = []
    for row in rows:
        line = [row.name, "x".join(map(str, row.shape)), f"{row.sparsity:.2%}", ", ".join(row.patterns) or "-"]
        if pruning is not None:
            line.append(targets.get(row.name, "-"))
        table.append(line)
    headers = ["layer", "shape", "sparsity", "zeros satisfy"] + (["pruner (ratio in force)"] if pruning is not None else [])
    print(_table(headers, table))
    total = sum(r.numel for r in rows)
    zeros = sum(round(r.sparsity * r.numel) for r in rows)
    print()
    if pruning is not None:
        pruned = [r for r in rows if r.name in targets]
        if pruned:
            p_total = sum(r.numel for r in pruned)
            p_zeros = sum(round(r.sparsity * r.numel) for r in pruned)
            print(f"pruned layers: {len(pruned)}, {p_total:,} weights, {p_zeros / p_total:.2%} zero")
    print(f"all weight matrices (embeddings and heads included): {len(rows)}, {total:,} weights, {zeros / total:.2%} zero")
    if pruning is not None:
        print(f"prunekit pruning state: global_step {pruning['global_step']}, {len(pruning.get('history', []))} event(s)")
    if args.plot:
        from prunekit.plotting import plot_layer_sparsity

        written = plot_layer_sparsity(rows, args.plot, set(targets) if pruning is not None else None, title=Path(args.checkpoint).name)
        print(f"wrote {written}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from prunekit.checkpoint_report import load_weights
    from prunekit.sparse_checkpoint import SPARSE_FILE, save_sparse

    tensors, _ = load_weights(args.checkpoint)
    out = Path(args.out) if args.out else (Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent) / SPARSE_FILE
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; pass --force to replace it or --out for another name")
    stats = save_sparse(tensors, out)
    print(stats)
    print(f"load it with prunekit.load_sparse({str(out)!r}, into=model)")
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from prunekit.config import load_config
    from prunekit.layer_sensitivity import sensitivity

    config = load_config(Path(args.config))
    if (args.eval is None) == (args.text is None):
        raise ValueError("give the metric as --eval MODULE:FUNCTION (a function of the model returning one number) or as --text FILE (perplexity of a causal LM)")
    if args.target is not None and not args.out:
        raise ValueError("--target writes a config with per-layer targets: give --out FILE.yaml too")
    if args.out and Path(args.out).exists() and not args.force:
        raise FileExistsError(f"--out {args.out} exists; pass --force to replace it")
    if args.text is not None:
        from prunekit.post_training.lm import load_causal_lm, load_text, perplexity, split_tokens

        if not Path(args.text).is_file():
            raise FileNotFoundError(f"--text {args.text}: no such file")
        model, tokenizer = load_causal_lm(args.model, args.gguf_file)
        _, eval_ids = split_tokens(tokenizer, load_text(args.text))
        higher_is_better = False
        print(f"metric: perplexity on {min(args.eval_tokens, eval_ids.numel()) // args.seqlen * args.seqlen:,} held-out tokens of {args.text}")

        def evaluate(m: Any) -> float:
            return perplexity(m, eval_ids, args.seqlen, args.eval_tokens)
    else:
        model = _build_model(args.model)
        evaluate = _import_attribute(args.eval, "--eval", "my_eval:accuracy")
        higher_is_better = not args.lower_is_better
    progress = None if args.quiet else (lambda line: print(f"  {line}", file=sys.stderr, flush=True))
    result = sensitivity(model, config, evaluate, ratios=args.ratios, higher_is_better=higher_is_better, progress=progress)
    print(result.table())
    if args.plot:
        print(f"wrote {result.plot(args.plot)}")
    if args.target is not None:
        written = result.write_config(args.out, args.target)
        allocation = result.allocate(args.target)
        print(f"wrote {written}: per-layer targets from {min(allocation.values()):.3f} to {max(allocation.values()):.3f}, overall {args.target}")
    return 0


def cmd_slim(args: argparse.Namespace) -> int:
    import shutil

    from prunekit.config import load_config
    from prunekit.structure.slim import plan_slim

    source = Path(args.checkpoint)
    if not source.is_dir() or not (source / "config.json").is_file():
        raise ValueError(
            f"{source}: prunekit slim reads a Hugging Face model folder (or a Trainer checkpoint-N folder); for other models "
            f"call prunekit.slim(model) in Python"
        )
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not an empty folder; name a new folder (nothing is overwritten)")
    config = load_config(Path(args.config)) if args.config else None
    model = _hf_model(source).eval()
    plan = plan_slim(model, config)
    print(plan.table())
    if all(row.kept == row.units for row in plan.rows):
        print("nothing to remove: no head or channel of this model has all of its output-side weights at zero")
    plan.apply()
    model.save_pretrained(out)
    for item in source.iterdir():  # the tokenizer and other files the model folder carries
        if item.is_file() and item.name.startswith(("tokenizer", "vocab", "merges", "special_tokens", "spiece", "preprocessor")):
            shutil.copy2(item, out / item.name)
    print(f"wrote {out}: load it with prunekit.load_slimmed(Model.from_config(AutoConfig.from_pretrained({str(out)!r})), {str(out)!r})")
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
    print(_table(["pruner type", "own keys", "keys not used", "description", "from"], rows))
    print()
    regs = [[e.name, ", ".join(k for k in e.config.model_fields if k != "type") if e.config else "-", e.description] for e in REGULARIZERS.entries()]
    print(_table(["regularizer", "keys", "description"], regs))
    return 0


def cmd_oneshot(args: argparse.Namespace) -> int:
    import torch

    from prunekit.config import load_config
    from prunekit.pattern_syntax import parse_pattern
    from prunekit.post_training import oneshot
    from prunekit.post_training.lm import calibration_windows, load_causal_lm, load_text, perplexity, split_tokens

    if args.config:
        config = load_config(Path(args.config))
    else:
        sparsity = args.sparsity
        if sparsity is None:  # N:M prunes N of M; unstructured defaults to half (a bad pattern is reported by the config)
            try:
                spec = parse_pattern(args.pattern)
            except ValueError:
                spec = None
            sparsity = spec.n / spec.m if spec is not None and spec.kind == "nm" else 0.5
        group = {"type": args.method, "pattern": args.pattern, "target_sparsity": sparsity, "op_types": ["Linear", "Conv1D"]}
        if args.owl:
            group["allocation"] = "owl"
        config = load_config({"pruners": [group]})
    if not Path(args.text).is_file():
        raise FileNotFoundError(f"--text {args.text}: no such file")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: give at least 1")
        torch.set_num_threads(args.threads)
    if args.out and Path(args.out).exists() and (not Path(args.out).is_dir() or any(Path(args.out).iterdir())):
        raise FileExistsError(f"--out {args.out} exists and is not an empty folder; name a new folder (nothing is overwritten)")
    model, tokenizer = load_causal_lm(args.model, args.gguf_file)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and args.seqlen > limit:
        raise ValueError(f"--seqlen {args.seqlen} is longer than the model's max_position_embeddings ({limit})")
    model.to(args.device)
    calib_ids, eval_ids = split_tokens(tokenizer, load_text(args.text))
    calibration = calibration_windows(calib_ids, args.samples, args.seqlen, args.seed)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()):,} parameters; {calib_ids.numel():,} calibration / "
          f"{eval_ids.numel():,} evaluation tokens; {args.samples} windows of {args.seqlen} (seed {args.seed})")
    before = perplexity(model, eval_ids, args.seqlen, args.eval_tokens) if args.eval_tokens else None
    result = oneshot(model, config, calibration, device=args.device, offload=args.offload, progress=not args.no_progress)
    print(result.table())
    if before is not None:
        after = perplexity(model, eval_ids, args.seqlen, args.eval_tokens)
        used = min(args.eval_tokens, eval_ids.numel()) // args.seqlen * args.seqlen
        print(f"perplexity on {used:,} held-out tokens ({args.seqlen}-token windows): {before:.2f} dense -> {after:.2f} pruned")
    if args.out:
        model.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
        print(f"saved to {args.out} (the zeros are kept; fine-tune with a pattern_lock group to keep them)")
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
    print(_table(["name", "kind", "aliases", "parameters", "description", "from"], rows))
    return 0


def _is_data_scheduler(obj: Any) -> bool:
    from prunekit.schedulers.base import Scheduler

    return not (isinstance(obj, type) and issubclass(obj, Scheduler))


def cmd_schema(args: argparse.Namespace) -> int:
    from prunekit.config import config_json_schema

    print(json.dumps(config_json_schema(), indent=2))
    return 0


def _build_model(spec: str) -> Any:
    """``--model``: a Hugging Face model folder (the class its config names, e.g.
    ``BertForSequenceClassification``; ``AutoModel`` when it names none) or ``MODULE:FACTORY``, the
    module found on ``sys.path`` or in the current directory."""
    if Path(spec).is_dir():
        return _hf_model(Path(spec))
    build: Callable[[], Any] = _import_attribute(spec, "--model", "my_models:build_model", "or the path of a Hugging Face model folder")
    return build()


def _import_attribute(spec: str, option: str, example: str, alternative: str = "") -> Any:
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


def _hf_model(folder: Path) -> Any:
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

    p = add("validate", cmd_validate, "Validate a config; with --model, show which layers each group prunes.")
    p.add_argument("config", help="YAML file")
    p.add_argument("--model", metavar="MODEL", help="MODULE:FACTORY (a function that builds the model, found in the current "
                   "directory too) or a Hugging Face model folder")
    p = add("plan", cmd_plan, "Print each group's schedule: event steps and target sparsity.")
    p.add_argument("config", help="YAML file")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the sparsity curves (needs matplotlib)")
    p = add("demo", cmd_demo, "Train, prune and fine-tune a small network on real data (or prune a real LLM once); print one table.")
    from prunekit.demo import add_arguments
    from prunekit.demo_llm import add_arguments as add_llm_arguments

    p.add_argument("which", nargs="?", choices=["mlp", "llm"], default="mlp",
                   help="mlp: training-time pruning of an MLP on digits (default); llm: magnitude / Wanda / SparseGPT on SmolLM2-135M")
    add_arguments(p)
    add_llm_arguments(p)
    p = add("report", cmd_report, "Per-layer shape, element-wise sparsity and the patterns the zeros satisfy.")
    p.add_argument("checkpoint", help="a state_dict, a training checkpoint (.pt/.ckpt), a model.safetensors, or a Hugging Face "
                   "model / Trainer checkpoint-N folder (its prunekit_pruning.pt fills the pruner column)")
    p.add_argument("--plot", metavar="FILE", help="also draw the per-layer sparsity (PNG/SVG/PDF; needs matplotlib)")
    p = add("compress", cmd_compress, "Store a pruned checkpoint's zeros as a bitmask (compact safetensors); print the bytes saved.")
    p.add_argument("checkpoint", help="any checkpoint prunekit report reads (file or Hugging Face / checkpoint-N folder)")
    p.add_argument("--out", help="the .safetensors file to write (default: model.sparse.safetensors beside the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p = add("slim", cmd_slim, "Remove pruned attention heads and FFN/conv channels from a Hugging Face model folder; a smaller model.")
    p.add_argument("checkpoint", help="a Hugging Face model folder or Trainer checkpoint-N folder")
    p.add_argument("--out", required=True, help="the folder to write the slimmed model to (new or empty)")
    p.add_argument("--config", help="the pruning YAML, for structures its units: entries declare")
    p = add("sensitivity", cmd_sensitivity, "Prune one layer at a time at a few ratios, measure, and write per-layer targets.")
    p.add_argument("config", help="YAML whose groups select the layers to scan (their pattern and criterion are used)")
    p.add_argument("--model", required=True, help="MODULE:FACTORY or a Hugging Face model folder (with --text: a causal LM folder or .gguf)")
    p.add_argument("--eval", help="MODULE:FUNCTION: evaluate(model) -> float (higher is better unless --lower-is-better)")
    p.add_argument("--text", help="a text file: the metric is the perplexity of its second half (causal LMs)")
    p.add_argument("--gguf-file", help="a GGUF file inside the model folder (with --text)")
    p.add_argument("--seqlen", type=int, default=256, help="perplexity window (with --text)")
    p.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens for perplexity (with --text)")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75, 0.9], help="sparsity of the one pruned layer")
    p.add_argument("--lower-is-better", action="store_true", help="the --eval metric is a loss or perplexity")
    p.add_argument("--target", type=float, help="overall sparsity for the per-layer config written to --out")
    p.add_argument("--out", help="the YAML file to write (with --target)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--plot", metavar="FILE", help="draw the metric against the ratio per layer (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add("schedulers", cmd_schedulers, "List registered schedulers (weight and data), plugins included.")
    add("pruners", cmd_pruners, "List registered pruner types and regularizers, plugins included.")
    p = add("oneshot", cmd_oneshot, "Prune a Hugging Face causal LM once from calibration text (SparseGPT, Wanda, magnitude).")
    p.add_argument("model", help="a Hugging Face model folder (or a .gguf file)")
    p.add_argument("--gguf-file", help="a GGUF file inside the model folder")
    p.add_argument("--text", required=True, help="text for calibration (first half) and perplexity (second half); .bz2/.gz ok")
    p.add_argument("--config", help="a YAML config with one-shot groups (instead of --method/--sparsity/--pattern)")
    p.add_argument("--method", choices=["sparse_gpt", "wanda", "magnitude"], default="sparse_gpt")
    p.add_argument("--sparsity", type=float, help="target sparsity (default: 0.5; N/M for an N:M pattern)")
    p.add_argument("--pattern", default="1x1", help="1x1 or N:M (2:4, 4:8)")
    p.add_argument("--owl", action="store_true", help="OWL layer-wise sparsity (unstructured only)")
    p.add_argument("--samples", type=int, default=128, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens for perplexity (0: skip)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); set it to the free cores of a busy machine")
    p.add_argument("--offload", action="store_true", help="keep activations on the CPU between blocks")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", help="save the pruned model (save_pretrained) to this folder")
    add("schema", cmd_schema, "Print the JSON Schema of the config (for editor completion).")
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
