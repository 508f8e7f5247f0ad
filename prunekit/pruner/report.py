"""The per-layer sparsity report, computed from the live weights (element-wise zeros)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

__all__ = ["LayerReport", "PruningReport"]


@dataclass(frozen=True)
class LayerReport:
    """One row: ``sparsity`` is the fraction of exactly-zero elements of the live weight;
    ``target`` the group's ratio in force (last event), ``final_target`` the group's ``target_sparsity``.
    With ``scope == "global"`` the target is the group's over all its layers together, each layer's
    share differs (its ``sparsity``)."""

    name: str
    pruner: str
    shape: tuple[int, ...]
    pattern: str
    target: float
    final_target: float
    sparsity: float
    numel: int
    scope: str = "local"


class PruningReport(Sequence[LayerReport]):
    """The rows of :meth:`Pruning.report`; ``str()`` renders a table, ``sparsity`` is the overall ratio."""

    def __init__(self, rows: Sequence[LayerReport]) -> None:
        self.rows = tuple(rows)

    def __getitem__(self, index):  # type: ignore[override]
        return self.rows[index]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[LayerReport]:
        return iter(self.rows)

    @property
    def sparsity(self) -> float:
        """Element-wise sparsity over every reported layer."""
        total = sum(r.numel for r in self.rows)
        return sum(r.sparsity * r.numel for r in self.rows) / total if total else 0.0

    def row(self, name: str) -> LayerReport:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no layer {name!r} in the report; layers: {', '.join(r.name for r in self.rows)}")

    def __str__(self) -> str:
        head = ("layer", "pruner", "shape", "pattern", "target", "sparsity")
        body = [
            (r.name, r.pruner, "x".join(map(str, r.shape)), r.pattern,
             f"{r.target:.4f}" + (" (group, global)" if r.scope == "global" else ""), f"{r.sparsity:.4f}")
            for r in self.rows
        ]
        body.append((f"total over the {len(self.rows)} pruned layers", "", "", "", "", f"{self.sparsity:.4f}"))
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"PruningReport({len(self.rows)} layers, sparsity={self.sparsity:.4f})"
