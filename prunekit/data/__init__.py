"""Data sparsity (torch.ao-style): sparsifiers for named tensors, parameters and embedding tables.

``BaseDataSparsifier`` holds the data and one bool mask per entry (``get_mask`` hands it out as a
``MaskView`` that computes like torch.ao's float mask); ``DataNormSparsifier`` zeroes the blocks of
smallest L1/L2 norm. Data schedulers live in :mod:`prunekit.schedulers.data`; the
YAML section and ``build_data_sparsity`` in :mod:`prunekit.data.config`.
"""

from prunekit.data.base import (
    DATA_SPARSIFIERS,
    BaseDataSparsifier,
    DataConfigError,
    DataLoadResult,
    SquashedDataError,
    UnknownDataError,
)
from prunekit.data.config import DataSparsifierConfig, DataSparsityConfig, build_data_sparsity, select_data
from prunekit.data.norm import DataNormConfig, DataNormSparsifier

__all__ = [
    "DATA_SPARSIFIERS",
    "BaseDataSparsifier",
    "DataConfigError",
    "DataLoadResult",
    "DataNormConfig",
    "DataNormSparsifier",
    "DataSparsifierConfig",
    "DataSparsityConfig",
    "SquashedDataError",
    "UnknownDataError",
    "build_data_sparsity",
    "select_data",
]
