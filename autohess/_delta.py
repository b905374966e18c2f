"""``delta_method``: functions of the estimates (and, for random-effects fits, of the
conditional modes) with their delta-method covariance ``J V J'``, estimable outputs only where
the fit has flat directions.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.stats import norm

from ._covariance import face_pseudo_inverse, scaled_eigenvectors
from ._diagnostics import Diagnostics
from ._fit import FitResult
from ._params import Labels, element_labels, path_name
from ._validation import UNTRACEABLE, not_traceable



# ------------------------------------------------------------------------------------------
# Delta method
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DeltaResult:
    """A derived quantity ``g(params)`` with its delta-method covariance ``J V J'``.

    ``labels`` names the entries of ``value`` when ``fn`` returned a pytree (a dict, list or
    tuple: flattened to one vector in pytree order, ``"a"``, ``"b[0]"``, ...); ``None`` when it
    returned one array (``value`` keeps that array's shape).
    """

    value: jax.Array
    cov: jax.Array
    jacobian: jax.Array
    labels: Optional[tuple] = None

    @property
    def se(self) -> jax.Array:
        return jnp.sqrt(jnp.diag(jnp.atleast_2d(self.cov))).reshape(jnp.shape(self.value))

    @property
    def tvalues(self) -> jax.Array:
        return self.value / self.se

    @property
    def pvalues(self) -> jax.Array:
        return 2.0 * norm.sf(jnp.abs(self.tvalues))

    def conf_int(self, alpha: float = 0.05) -> jax.Array:
        z = norm.ppf(1.0 - alpha / 2.0)
        return jnp.stack([self.value - z * self.se, self.value + z * self.se], axis=-1)


jax.tree_util.register_dataclass(DeltaResult, data_fields=["value", "cov", "jacobian"], meta_fields=["labels"])


def _sandwich_nan_aware(J: jax.Array, V: jax.Array) -> jax.Array:
    """``J V J'`` where entry (i, j) is NaN exactly when ``sum_kl |J_ik| [V_kl NaN] |J_jl| > 0``."""
    missing = jnp.isnan(V)
    cov = J @ jnp.where(missing, 0.0, V) @ J.T
    reach = jnp.abs(J) @ missing.astype(J.dtype) @ jnp.abs(J).T
    return jnp.where(reach > 0, jnp.nan, cov)


#: an output counts as estimable when its gradient's component along every flat direction is
#: below this fraction of its length (unit-diagonal scaled coordinates; an exactly invariant
#: combination such as a + b along a - b gives rounding level)
ESTIMABLE_TOL = 1e-8


def _estimable_outputs(J: jax.Array, hess: jax.Array, d: Diagnostics, cov: jax.Array) -> jax.Array:
    """Finite variances for outputs that the flat directions do not move (estimable functions,
    e.g. ``a + b`` when only the sum is identified), from the pseudo-inverse of the Hessian
    without those directions; other entries of ``cov`` are kept."""
    keep = ~d.at_boundary & ~d.unbounded & ~d.nonpositive_diagonal & ~d.no_curvature  # flat-direction members kept
    pinv = face_pseudo_inverse(hess, keep, d.eigenvalues, d.eigenvectors, d.bad_directions)
    scale, v = scaled_eigenvectors(hess, d.eigenvectors)
    Js = J / scale[None, :]
    along = jnp.abs(Js @ v) * d.bad_directions[None, :]
    estimable = jnp.all(along <= ESTIMABLE_TOL * jnp.linalg.norm(Js, axis=1, keepdims=True), axis=1)
    cov_e = _sandwich_nan_aware(J, pinv)
    use = estimable[:, None] & estimable[None, :] & jnp.isfinite(cov_e)
    return jnp.where(use, cov_e, cov)


_ARRAY_OUTPUTS = (jax.Array, np.ndarray, np.generic, int, float)


def _takes_two(fn: Callable) -> bool:
    """Whether ``fn`` can be called as ``fn(params, random)``."""
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to read
        return False
    return True


def _delta_method_random(result: FitResult, fn: Callable) -> "DeltaResult":
    """``delta_method`` for ``fn(params, random)`` of a random-effects fit (see there)."""
    from ._laplace_results import delta_random

    spec = result.model.spec
    modes = {name: est.mode for name, est in result.random.items()}
    params = spec.unflatten(result.params_flat)
    flatten, value, labels = _delta_output(lambda p: fn(p, modes), params, spec.names)
    try:
        A, conditional = delta_random(result.model, result.params_flat, result.cov, fn, flatten)
    except UNTRACEABLE as err:
        raise not_traceable("fn", err) from err
    cov = _sandwich_nan_aware(A, result.cov) + conditional
    if value.ndim == 0:
        cov = cov.reshape(())
    return DeltaResult(value=value, cov=cov, jacobian=A, labels=labels)


def _delta_output(fn: Callable, params: Any, names: tuple) -> tuple[Callable, jax.Array, Optional[tuple]]:
    """``(flatten, value, labels)`` for ``fn``'s output at ``params`` (concrete values).

    One array keeps its shape (``labels`` None); a pytree of arrays (dict, list, tuple) is
    flattened to one vector in pytree order and labelled like parameters (``"a"``, ``"b[1]"``).
    """
    try:
        out = fn(params)
    except KeyError as err:
        raise KeyError(f"fn looked up {err} in the parameters; their names are {list(names)}") from err
    if isinstance(out, _ARRAY_OUTPUTS):
        value = jnp.asarray(out)
        flatten, labels = (lambda o: jnp.ravel(jnp.asarray(o))), None  # noqa: E731
    else:
        with_path = jax.tree_util.tree_flatten_with_path(out)[0]
        if not with_path:
            raise TypeError(
                f"fn returned {out!r}, which holds no arrays: return a scalar, an array or a pytree of them"
            )
        labels = []
        for path, leaf in with_path:
            name = path_name(path, "g")
            if not isinstance(leaf, _ARRAY_OUTPUTS) or not np.issubdtype(np.asarray(leaf).dtype, np.number):
                raise TypeError(
                    f"fn returned {type(leaf).__name__} at {name!r}: every output must be numeric (an array or a number)"
                )
            labels.extend(element_labels(name, tuple(np.shape(leaf))))
        labels = Labels(labels)

        def flatten(o):
            return ravel_pytree(o)[0]

        value = flatten(out)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(
            f"fn must return floating values (the delta method differentiates them); got dtype {value.dtype} "
            f"(shape {value.shape})"
        )
    return flatten, value, labels


def delta_method(result: FitResult, fn: Callable[[Any], Any]) -> DeltaResult:
    """Standard errors of ``fn(params)`` by the delta method, ``Var = J V J'``.

    Args:
        result: a ``FitResult`` (for a ``BatchResult``, use ``bres.member(i)``).
        fn: function of the natural-scale parameter pytree written in ``jax.numpy``,
            returning a scalar, an array, or a pytree of them (a dict, list or tuple: flattened
            to one vector, its entries named in ``labels``). For a random-effects model it may
            take two arguments, ``fn(params, random)`` with ``random`` the dict of random
            effects (at their conditional modes): its covariance is then TMB's
            ``A V A' + G_u (-H_uu)^{-1} G_u'``, ``A`` the total derivative in the parameters
            (through the modes, exactly) and ``G_u`` the derivative in the random effects.

    Returns:
        ``DeltaResult`` with ``value``, ``se``, ``cov`` (flattened output), ``conf_int()``.
        An output is NaN exactly when it depends on a parameter whose standard error is NaN
        (``J`` has a non-zero entry there); parameters ``fn`` does not use do not enter.
        Beside a flat direction (``cov_type="hessian"``), an output that the direction does
        not move (an estimable function, e.g. ``a + b`` when only the sum is identified) gets
        its variance from the pseudo-inverse without that direction, as statsmodels' pinv
        would give it.

    Example:
        >>> ah.delta_method(res, lambda p: p["beta"][1] / p["beta"][2]).se
    """
    if not isinstance(result, FitResult):
        if type(result).__name__ == "BatchResult":
            raise TypeError(
                f"delta_method needs a FitResult (one fit), got a BatchResult of {len(result)} members: "
                "apply it to one member at a time, ah.delta_method(bres.member(i), fn)"
            )
        raise TypeError(f"delta_method needs a FitResult (from ah.fit), got {type(result).__name__}")
    if not callable(fn):
        raise TypeError(f"fn must be a function of the parameter pytree, fn(params), got {type(fn).__name__}")
    spec = result.model.spec
    if result.model.laplace is not None and _takes_two(fn):
        return _delta_method_random(result, fn)
    flatten, value, labels = _delta_output(fn, spec.unflatten(result.params_flat), spec.names)
    flat_fn = lambda t: flatten(fn(spec.unflatten(t)))  # noqa: E731
    try:
        J = jax.jacfwd(flat_fn)(result.params_flat)
    except UNTRACEABLE as err:
        raise not_traceable("fn", err) from err
    # A NaN covariance entry (a flat direction, a boundary) reaches exactly the outputs whose
    # linearisation involves it: J V J' is formed with NaN read as 0, and (i, j) is set back to
    # NaN where sum_kl |J_ik| [V_kl is NaN] |J_jl| > 0. Plain J V J' would spread one NaN
    # parameter to every output, even those that do not depend on it.
    cov = _sandwich_nan_aware(J, result.cov)
    d = result.diagnostics_data
    if result.cov_type == "hessian" and bool(jnp.any(d.bad_directions)):
        cov = _estimable_outputs(J, result.hessian_matrix, d, cov)
    if value.ndim == 0:
        cov = cov.reshape(())
    return DeltaResult(value=value, cov=cov, jacobian=J, labels=labels)
