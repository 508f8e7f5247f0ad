"""Parsing pattern strings: ``NxM`` blocks, ``N:M`` semi-structured, ``channelx1`` / ``1xchannel``.

* ``NxM``: blocks of N output rows x M input columns of the 2-D weight view (``1x1`` is
  unstructured, ``4x1`` INC's default);
* ``N:M`` (INC's notation): N of every M consecutive input weights are pruned (``2:4`` = 50 %);
* ``channelx1``: whole input columns; ``1xchannel``: whole output rows; ``channelxM`` /
  ``Nxchannel`` (INC's ``channelx2``, ``2xchannel``): blocks of M whole columns / N whole rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["PatternSpec", "parse_pattern", "PATTERN_SYNTAX_HELP"]

PATTERN_SYNTAX_HELP = (
    "write 'NxM' (e.g. 1x1, 4x1), 'N:M' (e.g. 2:4, 1:4), 'channelxM' (channelx1), 'Nxchannel' (1xchannel), "
    "or 'head' / 'channel' (coupled attention heads / FFN and conv channels)"
)
#: patterns of coupled structures (kind ``unit``)
UNIT_PATTERNS = ("head", "channel")

_BLOCK = re.compile(r"^(\d+)x(\d+)$")
_CHANNEL_COLS = re.compile(r"^channelx(\d+)$")
_CHANNEL_ROWS = re.compile(r"^(\d+)xchannel$")
_NM = re.compile(r"^(\d+):(\d+)$")
#: the largest block side or M a pattern may name
MAX_BLOCK_SIDE = 4096


@dataclass(frozen=True)
class PatternSpec:
    """A parsed pattern.

    ``kind`` is ``block`` (``rows x cols`` blocks; channel patterns are blocks spanning a full
    dimension, ``rows``/``cols`` = 0 meaning "the whole dimension"), ``nm`` (``n`` pruned of
    every ``m`` consecutive input weights), or ``unit`` (``head`` / ``channel``: coupled structures
    across several layers, see :mod:`prunekit.structure`).
    """

    text: str
    kind: Literal["block", "nm", "unit"]
    rows: int = 1
    cols: int = 1
    n: int = 0
    m: int = 0

    @property
    def max_sparsity(self) -> float:
        """The largest element-wise sparsity the pattern can express (N/M for ``N:M``)."""
        return self.n / self.m if self.kind == "nm" else 1.0

    @property
    def is_unstructured(self) -> bool:
        return self.kind == "block" and self.rows == 1 and self.cols == 1


def _shown(text: object) -> str:
    """``repr(text)`` cut to about 80 characters (patterns echoed in messages)."""
    if isinstance(text, str) and len(text) > 80:
        return f"{text[:70]!r}… ({len(text):,} characters)"
    shown = repr(text)
    return shown if len(shown) <= 80 else f"{shown[:70]}…"


def parse_pattern(text: str) -> PatternSpec:
    """Parse ``text`` (case-insensitive, spaces ignored); ValueError says what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"a pattern is a string, got {_shown(text)}")
    norm = text.replace(" ", "").lower()
    if norm in UNIT_PATTERNS:
        return PatternSpec(norm, "unit")
    if (match := _CHANNEL_COLS.match(norm)) or (match := _CHANNEL_ROWS.match(norm)):
        # channelxM: every output row of M input columns; Nxchannel: every input column of N output rows
        side = int(match[1]) if len(match[1]) <= 9 else 0
        if not 1 <= side <= MAX_BLOCK_SIDE:
            raise ValueError(f"the block side of {_shown(text)} must be within 1..{MAX_BLOCK_SIDE}")
        if norm.startswith("channel"):
            return PatternSpec(norm, "block", rows=0, cols=side)
        return PatternSpec(norm, "block", rows=side, cols=0)
    if match := _BLOCK.match(norm):
        if max(len(match[1]), len(match[2])) > 9:  # never int() a number of thousands of digits
            raise ValueError(f"block sides of {_shown(text)} must be within 1..{MAX_BLOCK_SIDE}")
        rows, cols = int(match[1]), int(match[2])
        if not (1 <= rows <= MAX_BLOCK_SIDE and 1 <= cols <= MAX_BLOCK_SIDE):
            raise ValueError(f"block sides of {_shown(text)} must be within 1..{MAX_BLOCK_SIDE}")
        return PatternSpec(norm, "block", rows=rows, cols=cols)
    if match := _NM.match(norm):
        if max(len(match[1]), len(match[2])) > 9:
            raise ValueError(f"in {_shown(text)} N and M must be within 1..{MAX_BLOCK_SIDE}")
        n, m = int(match[1]), int(match[2])
        if not (1 <= n < m <= MAX_BLOCK_SIDE):
            raise ValueError(f"in {_shown(text)} N must be at least 1 and below M (N of every M weights are pruned)")
        return PatternSpec(norm, "nm", n=n, m=m)
    raise ValueError(f"{_shown(text)} is not a pattern")
