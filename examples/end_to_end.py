"""End-to-end prunekit example on a real dataset (scikit-learn's handwritten digits, shipped with
the package, so nothing is downloaded): train a small MLP densely, then prune copies of it with the
configs in ``configs/`` and fine-tune, and print dense vs pruned accuracy and achieved sparsity.

Run: ``bash scripts/demo.sh`` (or ``.venv/bin/python examples/end_to_end.py --quick``).
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import prunekit as pk

ROOT = Path(__file__).resolve().parents[1]


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


def train(model: nn.Module, data: Data, steps: int, lr: float, seed: int, pruning: "pk.Pruning | None" = None) -> None:
    """``steps`` optimizer steps of Adam on mini-batches of 64 (a pruning session attached if given)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    if pruning is not None:
        pruning.attach(optimizer)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(data.x_train), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def accuracy(model: nn.Module, data: Data) -> float:
    model.eval()
    return (model(data.x_test).argmax(1) == data.y_test).float().mean().item() * 100


def sparsity(model: nn.Module) -> float:
    """Element-wise zero fraction over the hidden Linear weights (fc1, fc2)."""
    weights = [model.fc1.weight, model.fc2.weight]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    dense_steps, tune_steps = (300, 200) if args.quick else (1500, 600)
    started = time.perf_counter()

    data = load_digits(args.seed)
    dense = MLP()
    train(dense, data, dense_steps, 1e-3, args.seed)
    rows = [("dense", sparsity(dense), accuracy(dense, data))]
    longer = copy.deepcopy(dense)  # the fair reference: dense trained as long as the fine-tuned runs
    train(longer, data, tune_steps, 3e-4, args.seed + 1)
    rows.append((f"dense + {tune_steps} more steps", sparsity(longer), accuracy(longer, data)))

    runs = [
        ("one-shot 90%, no fine-tuning", "oneshot_magnitude.yaml", 0),
        ("one-shot 90% + fine-tuning", "oneshot_magnitude.yaml", tune_steps),
        ("iterative 90% (gradual)", "iterative_90.yaml", tune_steps),
        ("2:4 semi-structured", "semi_structured_2of4.yaml", tune_steps),
    ]
    for label, config_name, steps in runs:
        model = copy.deepcopy(dense)
        config = pk.load_config(ROOT / "configs" / config_name)
        pruning = pk.prepare_pruning(model, config)
        if steps:
            train(model, data, steps, 3e-4, args.seed + 1, pruning)
        else:
            pruning.prune_now()
        pruning.finalize()
        rows.append((label, sparsity(model), accuracy(model, data)))

    print(f"\nprunekit demo: MLP 64-256-256-10 on scikit-learn digits ({len(data.x_train)} train / {len(data.x_test)} test)")
    print(f"{'run':<32} {'sparsity fc1+fc2':>17} {'test accuracy':>14}")
    for label, sp, acc in rows:
        print(f"{label:<32} {sp:>16.1f}% {acc:>13.2f}%")
    print(f"\n{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
