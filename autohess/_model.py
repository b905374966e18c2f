"""``Model``: a log-likelihood, its data and its parameter declarations, checked once."""

from __future__ import annotations

import collections
import inspect
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._config import compiler_options
from ._fingerprint import closure_fingerprint
from ._params import ParamSpec
from ._validation import UNTRACEABLE, check_containers, choose_dtype, float32_warning, from_pandas, not_traceable, prepare_data

__all__ = ["Model", "HESSIAN_MODES"]

HESSIAN_MODES = ("fwd-rev", "rev-rev", "fwd-fwd")


class Model:
    """A log-likelihood with its data and parameters, ready for exact derivatives.

    Args:
        loglik: ``loglik(params, data)`` written in ``jax.numpy``. With ``per_observation=True``
            (the default) it returns the log-likelihood contribution of each observation, shape
            ``(N,)``; that is what scores, OPG and sandwich covariances need. With
            ``per_observation=False`` it returns the total log-likelihood (a scalar); scores,
            chunked Hessians and observation weights are then unavailable. Recursive models
            (GARCH, state space) may use ``lax.scan`` inside and still return ``(N,)``.
        data: pytree (usually a dict) of arrays; pandas ``DataFrame`` / ``Series`` are accepted
            anywhere an array is (converted once, index ignored; a DataFrame's column names are
            kept in ``model.columns``). Floating arrays become float64 (see Dtype); integer and
            boolean arrays keep their dtype, so category codes and group ids can index
            (``cuts[data["y"]]``). NaN, infinite or missing entries raise ``ValueError``.
            The data are copied here: editing the caller's arrays later changes nothing, and
            ``model.data`` cannot be reassigned (use ``with_data``).
        params: pytree of initial values on the natural scale. Leaves are arrays/scalars
            (unconstrained, ``ah.Real``) or transform declarations (``ah.Positive(1.0)``,
            ``ah.Interval(0, 1, 0.5)``).
        per_observation: whether ``loglik`` returns per-observation contributions.
        independent: whether contribution ``i`` depends on observation ``i`` alone (i.i.d. or
            independent non-identical data). Recursive models must pass ``False``; chunked
            Hessians refuse them. autohess also checks this on first chunked use.
        simulate: optional ``simulate(key, params, data) -> data`` drawing a new data set of
            the same structure from the model at ``params`` (used by parametric bootstrap and
            simulation studies; ``data`` is the model's data, for covariates and sizes). Its
            signature is checked here; ``model.simulate(key, params)`` calls it with the
            model's own data.
        support: optional ``support(data)`` written in ``jax.numpy`` saying which data the
            likelihood is defined for: a boolean array, ``True`` where an observation is valid
            (shape ``(N,)``; a scalar for a property of the whole data set), or a dict
            ``{"y must be 0 or 1": array, ...}`` whose keys name each condition. Use it for
            derived data leaves too (``log_y_factorial`` must equal ``gammaln(y + 1)``). The
            constructor raises ``ValueError`` for data that fail it; ``fit_batch`` evaluates
            it for every member of a data batch, and a failing member gets status
            ``NONFINITE`` with the failed condition in ``BatchResult.status`` (not an
            exception for the whole batch). The zoo's models declare theirs.
        hessian_mode: how the exact Hessian is formed: ``"fwd-rev"`` (forward-over-reverse,
            the default: one reverse pass, ``p`` forward tangents), ``"rev-rev"`` (reverse-
            over-reverse; on CPU it lays the ``p`` directions out as the major axis, which
            makes the final ``X' W X``-type contraction faster for regression models: the
            zoo's GLMs use it) or ``"fwd-fwd"`` (no reverse sweep; only for very few
            parameters). All three give the same matrix up to rounding.
        name: optional name shown in reports.
        names: optional element names for array parameters, ``{"beta": ["const", "age"]}``
            (any sequence of the parameter's length, e.g. a pandas ``Index`` such as
            ``X.columns``), labelling ``beta[age]`` instead of ``beta[1]``. For a parameter with
            ``k >= 2`` axes, a sequence of ``k`` entries, one per axis, each a sequence or
            ``None`` (index kept): ``{"B": (outcomes, regressors)}`` gives ``B[car,age]``,
            ``{"B": (None, regressors)}`` gives ``B[0,age]``. Wherever a parameter is named
            by its label (``ah.profile``), the index label ``beta[1]`` is accepted too. Keys
            are parameter names as labels print them (a nested ``{"mean": {"beta": ...}}`` is
            ``"mean.beta"``).

    Dtype: computation is float64 unless every floating input (data and parameters) is
    explicitly float32, in which case it is float32 and a ``Float32Warning`` is issued.

    Example:
        >>> def loglik(params, data):
        ...     eta = data["X"] @ params["beta"]
        ...     return data["y"] * eta - jnp.logaddexp(0.0, eta)
        >>> model = ah.Model(loglik, {"X": X, "y": y}, {"beta": jnp.zeros(X.shape[1])})
        >>> ah.hessian(model).matrix.shape
        (3, 3)
    """

    def __init__(
        self,
        loglik: Callable[[Any, Any], jax.Array],
        data: Any,
        params: Any,
        *,
        per_observation: bool = True,
        independent: bool = True,
        simulate: Optional[Callable[..., Any]] = None,
        hessian_mode: str = "fwd-rev",
        name: Optional[str] = None,
        support: Optional[Callable[[Any], Any]] = None,
        names: Optional[dict] = None,
        random: Optional[dict] = None,
    ):
        if not callable(loglik):
            raise TypeError(f"loglik must be a function loglik(params, data), got {type(loglik).__name__}")
        if hessian_mode not in HESSIAN_MODES:
            raise ValueError(f"hessian_mode must be one of {HESSIAN_MODES}, got {hessian_mode!r}")
        if support is not None and not callable(support):
            raise TypeError(f"support must be a function support(data), got {type(support).__name__}")
        check_containers(params, "params", numbers_ok=True)
        check_containers(data, "data")
        self.spec = ParamSpec(params, root="theta", names=names)
        self.names = self.spec.element_names  # normalised; what with_data passes on
        data, columns = from_pandas(data)
        #: ``{data leaf: column names}`` for each leaf given as a pandas DataFrame, e.g.
        #: ``{"data['X']": ("const", "age")}``; pass them on as ``names={"beta": ...}``
        self.columns: dict = columns
        self.dtype = choose_dtype(data, [t.init for t in self.spec.transforms])
        if self.dtype == np.float32:
            float32_warning("every floating input (data and parameters)")
        self._data = prepare_data(data, self.dtype)
        self.per_observation = bool(per_observation)
        self._user_per_observation = self.per_observation  # as given (a Laplace model changes the first)
        self.independent = bool(independent) and self.per_observation
        _check_simulate(simulate)
        self.simulate_fn = simulate
        self.support_fn = support
        #: ``data -> (params, ok)``, a data-dependent starting point that ``fit`` uses when no
        #: ``start`` is given, computed inside the compiled solve (``ok`` False, or a point
        #: outside the parameters' domain, keeps ``init_params``). The zoo sets it (least
        #: squares for the normal linear model, one weighted least-squares step for the GLMs):
        #: a start near the optimum saves Newton iterations, each a full Hessian.
        self.start_fn: Optional[Callable[[Any], Any]] = None
        self.hessian_mode = hessian_mode
        self.name = name or getattr(loglik, "__name__", "model")
        self._loglik = loglik
        # what the user wrote, whatever the model integrates (the fingerprint of what they see)
        self._user_functions = (loglik, support, simulate)
        #: the user's ``random=`` declarations (``None`` without random effects)
        self.random = random
        #: names that label ``res.random[name]``: ``{name: levels}`` or, for a ``(G, q)``
        #: effect, ``{name: (levels, coefficients)}``, each a sequence in code order or
        #: ``None``. The zoo's mixed models fill it; data take integer group codes only, so
        #: for your own model set it: ``model.random_names = {"b": herd_names}``
        self.random_names: dict = {}
        #: ``_laplace.Laplace`` of a random-effects model (``None`` without): its ``marginal``
        #: is then the log-likelihood every fit, Hessian and batch sees
        self.laplace = None
        #: number of observations (rows of data) the user's loglik sees; with random effects,
        #: ``nobs`` counts the contributions of the marginal (groups), this the observations
        self.n_observations: Optional[int] = None
        if random is not None:
            self._integrate(random, params, loglik, simulate, support)
        # Incremented from inside traced functions only: counts (re)compilations, so tests and
        # users can check that repeated calls reuse the compiled program.
        self.trace_counts: collections.Counter = collections.Counter()
        self._compiled: dict = {}
        self._closure_state: Any = None  # see _jitted
        self._closure_kept: list = []
        self.init_params = self.spec.init_tree(self.dtype)
        if self.laplace is not None:
            # the marginal's output is one contribution per group (block-diagonal) or a total:
            # known from the structure; tracing the whole marginal (inner loop, implicit
            # derivatives) for its shape took 0.1-0.4 s of every construction. The user's
            # loglik itself was checked by ``_integrate``
            s = self.laplace.structure
            self.nobs = s.n_levels if s.block_diagonal else None
        else:
            self.nobs = self._check_output()
            self.n_observations = self.nobs
        self._check_support()
        self._check_finite_at(self.init_params, "initial parameters")

    # -- public views ------------------------------------------------------------------------
    @property
    def data(self) -> Any:
        """The model's data: a copy made at construction, as jax arrays (immutable)."""
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        # Refused: the number of observations, the support check, derived leaves (a GLM's
        # log_y_factorial) and compiled programs were all made for the data given at
        # construction; swapping the data under them would mix two data sets.
        raise AttributeError(
            f"model.data cannot be reassigned: {self.name!r} was checked and compiled for its data. "
            "Build a model for the new data with model.with_data(new_data) (checks them again), "
            "or the zoo's constructor again (e.g. ah.models.logistic(X, y)) where the data have "
            "derived leaves such as log_y_factorial."
        )

    @property
    def labels(self) -> tuple[str, ...]:
        """Labels of the flat parameter vector, e.g. ``("beta[0]", ..., "sigma")``."""
        return self.spec.labels

    @property
    def n_params(self) -> int:
        return self.spec.size

    def __repr__(self) -> str:
        return (
            f"Model({self.name!r}, nobs={self.nobs}, params={self.n_params}, "
            f"dtype={self.dtype.name}, per_observation={self.per_observation})"
        )

    def flatten(self, params: Any) -> jax.Array:
        """Natural-scale parameter pytree -> flat vector in ``labels`` order."""
        self.spec.check_structure(params)
        return self.spec.flatten(params, self.dtype)

    def unflatten(self, flat: Any) -> Any:
        """Flat vector in ``labels`` order -> natural-scale parameter pytree."""
        flat = jnp.asarray(flat, self.dtype)
        if flat.shape != (self.n_params,):
            raise ValueError(f"flat parameter vector has shape {flat.shape}, expected ({self.n_params},)")
        return self.spec.unflatten(flat)

    def loglik(self, params: Any = None) -> float:
        """Total log-likelihood at ``params`` (natural scale; default: initial values)."""
        params = self.init_params if params is None else params
        return float(jnp.sum(self.contributions(params)))

    def contributions(self, params: Any = None) -> jax.Array:
        """Per-observation log-likelihood contributions (shape ``(N,)``), or the scalar total."""
        params = self.init_params if params is None else params
        self.spec.check_structure(params)
        return self.contributions_program()(params, self.data)

    def contributions_program(self) -> Callable:
        """``(params, data) -> contributions``, compiled once per model (the check at
        construction, ``loglik``/``contributions``, the separability checks): programs run a
        few times per model, so built with ``compiler_options(once=True)`` (GARCH-t's 1500-step
        recursion: 0.23 -> 0.09 s to compile, 0.12 ms to run either way)."""
        return self._jitted("contributions", lambda: jax.jit(self.traced_loglik, compiler_options=compiler_options(once=True)))

    def simulate(self, key: jax.Array, params: Any = None) -> Any:
        """Draw a data set from the model at ``params`` (needs ``simulate=`` at construction)."""
        if self.simulate_fn is None:
            raise NotImplementedError(
                f"model {self.name!r} has no simulate function: pass simulate=... to ah.Model"
            )
        params = self.init_params if params is None else params
        return self.simulate_fn(key, params, self.data)

    def with_data(self, data: Any) -> "Model":
        """A model with the same likelihood and parameters and new data (checked again)."""
        declared = self.spec.treedef.unflatten(list(self.spec.transforms))
        # a random-effects model is rebuilt from what the user gave (its ``_loglik`` is the
        # Laplace marginal built from them); a plain one from its current functions (the zoo
        # attaches its support hook after construction)
        if self.random is not None:
            loglik, support, simulate = self._user_functions
        else:
            loglik, support, simulate = self._loglik, self.support_fn, self.simulate_fn
        new = Model(
            loglik,
            data,
            declared,
            per_observation=self._user_per_observation,
            independent=self.independent,
            simulate=simulate,
            hessian_mode=self.hessian_mode,
            name=self.name,
            support=support,
            names=self.names,
            random=self.random,
        )
        new.start_fn = self.start_fn  # a function of the data: as valid for the new data
        return new

    # -- traced building blocks ------------------------------------------------------------------
    def traced_loglik(self, params: Any, data: Any) -> jax.Array:
        """The user's loglik, counted: every call here happens while JAX traces."""
        self.trace_counts["contributions"] += 1
        return self._loglik(params, data)

    def negloglik_flat(self, flat: jax.Array, data: Any, weights: Optional[jax.Array]) -> jax.Array:
        """Negative total log-likelihood as a function of the flat natural-scale vector."""
        contrib = self._loglik(self.spec.unflatten(flat), data)
        if weights is not None:
            contrib = weights * contrib
        return -jnp.sum(contrib)

    def _jitted(self, key: Any, build: Callable[[], Callable]) -> Callable:
        # The user's functions may close over numpy arrays or numbers, which JAX bakes into
        # every compiled program as constants: when what they can see has changed since the
        # programs were compiled, they are dropped and compiled again (the data themselves are
        # copied at construction and cannot change). ~0.1 ms for the zoo's functions.
        if self._closure_fingerprint()[0] != self._closure_state:
            self._compiled.clear()
        fn = self._compiled.get(key)
        if fn is None:
            fn = self._compiled[key] = self._refreshing(build())
        return fn

    def _closure_fingerprint(self) -> tuple:
        return closure_fingerprint(self._user_functions)

    def _refreshing(self, program: Callable) -> Callable:
        """``program``, recording what the user's functions close over after its first call,
        i.e. after they were traced for it: what tracing itself changes (a list a loglik
        appends to, to count its traces) is then part of the compiled state, not a change."""
        traced = []

        def run(*args, **kwargs):
            out = program(*args, **kwargs)
            if not traced:
                traced.append(True)
                self._closure_state, self._closure_kept = self._closure_fingerprint()
            return out

        run.__wrapped__ = program
        return run

    # -- random effects ---------------------------------------------------------------------------
    def _integrate(self, random: Any, params: Any, loglik: Callable, simulate: Optional[Callable],
                   support: Optional[Callable]) -> None:
        """Make the model's log-likelihood the Laplace marginal over ``random`` (see
        ``_laplace``); the user's ``loglik`` becomes the conditional one it integrates."""
        from ._laplace import MAX_DENSE, Laplace, check_block_diagonal, check_crossed
        from ._laplace_structure import dense_size, make_structure
        from ._random import resolve_random

        blocks = resolve_random(random, params, self._data)
        init = self.spec.init_tree(self.dtype)
        with_zeros = {**init, **{b.name: jnp.zeros(b.shape, self.dtype) for b in blocks}}
        n = self._check_output(loglik, with_zeros)
        self.n_observations = n
        for b in blocks:
            if b.groups is not None and n is not None and self._data[b.groups].shape[0] != n:
                raise ValueError(
                    f"random[{b.name!r}]: data[{b.groups!r}] has {self._data[b.groups].shape[0]} group codes "
                    f"but loglik returns {n} contributions: give one code per observation"
                )
        block_diagonal = len(blocks) == 1 and blocks[0].groups is not None and n is not None
        #: why a single grouped random effect was integrated with a dense Hessian (or ``None``)
        self.dense_reason = None
        if block_diagonal:
            self.dense_reason = check_block_diagonal(loglik, blocks[0], init, self._data)
            block_diagonal = self.dense_reason is None
        crossed = (not block_diagonal and n is not None and len(blocks) > 1
                   and all(b.groups is not None for b in blocks)
                   and check_crossed(loglik, blocks, init, self._data) is None)
        structure = make_structure(blocks, block_diagonal, crossed, self._data)
        if not block_diagonal and dense_size(structure) > MAX_DENSE:
            why = f" ({self.dense_reason})" if self.dense_reason else ""
            raise ValueError(
                f"{self.name}: {structure.size} random coefficients in one dense inner Hessian{why}; "
                f"the dense Laplace path takes at most {MAX_DENSE}. One grouping factor whose "
                "observations each use only their own group's coefficients is integrated block by "
                "block, for any number of groups"
            )
        self.laplace = Laplace(loglik, structure)
        self._loglik = self.laplace.marginal
        # the marginal's contributions: one per group (the independent units) or one total
        self.per_observation = block_diagonal
        self.independent = False
        self.support_fn = _with_group_support(support, blocks)
        if simulate is not None:
            self.simulate_fn = _with_random_draws(simulate, self.laplace)

    # -- construction-time checks -----------------------------------------------------------------
    def _check_output(self, loglik: Optional[Callable] = None, params: Any = None) -> Optional[int]:
        loglik = self._loglik if loglik is None else loglik
        params = self.init_params if params is None else params
        try:
            out = jax.eval_shape(loglik, params, self.data)
        except UNTRACEABLE as err:
            raise not_traceable("loglik", err) from err
        except (TypeError, ValueError, IndexError) as err:
            named = list(_flat_named(self.data).items())
            shapes = ", ".join(f"{k!r}: {tuple(np.shape(v))}" for k, v in named[:10])
            shapes += f", ... ({len(named)} arrays in all)" if len(named) > 10 else ""
            context = f"loglik failed on the initial parameters and data (data shapes {{{shapes}}})"
            if type(err) not in (TypeError, ValueError, IndexError):
                # the user's own exception class: its constructor may take other arguments, and
                # its type is what the user's code catches, so it is raised as it is, with a note
                err.add_note(context)
                raise
            raise type(err)(f"{context}: {err}") from err
        if not isinstance(out, jax.ShapeDtypeStruct):
            raise TypeError(
                f"loglik must return one array, got a {type(out).__name__}: {jax.tree_util.tree_structure(out)}"
            )
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise TypeError(f"loglik must return floating values, got dtype {out.dtype} (shape {out.shape})")
        if self.per_observation:
            if out.ndim != 1:
                raise TypeError(
                    f"loglik returned shape {out.shape}; with per_observation=True it must return "
                    "one contribution per observation, shape (N,). Return the unsummed "
                    "contributions, or pass per_observation=False for a scalar total."
                )
            return int(out.shape[0])
        if out.shape != ():
            raise TypeError(
                f"loglik returned shape {out.shape}; with per_observation=False it must return "
                "the total log-likelihood, a scalar of shape ()."
            )
        return None

    def _check_support(self) -> None:
        if self.support_fn is None:
            return
        # evaluated as fit_batch does (compiled, vmap over a batch of one), so a hook that JAX
        # cannot trace is refused here rather than at the first batch
        one = jax.tree_util.tree_map(lambda a: a[None], self.data)
        masks = self.support_masks(one)
        failures = [text for text in (describe_support_failure(c, ok[0]) for c, ok in masks.items()) if text]
        if failures:
            raise ValueError(f"{self.name}: the data fail the model's support check: " + "; ".join(failures))

    def support_masks(self, data_batch: Any) -> dict:
        """``{condition: (B, ...) boolean numpy array}``: the ``support`` hook ``vmap``-ed over
        the leading (batch) axis of ``data_batch``, compiled once per model and data shape (the
        Poisson hook measured 60 ms to compile on a 2-core CPU, 0.4 s run op by op)."""
        fn = self.support_fn
        program = self._jitted(("support", fn), lambda: jax.jit(jax.vmap(fn)))
        try:
            out = program(data_batch)
        except UNTRACEABLE as err:
            raise not_traceable("support", err) from err
        named = out if isinstance(out, dict) else {"data inside the model's support": out}
        masks = {}
        for cond, ok in named.items():
            arr = np.asarray(ok)
            if arr.dtype != np.bool_:
                raise TypeError(f"support must return booleans (True = valid); {cond!r} has dtype {arr.dtype}")
            masks[str(cond)] = arr
        return masks

    def _check_finite_at(self, params: Any, what: str) -> None:
        if self.laplace is not None:
            # the joint density at random effects 0, not the marginal: compiling the whole
            # Laplace marginal here cost 2-11 s per model (the fit compiles its own program);
            # an inner maximisation that fails later is named by the fit's diagnostics
            from ._laplace_results import inner_failures, joint_at_zero

            if np.all(np.isfinite(np.asarray(joint_at_zero(self)(params, self.data)))):
                return
            found = inner_failures(self, params)
            if found:
                flat = np.asarray(self.spec.flatten(params, self.dtype))
                raise ValueError(
                    f"the Laplace log marginal likelihood is not finite at the {what} "
                    f"({self.spec.describe(flat)}): " + "; ".join(text for _, text in found)
                    + ". Choose starting values closer to the data (a smaller random-effect standard "
                    "deviation), or check the conditional log-likelihood of those groups"
                )
        contrib = np.asarray(self.contributions(params))
        finite = np.isfinite(contrib)
        if finite.all():
            return
        flat = np.asarray(self.spec.flatten(params, self.dtype))
        where = ""
        if contrib.ndim == 1:
            bad = np.flatnonzero(~finite)
            where = f": {bad.size} of {contrib.size} contributions are not finite (first at observation {bad[0]})"
        raise ValueError(
            f"log-likelihood is not finite at the {what} ({self.spec.describe(flat)}){where}. "
            "Choose starting values inside the support of the model, or check the data."
        )


def _check_simulate(simulate: Optional[Callable]) -> None:
    """``simulate`` must take ``(key, params, data)``: checked when the model is built, since a
    wrong arity would otherwise surface only inside a compiled bootstrap, as a bare TypeError."""
    if simulate is None:
        return
    if not callable(simulate):
        raise TypeError(f"simulate must be a function simulate(key, params, data) -> data, got {type(simulate).__name__}")
    try:
        signature = inspect.signature(simulate)
    except (TypeError, ValueError):
        return  # no signature to read (a builtin): the first call tells
    try:
        signature.bind(None, None, None)
    except TypeError as err:
        name = getattr(simulate, "__name__", type(simulate).__name__)
        raise TypeError(
            f"simulate={name}{signature} cannot be called as simulate(key, params, data) ({err}). "
            "Write it as simulate(key, params, data) -> data: autohess passes the model's data "
            "(covariates, sizes) as the third argument; ignore it if you do not need it "
            "(model.simulate(key, params) is the bound method that supplies it)."
        ) from None


def _with_group_support(support: Optional[Callable], blocks: tuple) -> Callable:
    """The user's ``support`` plus, for each grouped random effect, its codes in ``0..G-1`` (a
    data batch member with a code beyond ``G`` would index past ``b`` silently in JAX)."""

    def check(data):
        out = {}
        if support is not None:
            own = support(data)
            out.update(own if isinstance(own, dict) else {"data inside the model's support": own})
        for b in blocks:
            if b.groups is not None:
                codes = data[b.groups]
                out[f"data[{b.groups!r}] must hold codes 0..{b.n_levels - 1} (the levels of random effect {b.name!r})"] = (
                    (codes >= 0) & (codes < b.n_levels)
                )
        return out

    return check


def _with_random_draws(simulate: Callable, laplace: Any) -> Callable:
    """``simulate(key, params, data)`` of the whole model: the random effects are drawn from
    their distributions, then the user's ``simulate`` draws the data given them (it receives
    ``params`` with the random effects in, as ``loglik`` does)."""
    missing = [b.name for b in laplace.structure.blocks if b.sample is None]

    def draw(key, params, data):
        if missing:
            raise NotImplementedError(
                f"random effect(s) {missing} cannot be drawn: give ah.Latent(..., sample=fn) so a "
                "parametric bootstrap or simulation study can simulate them"
            )
        k_random, k_data = jax.random.split(key)
        return simulate(k_data, {**params, **laplace.sample(k_random, params)}, data)

    return draw


def describe_support_failure(cond: str, ok: np.ndarray) -> Optional[str]:
    """``None`` when every entry of ``ok`` holds, else ``cond`` with the count and first index."""
    ok = np.asarray(ok)
    if ok.all():
        return None
    if ok.ndim == 0:
        return cond
    bad = np.flatnonzero(~ok.reshape(-1))
    first = np.unravel_index(int(bad[0]), ok.shape)
    first_txt = int(first[0]) if ok.ndim == 1 else tuple(int(i) for i in first)
    return f"{cond}: {bad.size} of {ok.size} observations fail (first at index {first_txt})"


def _flat_named(tree: Any) -> dict:
    from ._params import path_name

    return {path_name(p, "data"): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
