"""Pictures of schedules (needs the ``plot`` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

__all__ = ["plot_schedules", "require_matplotlib"]


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` with the file-only Agg backend; a clear ImportError when missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'prunekit[plot]'") from err
    return plt


def plot_schedules(curves: Mapping[str, tuple[Any, float]], path: str | Path, title: str | None = None) -> Path:
    """Draw ``{label: (scheduler, target)}`` as sparsity over optimizer steps; events as dots.

    The line is the scheduler's closed form ``target_at(step, target)``: the ratio in force once
    that step has been taken.
    """
    plt = require_matplotlib()
    last = max(sched.last_event_step for sched, _ in curves.values())
    steps = list(range(0, int(last * 1.15) + 2))
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, (sched, target) in curves.items():
        line = ax.step(steps, [sched.target_at(s, target) for s in steps], where="post", label=label)[0]
        events = sched.events()
        ax.plot([e.step for e in events], [sched.ratio_at_event(e, target) for e in events], "o", ms=3, color=line.get_color())
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("target sparsity")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
