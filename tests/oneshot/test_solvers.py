"""The one-layer solvers (SparseGPT, Wanda, magnitude) and OWL's allocation, against their definitions."""

from __future__ import annotations

import pytest
import torch

from prunekit.post_training.owl import outlier_ratio, owl_sparsities
from prunekit.post_training.solvers import magnitude_keep, reconstruction_error, select_lowest, sparse_gpt, wanda_keep


def correlated_inputs(tokens: int = 512, features: int = 64, seed: int = 0) -> torch.Tensor:
    """Inputs with correlated features and a few large-norm ones, as activations of real models have."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=g) / features**0.5 + torch.eye(features)
    x = torch.randn(tokens, features, generator=g) @ mix
    x[:, :4] *= 8.0
    return x


def hessian(x: torch.Tensor) -> torch.Tensor:
    return 2.0 / x.shape[0] * x.t() @ x


def output_error(w: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float(((x @ (w - pruned).t()) ** 2).sum() / ((x @ w.t()) ** 2).sum())


@pytest.mark.parametrize("compare", ["row", "layer"])
def test_select_lowest_prunes_exactly_the_requested_fraction(compare: str) -> None:
    score = torch.rand(8, 40, generator=torch.Generator().manual_seed(0))
    keep = select_lowest(score, 0.25, 0, 0, compare)
    if compare == "row":
        assert (keep.sum(1) == 30).all()
        assert all(score[r][~keep[r]].max() <= score[r][keep[r]].min() for r in range(8))
    else:
        assert int((~keep).sum()) == 80
        assert score[~keep].max() <= score[keep].min()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_n_of_m_keeps_the_largest_m_minus_n_of_every_group(n: int, m: int) -> None:
    score = torch.rand(6, 32, generator=torch.Generator().manual_seed(1))
    keep = select_lowest(score, 0.0, n, m, "row").reshape(6, 32 // m, m)
    assert ((~keep).sum(-1) == n).all()
    groups = score.reshape(6, 32 // m, m)
    assert (groups.masked_fill(keep, float("inf")).amin(-1) >= 0).all()
    assert (groups.masked_fill(keep, -1).amax(-1) <= groups.masked_fill(~keep, 2).amin(-1)).all()


def test_wanda_scores_weights_by_the_norm_of_their_input_feature() -> None:
    w = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    sq = torch.tensor([100.0, 1.0])  # ||X_0|| = 10, ||X_1|| = 1: scores [[10, 2], [30, 1]]
    assert wanda_keep(w, sq, 0.5, 0, 0, "row").tolist() == [[True, False], [True, False]]
    assert magnitude_keep(w, 0.5, 0, 0, "row").tolist() == [[False, True], [True, False]]


def test_sparse_gpt_with_an_identity_hessian_is_magnitude_pruning() -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    new, keep = sparse_gpt(w, torch.eye(64) * 3.0, 0.5, blocksize=64, percdamp=0.0)
    assert torch.equal(keep, magnitude_keep(w, 0.5, 0, 0, "layer"))
    torch.testing.assert_close(new, w * keep)  # uncorrelated inputs: nothing to compensate


@pytest.mark.parametrize("pattern", [(0, 0), (2, 4), (4, 8)])
def test_sparse_gpt_reconstructs_better_than_wanda_and_magnitude(pattern: tuple[int, int]) -> None:
    n, m = pattern
    x = correlated_inputs()
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(3))
    h = hessian(x)
    new, keep = sparse_gpt(w, h, 0.5, n, m, blocksize=32)
    errors = {
        "sparse_gpt": output_error(w, new, x),
        "wanda": output_error(w, w * wanda_keep(w, (x * x).sum(0), 0.5, n, m, "row"), x),
        "magnitude": output_error(w, w * magnitude_keep(w, 0.5, n, m, "layer"), x),
    }
    assert errors["sparse_gpt"] < 0.8 * min(errors["wanda"], errors["magnitude"]), errors
    assert int((new == 0).sum()) == w.numel() // 2
    assert torch.equal(new != 0, keep)
    if n:
        assert ((~keep).reshape(48, 64 // m, m).sum(-1) == n).all()


def test_sparse_gpt_blocksize_changes_nothing_for_n_of_m_masks_chosen_column_group_by_group() -> None:
    x = correlated_inputs(seed=4)
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(4))
    a, _ = sparse_gpt(w, hessian(x), 0.0, 2, 4, blocksize=64)
    b, _ = sparse_gpt(w, hessian(x), 0.0, 2, 4, blocksize=16)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_inputs_that_never_occur_are_pruned_without_nans() -> None:
    x = correlated_inputs()
    x[:, 10] = 0.0
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(5))
    new, keep = sparse_gpt(w, hessian(x), 0.5)
    assert torch.isfinite(new).all()
    assert not keep[:, 10].any()


def test_a_singular_hessian_is_damped_rather_than_failing() -> None:
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(6))  # rank 4 of 64
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(6))
    new, _ = sparse_gpt(w, hessian(x), 0.5, percdamp=0.0)
    assert torch.isfinite(new).all() and int((new == 0).sum()) == 256


def test_reconstruction_error_from_the_hessian_equals_the_direct_output_error() -> None:
    x = correlated_inputs()
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(7))
    pruned = w * magnitude_keep(w, 0.5, 0, 0, "layer")
    assert reconstruction_error(w, pruned, hessian(x)) == pytest.approx(output_error(w, pruned, x), rel=1e-4)


def test_owl_keeps_the_element_weighted_target_and_favours_blocks_with_outliers() -> None:
    ratios, sizes = [0.01, 0.05, 0.02, 0.10], [100, 100, 300, 100]
    out = owl_sparsities(ratios, sizes, 0.5, 0.08)
    assert sum(s * n for s, n in zip(out, sizes)) / sum(sizes) == pytest.approx(0.5)
    assert out[3] < out[1] < out[2] < out[0]  # more outliers, fewer weights pruned
    assert max(out) - min(out) == pytest.approx(0.16)  # the ratios span [0, 2λ]
    assert owl_sparsities([0.03, 0.03], [10, 10], 0.6, 0.08) == pytest.approx([0.6, 0.6])


def test_outlier_ratio_counts_scores_above_m_times_their_layers_mean() -> None:
    scores = [torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 100.0]), torch.ones(10)]
    assert outlier_ratio(scores, 5.0) == (1, 20)
