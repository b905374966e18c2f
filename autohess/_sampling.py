"""Random draws that stay cheap under ``vmap``: what the models' ``simulate`` functions use.

``jax.random.gamma`` draws each element in its own rejection loop, run one element after
another (a ``lax.map`` over all ``B x N`` elements of a batch): 1.4 us per draw on the 2-core
CPU, so simulating one GARCH-t series of 2,000 innovations cost 2.7 ms, more than fitting it
(benchmarks/bench_batch.py, #16 part 3). ``gamma`` here runs the same kind of exact rejection
method on whole arrays at once.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["gamma"]

#: candidates drawn in each later rejection round, as a share of the elements: Marsaglia and
#: Tsang's method accepts at least 95% of candidates for shape >= 1 (about 99% at 2.5), so one
#: round of N/8 replaces all that the first round rejected except with negligible probability
#: (the loop still runs until every element is accepted: the draws are exact)
RETRY_SHARE = 0.125


def gamma(key: jax.Array, a: Any, shape: tuple, dtype: Any, *, at_least_one: bool = False) -> jax.Array:
    """``Float[Array, "*shape"]`` draws from Gamma(``a``, 1), ``a > 0`` a scalar (traced or not).

    Marsaglia & Tsang (2000), "A simple method for generating gamma variables", ACM TOMS 26(3):
    for ``a >= 1``, ``d = a - 1/3``, ``c = 1/sqrt(9 d)``, candidate ``d (1 + c x)^3`` with
    ``x ~ N(0, 1)``, accepted when ``log u < x^2/2 + d - d v + d log v``; for ``a < 1`` a
    Gamma(a + 1) draw times ``u^(1/a)``. Every element draws a candidate at once; the rejected
    ones (a few per cent) take, in order, the accepted candidates of smaller rounds until none
    is left. A different stream from ``jax.random.gamma`` (same distribution).

    ``at_least_one=True``: the caller's ``a`` is never below 1 (GARCH-t's ``nu / 2`` with
    ``nu > 2``), so the ``a < 1`` draw (a uniform, a log and an exp per element, a third of
    the cost) is left out; an ``a`` below 1 then gives NaN, not wrong draws.
    """
    dtype = jnp.dtype(dtype)
    a = jnp.asarray(a, dtype)
    n = math.prod(shape)
    boost = a < 1.0
    d = jnp.where(boost, a + 1.0, a) - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    k_first, k_retry, k_boost = jax.random.split(key, 3)
    # (0, 1): a uniform of exactly 0 would give log 0 in the test and a 0 draw below
    tiny = jnp.finfo(dtype).tiny

    def candidates(k, m):
        kx, ku = jax.random.split(k)
        x = jax.random.normal(kx, (m,), dtype)
        u = jax.random.uniform(ku, (m,), dtype, minval=tiny)
        t = 1.0 + c * x
        v = t * t * t
        ok = (v > 0.0) & (jnp.log(u) < 0.5 * x * x + d - d * v + d * jnp.log(jnp.where(v > 0.0, v, 1.0)))
        return d * v, ok

    draws, ok = candidates(k_first, n)
    m = max(1, min(n, math.ceil(RETRY_SHARE * n)))

    def retry(carry):
        draws, ok, i = carry
        more, more_ok = candidates(jax.random.fold_in(k_retry, i), m)
        pending = ~ok
        slot = jnp.cumsum(pending) - 1  # the j-th pending element takes candidate j
        slot_c = jnp.clip(slot, 0, m - 1)
        take = pending & (slot < m) & more_ok[slot_c]
        return jnp.where(take, more[slot_c], draws), ok | take, i + 1

    draws, _, _ = lax.while_loop(lambda s: ~jnp.all(s[1]), retry, (draws, ok, jnp.zeros((), jnp.int32)))
    if at_least_one:
        return jnp.where(boost, jnp.nan, draws).reshape(shape)
    u = jax.random.uniform(k_boost, (n,), dtype, minval=tiny)
    draws = jnp.where(boost, draws * jnp.exp(jnp.log(u) / jnp.where(boost, a, 1.0)), draws)
    return draws.reshape(shape)
