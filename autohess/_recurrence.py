"""Linear recurrences ``h_t = a_t h_{t-1} + b_t``: sequentially or parallel in time.

Many recursive likelihoods (GARCH variances, exponential smoothing, AR filters, the simulation
of GARCH paths) are first-order linear recurrences. A ``lax.scan`` evaluates them in ``N``
dependent steps: on a GPU that is latency-bound (each step is a tiny kernel that waits for
the previous one). The affine maps ``h -> a h + b`` compose associatively,
``(a2, b2) o (a1, b1) = (a1 a2, a2 b1 + b2)``, so ``lax.associative_scan`` evaluates every
``h_t`` in ``O(log N)`` parallel depth, at about twice the arithmetic. Both are exact up to
rounding (the associative order multiplies the ``a_t`` in another order); derivatives of
either are exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["linear_recurrence", "RECURRENCE_METHODS"]

RECURRENCE_METHODS = ("scan", "associative")


def linear_recurrence(a: jax.Array, b: jax.Array, h0: jax.Array, *, method: str = "scan") -> jax.Array:
    """``h_t = a_t * h_{t-1} + b_t`` for ``t = 1..T`` from ``h_0``; returns ``(h_1, ..., h_T)``.

    Args:
        a: ``Float[Array, "T"]`` multipliers (a scalar broadcasts).
        b: ``Float[Array, "T"]`` drives.
        h0: scalar starting value.
        method: ``"scan"`` (sequential ``lax.scan``, best on CPUs) or ``"associative"``
            (``lax.associative_scan``, ``O(log T)`` depth, for GPUs).

    Example:
        >>> ah.linear_recurrence(jnp.full(3, 0.5), jnp.ones(3), 0.0)   # 1, 1.5, 1.75
    """
    b = jnp.asarray(b)
    a = jnp.broadcast_to(jnp.asarray(a, b.dtype), b.shape)
    if b.ndim != 1:
        raise ValueError(f"linear_recurrence: b must be 1-D (T,), got shape {b.shape}")
    if method == "scan":
        def step(h, ab):
            h = ab[0] * h + ab[1]
            return h, h

        return lax.scan(step, jnp.asarray(h0, b.dtype), (a, b))[1]
    if method == "associative":
        first = b[0] + a[0] * h0  # fold h_0 into the first drive

        def compose(left, right):
            a1, b1 = left
            a2, b2 = right
            return a1 * a2, a2 * b1 + b2

        return lax.associative_scan(compose, (a, b.at[0].set(first)))[1]
    raise ValueError(f"method must be one of {RECURRENCE_METHODS}, got {method!r}")
