"""Is the Hessian at the estimate fit for inference? Numbers first (pure JAX), words later.

Everything here is computed from the natural-scale Hessian ``H`` and gradient ``g`` of the
negative log-likelihood. ``H`` is first scaled to unit diagonal, ``Ht = D^-1/2 H D^-1/2`` with
``D = |diag H|``: its eigenvalues do not depend on the units of the parameters, so "flat" and
"saddle" mean the same for a rate in 1/s and in 1/day.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ._solver import after, newton_decrement

__all__ = ["Diagnostics", "compute_diagnostics", "FLAT_CONDITION", "ILL_CONDITION"]

#: scaled condition number above which a direction counts as flat (unidentified); standard
#: errors along it are set to NaN. 1e12 leaves ~4 correct digits in float64 inverses.
FLAT_CONDITION = 1e12
#: scaled condition number above which the report warns (standard errors still computed).
ILL_CONDITION = 1e8
#: a transformed parameter closer to its bound than this many marginal standard deviations
#: sits on the boundary: Wald inference there is not valid.
BOUNDARY_SDS = 1e-2


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """Numerical health of the Hessian at the estimate (all arrays; batchable).

    Attributes:
        gradient_max: ``max |g|`` of the negative log-likelihood (natural scale).
        newton_decrement: ``g' H^-1 g`` (``inf`` if ``H`` is not positive definite); about twice
            the log-likelihood still to gain.
        positive_definite: Cholesky of ``H`` succeeded.
        eigenvalues: eigenvalues of the unit-diagonal scaled Hessian, ascending.
        eigenvectors: matching eigenvectors, mapped back to parameter units and normalised
            (columns), so column 0 is the flattest or most negative direction.
        condition_number: ``max|eig| / min|eig|`` of the scaled Hessian.
        nonpositive_diagonal: ``H_ii <= 0`` (a parameter with no curvature of its own).
        at_boundary: transformed parameters sitting on a bound of their domain.
        bad_directions: eigen-directions that are flat (relative eigenvalue below
            ``1/FLAT_CONDITION``) or negative.
    """

    gradient_max: jax.Array
    newton_decrement: jax.Array
    positive_definite: jax.Array
    eigenvalues: jax.Array
    eigenvectors: jax.Array
    condition_number: jax.Array
    nonpositive_diagonal: jax.Array
    at_boundary: jax.Array
    bad_directions: jax.Array


jax.tree_util.register_dataclass(
    Diagnostics,
    data_fields=[f.name for f in dataclasses.fields(Diagnostics)],
    meta_fields=[],
)


def compute_diagnostics(
    grad: jax.Array, hess: jax.Array, x: jax.Array, lower: jax.Array, upper: jax.Array
) -> Diagnostics:
    """Diagnostics at natural-scale parameters ``x`` with domain bounds ``lower``/``upper``
    (``-inf``/``inf`` where unbounded)."""
    diag = jnp.diag(hess)
    d = jnp.sqrt(jnp.where(diag > 0, diag, jnp.abs(diag)))
    d = jnp.where(d > 0, d, 1.0)
    scaled = hess / jnp.outer(d, d)
    lam, vec = jnp.linalg.eigh(scaled)
    raw = vec / d[:, None]
    raw = raw / jnp.linalg.norm(raw, axis=0, keepdims=True)
    top = jnp.max(jnp.abs(lam))
    tiny = jnp.finfo(hess.dtype).tiny
    cond = top / jnp.maximum(jnp.min(jnp.abs(lam)), tiny)
    bad = lam <= top / FLAT_CONDITION
    dec, pd = newton_decrement(grad, after(hess, lam, vec))  # one LAPACK call at a time
    # distance to the nearest bound, in marginal standard deviations 1/sqrt(H_ii)
    dist = jnp.minimum(x - lower, upper - x)
    bounded = jnp.isfinite(lower) | jnp.isfinite(upper)
    sds = dist * jnp.sqrt(jnp.maximum(diag, 0.0))
    eps = jnp.finfo(hess.dtype).eps
    boundary = bounded & ((sds < BOUNDARY_SDS) | (dist <= jnp.sqrt(eps) * (1.0 + jnp.abs(x))))
    return Diagnostics(
        gradient_max=jnp.max(jnp.abs(grad)),
        newton_decrement=dec,
        positive_definite=pd & jnp.all(jnp.isfinite(hess)),
        eigenvalues=lam,
        eigenvectors=raw,
        condition_number=cond,
        nonpositive_diagonal=diag <= 0,
        at_boundary=boundary,
        bad_directions=bad,
    )
