"""The exact-derivative core: gradients, Hessians, scores and Hessian-vector products.

Every public function here dispatches to a program compiled once per model (or function) and
input shape; repeated calls with new parameter values reuse it. ``Model.trace_counts`` records
each trace so this can be checked.

Why forward-over-reverse for Hessians: one reverse sweep gives the gradient at the cost of a
few function evaluations; differentiating that sweep forward along the ``p`` basis directions
(``jacfwd(grad)``) costs ``p`` tangent propagations that JAX batches with ``vmap``, so the whole
Hessian is roughly ``p`` gradients fused into one program, with no nested reverse tape.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from ._basis import fold_basis
from ._fingerprint import closure_fingerprint
from ._model import HESSIAN_MODES, Model
from ._pandas import host_array
from ._params import Labels, element_labels, path_name
from ._resampling import _check_points
from ._rules import finiteness_proxy, has_cheap_rule, jaxpr_function
from ._validation import choose_dtype, float32_warning, weight_problem

__all__ = ["Hessian", "hessian", "gradient", "scores", "hvp", "chunked_memory_bytes"]

_SCALES = ("natural", "unconstrained")


@dataclasses.dataclass(frozen=True)
class Hessian:
    """An exact Hessian with the labels of its rows and columns.

    Attributes:
        matrix: ``Float[Array, "p p"]``, symmetric.
        labels: ``p`` parameter labels, e.g. ``("beta[0]", ..., "sigma")``.
    """

    matrix: jax.Array
    labels: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.matrix.shape)

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.matrix)
        return out if dtype is None else out.astype(dtype)

    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues in ascending order (float64 host array)."""
        return np.linalg.eigvalsh(np.asarray(self.matrix, dtype=np.float64))

    def __repr__(self) -> str:
        p = len(self.labels)
        if p > 12:
            return f"Hessian(p={p}, labels={self.labels[:3]}..., dtype={self.matrix.dtype})"
        width = max(len(lab) for lab in self.labels)
        rows = [
            f"  {lab:>{width}}  " + " ".join(f"{v:11.4g}" for v in row)
            for lab, row in zip(self.labels, np.asarray(self.matrix).tolist())
        ]
        return "Hessian(\n" + "\n".join(rows) + "\n)"


jax.tree_util.register_dataclass(Hessian, data_fields=["matrix"], meta_fields=["labels"])


def _hessian_of(f: Callable[[jax.Array], jax.Array], mode: str, with_value: bool = True, rules: bool = True) -> Callable:
    """``theta -> (H, v)``: the Hessian, and a scalar ``v`` finite exactly where ``f(theta)`` is
    (the value from the same primal pass, or a cheaper stand-in), for the finiteness check.

    The value is not free: a Hessian needs only derivatives of the log-likelihood's primitives,
    and XLA drops their primal values (e.g. ``log1p(exp(x))``) when nobody asks for them. For a
    logistic model asking costs ~15 us of a ~55 us call, nearly all of it ``log1p``; where the
    only such terms are ``jnp.logaddexp``'s (``softplus``), ``v`` is ``f`` with those replaced by
    their finiteness proxy (``_rules.finiteness_proxy``). ``with_value=False`` returns 0.
    ``jnp.logaddexp``'s derivatives come from its cheaper rule (``_rules``). ``rules=False``:
    ``f`` differentiated as written (a random-effects marginal: its inner solve and implicit
    derivatives would be traced once more, for no ``logaddexp`` of its own at this level).
    """
    if not rules:
        return fold_basis(_hessian_with_basis(f, mode, with_value))

    def run(theta):
        closed, shape = jax.make_jaxpr(f, return_shape=True)(theta)
        g = jaxpr_function(closed, shape)  # (f is traced once per program: callers count)
        if with_value and has_cheap_rule(closed):
            proxy = finiteness_proxy(closed, shape, theta)
            if proxy is not None:
                h, _ = fold_basis(_hessian_with_basis(g, mode, False))(theta)
                return h, proxy
        return fold_basis(_hessian_with_basis(g, mode, with_value))(theta)

    return run


def _hessian_with_basis(f: Callable[[jax.Array], jax.Array], mode: str, with_value: bool) -> Callable:
    """``_hessian_of`` before ``fold_basis`` (the basis products still in)."""
    if not with_value:
        jac = {"fwd-rev": jax.jacfwd, "rev-rev": jax.jacrev, "fwd-fwd": jax.jacfwd}.get(mode)
        if jac is None:
            raise ValueError(f"mode must be one of {HESSIAN_MODES}, got {mode!r}")
        inner = jax.jacfwd(f) if mode == "fwd-fwd" else jax.grad(f)
        return lambda t: (jac(inner)(t), jnp.zeros((), t.dtype))
    if mode in ("fwd-rev", "rev-rev"):
        def grad_and_value(t):
            value, grad = jax.value_and_grad(f)(t)
            return grad, value

        jac = jax.jacfwd if mode == "fwd-rev" else jax.jacrev
        return jac(grad_and_value, has_aux=True)
    if mode == "fwd-fwd":
        def value_twice(t):
            value = f(t)
            return value, value

        # The aux output rides on the outer primal pass: the value costs no extra sweep.
        return jax.jacfwd(jax.jacfwd(value_twice, has_aux=True), has_aux=True)
    raise ValueError(f"mode must be one of {HESSIAN_MODES}, got {mode!r}")


def _finite(h: jax.Array, value: jax.Array) -> jax.Array:
    # One fused reduction: any NaN/inf in h or value makes the sum non-finite. (An overflowing
    # sum of finite entries is a false alarm that the host-side error path re-checks.)
    return jnp.isfinite(jnp.sum(h) + value)


def _symmetrize(h: jax.Array) -> jax.Array:
    # Mixed partials agree only up to rounding; statistics downstream (Cholesky, eigh) expect
    # exact symmetry.
    return 0.5 * (h + h.T)


# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------
def _model_params(model: Model, params: Any, what: str = "params", scale: str = "natural") -> Any:
    """Checked natural-scale parameters as arrays of the model's dtype.

    Transform declarations stand for their initial values; Python numbers and numpy arrays are
    converted so that every call reaches the compiled program with the same input types.
    """
    if params is None:
        return model.init_params
    if scale == "natural":
        # already the model's: jax arrays of its dtype and shapes in its structure (what a fit's
        # ``res.params`` holds), accepted after one flatten; ``check_structure``'s conversions
        # and messages cost ~3 us of a ~60 us ``ah.hessian``
        leaves, treedef = jax.tree_util.tree_flatten(params)
        spec = model.spec
        if treedef == spec.treedef and all(
            isinstance(leaf, jax.Array) and leaf.dtype == model.dtype and leaf.shape == shape
            for leaf, shape in zip(leaves, spec.shapes)
        ):
            return params
    kind = type(params).__name__
    if kind in ("FitResult", "BatchResult", "ProfileResult", "BootstrapResult", "DeltaResult") and not isinstance(params, (dict, list, tuple)):
        # a result object passed where parameters go: its fields are not the model's
        # parameters, and listing them as "unknown parameters" (cov, diagnostics_data...) misled
        raise TypeError(
            f"{what} must be the model's parameters (a pytree like model.init_params), got a {kind}: "
            f"pass its estimates, res.params" + (" (or bres.member(i).params)" if kind == "BatchResult" else "")
        )
    leaves = model.spec.check_structure(params, what)
    if scale == "unconstrained":
        # the unconstrained point is the transform's inverse (log, logit) of params: outside the
        # domain it is NaN or -inf, and the Hessian there is meaningless (at s=0 a Positive
        # parameter gave an all-zero Hessian without a word)
        try:
            model.spec.check_domain(params, what)
        except ValueError as err:
            raise ValueError(
                f"{err}. scale='unconstrained' maps {what} through each transform's inverse (log, "
                "logit), which is undefined there: pass a point inside the domain, or "
                "scale='natural' for derivatives with respect to the parameters as given"
            ) from None
    if all(isinstance(leaf, jax.Array) and leaf.dtype == model.dtype for leaf in leaves):
        return params
    # numbers and numpy arrays converted on the host: ``jnp.asarray`` compiles a conversion
    # program per shape and dtype (a first fit from a given start compiled one, ~20 ms)
    return model.spec.treedef.unflatten([
        jnp.asarray(leaf, model.dtype) if isinstance(leaf, jax.Array) else jax.device_put(np.asarray(leaf, model.dtype))
        for leaf in leaves
    ])


def _model_weights(model: Model, weights: Any) -> Optional[jax.Array]:
    if weights is None:
        return None
    if not model.per_observation:
        if model.laplace is not None:
            raise ValueError(
                "weights need a marginal likelihood that splits into independent parts: this "
                "random-effects model integrates its random effects jointly (several factors, a "
                "Latent block, or groups linked by the likelihood), so its marginal is one total"
            )
        raise ValueError("weights need per-observation contributions; this Model has per_observation=False")
    w = np.asarray(host_array(weights, "weights")[0])
    if w.shape != (model.nobs,):
        if model.laplace is not None:
            groups = model.laplace.structure.groups
            raise ValueError(
                f"weights has shape {w.shape}, expected ({model.nobs},): one per group of "
                f"data[{groups!r}] (a random-effects model's marginal likelihood is a sum over its "
                "groups; a weight repeats a whole group)"
            )
        raise ValueError(f"weights has shape {w.shape}, expected ({model.nobs},), one per observation")
    problem = weight_problem(w)
    if problem is not None:
        raise ValueError(problem)
    return jnp.asarray(w, model.dtype)


def _objective(model: Model, scale: str) -> Callable:
    """Negative log-likelihood of the flat vector on the requested scale."""
    if scale == "natural":
        return model.negloglik_flat
    if scale == "unconstrained":
        spec = model.spec
        return lambda u, data, w: model.negloglik_flat(spec.to_natural(u), data, w)
    raise ValueError(f"scale must be one of {_SCALES}, got {scale!r}")


def _start(model: Model, params: Any, scale: str) -> jax.Array:
    flat = model.spec.flatten(params, model.dtype)
    return model.spec.to_unconstrained(flat) if scale == "unconstrained" else flat


def _build_model_hessian(model: Model, mode: str, scale: str, check: bool = True) -> Callable:
    objective = _objective(model, scale)

    def fn(params, data, weights):
        model.trace_counts["hessian"] += 1
        theta = _start(model, params, scale)
        h, value = _hessian_of(lambda t: objective(t, data, weights), mode, check, model.laplace is None)(theta)
        return _symmetrize(h), _finite(h, value)

    return jax.jit(fn)


def _split_obs(model: Model, data: Any) -> tuple[list, Any, list[bool]]:
    leaves, treedef = jax.tree_util.tree_flatten(data)
    is_obs = [leaf.ndim >= 1 and leaf.shape[0] == model.nobs for leaf in leaves]
    return leaves, treedef, is_obs


def _build_chunked_hessian(model: Model, mode: str, scale: str, chunk: int, check: bool = True) -> Callable:
    objective = _objective(model, scale)
    n_full, rem = divmod(model.nobs, chunk)

    def fn(params, data, weights):
        model.trace_counts["hessian_chunked"] += 1
        theta = _start(model, params, scale)
        leaves, treedef, is_obs = _split_obs(model, data)

        def block(start, size):
            sliced = [
                lax.dynamic_slice_in_dim(leaf, start, size) if obs else leaf
                for leaf, obs in zip(leaves, is_obs)
            ]
            w = None if weights is None else lax.dynamic_slice_in_dim(weights, start, size)
            part = treedef.unflatten(sliced)
            return _hessian_of(lambda t: objective(t, part, w), mode, check)(theta)

        def add(acc, start, size):
            h, value = block(start, size)
            return acc[0] + h, acc[1] + value

        p = theta.shape[0]
        total = (jnp.zeros((p, p), theta.dtype), jnp.zeros((), theta.dtype))
        if n_full:
            # fori_loop + dynamic_slice reads each chunk in place: no reshaped copy of the data.
            total = lax.fori_loop(0, n_full, lambda i, acc: add(acc, i * chunk, chunk), total)
        if rem:
            total = add(total, n_full * chunk, rem)
        return _symmetrize(total[0]), _finite(*total)

    return jax.jit(fn)


def _check_separable(model: Model, chunk: int, params: Any) -> None:
    """Refuse chunking for models whose contributions are not observation-wise separable.

    Tested at the point the Hessian is asked for and at a point a step away from it
    (``_resampling._check_points``): a model's dependence can vanish at particular values (an
    AR(1) at phi = 0 is separable there, and 9% off at phi = 0.5 when chunked), and the
    initial values of a user's model are often such a value. The verdict is cached per model
    and chunk once both points pass, so repeated calls add no work."""
    if model.laplace is not None:
        raise ValueError(
            f"chunk_size slices the data by observation; model {model.name!r} integrates random "
            "effects, whose groups span observations. Compute its Hessian unchunked (one grouping "
            "factor already costs time and memory linear in the number of groups)."
        )
    if not model.per_observation:
        raise ValueError(
            "chunk_size needs per-observation contributions; this Model has per_observation=False"
        )
    if not model.independent:
        raise ValueError(
            f"chunk_size is only valid for independent observations; model {model.name!r} was "
            "declared independent=False (a recursive model such as GARCH). Compute its Hessian "
            "unchunked."
        )
    chunk = min(chunk, model.nobs)
    key = ("separable", chunk)
    if key in model._compiled:
        return
    n = model.nobs
    lo = min(chunk, n // 2)
    hi = min(lo + chunk, n)
    if hi - lo >= 1 and lo > 0:
        if not all(_concrete(leaf) for leaf in jax.tree_util.tree_leaves(params)):
            # under jit/vmap nothing can be evaluated on the host, so the check cannot run here
            raise ValueError(
                f"chunk_size={chunk}: a chunked Hessian checks once per model and chunk size that the "
                "model is separable by observation, on the host, which cannot happen inside jax.jit/"
                "vmap. Call ah.hessian(model, params, chunk_size=...) once outside the transformation "
                "(the verdict is kept), or compute the Hessian unchunked inside it."
            )

        leaves, treedef, is_obs = _split_obs(model, model.data)
        part = treedef.unflatten([leaf[lo:hi] if obs else leaf for leaf, obs in zip(leaves, is_obs)])
        program = model.contributions_program()
        tol = np.sqrt(np.finfo(model.dtype).eps)
        for where, point in _check_points(model, params):
            full = np.asarray(program(point, model.data))
            if not np.all(np.isfinite(full)):
                continue  # outside the likelihood's domain (only the perturbed point can be): no test
            full = full[lo:hi]
            alone = np.asarray(program(point, part))
            if alone.shape != full.shape or not np.allclose(alone, full, rtol=tol, atol=tol * np.max(np.abs(full))):
                flat = np.asarray(model.spec.flatten(point, model.dtype))
                raise ValueError(
                    f"chunk_size={chunk}: at {where.replace('the estimate', 'the requested parameters')} "
                    f"({model.spec.describe(flat)}), the log-likelihood contributions of observations "
                    f"{lo}..{hi - 1} change when those observations are evaluated on their own, so the "
                    "model is not separable by observation (a recursive or pooled model, or a data array "
                    "whose first axis is not the observation axis) and a chunked Hessian would be wrong. "
                    "Declare ah.Model(..., independent=False) and compute the Hessian without chunk_size."
                )
    model._compiled[key] = True


def _concrete(x: jax.Array) -> bool:
    """False under jit/vmap tracing, where a value cannot be inspected (so cannot raise)."""
    return not isinstance(x, jax.core.Tracer)


def _nonfinite_labels(matrix: jax.Array, labels) -> list[str]:
    """Parameters whose own second derivative is not finite (else: any affected row)."""
    host = np.asarray(matrix)
    diag = ~np.isfinite(np.diag(host))
    rows = diag if diag.any() else ~np.isfinite(host).all(axis=1)
    return [lab for lab, bad in zip(labels, rows) if bad]


#: the most frequent reason a finite log-likelihood has a non-finite Hessian, named in every
#: such message (ah.hessian, ah.evaluate, ah.fit): an infinite constant inside the likelihood
#: gives a finite value (cdf(inf) = 1) while a derivative multiplies that infinity by a zero
#: density (the normal pdf's derivative is -z pdf(z): inf * 0 = nan)
INF_CONSTANT_CAUSE = (
    "A common cause: jnp.inf or -jnp.inf used as a constant inside the log-likelihood (the outer "
    "cut points of an ordered model, an integration limit, a bound): the log-likelihood is finite "
    "but its second derivatives contain inf * 0 = nan. Use a large finite value instead (e.g. "
    "+-1e10 for a standard-normal cut point), or write the outer categories without the infinite "
    "constant (1 - cdf(c_last - eta), cdf(c_first - eta))."
)


def nonfinite_hessian_message(model: Model, params: Any, matrix: jax.Array, labels, what: str) -> str:
    """Why the Hessian at ``params`` (``what``: "given parameters", "starting values", ...) is
    not finite although the log-likelihood is: the parameters whose second derivatives are not
    finite, and the common cause."""
    return (
        f"the Hessian has non-finite entries for {_nonfinite_labels(matrix, labels)[:8]} although "
        f"the log-likelihood is finite at the {what} "
        f"({model.spec.describe(model.spec.flatten(params, model.dtype))}); the likelihood is not "
        "twice differentiable there (e.g. sqrt or abs at 0, a boundary of a parameter's domain). "
        + INF_CONSTANT_CAUSE
    )


def _raise_nonfinite_model(model: Model, params: Any, matrix: jax.Array, labels, what: str = "given parameters") -> None:
    model._check_finite_at(params, what)  # raises if the likelihood itself is bad
    if np.isfinite(np.asarray(matrix)).all():
        return  # the fused finiteness flag overflowed on huge but finite entries
    raise FloatingPointError(nonfinite_hessian_message(model, params, matrix, labels, what))


# ------------------------------------------------------------------------------------------
# Plain JAX functions
# ------------------------------------------------------------------------------------------
_FUNCTION_CACHE: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()


def _function_cache(f: Callable) -> dict:
    try:
        return _FUNCTION_CACHE.setdefault(f, {})
    except TypeError:  # not weak-referenceable (e.g. a builtin): no caching across calls
        return {}


def cached_function_program(f: Callable, key: Any, build: Callable[[], Callable]) -> Callable:
    """The compiled program ``build()`` for plain function ``f``, reused across calls only while
    what ``f`` closes over is unchanged.

    JAX bakes the arrays and numbers a function closes over into the compiled program as
    constants, so a cache keyed on ``f`` alone returns the old derivatives after ``A *= 10`` on
    a closed-over numpy array (or after rebinding a global). Not caching costs a compilation per
    call (0.25-0.4 s measured on a 2-core CPU for 3-20 parameters, against 0.4 ms for a cache
    hit), so the cache is keyed on a fingerprint of what ``f`` can see (``closure_fingerprint``)
    and recompiles when it differs.
    """
    cache = _function_cache(f)
    entry = cache.get(key)
    before = closure_fingerprint(f)[0]
    if entry is not None and entry[0] == before:
        return entry[2]
    program = build()
    traced = []
    f_ref = _weak_or_strong(f)  # the cache is weak in f: run must not hold it strongly

    def run(*args):
        out = program(*args)
        f = f_ref()
        if not traced and f is not None:
            # fingerprinted after the first call, i.e. after f was traced: what tracing itself
            # changes (a list f appends to, to count its traces) belongs to the compiled state
            traced.append(True)
            fingerprint, keep = closure_fingerprint(f)
            # programs that were current before this trace stay current after it
            for other, (old, old_keep, old_run) in list(cache.items()):
                if other != key and old == before:
                    cache[other] = (fingerprint, old_keep + keep, old_run)
            cache[key] = (fingerprint, keep, run)  # keep: jax arrays fingerprinted by id stay alive
        return out

    cache[key] = (None, [], run)
    return run


def _prepare_point(x: Any) -> tuple[Any, tuple[str, ...]]:
    dtype = choose_dtype(x)
    if dtype == np.float32:
        float32_warning("x")
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(x)
    if not leaves_with_path:
        raise ValueError("x is empty: nothing to differentiate with respect to")
    leaves, labels = [], []
    for path, leaf in leaves_with_path:
        arr = jnp.asarray(leaf, dtype)
        leaves.append(arr)
        labels.extend(element_labels(path_name(path, "x"), tuple(arr.shape)))
    return treedef.unflatten(leaves), Labels(labels)


def _build_function_derivative(f: Callable, kind: str, mode: str) -> Callable:
    # The compiled function is cached in a WeakKeyDictionary keyed by f: holding f strongly here
    # would keep every cached lambda alive forever.
    f_ref = _weak_or_strong(f)

    def fn(x, *extra):
        flat, unravel = ravel_pytree(x)

        def scalar(t):
            out = f_ref()(unravel(t))
            if jnp.shape(out) != ():
                raise TypeError(f"f must return a scalar, got shape {jnp.shape(out)}")
            return out

        if kind == "hessian":
            h, value = _hessian_of(scalar, mode)(flat)
            return _symmetrize(h), _finite(h, value)
        if kind == "gradient":
            return jax.grad(scalar)(flat)
        (v,) = extra
        return jax.jvp(jax.grad(scalar), (flat,), (v,))[1]

    return jax.jit(fn)


def _weak_or_strong(f: Callable) -> Callable[[], Callable]:
    try:
        return weakref.ref(f)
    except TypeError:
        return lambda: f


def _function_derivative(f: Callable, kind: str, mode: str) -> Callable:
    return cached_function_program(f, (kind, mode), lambda: _build_function_derivative(f, kind, mode))


def _raise_nonfinite_function(matrix: jax.Array, labels) -> None:
    raise FloatingPointError(
        f"the Hessian has non-finite entries for {_nonfinite_labels(matrix, labels)[:8]}: the "
        "function is not finite or not twice differentiable at x. " + INF_CONSTANT_CAUSE.replace("log-likelihood", "function")
    )


# ------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------
def hessian(
    target: Model | Callable,
    params: Any = None,
    *,
    chunk_size: Optional[int] = None,
    weights: Any = None,
    scale: str = "natural",
    mode: Optional[str] = None,
    check: bool = True,
) -> Hessian:
    """Exact Hessian of a model's NEGATIVE total log-likelihood, or of any scalar JAX function.

    Args:
        target: an ``ah.Model`` or a function ``f(x) -> scalar`` written in JAX.
        params: for a model, parameters on the natural scale (a pytree like the model's;
            default: its initial values). For a function, the point ``x`` (any pytree).
        chunk_size: models with independent observations only: accumulate the Hessian over
            blocks of ``chunk_size`` observations inside one compiled loop. Extra memory is then
            about ``k * chunk_size * p * 8`` bytes instead of ``k * N * p * 8`` (``k``: live
            ``chunk x p`` intermediates, 2-3 for a logistic regression; N = 10^6, p = 50 needs
            4 MiB at chunk_size=4096 versus 397 MiB unchunked). ``chunked_memory_bytes`` reads
            the figure from the compiled program. The result equals the unchunked one to rounding.
        weights: optional non-negative per-observation (frequency) weights, shape ``(N,)``.
        scale: ``"natural"`` (the parameters users see; default) or ``"unconstrained"`` (the
            transformed scale optimisers work on; labels read ``log(sigma)``, ``logit(rho)``).
        mode: ``"fwd-rev"``, ``"rev-rev"`` or ``"fwd-fwd"``; default: the model's
            ``hessian_mode`` (``"fwd-rev"`` for plain functions).
        check: raise ``FloatingPointError``/``ValueError`` when the Hessian or the
            log-likelihood is not finite, naming the parameters. This evaluates the
            log-likelihood alongside its derivatives (~15 us of ~55 for a logistic model, its
            ``log1p``; ~3 us where those terms are ``jnp.logaddexp``/``softplus``, replaced by a
            stand-in finite exactly where they are: ``_rules``) and copies one flag to the
            host; ``check=False`` compiles a program without either. Inside ``jax.jit``/``vmap`` nothing can be inspected, so no
            check is made: test ``jnp.isfinite`` on the result there.

    Returns:
        ``Hessian`` with ``.matrix`` (``Float[Array, "p p"]``, symmetric) and ``.labels``.

    Example:
        >>> H = ah.hessian(model, params)
        >>> H = ah.hessian(lambda x: 2 * x[1] * x[0] ** 4, jnp.array([1.0, 2.0]))
    """
    if not isinstance(target, Model):
        if not callable(target):
            raise TypeError(f"target must be an ah.Model or a callable, got {type(target).__name__}")
        if params is None:
            raise TypeError("ah.hessian(f, x): the point x is required for a plain function")
        if chunk_size is not None or weights is not None or scale != "natural":
            raise TypeError("chunk_size, weights and scale apply to ah.Model targets only")
        x, labels = _prepare_point(params)
        matrix, ok = _function_derivative(target, "hessian", mode or "fwd-rev")(x)
        if check and _concrete(ok) and not np.asarray(ok) and not np.isfinite(np.asarray(matrix)).all():
            _raise_nonfinite_function(matrix, labels)
        return Hessian(matrix, labels)

    model = target
    mode = mode or model.hessian_mode
    params = _model_params(model, params, scale=scale)
    w = _model_weights(model, weights)
    if chunk_size is None:
        fn = model._jitted(
            ("hessian", mode, scale, check), lambda: _build_model_hessian(model, mode, scale, check)
        )
    else:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        _check_separable(model, chunk_size, params)
        chunk = int(min(chunk_size, model.nobs))
        fn = model._jitted(
            ("hessian_chunked", mode, scale, chunk, check),
            lambda: _build_chunked_hessian(model, mode, scale, chunk, check),
        )
    matrix, ok = fn(params, model.data, w)
    labels = model.spec.unconstrained_labels if scale == "unconstrained" else model.spec.labels
    if check and _concrete(ok) and not np.asarray(ok):
        _raise_nonfinite_model(model, params, matrix, labels)
    return Hessian(matrix, labels)


def gradient(
    target: Model | Callable,
    params: Any = None,
    *,
    weights: Any = None,
    scale: str = "natural",
) -> jax.Array:
    """Exact gradient of a model's NEGATIVE total log-likelihood (or of a scalar function).

    The sign matches ``hessian``: ``hessian`` is the Jacobian of ``gradient``. Scores follow
    the statistical convention instead (derivatives of the log-likelihood), so
    ``scores(model).sum(0) == -gradient(model)``.

    Returns:
        ``Float[Array, "p"]`` in ``model.labels`` order (for a function: ravelled ``x`` order).
    """
    if not isinstance(target, Model):
        if params is None:
            raise TypeError("ah.gradient(f, x): the point x is required for a plain function")
        x, _ = _prepare_point(params)
        return _function_derivative(target, "gradient", "fwd-rev")(x)
    model = target
    params = _model_params(model, params, scale=scale)
    w = _model_weights(model, weights)
    objective = _objective(model, scale)

    def build():
        def fn(params, data, weights):
            model.trace_counts["gradient"] += 1
            return jax.grad(objective)(_start(model, params, scale), data, weights)

        return jax.jit(fn)

    return model._jitted(("gradient", scale), build)(params, model.data, w)


def scores(model: Model, params: Any = None) -> jax.Array:
    """Per-observation scores ``d loglik_i / d theta`` (log-likelihood, not its negative).

    Computed in forward mode over the contribution vector: ``p`` tangent propagations give all
    ``N x p`` derivatives at once, instead of ``N`` reverse passes.

    Returns:
        ``Float[Array, "N p"]``, columns in ``model.labels`` order.
    """
    if not isinstance(model, Model):
        raise TypeError("scores need an ah.Model with per-observation contributions")
    if not model.per_observation:
        raise ValueError(
            "scores need per-observation contributions: this Model was built with "
            "per_observation=False (loglik returns a scalar), so scores, OPG and sandwich "
            "covariances are unavailable."
        )
    params = _model_params(model, params)
    spec = model.spec

    def build():
        def fn(params, data):
            model.trace_counts["scores"] += 1
            contrib = lambda t: model._loglik(spec.unflatten(t), data)  # noqa: E731
            return jax.jacfwd(contrib)(spec.flatten(params, model.dtype))

        return jax.jit(fn)

    return model._jitted("scores", build)(params, model.data)


def _is_number_sequence(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, np.number)) for x in v)


def hvp(target: Model | Callable, params: Any, v: Any, *, scale: str = "natural") -> jax.Array:
    """Exact Hessian-vector product ``H @ v`` (forward-over-reverse), without forming ``H``.

    Args:
        v: ``Float[Array, "p"]`` in label order, or (for a model) a pytree shaped like the
            parameters.
    """
    if not isinstance(target, Model):
        x, labels = _prepare_point(params)
        v = jnp.asarray(v, ravel_pytree(x)[0].dtype)
        if v.shape != (len(labels),):
            raise ValueError(f"v has shape {v.shape}, expected ({len(labels)},)")
        return _function_derivative(target, "hvp", "fwd-rev")(x, v)
    model = target
    params = _model_params(model, params, scale=scale)
    if isinstance(v, (dict, list, tuple)) and not _is_number_sequence(v):
        # a direction given like the parameters ({"beta": ...}): read it in label order
        v = model.spec.flatten(_model_params(model, v, "v"), model.dtype)
    v = jnp.asarray(v, model.dtype)
    if v.shape != (model.n_params,):
        raise ValueError(
            f"v has shape {v.shape}, expected ({model.n_params},): a flat vector in label order "
            f"({', '.join(model.spec.labels[:8])}{', ...' if model.n_params > 8 else ''}) or a pytree "
            "shaped like the parameters"
        )
    if _concrete(v) and not np.all(np.isfinite(np.asarray(v))):
        raise ValueError(f"v has non-finite entries ({np.asarray(v)}): H @ v would be NaN; pass a finite direction")
    objective = _objective(model, scale)

    def build():
        def fn(params, data, v):
            model.trace_counts["hvp"] += 1
            g = lambda t: jax.grad(objective)(t, data, None)  # noqa: E731
            return jax.jvp(g, (_start(model, params, scale),), (v,))[1]

        return jax.jit(fn)

    return model._jitted(("hvp", scale), build)(params, model.data, v)


def chunked_memory_bytes(model: Model, chunk_size: Optional[int] = None, *, scale: str = "natural") -> int:
    """Temporary memory XLA reserves for ``hessian(model, chunk_size=...)`` (bytes).

    Reads the compiled program's memory analysis without running it; the data themselves are
    not counted. Use it to pick ``chunk_size`` for a memory budget.
    """
    if not isinstance(model, Model):
        raise TypeError(f"chunked_memory_bytes needs an ah.Model, got {type(model).__name__}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer (or None for the unchunked Hessian), got {chunk_size!r}")
    mode = model.hessian_mode
    if chunk_size is None:
        fn = _build_model_hessian(model, mode, scale)
    else:
        fn = _build_chunked_hessian(model, mode, scale, int(min(chunk_size, model.nobs)))
    compiled = fn.lower(model.init_params, model.data, None).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)
