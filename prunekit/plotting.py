"""Pictures of schedules (needs the ``plot`` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["plot_schedules", "plot_layer_sparsity", "plot_sensitivity", "layer_sparsity_figure", "require_matplotlib", "save_figure"]


def require_matplotlib() -> Any:
    """``matplotlib.pyplot`` with the file-only Agg backend; a clear ImportError when missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plotting needs matplotlib: pip install 'prunekit[plot]'") from err
    return plt


def save_figure(fig: Any, path: str | Path, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` (PNG, SVG or PDF by its suffix; folders created) and close it."""
    if tight:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    require_matplotlib().close(fig)
    return path


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
    return save_figure(fig, path)


def layer_sparsity_figure(rows: Sequence[Any], pruned: set[str] | None = None, title: str | None = None) -> Any:
    """A horizontal bar per layer (``rows``: objects with ``name`` and ``sparsity``), in the order given;
    layers in ``pruned`` (those a pruning state names) in one colour, the others in grey. The legend
    sits above the axes, never over a bar."""
    plt = require_matplotlib()
    names = [r.name for r in rows]
    fig, ax = plt.subplots(figsize=(7.0, max(2.5, 0.6 + 0.2 * len(rows))))
    colours = ["tab:blue" if pruned is None or r.name in pruned else "tab:gray" for r in rows]
    ax.barh(range(len(rows)), [r.sparsity for r in rows], color=colours, height=0.8)
    ax.set_yticks(range(len(rows)), names, fontsize=7 if len(rows) < 60 else 5)
    ax.invert_yaxis()  # first layer on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("sparsity (fraction of exact zeros)")
    ax.grid(axis="x", alpha=0.3)
    if pruned is not None:
        from matplotlib.patches import Patch

        handles = [Patch(color="tab:blue", label="pruned by the saved session"), Patch(color="tab:gray", label="other weights")]
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, fontsize=8)
    if title:
        ax.set_title(title, fontsize=9, pad=22 if pruned is not None else 6)
    fig.tight_layout()
    return fig


def plot_layer_sparsity(rows: Sequence[Any], path: str | Path, pruned: set[str] | None = None, title: str | None = None) -> Path:
    """:func:`layer_sparsity_figure` written to ``path`` (PNG, SVG or PDF by its suffix)."""
    return save_figure(layer_sparsity_figure(rows, pruned, title), path, tight=False)


def plot_sensitivity(result: Any, path: str | Path) -> Path:
    """One line per layer of a :class:`~prunekit.layer_sensitivity.SensitivityResult`: the metric against the
    ratio that layer alone was pruned to, starting from the baseline at 0; the legend beside the axes."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    xs = [0.0, *result.ratios]
    for layer in result.layers:
        ax.plot(xs, [result.baseline, *(layer.metrics[r] for r in result.ratios)], marker="o", ms=3, lw=1, label=layer.name)
    ax.axhline(result.baseline, color="black", lw=0.8, ls="--", label="baseline")
    ax.set_xlabel("sparsity of the one pruned layer")
    ax.set_ylabel(f"metric ({'higher' if result.higher_is_better else 'lower'} is better)")
    ax.grid(alpha=0.3)
    if len(result.layers) <= 40:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save_figure(fig, path)
