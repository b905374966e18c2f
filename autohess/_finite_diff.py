"""Finite-difference Hessians, JAX-native: every stencil point in one compiled ``vmap`` call.

These exist to be audited against the exact Hessian (``audit``), to show where the seed
question's numbers came from, and for functions JAX cannot differentiate twice.

Step rules (``h_i`` for parameter ``i``, ``eps`` the dtype's machine epsilon):

* ``"central"`` second differences: truncation error ~ ``h^2 f''''/12``, rounding error
  ~ ``eps |f| / h^2``; they balance at ``h ~ (eps |f| / |f''''|)^(1/4)``, so the default is
  ``h_i = eps^(1/4) * max(|x_i|, 1)`` (1.2e-4 relative in float64): the ``x_i`` factor keeps
  the step meaningful for parameters far from 1, the floor at 1 for parameters near 0.
* ``"forward"`` differences of the exact gradient: truncation ~ ``h f'''/2``, rounding
  ~ ``eps |g| / h``; balance at ``h ~ sqrt(eps)``: ``h_i = sqrt(eps) * max(|x_i|, 1)``.
* ``"richardson"``: central differences at ``h`` and ``h/2`` combined as ``(4 H(h/2) - H(h)) / 3``,
  which cancels the ``h^2`` term (error ``O(h^4)``); the default ``h`` is ``eps^(1/6) *
  max(|x_i|, 1)``, the balance point for a fourth-order rule, and ``|H_R - H(h/2)|`` (the
  error of the finer central estimate, so an upper bound) is returned as an error estimate.

The floor at 1 is a guess at the parameter's scale when ``x_i`` is near 0; for a parameter
that is small by nature (a GARCH ``omega = 0.01``) it makes the step a large fraction of the
value, and truncation dominates (``benchmarks/bench_fd.py`` measured 1.5e-4 relative error
for Richardson on GARCH, 9e-10 with relative steps). ``step="relative"`` uses
``eps^(1/k) * |x_i|`` instead (falling back to the floor where ``x_i = 0``).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._derivatives import Hessian, cached_function_program, _model_params, _prepare_point, _weak_or_strong
from ._model import Model

__all__ = ["FDHessian", "fd_hessian", "default_step", "FD_METHODS"]

FD_METHODS = ("central", "forward", "richardson")


@dataclasses.dataclass(frozen=True)
class FDHessian(Hessian):
    """A finite-difference Hessian: ``matrix``, ``labels``, the ``step`` vector used, the
    ``method``, and (Richardson only) an elementwise ``error_estimate``."""

    step: jax.Array = None
    method: str = "central"
    error_estimate: Optional[jax.Array] = None


jax.tree_util.register_dataclass(
    FDHessian, data_fields=["matrix", "step", "error_estimate"], meta_fields=["labels", "method"]
)


def default_step(x: jax.Array, method: str, relative: bool = False) -> jax.Array:
    """The default step vector for ``method`` at flat point ``x`` (see the module docstring)."""
    eps = jnp.finfo(x.dtype).eps
    power = {"central": 0.25, "forward": 0.5, "richardson": 1.0 / 6.0}[method]
    scale = jnp.where(x != 0, jnp.abs(x), 1.0) if relative else jnp.maximum(jnp.abs(x), 1.0)
    return eps**power * scale


def _central_offsets(h: jax.Array) -> tuple[jax.Array, np.ndarray, np.ndarray]:
    """Stencil of the seed question's scheme: ``x``, ``x +/- h_i e_i``, ``x +/- h_i e_i +/- h_j e_j``."""
    p = h.shape[0]
    E = jnp.diag(h)
    iu, ju = np.triu_indices(p, 1)
    rows = [jnp.zeros((1, p), h.dtype), E, -E]
    for si, sj in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
        rows.append(si * E[iu] + sj * E[ju])
    return jnp.concatenate(rows), iu, ju


def _assemble_central(values: jax.Array, h: jax.Array, iu: np.ndarray, ju: np.ndarray) -> jax.Array:
    p = h.shape[0]
    m = iu.size
    f0, fp, fm = values[0], values[1 : 1 + p], values[1 + p : 1 + 2 * p]
    off = values[1 + 2 * p :].reshape(4, m)
    diag = (fp - 2.0 * f0 + fm) / h**2
    cross = (off[0] - off[1] - off[2] + off[3]) / (4.0 * h[iu] * h[ju])
    H = jnp.diag(diag)
    H = H.at[iu, ju].set(cross).at[ju, iu].set(cross)
    return H


def _central(f_flat: Callable, x: jax.Array, h: jax.Array) -> jax.Array:
    offsets, iu, ju = _central_offsets(h)
    values = jax.vmap(f_flat)(x + offsets)
    return _assemble_central(values, h, iu, ju)


def _fd(f_flat: Callable, method: str, x: jax.Array, h: jax.Array):
    if method == "central":
        return _central(f_flat, x, h), None
    if method == "forward":
        p = x.shape[0]
        grads = jax.vmap(jax.grad(f_flat))(x + jnp.concatenate([jnp.zeros((1, p), x.dtype), jnp.diag(h)]))
        cols = (grads[1:] - grads[0]) / h[:, None]  # row j: d grad / d x_j
        return 0.5 * (cols + cols.T), None
    # richardson: both stencils in one vmapped evaluation
    offsets, iu, ju = _central_offsets(h)
    n = offsets.shape[0]
    values = jax.vmap(f_flat)(x + jnp.concatenate([offsets, 0.5 * offsets]))
    coarse = _assemble_central(values[:n], h, iu, ju)
    fine = _assemble_central(values[n:], 0.5 * h, iu, ju)
    extrapolated = (4.0 * fine - coarse) / 3.0
    return extrapolated, jnp.abs(extrapolated - fine)


def _model_program(model: Model, method: str) -> Callable:
    return jax.jit(lambda x, h: _fd(lambda t: model.negloglik_flat(t, model.data, None), method, x, h))


def _function_program(f: Callable, method: str) -> Callable:
    f_ref = _weak_or_strong(f)

    def run(point, h):
        flat, unravel = ravel_pytree(point)
        return _fd(lambda t: f_ref()(unravel(t)), method, flat, h)

    return jax.jit(run)


def fd_hessian(
    target: Model | Callable,
    x: Any = None,
    *,
    method: str = "central",
    step: Any = None,
) -> FDHessian:
    """Finite-difference Hessian of a scalar JAX function (or a model's negative log-likelihood).

    Args:
        target: ``f(x) -> scalar`` written in JAX, or an ``ah.Model``.
        x: the point (any pytree; for a model, natural-scale parameters, default its initial
            values).
        method: ``"central"`` (second differences of ``f``, the seed question's scheme),
            ``"forward"`` (forward differences of the exact gradient) or ``"richardson"``
            (extrapolated central differences, with an error estimate).
        step: a scalar (the same absolute step for every parameter, as in the seed question),
            a vector in label order, ``"relative"`` (``eps^(1/k) |x_i|``), or None: the
            scale-aware default ``eps^(1/k) max(|x_i|, 1)`` for ``method``.

    Returns:
        ``FDHessian``. All ``1 + 2p^2`` (central) stencil points are evaluated in one compiled
        ``vmap`` call.

    Example:
        >>> ah.fd_hessian(f, x, method="central", step=1e-5).matrix
    """
    if method not in FD_METHODS:
        raise ValueError(f"method must be one of {FD_METHODS}, got {method!r}")
    if x is None and not isinstance(target, Model):
        raise TypeError("fd_hessian(f, x): the point x is required for a plain function")
    if isinstance(target, Model):
        params = _model_params(target, x)
        flat = target.spec.flatten(params, target.dtype)
        labels = target.labels
        fn = target._jitted(("fd", method), lambda: _model_program(target, method))
        arg = flat
    else:
        point, labels = _prepare_point(x)
        flat = ravel_pytree(point)[0]
        fn = cached_function_program(target, ("fd", method), lambda: _function_program(target, method))
        arg = point
    if step is None or (isinstance(step, str) and step == "relative"):
        h = default_step(flat, method, relative=step is not None)
    elif isinstance(step, str):
        raise ValueError(f"step must be a number, a vector, 'relative' or None, got {step!r}")
    else:
        given = np.shape(step)
        if given not in ((), (1,), flat.shape):
            raise ValueError(
                f"step has shape {given}, the point has {flat.shape[0]} parameters ({', '.join(map(str, labels[:6]))}"
                f"{' ...' if len(labels) > 6 else ''}): give one step for all, or one per parameter in this order"
            )
        h = jnp.broadcast_to(jnp.asarray(step, flat.dtype), flat.shape)
        if not bool(jnp.all(jnp.isfinite(h) & (h > 0))):
            raise ValueError(f"step must be positive and finite, got {step!r}")
    matrix, err = fn(arg, h)
    bad = ~np.isfinite(np.asarray(matrix))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        warnings.warn(
            f"fd_hessian: {int(bad.sum())} of {bad.size} entries are not finite (first [{labels[i]}, "
            f"{labels[j]}]): f is not finite at some stencil points x +/- h_i e_i +/- h_j e_j, so the "
            f"step (h = {float(h[i]):.3g} for {labels[i]}, {float(h[j]):.3g} for {labels[j]}) leaves its "
            "domain; use a smaller step or step='relative'",
            RuntimeWarning,
            stacklevel=2,
        )
    return FDHessian(matrix=matrix, labels=labels, step=h, method=method, error_estimate=err)
