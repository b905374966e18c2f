"""Nonlinear least squares as a Gaussian likelihood: ``ah.least_squares``.

The model ``y = f(b, x) + e``, ``e ~ N(0, sigma^2)`` with ``sigma`` profiled out has the
concentrated log-likelihood ``-(n/2) (log(2 pi RSS(b) / n) + 1)``; its maximiser is the
least-squares estimate. Working with ``log RSS`` keeps the objective scale-free: the solver's
tolerances mean the same for an RSS of 1e-8 or 1e+5. (At an RSS near the rounding level of the
data, NIST's Lanczos1 with 1e-25, ``log RSS`` itself carries rounding noise of ~1e-3 and the
fit ends ``STALLED`` at the certified values instead of ``CONVERGED``; see tests/test_nist.py.)

Covariances: ``cov_type="gauss-newton"`` gives the classical nonlinear-regression one,
``s^2 (J'J)^-1`` with ``s^2 = RSS / (n - p)`` and ``J`` the Jacobian of the residuals (what the
NIST StRD certify). It relates to the observed information (``cov_type="hessian"``) of the
concentrated likelihood, ``(RSS/n) (J'J + sum_i r_i d2r_i)^-1`` at the optimum, by dropping the
second-order residual term and using ``n - p`` degrees of freedom; the two agree when the
residuals are small or the model is nearly linear.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._model import Model

__all__ = ["LeastSquaresModel", "least_squares", "gauss_newton_covariance"]


class LeastSquaresModel(Model):
    """A ``Model`` built from a residual function; see ``least_squares``."""

    def __init__(
        self, residual_fn: Callable, data: Any, params: Any, *, name: Optional[str] = None, names: Optional[dict] = None
    ):
        if not callable(residual_fn):
            raise TypeError("residual_fn must be a function residual_fn(params, data) -> (n,) residuals")
        self.residual_fn = residual_fn

        def concentrated_loglik(p, d):
            r = residual_fn(p, d)
            if not isinstance(r, jax.Array):
                # a list of residuals would otherwise fail on `.ndim` with an AttributeError
                raise TypeError(
                    f"residual_fn must return one array of residuals, got a {type(r).__name__}"
                    + (f" of {len(r)} entries: combine them with jnp.stack(...) or jnp.concatenate(...)"
                       if isinstance(r, (list, tuple)) else "")
                )
            if r.ndim != 1:
                raise TypeError(f"residual_fn must return a 1-D array of residuals, got shape {r.shape}")
            n = r.shape[0]
            return -0.5 * n * (jnp.log(2.0 * jnp.pi * jnp.sum(r * r) / n) + 1.0)

        super().__init__(
            concentrated_loglik, data, params, per_observation=False,
            name=name or getattr(residual_fn, "__name__", "least_squares"), names=names,
        )
        self.nobs = int(jax.eval_shape(residual_fn, self.init_params, self.data).shape[0])
        if self.nobs <= self.n_params:
            raise ValueError(f"least squares needs more residuals ({self.nobs}) than parameters ({self.n_params})")

    def residuals(self, params: Any = None) -> jax.Array:
        """Residuals at ``params`` (natural scale; default: initial values)."""
        params = self.init_params if params is None else params
        self.spec.check_structure(params)
        return self._jitted("residuals", lambda: jax.jit(self.residual_fn))(params, self.data)

    def rss(self, params: Any = None) -> float:
        """Residual sum of squares at ``params``."""
        r = np.asarray(self.residuals(params), dtype=np.float64)
        return float(np.dot(r, r))

    def with_data(self, data: Any) -> "LeastSquaresModel":
        declared = self.spec.treedef.unflatten(list(self.spec.transforms))
        return LeastSquaresModel(self.residual_fn, data, declared, name=self.name, names=self.names)


def least_squares(
    residual_fn: Callable, data: Any, params: Any, *, name: Optional[str] = None, names: Optional[dict] = None
) -> LeastSquaresModel:
    """Nonlinear least squares ``min_b sum_i r_i(b)^2`` as a (concentrated) Gaussian model.

    Args:
        residual_fn: ``residual_fn(params, data) -> Float[Array, "n"]``, e.g. ``y - f(b, x)``.
        data: pytree of arrays; params: initial values (transforms allowed).
        names: element names of array parameters, as for ``ah.Model``.

    Returns:
        ``LeastSquaresModel``; fit it with ``ah.fit(model, cov_type="gauss-newton")`` for the
        classical standard errors ``sqrt(diag(s^2 (J'J)^-1))``.

    Example:
        >>> m = ah.least_squares(lambda p, d: d["y"] - p["b"][0] * (1 - jnp.exp(-p["b"][1] * d["x"])),
        ...                      {"x": x, "y": y}, {"b": jnp.array([500.0, 1e-4])})
        >>> ah.fit(m, cov_type="gauss-newton").bse
    """
    return LeastSquaresModel(residual_fn, data, params, name=name, names=names)


def gauss_newton_covariance(model: LeastSquaresModel, x: jax.Array) -> jax.Array:
    """``s^2 (J'J)^-1`` at the flat natural-scale point ``x``, through the SVD of ``J``.

    The SVD avoids forming ``J'J``, which would square ``J``'s condition number (1e8 for
    several NIST problems, i.e. all 16 digits).
    """

    def build():
        def run(x, data):
            model.trace_counts["gauss_newton"] += 1
            res = lambda t: model.residual_fn(model.spec.unflatten(t), data)  # noqa: E731
            r = res(x)
            J = jax.jacfwd(res)(x)
            n, p = J.shape
            s2 = jnp.dot(r, r) / (n - p)
            _, sv, vt = jnp.linalg.svd(J, full_matrices=False)
            inv_sv2 = jnp.where(sv > 0, 1.0 / sv**2, jnp.nan)
            return s2 * (vt.T * inv_sv2) @ vt

        return jax.jit(run)

    return model._jitted("gauss_newton_cov", build)(x, model.data)
