"""The one-shot pruning methods on one layer: SparseGPT, Wanda and magnitude.

Every function takes the layer's weight as a float32 2-D ``[out, in]`` matrix ``W`` (rows = output
features, columns = input features, the inputs ``X`` being ``[tokens, in]``) and returns the kept
mask (bool, True = kept); SparseGPT also returns the updated weights. Sparsity ``s`` means: prune
``N`` of every ``M`` consecutive inputs of every row (``n, m``, INC's ``N:M`` notation), or, with
``n = 0``, a fraction ``s`` of the weights compared per output row (``compare='row'``) or over the
whole layer (``'layer'``).

* **magnitude**: score ``|W|``.
* **Wanda** (Sun et al. 2023): score ``|W_ij| · ||X_j||_2``, the weight times the norm of its
  input feature over all calibration tokens; the paper compares per output row.
* **SparseGPT** (Frantar & Alistarh 2023): with ``H = 2/T · X^T X`` (``T`` tokens), damped by
  ``percdamp · mean(diag H)``, and ``U`` the upper Cholesky factor of ``H^-1``, columns are
  processed in blocks of ``blocksize``: inside a block the mask is chosen by the OBS saliency
  ``w^2 / U_jj^2`` (the lowest ``s`` of the block's weights, all rows together; N:M: per group of M
  columns, per row), and after each column ``j`` the error ``e = (w_j - q_j) / U_jj`` is spread over
  the following columns: ``W_{:, j:} -= e U_{j, j:}``; a block's accumulated error updates the
  columns after it.
"""

from __future__ import annotations

import torch

__all__ = ["magnitude_keep", "wanda_keep", "sparse_gpt", "reconstruction_error", "select_lowest"]


def select_lowest(score: torch.Tensor, sparsity: float, n: int, m: int, compare: str) -> torch.Tensor:
    """Kept mask (bool, ``score``'s shape ``[out, in]``): the lowest scores pruned, per the rules above."""
    score = score.contiguous()
    rows, cols = score.shape
    if n:
        groups = score.reshape(rows, cols // m, m)
        low = torch.topk(groups, n, dim=-1, largest=False).indices
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(-1, low, False)
        return keep.reshape(rows, cols)
    keep = torch.ones_like(score, dtype=torch.bool)
    if compare == "row":
        k = int(round(cols * sparsity))
        if k:
            keep.scatter_(1, torch.topk(score, k, dim=1, largest=False).indices, False)
        return keep
    k = int(round(score.numel() * sparsity))
    if k:
        keep.view(-1)[torch.topk(score.reshape(-1), k, largest=False).indices] = False
    return keep


def magnitude_keep(weight: torch.Tensor, sparsity: float, n: int, m: int, compare: str = "layer") -> torch.Tensor:
    """Kept mask by ``|W|``."""
    return select_lowest(weight.abs(), sparsity, n, m, compare)


def wanda_keep(weight: torch.Tensor, input_sq_sum: torch.Tensor, sparsity: float, n: int, m: int, compare: str = "row") -> torch.Tensor:
    """Kept mask by ``|W_ij| · ||X_j||_2``; ``input_sq_sum[j] = sum over tokens of X_tj^2``."""
    return select_lowest(wanda_scores(weight, input_sq_sum), sparsity, n, m, compare)


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · ||X_j||_2`` (for OWL's outlier ratios)."""
    return weight.abs() * input_sq_sum.sqrt().unsqueeze(0)


@torch.no_grad()
def sparse_gpt(
    weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, n: int = 0, m: int = 0, blocksize: int = 128, percdamp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one layer: ``(updated weight, kept mask)``; ``hessian`` is ``2/T · X^T X`` ``[in, in]``.

    Inputs that never occur (``H_jj = 0``) have their weights pruned and ``H_jj := 1``; where the
    damped Hessian is still singular the damping grows (see :func:`_inverse_cholesky`).
    """
    W = weight.clone().float()
    H = hessian.clone().float()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U = _inverse_cholesky(H, percdamp)
    keep = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        if n == 0:
            saliency = W1.square() / d.square().unsqueeze(0)
            k = int(saliency.numel() * sparsity)
            block_keep = torch.ones_like(W1, dtype=torch.bool)
            if k:
                block_keep.view(-1)[torch.topk(saliency.reshape(-1), k, largest=False).indices] = False
        else:
            block_keep = torch.ones_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            if n and i % m == 0:
                saliency = W1[:, i : i + m].square() / d[i : i + m].square().unsqueeze(0)
                block_keep[:, i : i + m].scatter_(1, torch.topk(saliency, n, dim=1, largest=False).indices, False)
            q = w * block_keep[:, i]
            Q1[:, i] = q
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = block_keep
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    W[:, dead] = 0.0
    return W * keep, keep


def _inverse_cholesky(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + d·mean(diag H)·I)^-1``, ``d = percdamp``; where that is not positive
    definite in float32 (inputs that are almost never seen, fewer tokens than features), ``d`` grows
    tenfold from ``max(percdamp, 1e-4)`` until it is, up to 10."""
    mean = float(torch.mean(torch.diag(H)))
    fractions = [percdamp] + [max(percdamp, 1e-4) * 10**k for k in range(1, 8) if max(percdamp, 1e-4) * 10**k <= 10]
    for fraction in fractions:
        damped = H.clone()
        damped.diagonal().add_(fraction * mean)
        L, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info) == 0:
                return U
    raise ValueError(f"the layer's Hessian is not positive definite even with damping {fractions[-1]:g} x its mean diagonal")


def reconstruction_error(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative output error on the calibration inputs: ``||(W - W')X^T||^2 / ||W X^T||^2``, computed from
    ``H ∝ X^T X`` as ``tr(D H D^T) / tr(W H W^T)`` with ``D = W - W'``."""
    delta = (dense - pruned).float()
    h = hessian.float()
    num = torch.sum((delta @ h) * delta)
    den = torch.sum((dense.float() @ h) * dense.float())
    return float(num / den) if float(den) > 0 else 0.0
