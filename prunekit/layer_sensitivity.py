"""Layer sensitivity analysis: prune one layer at a time, measure, and allocate per-layer targets.

For every layer a config selects and every ratio ``r``, the layer alone is pruned to ``r`` with the
group's pattern and criterion (the same code as training-time pruning), the user's ``evaluate(model)``
is measured, and the layer's weights are put back bit for bit. The *drop* of layer ``i`` at ratio
``r`` is ``baseline - metric`` (``metric - baseline`` when lower is better, e.g. perplexity).

**Allocation** (:meth:`SensitivityResult.allocate`): each layer's drop curve is made monotone
(running maximum) and interpolated linearly between ``(0, 0)`` and the measured ratios. For a
tolerated drop ``τ`` every layer takes the largest ratio ``s_i(τ)`` whose drop stays at or below
``τ`` (at most the largest ratio measured); ``τ`` is found by bisection so that the
weight-count-weighted mean ``Σ n_i s_i(τ) / Σ n_i`` equals the overall target. Robust layers take
more of the pruning, sensitive ones less, and the overall sparsity is the target.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml
from torch import nn

from prunekit.config import PrunerConfig, PruningConfig, load_config
from prunekit.errors import PruningError
from prunekit.config.pattern_syntax import parse_pattern
from prunekit.pruner.session import Pruning
from prunekit.registry import CRITERIA

__all__ = ["LayerSensitivity", "SensitivityResult", "sensitivity"]

DEFAULT_RATIOS = (0.25, 0.5, 0.75, 0.9)


@dataclass
class LayerSensitivity:
    """One layer: its group, its weight count and the metric measured at each ratio."""

    name: str
    group: str
    numel: int
    metrics: dict[float, float] = field(default_factory=dict)


@dataclass
class SensitivityResult:
    """What :func:`sensitivity` measured; ``baseline`` is the metric of the unpruned model."""

    baseline: float
    ratios: tuple[float, ...]
    layers: list[LayerSensitivity]
    higher_is_better: bool
    groups: dict[str, PrunerConfig]

    def drop(self, layer: LayerSensitivity, ratio: float) -> float:
        """How much worse than the baseline the metric is with ``layer`` pruned to ``ratio``."""
        value = layer.metrics[ratio]
        return self.baseline - value if self.higher_is_better else value - self.baseline

    def table(self) -> str:
        """Layers as rows, the metric at each ratio as columns, the baseline in the header."""
        head = ["layer", "weights"] + [f"{r:g}" for r in self.ratios]
        rows = [[layer.name, f"{layer.numel:,}"] + [f"{layer.metrics[r]:.4g}" for r in self.ratios] for layer in self.layers]
        widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
        lines = [f"baseline {self.baseline:.4g} ({'higher' if self.higher_is_better else 'lower'} is better); metric with one layer pruned to each ratio:"]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
        return "\n".join(lines)

    # ------------------------------------------------------------------ allocation
    def _curve(self, layer: LayerSensitivity) -> list[tuple[float, float]]:
        points, worst = [(0.0, 0.0)], 0.0
        for r in self.ratios:
            value = self.drop(layer, r)
            worst = max(worst, value if math.isfinite(value) else math.inf)
            points.append((r, worst))
        return points

    @staticmethod
    def _ratio_within(points: list[tuple[float, float]], tolerated: float) -> float:
        """The largest ratio whose (monotone, interpolated) drop is at most ``tolerated``."""
        for (r0, d0), (r1, d1) in zip(points, points[1:]):
            if d1 > tolerated:
                if d0 > tolerated or not math.isfinite(d1):
                    return r0
                return r0 + (r1 - r0) * (tolerated - d0) / (d1 - d0) if d1 > d0 else r1
        return points[-1][0]

    def allocate(self, target: float) -> dict[str, float]:
        """Per-layer sparsity whose weight-count-weighted mean is ``target`` (see the module docstring)."""
        if not 0.0 <= target < 1.0:
            raise ValueError(f"target {target} must be in [0, 1)")
        curves = {layer.name: (layer.numel, self._curve(layer)) for layer in self.layers}
        total = sum(n for n, _ in curves.values())

        def overall(tolerated: float) -> tuple[float, dict[str, float]]:
            ratios = {name: self._ratio_within(points, tolerated) for name, (_, points) in curves.items()}
            return sum(curves[name][0] * r for name, r in ratios.items()) / total, ratios

        finite = [d for _, points in curves.values() for _, d in points if math.isfinite(d)]
        low, high = min(finite + [0.0]), max(finite + [0.0])
        reachable, _ = overall(high)  # a ratio whose metric was NaN/inf is never allocated
        if target > reachable + 1e-12:
            raise ValueError(
                f"target {target} is above what the measured ratios reach ({reachable:.4f}: every layer at its largest ratio "
                f"with a finite metric, at most {max(self.ratios)}); measure higher ratios (ratios=...) or lower the target"
            )
        for _ in range(200):
            mid = (low + high) / 2
            if overall(mid)[0] < target:
                low = mid
            else:
                high = mid
        reached, ratios = overall(high)
        # the bisection stops at or just above the target: scale the ratios down onto it exactly
        scale = min(target / reached, 1.0) if reached > 0 else 0.0
        return {name: r * scale for name, r in ratios.items()}

    def to_config(self, target: float, scheduler: Any = None) -> PruningConfig:
        """A config with one group per layer at its allocated target (layers at 0 left out), each with
        its original group's pattern, criterion and scheduler (or ``scheduler``)."""
        return self._config_of(self.allocate(target), scheduler)

    def _config_of(self, allocation: dict[str, float], scheduler: Any) -> PruningConfig:
        by_name = {layer.name: layer for layer in self.layers}
        pruners = []
        for name, ratio in allocation.items():
            ratio = round(ratio, 4)
            if ratio <= 0:
                continue
            source = self.groups[by_name[name].group]
            entry = {
                "type": source.type,
                "name": re.sub(r"[^0-9A-Za-z_]+", "_", name),
                "op_names": [f"^{re.escape(name)}$"],
                "op_types": list(source.op_types),
                "pattern": source.pattern,
                "criterion": source.criterion,
                "target_sparsity": ratio,
                "max_sparsity_per_op": max(source.max_sparsity_per_op, ratio),
                "scheduler": scheduler if scheduler is not None else source.scheduler.model_dump(),
            }
            pruners.append(entry)
        return load_config({"version": 1, "pruners": pruners})

    def write_config(self, path: str | Path, target: float, scheduler: Any = None) -> Path:
        """Write :meth:`to_config` as YAML, with the measured allocation as a comment."""
        allocation = self.allocate(target)
        config = self._config_of(allocation, scheduler)
        lines = [f"# per-layer targets from prunekit sensitivity: overall {target} of {sum(l.numel for l in self.layers):,} weights",
                 f"# baseline metric {self.baseline:.6g}; ratios measured {', '.join(f'{r:g}' for r in self.ratios)}"]
        lines += [f"#   {name}: {ratio:.4f}" for name, ratio in allocation.items()]
        path = Path(path)
        body = yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
        path.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
        return path

    def plot(self, path: str | Path) -> Path:
        """Draw each layer's metric against the ratio (needs matplotlib)."""
        from prunekit.plotting import plot_sensitivity

        return plot_sensitivity(self, path)


def sensitivity(
    model: nn.Module,
    config: Any,
    evaluate: Callable[[nn.Module], float],
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    higher_is_better: bool = True,
    backward: Callable[[nn.Module], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SensitivityResult:
    """Prune each layer ``config`` selects alone, to each of ``ratios``, and measure ``evaluate(model)``.

    ``evaluate`` returns one number (accuracy, negative loss, perplexity with
    ``higher_is_better=False``). Gradient criteria (``gradient``, ``snip``, ``snip_momentum``) need
    ``backward(model)``, which runs a forward and backward pass before each prune; the gradients the
    model had are put back afterwards. The model's weights, gradients and train/eval modes are as they
    were when this returns or raises. N:M patterns are refused: their only ratio is N/M.
    """
    cfg = load_config(config)
    ratios = tuple(sorted(set(float(r) for r in ratios)))
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise ValueError(f"ratios {list(ratios)} must be in (0, 1)")
    for group in cfg.pruners:
        if group.type != "basic":
            raise PruningError(
                f"pruner {group.name!r}: sensitivity prunes each layer once with the basic type; type {group.type} "
                f"has its own behaviour (locks, stages, calibration): set type basic in the config you scan"
            )
        if parse_pattern(group.pattern).kind == "unit":
            raise PruningError(
                f"pruner {group.name!r}: pattern {group.pattern} removes coupled units across layers, which a one-layer scan "
                f"cannot try; scan the layers with pattern 1x1 (or a block pattern) instead"
            )
        if parse_pattern(group.pattern).kind == "nm":
            raise PruningError(
                f"pruner {group.name!r}: pattern {group.pattern} has one ratio (N/M), so there is nothing to scan; "
                f"run sensitivity with pattern 1x1 or a block pattern to rank the layers"
            )
        if getattr(CRITERIA.get(group.criterion), "needs_grad", False) and backward is None:
            raise PruningError(
                f"pruner {group.name!r}: criterion {group.criterion} reads gradients; pass backward=<a function that runs "
                f"loss.backward() on one batch>, or use criterion magnitude"
            )
    modes = {m: m.training for m in model.modules()}
    try:
        baseline = float(evaluate(model))
        if not math.isfinite(baseline):
            raise ValueError(f"evaluate(model) returned {baseline} for the unpruned model; a sensitivity scan needs a finite baseline")
        layers = _selected_layers(model, cfg)
        for layer in layers:
            source = cfg.group(layer.group)
            for ratio in ratios:
                layer.metrics[ratio] = _trial(model, source, layer.name, ratio, evaluate, backward)
                if progress is not None:
                    progress(f"{layer.name} at {ratio:g}: {layer.metrics[ratio]:.6g}")
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return SensitivityResult(baseline, ratios, layers, higher_is_better, {str(g.name): g for g in cfg.pruners})


def _selected_layers(model: nn.Module, config: PruningConfig) -> list[LayerSensitivity]:
    session = Pruning(model, config)
    try:
        return [LayerSensitivity(layer.name, str(group.config.name), layer.weight.numel()) for group in session.groups for layer in group.layers]
    finally:
        session.close()


def _trial(model: nn.Module, source: PrunerConfig, name: str, ratio: float, evaluate: Callable[[nn.Module], float],
           backward: Callable[[nn.Module], None] | None) -> float:
    """The metric with layer ``name`` alone pruned to ``ratio``; its weights restored after."""
    single = source.model_dump()
    single.update(
        name="sensitivity", op_names=[f"^{re.escape(name)}$"], excluded_op_names=[], exclude_head=False, scope="local",
        target_sparsity=ratio, min_sparsity_per_op=0.0, max_sparsity_per_op=max(source.max_sparsity_per_op, ratio),
        scheduler={"type": "oneshot"}, lock_init_sparsity=False, regularizer=None,
    )
    weight = model.get_submodule(name).weight
    saved_weight = weight.detach().clone()
    saved_grads = {p: p.grad for p in model.parameters()}
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]  # a backward() in train mode moves batch-norm statistics
    session = Pruning(model, {"version": 1, "pruners": [single]})
    try:
        for p in saved_grads:  # the user's gradients are set aside, untouched: backward() starts from none
            p.grad = None
        if backward is not None:
            backward(model)
        session.prune_now()
        session.finalize()
        return float(evaluate(model))
    finally:
        session.close()
        with torch.no_grad():
            weight.copy_(saved_weight)
            for buffer, saved in saved_buffers:
                buffer.copy_(saved)
        for p, grad in saved_grads.items():
            p.grad = grad
