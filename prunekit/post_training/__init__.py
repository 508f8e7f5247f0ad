"""Post-training (one-shot) pruning from calibration data: :func:`oneshot` with the ``sparse_gpt``,
``wanda`` and ``magnitude`` pruner types (see docs/oneshot.md)."""

from prunekit.post_training.blocks import Blocks, find_blocks
from prunekit.post_training.run import OneShotLayer, OneShotResult, lock_config, oneshot, oneshot_layers

__all__ = ["Blocks", "OneShotLayer", "OneShotResult", "find_blocks", "lock_config", "oneshot", "oneshot_layers"]
