"""Pruner types, registered in ``PRUNERS``: how a group's masks evolve.

* ``basic``: score, select and mask at the scheduler's events (:mod:`.basic`);
* ``pattern_lock``: keep exactly the zeros the weights have (:mod:`.pattern_lock`);
* ``progressive``: zero the blocks an event removes gradually until the next event (:mod:`.progressive`);
* ``block_mask``: blocks scored by the momentum of the gradient of a block mask (:mod:`.block_mask`);
* ``sparse_gpt``, ``wanda``, ``magnitude``: post-training, once, from calibration data
  (:mod:`.oneshot`, run by :func:`prunekit.oneshot`).

A group names its type with ``type:``; each type validates the group with its own config model.
"""

from prunekit.pruner.types.basic import BasicPruner
from prunekit.pruner.types.block_mask import BlockMaskConfig, BlockMaskCriterion, BlockMaskPruner
from prunekit.pruner.types.oneshot import ONESHOT_TYPES, MagnitudeOneShotConfig, OneShotConfig, SparseGPTConfig, WandaConfig
from prunekit.pruner.types.pattern_lock import PatternLockConfig, PatternLockPruner
from prunekit.pruner.types.progressive import ProgressiveConfig, ProgressivePruner

__all__ = [
    "ONESHOT_TYPES",
    "MagnitudeOneShotConfig",
    "OneShotConfig",
    "SparseGPTConfig",
    "WandaConfig",
    "BasicPruner",
    "BlockMaskConfig",
    "BlockMaskCriterion",
    "BlockMaskPruner",
    "PatternLockConfig",
    "PatternLockPruner",
    "ProgressiveConfig",
    "ProgressivePruner",
]
