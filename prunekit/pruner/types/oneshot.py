"""Post-training (one-shot) pruner types: ``sparse_gpt``, ``wanda`` and ``magnitude``.

They prune a trained model once, from calibration data, block after block (see
:func:`prunekit.oneshot`); their groups select layers like any other (``op_names``, ``op_types``,
``excluded_op_names``) inside the model's blocks. ``pattern`` is ``1x1`` (unstructured) or ``N:M``.
In a training-time :class:`~prunekit.Pruning` session they are refused with a message that says to
call ``prunekit.oneshot`` (and then ``pattern_lock`` to fine-tune keeping the zeros).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from prunekit.config import PrunerConfig
from prunekit.errors import PruningError
from prunekit.config.pattern_syntax import parse_pattern
from prunekit.pruner.group import PrunerGroup
from prunekit.registry import register_pruner
from prunekit.config.validation import rule_error

__all__ = ["OneShotConfig", "SparseGPTConfig", "WandaConfig", "MagnitudeOneShotConfig", "OneShotPruner", "ONESHOT_TYPES"]

#: keys of a pruner group a one-shot type does not read
_UNUSED = frozenset({"criterion", "reduce", "scope", "min_sparsity_per_op", "max_sparsity_per_op", "lock_init_sparsity", "regularizer", "scheduler"})


class OneShotConfig(PrunerConfig):
    """Common keys of the one-shot types."""

    unused_keys: ClassVar[frozenset[str]] = _UNUSED
    compare: Literal["row", "layer"] = Field(
        "row", description="Unstructured: prune the same fraction of every output row (row) or over the whole layer (layer)."
    )
    allocation: Literal["uniform", "owl"] = Field(
        "uniform", description="Per-block sparsity: the target everywhere, or OWL (more weights kept in blocks with more outliers)."
    )
    owl_lambda: float = Field(0.08, ge=0.0, le=0.5, description="OWL: the largest change of a block's sparsity from the target.")
    owl_threshold: float = Field(5.0, gt=1.0, le=100.0, description="OWL: a score above this many times its layer's mean is an outlier.")
    blocks: str | None = Field(None, description="Dotted path of the model's list of blocks (default: found from the structure).")

    @model_validator(mode="after")
    def _oneshot_patterns(self) -> "OneShotConfig":
        spec = parse_pattern(self.pattern)
        if not (spec.is_unstructured or spec.kind == "nm"):
            raise rule_error(
                f"{self.type} prunes unstructured (1x1) or N:M, not {self.pattern}",
                "write pattern: 1x1 or an N:M pattern such as 2:4",
            )
        if spec.kind == "nm" and abs(self.target_sparsity - spec.n / spec.m) > 1e-9:
            raise rule_error(
                f"one-shot {self.pattern} prunes exactly {spec.n} of every {spec.m} weights, target_sparsity {self.target_sparsity} differs",
                f"set target_sparsity: {spec.n / spec.m:g}",
            )
        if self.allocation == "owl" and spec.kind == "nm":
            raise rule_error("OWL changes each block's sparsity, and N:M fixes it", "use allocation: uniform with N:M")
        return self


class SparseGPTConfig(OneShotConfig):
    """``type: sparse_gpt``: OBS updates of the kept weights with the damped inverse Hessian."""

    type: str = "sparse_gpt"
    unused_keys: ClassVar[frozenset[str]] = _UNUSED | {"compare"}
    percdamp: float = Field(0.01, ge=0.0, le=1.0, description="Damping added to the Hessian's diagonal, times its mean.")
    blocksize: int = Field(128, ge=1, le=8192, description="Columns processed (and masks chosen) together.")


class WandaConfig(OneShotConfig):
    """``type: wanda``: |W| times the norm of each input feature over the calibration tokens."""

    type: str = "wanda"


class MagnitudeOneShotConfig(OneShotConfig):
    """``type: magnitude``: |W| (the baseline), compared per layer by default."""

    type: str = "magnitude"
    compare: Literal["row", "layer"] = Field("layer", description="Unstructured: per output row (row) or over the layer (layer).")


class OneShotPruner(PrunerGroup):
    """A one-shot type inside a training session: refused (it needs calibration data, not optimizer steps)."""

    config_model: ClassVar[type[PrunerConfig]] = OneShotConfig

    def __init__(self, config: PrunerConfig, layers: list) -> None:
        raise PruningError(
            f"pruner {config.name!r}: type {config.type!r} prunes once from calibration data, not at optimizer steps; "
            f"call prunekit.oneshot(model, config, calibration), then fine-tune with a pattern_lock group to keep "
            f"the zeros (see docs/oneshot.md)"
        )



@register_pruner("sparse_gpt", config=SparseGPTConfig)
class SparseGPTPruner(OneShotPruner):
    """SparseGPT (post-training): OBS weight updates with the damped inverse Hessian; 1x1 or N:M."""

    config_model = SparseGPTConfig


@register_pruner("wanda", config=WandaConfig)
class WandaPruner(OneShotPruner):
    """Wanda (post-training): |W| x ||X||_2 per output row; 1x1 or N:M."""

    config_model = WandaConfig


@register_pruner("magnitude", config=MagnitudeOneShotConfig)
class MagnitudeOneShotPruner(OneShotPruner):
    """Magnitude (post-training baseline): |W| per layer or per row; 1x1 or N:M."""

    config_model = MagnitudeOneShotConfig


#: the registered one-shot types
ONESHOT_TYPES = ("sparse_gpt", "wanda", "magnitude")
