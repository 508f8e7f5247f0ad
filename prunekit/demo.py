"""The prunekit demo (``prunekit demo``): a complete pruning run on real data in under two minutes.

scikit-learn's handwritten digits ship inside the package, so nothing is downloaded. A small MLP is
trained densely, then copies of it are pruned with the configs in ``configs/`` and fine-tuned; one
table shows each run's achieved sparsity and held-out accuracy, and the output folder receives the
schedule plot and a per-layer sparsity chart. Deterministic for a given ``--seed``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

import prunekit as pk

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ROOT / "configs"
RUNS = (  # label, config file, fine-tuning?
    ("one-shot 90%, no fine-tuning", "oneshot_magnitude.yaml", False),
    ("one-shot 90% + fine-tuning", "oneshot_magnitude.yaml", True),
    ("iterative 90% (gradual)", "iterative_90.yaml", True),
    ("2:4 semi-structured", "semi_structured_2of4.yaml", True),
)


@dataclass
class RunResult:
    label: str
    sparsity: float  # % zeros among the hidden Linear weights
    accuracy: float  # % correct on the held-out split
    report: "pk.PruningReport | None" = None


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(seed: int) -> Data:
    """The 1797 8x8 digit images, standardised, split 80/20 with a fixed seed."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as err:  # pragma: no cover - setup installs it
        raise SystemExit("the demo needs scikit-learn: pip install 'prunekit[demo]'") from err
    digits = sk_load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    mean, std = x[:cut].mean(0), x[:cut].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return Data(x[:cut], y[:cut], x[cut:], y[cut:])


class MLP(nn.Module):
    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def train(model: nn.Module, data: Data, steps: int, lr: float, seed: int, pruning: "pk.Pruning | None" = None, desc: str = "") -> None:
    """``steps`` optimizer steps of Adam on mini-batches of 64 (a pruning session attached if given)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if pruning is not None:
        pruning.attach(optimizer)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in _progress(range(steps), desc):
        batch = torch.randint(0, len(data.x_train), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _progress(steps: range, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars are a nicety of the demo extra
        return steps
    return tqdm(steps, desc=f"{desc:<30}", leave=False, disable=not sys.stderr.isatty(), ncols=90)


@torch.no_grad()
def accuracy(model: nn.Module, data: Data) -> float:
    model.eval()
    return (model(data.x_test).argmax(1) == data.y_test).float().mean().item() * 100


def sparsity(model: nn.Module) -> float:
    """Element-wise zero fraction over the hidden Linear weights (fc1, fc2)."""
    weights = [model.fc1.weight, model.fc2.weight]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights) * 100


@dataclass
class DemoResult:
    runs: list[RunResult]
    n_train: int
    n_test: int


def run_demo(quick: bool = False, seed: int = 0, configs: Path = DEFAULT_CONFIGS, out: Path | None = None) -> DemoResult:
    """Train, prune every run of :data:`RUNS`, return the results; writes plots into ``out``."""
    # The network is tiny: one thread is as fast, and immune to the slowdown intra-op threads
    # suffer when another process holds a core (seen here: 0.2 s vs 10 s for the same 100 steps).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_demo(quick, seed, configs, out)
    finally:
        torch.set_num_threads(threads)


def _run_demo(quick: bool, seed: int, configs: Path, out: Path | None) -> DemoResult:
    torch.manual_seed(seed)
    dense_steps, tune_steps = (200, 110) if quick else (1500, 600)
    data = load_digits(seed)
    dense = MLP()
    train(dense, data, dense_steps, 1e-3, seed, desc="dense training")
    results = [RunResult("dense", sparsity(dense), accuracy(dense, data))]
    longer = copy.deepcopy(dense)  # the fair reference: dense trained as long as the fine-tuned runs
    train(longer, data, tune_steps, 3e-4, seed + 1, desc="dense reference")
    results.append(RunResult(f"dense + {tune_steps} more steps", sparsity(longer), accuracy(longer, data)))
    schedules = {}
    for label, config_name, fine_tune in RUNS:
        model = copy.deepcopy(dense)
        config = pk.load_config(configs / config_name)
        if quick:  # a quarter of every schedule, so that the short fine-tuning still completes it
            config = compress_schedules(config, 4)
        pruning = pk.prepare_pruning(model, config)
        if fine_tune:
            train(model, data, tune_steps, 3e-4, seed + 1, pruning, desc=label)
        else:
            pruning.prune_now()
        report = pruning.report()
        pruning.finalize()
        results.append(RunResult(label, sparsity(model), accuracy(model, data), report))
        for group in config.pruners:
            schedules[f"{config_name}: {group.name}"] = (pk.get_scheduler(group.scheduler, max_sparsity_per_op=group.max_sparsity_per_op), group.target_sparsity)
    if out is not None:
        write_plots(results, schedules, out)
    return DemoResult(results, len(data.x_train), len(data.x_test))


def compress_schedules(config: "pk.PruningConfig", factor: int) -> "pk.PruningConfig":
    """``config`` with every scheduler's steps divided by ``factor`` (frequency at least 1)."""
    data = config.model_dump()
    for group in data["pruners"]:
        sched = group["scheduler"]
        sched["start_step"] //= factor
        if sched.get("end_step") is not None:
            sched["end_step"] //= factor
        sched["frequency"] = max(1, sched["frequency"] // factor)
    return pk.load_config(data)


def write_plots(results: Sequence[RunResult], schedules: dict, out: Path) -> list[Path]:
    """The schedules of the runs and a per-layer sparsity chart, as PNG files in ``out``."""
    from prunekit.plotting import plot_schedules, require_matplotlib

    out.mkdir(parents=True, exist_ok=True)
    written = [plot_schedules(schedules, out / "schedules.png", title="demo schedules")]
    plt = require_matplotlib()
    pruned = [r for r in results if r.report is not None]
    layers = [row.name for row in pruned[0].report]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(pruned)
    for i, result in enumerate(pruned):
        values = [result.report.row(name).sparsity * 100 for name in layers]
        ax.bar([x + i * width for x in range(len(layers))], values, width, label=result.label)
    ax.set_xticks([x + width * (len(pruned) - 1) / 2 for x in range(len(layers))], layers)
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "layer_sparsity.png", dpi=110)
    plt.close(fig)
    written.append(out / "layer_sparsity.png")
    return written


def format_table(demo: DemoResult) -> str:
    """The demo's one table: each run's achieved sparsity and held-out accuracy."""
    results = demo.runs
    lines = [
        f"prunekit demo: MLP 64-256-256-10 on scikit-learn digits ({demo.n_train} train / {demo.n_test} held out)",
        f"{'run':<32} {'sparsity (fc1+fc2)':>18} {'held-out accuracy':>18}",
        "-" * 70,
    ]
    lines += [f"{r.label:<32} {r.sparsity:>17.1f}% {r.accuracy:>17.2f}%" for r in results]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prunekit demo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer training steps (a smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the results are deterministic for it)")
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS, help="folder with the demo's YAML configs")
    parser.add_argument("--out", type=Path, default=Path("prunekit-demo-output"), help="folder for the plots")


def run_from_args(args: argparse.Namespace) -> int:
    if not (args.configs / "iterative_90.yaml").is_file():
        raise FileNotFoundError(f"{args.configs} holds no demo configs; run from a source checkout or pass --configs")
    started = time.perf_counter()
    print(format_table(run_demo(args.quick, args.seed, args.configs, args.out)))
    print(f"\nplots: {args.out / 'schedules.png'}, {args.out / 'layer_sparsity.png'}")
    print(f"took {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
