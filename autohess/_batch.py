"""``fit_batch``: many fits of one model as a single compiled, ``vmap``-ed program.

Each member is solved, differentiated and summarised exactly as ``fit`` does for one data set
(same trust-region loop, same covariance and diagnostics code), so a batch equals a loop of
single fits. Nothing raises for one bad member: a member whose data or start make the
likelihood non-finite gets status ``NONFINITE``, one that stops early ``MAX_ITERATIONS``, and
its neighbours are unaffected (``vmap`` runs every member's loop until the slowest finishes;
finished members simply stop changing).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._derivatives import _model_params
from ._diagnostics import Diagnostics
from ._fit import _covariance_and_diagnostics, _natural_derivatives, _value_grad_hess_fn
from ._model import Model
from ._solver import Status, trust_region_newton

__all__ = ["BatchResult", "fit_batch"]

BATCH_COV_TYPES = ("hessian", "opg", "robust")


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """Results of ``fit_batch``: every array has a leading batch axis of length ``B``.

    ``params``, ``bse`` are pytrees shaped like the model's parameters with a leading batch
    axis; ``*_flat`` are ``(B, p)`` in ``labels`` order; ``converged`` is a ``(B,)`` bool
    array and ``status`` a list of readable reasons, one per member.
    """

    params_flat: jax.Array
    cov: jax.Array
    llf: jax.Array
    gradient: jax.Array
    status_code: jax.Array
    iterations: jax.Array
    diagnostics_data: Diagnostics
    model: Model
    cov_type: str

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.labels

    def __len__(self) -> int:
        return int(self.status_code.shape[0])

    @property
    def converged(self) -> np.ndarray:
        return np.asarray(self.status_code) == Status.CONVERGED

    @property
    def status(self) -> list[str]:
        return [Status(int(c)).message for c in np.asarray(self.status_code)]

    @property
    def bse_flat(self) -> jax.Array:
        return jnp.sqrt(jnp.diagonal(self.cov, axis1=-2, axis2=-1))

    @property
    def params(self) -> Any:
        return jax.vmap(self.model.spec.unflatten)(self.params_flat)

    @property
    def bse(self) -> Any:
        return jax.vmap(self.model.spec.unflatten)(self.bse_flat)

    def __repr__(self) -> str:
        return f"BatchResult({self.model.name!r}, B={len(self)}, converged={int(self.converged.sum())}/{len(self)})"


jax.tree_util.register_dataclass(
    BatchResult,
    data_fields=["params_flat", "cov", "llf", "gradient", "status_code", "iterations", "diagnostics_data"],
    meta_fields=["model", "cov_type"],
)


def _batch_data(model: Model, data: Any) -> tuple[Any, int]:
    """Check that every leaf is the model's leaf with a leading batch axis; cast the dtype.

    Shapes are static mistakes and raise; NaN or infinite values do not (they become a
    member's ``NONFINITE`` status).
    """
    leaves, treedef = jax.tree_util.tree_flatten(data)
    ref_leaves, ref_treedef = jax.tree_util.tree_flatten(model.data)
    if treedef != ref_treedef:
        raise ValueError(f"data_batch has structure {treedef}, the model's data {ref_treedef}")
    sizes = set()
    out = []
    for i, (leaf, ref) in enumerate(zip(leaves, ref_leaves)):
        arr = jnp.asarray(leaf, model.dtype)
        if arr.shape[1:] != ref.shape or arr.ndim != ref.ndim + 1:
            raise ValueError(
                f"data_batch leaf {i} has shape {arr.shape}; expected (B,) + {ref.shape}, the model's "
                "data with a leading batch axis"
            )
        sizes.add(arr.shape[0])
        out.append(arr)
    if len(sizes) != 1:
        raise ValueError(f"data_batch leaves disagree on the batch size: {sorted(sizes)}")
    return treedef.unflatten(out), sizes.pop()


def _build(model: Model, cov_type: str, maxiter: int, params_batched: bool, data_batched: bool, has_weights: bool):
    spec = model.spec
    mode = model.hessian_mode
    lower, upper = spec.bounds_arrays(model.dtype)

    def one(params, data, weights):
        def f(u):
            return model.negloglik_flat(spec.to_natural(u), data, weights)

        u0 = spec.to_unconstrained(spec.flatten(params, model.dtype))
        res = trust_region_newton(_value_grad_hess_fn(f, mode), u0, maxiter=maxiter)
        x, value, grad, hess, _ = _natural_derivatives(spec, res.x, res.value, res.grad, res.hess)
        scores = None
        if cov_type != "hessian":
            contrib = lambda t: model._loglik(spec.unflatten(t), data)  # noqa: E731
            scores = jax.jacfwd(contrib)(x)
        cov, diag = _covariance_and_diagnostics(
            x, grad, hess, lower, upper, scores, weights, None,
            cov_type=cov_type, n_groups=None, df_correction=None,
        )
        return x, cov, -value, grad, res.status, res.iterations, diag

    axes = (0 if params_batched else None, 0 if data_batched else None, 0 if has_weights else None)

    def run(params, data, weights):
        model.trace_counts["fit_batch"] += 1
        return jax.vmap(one, in_axes=axes)(params, data, weights)

    return jax.jit(run)


def fit_batch(
    model: Model,
    data_batch: Any = None,
    *,
    weights: Any = None,
    start: Any = None,
    cov_type: str = "hessian",
    maxiter: int = 200,
) -> BatchResult:
    """Fit ``model`` to many data sets, weight vectors or starts at once (one compiled ``vmap``).

    Args:
        model: an ``ah.Model``.
        data_batch: pytree like ``model.data`` with a leading batch axis ``B`` (default: the
            model's own data for every member).
        weights: ``(B, N)`` non-negative frequency weights (bootstrap without copying data).
        start: starting parameters: like the model's (shared) or with a leading batch axis.
        cov_type: ``"hessian"``, ``"opg"`` or ``"robust"``.
        maxiter: iteration limit per member.

    Returns:
        ``BatchResult``. Never raises for a bad member: see ``status``.

    Example:
        >>> bres = ah.fit_batch(model, {"X": Xs, "y": ys})   # Xs: (B, N, p), ys: (B, N)
        >>> bres.params["beta"].shape, bres.converged.mean()
    """
    if not isinstance(model, Model):
        raise TypeError(f"fit_batch needs an ah.Model, got {type(model).__name__}")
    if cov_type not in BATCH_COV_TYPES:
        raise ValueError(f"cov_type must be one of {BATCH_COV_TYPES} for batches, got {cov_type!r}")
    if cov_type != "hessian" and not model.per_observation:
        raise ValueError(f"cov_type={cov_type!r} needs per-observation contributions")
    sizes = []
    data_batched = data_batch is not None
    if data_batched:
        data, b = _batch_data(model, data_batch)
        sizes.append(b)
    else:
        data = model.data
    w = None
    if weights is not None:
        w = jnp.asarray(weights, model.dtype)
        if not model.per_observation or w.ndim != 2 or w.shape[1] != model.nobs:
            raise ValueError(f"weights has shape {tuple(w.shape)}, expected (B, {model.nobs})")
        sizes.append(w.shape[0])
    if start is None:
        params, params_batched = model.init_params, False
    else:
        ref = jax.tree_util.tree_leaves(model.init_params)
        leaves = jax.tree_util.tree_leaves(start)
        params_batched = len(leaves) == len(ref) and all(np.ndim(a) == r.ndim + 1 for a, r in zip(leaves, ref))
        if params_batched:
            params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, model.dtype), start)
            sizes.append(int(np.shape(leaves[0])[0]))
        else:
            params = _model_params(model, start, "start")
    if not sizes:
        raise ValueError("fit_batch needs something batched: data_batch, weights (B, N) or a batched start")
    if len(set(sizes)) != 1:
        raise ValueError(f"batch sizes disagree: {sizes}")
    key = ("fit_batch", cov_type, int(maxiter), params_batched, data_batched, w is not None)
    program = model._jitted(key, lambda: _build(model, cov_type, int(maxiter), params_batched, data_batched, w is not None))
    x, cov, llf, grad, status, iterations, diag = program(params, data, w)
    # a member whose likelihood is not finite ends with NaNs; its status must say so
    bad = ~(jnp.isfinite(llf) & jnp.all(jnp.isfinite(x), axis=-1))
    status = jnp.where(bad, Status.NONFINITE, status).astype(jnp.int32)
    return BatchResult(
        params_flat=x, cov=cov, llf=llf, gradient=grad, status_code=status,
        iterations=iterations, diagnostics_data=diag, model=model, cov_type=cov_type,
    )
