"""Decay curves of the iterative scheduler.

Each curve maps progress ``u = k / T`` in [0, 1], the initial ratio ``s0`` and the reachable
target ``a = min(target, max_sparsity_per_op)`` to a sparsity ratio; every curve gives ``s0`` at
``u = 0`` and ``a`` at ``u = 1`` and never decreases in between.
"""

from __future__ import annotations

import math
from typing import Callable

from prunekit.registry import Registry

__all__ = ["DECAY_CURVES", "AMBIGUOUS_CURVES", "register_decay_curve", "decay_value"]

DecayCurve = Callable[[float, float, float], float]

DECAY_CURVES = Registry("decay curve")

#: names that mean different curves in different libraries: rejected with an explanation
AMBIGUOUS_CURVES: dict[str, str] = {
    "cubic": (
        "'cubic' is ambiguous: elsewhere it means the AGP ramp (fast start, Zhu & Gupta 2017), "
        "while Intel Neural Compressor's 'cube' is the opposite (slow start)"
    ),
}
AMBIGUOUS_CURVES_FIX = {"cubic": "write 'agp' for 1 - (1 - u)^3 (fast start) or 'cube' for u^3 (slow start)"}


def register_decay_curve(name: str, description: str) -> Callable[[DecayCurve], DecayCurve]:
    """Decorator registering ``fn(u, s0, a) -> ratio`` as a decay curve named ``name``."""

    def decorator(fn: DecayCurve) -> DecayCurve:
        DECAY_CURVES.register(name, fn, description=description)
        return fn

    return decorator


@register_decay_curve("linear", "s0 + (a - s0)·u: equal steps")
def linear(u: float, s0: float, a: float) -> float:
    return s0 + (a - s0) * u


@register_decay_curve("cos", "s0 + (a - s0)·(1 - cos(u·π/2)): slow start")
def cos(u: float, s0: float, a: float) -> float:
    return s0 + (a - s0) * (1.0 - math.cos(u * math.pi / 2.0))


@register_decay_curve("cube", "s0 + (a - s0)·u³: slow start (Intel Neural Compressor's 'cube')")
def cube(u: float, s0: float, a: float) -> float:
    return s0 + (a - s0) * u**3


@register_decay_curve("exp", "1 - (1 - s0)·((1 - a)/(1 - s0))^u: density shrinks geometrically (INC's default)")
def exp(u: float, s0: float, a: float) -> float:
    return 1.0 - (1.0 - s0) * ((1.0 - a) / (1.0 - s0)) ** u


@register_decay_curve("agp", "s0 + (a - s0)·(1 - (1 - u)³): fast start (Zhu & Gupta 2017)")
def agp(u: float, s0: float, a: float) -> float:
    return s0 + (a - s0) * (1.0 - (1.0 - u) ** 3)


def decay_value(curve: str, u: float, s0: float, a: float) -> float:
    """The curve named ``curve`` at progress ``u`` (clamped to [0, 1])."""
    u = min(max(u, 0.0), 1.0)
    return float(DECAY_CURVES.get(curve)(u, s0, a))
