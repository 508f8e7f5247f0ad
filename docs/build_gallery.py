"""Draw docs/images/schedule_<name>.png for every built-in scheduler (run from the repo root).

``.venv/bin/python docs/build_gallery.py``; tests check that every built-in weight scheduler and
decay curve has its picture and that this script runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import prunekit as pk
from prunekit.plotting import plot_schedules

OUT = Path(__file__).resolve().parent / "images"


def build(out: Path = OUT) -> list[Path]:
    written = [
        plot_schedules(
            {"oneshot at step 20, target 0.8": (pk.get_scheduler({"type": "oneshot", "start_step": 20}), 0.8)},
            out / "schedule_oneshot.png",
            title="oneshot",
        )
    ]
    curves = {
        f"decay: {name}": (pk.get_scheduler({"type": "iterative", "end_step": 100, "frequency": 10, "decay": name}), 0.9)
        for name in pk.DECAY_CURVES.names()
    }
    written.append(plot_schedules(curves, out / "schedule_iterative.png", title="iterative, 0 -> 100 every 10, target 0.9"))
    written.append(plot_data_schedulers(out / "schedule_data.png"))
    return written


#: the data schedulers drawn, with the parameters of the picture (``lambda`` is code only)
DATA_EXAMPLES = {
    "gamma": {"gamma": 1.5, "threshold_sl": 0.8},
    "step": {"step_size": 4, "gamma": 2.0, "threshold_sl": 0.8},
    "linear": {"target": 0.8, "end_step": 16},
    "agp": {"target": 0.8, "end_step": 16},
    "lambda": {"param_lambda": lambda t: 1.0 + 0.1 * t},
}


def plot_data_schedulers(path: Path, steps: int = 20) -> Path:
    """``sparsity_level`` over scheduler steps for every built-in data scheduler (base 0.1)."""
    import torch

    from prunekit.data import DataNormSparsifier
    from prunekit.plotting import require_matplotlib

    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, params in DATA_EXAMPLES.items():
        sparsifier = DataNormSparsifier(sparsity_level=0.1)
        sparsifier.add_data("table", torch.zeros(8, 4))
        cls = pk.SCHEDULERS.get(name)
        scheduler = cls(sparsifier, **params)
        values = [sparsifier.data_groups["table"]["sparsity_level"]]
        for _ in range(steps):
            sparsifier.step()
            scheduler.step()
            values.append(sparsifier.data_groups["table"]["sparsity_level"])
        shown = ", ".join(f"{k}={v}" for k, v in params.items() if not callable(v)) or "base·(1 + 0.1·t)"
        ax.plot(range(steps + 1), values, marker="o", ms=3, label=f"{name} ({shown})")
    ax.set_xlabel("data scheduler step")
    ax.set_ylabel("sparsity_level")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("data schedulers, base sparsity_level 0.1")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    for path in build(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(f"wrote {path}")
