"""OWL: outlier-weighted layer-wise sparsity (Yin et al. 2024), keeping the model-wide target.

For every block ``l`` the outlier ratio ``D_l`` is the fraction of its Wanda scores
``|W_ij|·||X_j||_2`` (over the block's pruned layers) above ``M`` times their layer's mean score
(``owl_threshold``, M = 5 in the paper). Ratios are scaled to ``[0, 2λ]`` (``owl_lambda``, 0.08)
and centred, and a block keeps more weights the more outliers it has:

    density_l = (1 - s) + λ_l - mean(λ),   λ_l = 2λ · (D_l - min D) / (max D - min D)
    sparsity_l = 1 - density_l

so the mean sparsity over blocks is the target ``s`` (blocks are equal in size in the models this is
meant for; :func:`owl_sparsities` weights by size to keep the element-wise target exactly).
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["outlier_ratio", "owl_sparsities"]


def outlier_ratio(scores: Sequence[torch.Tensor], threshold: float) -> tuple[int, int]:
    """``(outliers, elements)`` of one block: scores above ``threshold`` times their layer's mean."""
    outliers = sum(int((s > s.mean() * threshold).sum()) for s in scores)
    return outliers, sum(s.numel() for s in scores)


def owl_sparsities(ratios: Sequence[float], sizes: Sequence[int], target: float, lam: float) -> list[float]:
    """Per-block sparsity from the outlier ratios, element-weighted mean equal to ``target``,
    each within ``[0, 1)``."""
    d = torch.tensor(ratios, dtype=torch.float64)
    w = torch.tensor(sizes, dtype=torch.float64)
    span = float(d.max() - d.min())
    scaled = (d - d.min()) / span * (2 * lam) if span > 0 else torch.zeros_like(d)
    density = (1 - target) + scaled - float((scaled * w).sum() / w.sum())
    sparsity = (1 - density).clamp(0.0, 0.999)
    return [float(x) for x in sparsity]
