"""Inference on the random effects after a fit, and what went wrong with them, in words.

Conditional modes with their standard errors (``RandomEffectEstimate``, ``random_effects``,
TMB ``sdreport``'s formula with the exact derivative of the mode), the generalised delta method
for functions of fixed and random effects (``delta_random``), level names, and the sentences
the model's checks and the fit's diagnostics use (``inner_failures``, ``describe_parameter``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._config import compiler_options
from ._format import format_table
from ._laplace_structure import Structure
from ._random import Block


# ------------------------------------------------------------------------------------------
# Inference on the random effects (after a fit)
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RandomEffectEstimate:
    """Conditional modes of one random effect with their standard errors, shaped like it.

    ``se_conditional``: ``sqrt(diag((-H_uu)^{-1}))`` at the estimate, the spread of the random
    effect given the data *and* the estimated parameters. ``se``: adds the uncertainty of the
    parameters, ``(du_hat/dtheta) V (du_hat/dtheta)'`` (TMB ``sdreport``'s formula, here with
    the exact derivative of the mode), so ``se >= se_conditional``. ``converged``: whether each
    group's inner maximisation converged there. ``levels``: the names of the groups in code
    order (``None``: the groups are the integer codes ``0..G-1``); ``coefficients``: the names
    of a ``(G, q)`` effect's ``q`` coefficients (``None``: ``0..q-1``). The zoo's mixed models
    fill both (``model.random_names``: a pandas categorical's categories or the sorted text
    labels, the columns of ``Z``).
    """

    name: str
    mode: jax.Array
    se: jax.Array
    se_conditional: jax.Array
    converged: jax.Array
    levels: Optional[tuple] = None
    coefficients: Optional[tuple] = None

    def conf_int(self, alpha: float = 0.05, *, conditional: bool = False, frame: bool = False) -> Any:
        """Wald intervals ``mode -/+ z se`` (trailing axis: lower, upper); ``frame=True``: a
        pandas DataFrame with columns ``lower`` and ``upper``, indexed as ``to_frame``."""
        from jax.scipy.stats import norm

        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        z = norm.ppf(1.0 - alpha / 2.0)
        se = self.se_conditional if conditional else self.se
        out = jnp.stack([self.mode - z * se, self.mode + z * se], axis=-1)
        if not frame:
            return out
        from ._pandas import require_pandas

        pd = require_pandas("conf_int(frame=True)", "conf_int() (an array shaped like the random effect, plus a "
                            "trailing axis of 2) with .levels")
        ci = np.asarray(out, dtype=np.float64).reshape(-1, 2)
        return pd.DataFrame({"lower": ci[:, 0], "upper": ci[:, 1]}, index=self._index(pd))

    def to_frame(self, alpha: float = 0.05) -> Any:
        """A pandas DataFrame, one row per group (per group and coefficient for a ``(G, q)``
        effect: a two-level index ``level``, ``coefficient``), indexed by the level names
        where known: ``mode``, ``se``, ``se_conditional``, the Wald interval with the
        parameters' uncertainty (``lower``, ``upper``) and the one given the estimates
        (``lower_conditional``, ``upper_conditional``), at level ``1 - alpha``."""
        from ._pandas import require_pandas

        pd = require_pandas("to_frame()", "mode, se, se_conditional and conf_int() (arrays) with .levels")
        flat = lambda a: np.asarray(a, dtype=np.float64).reshape(-1)  # noqa: E731
        ci = np.asarray(self.conf_int(alpha), dtype=np.float64).reshape(-1, 2)
        cc = np.asarray(self.conf_int(alpha, conditional=True), dtype=np.float64).reshape(-1, 2)
        return pd.DataFrame(
            {"mode": flat(self.mode), "se": flat(self.se), "se_conditional": flat(self.se_conditional),
             "lower": ci[:, 0], "upper": ci[:, 1], "lower_conditional": cc[:, 0], "upper_conditional": cc[:, 1]},
            index=self._index(pd),
        )

    def _index(self, pd: Any) -> Any:
        shape = tuple(np.shape(self.mode))
        if len(shape) == 1:
            return pd.Index(list(self.levels) if self.levels is not None else range(shape[0]), name="level")
        if len(shape) == 2:
            rows = list(self.levels) if self.levels is not None else range(shape[0])
            cols = list(self.coefficients) if self.coefficients is not None else range(shape[1])
            return pd.MultiIndex.from_product([rows, cols], names=["level", "coefficient"])
        return pd.MultiIndex.from_tuples(list(np.ndindex(*shape)))  # a Latent block: positions

    def __repr__(self) -> str:
        named = ""
        if self.levels is not None:
            named += f", levels=({short_names(self.levels)})"
        if self.coefficients is not None:
            named += f", coefficients={tuple(self.coefficients)}"
        return f"RandomEffectEstimate({self.name!r}, shape={tuple(self.mode.shape)}{named})"

    def __str__(self) -> str:
        """The modes and their standard errors, one row per group (at most 30 shown)."""
        mode, se, sec = (np.asarray(a, dtype=np.float64) for a in (self.mode, self.se, self.se_conditional))
        shape = mode.shape
        G = shape[0] if mode.ndim >= 1 else 1
        mode, se, sec = (a.reshape(G, -1) for a in (mode, se, sec))
        q = mode.shape[1]
        names = [str(v) for v in (self.levels if self.levels is not None else range(G))]
        cols = [str(c) for c in (self.coefficients if self.coefficients is not None else range(q))]
        rows = []
        for g in range(min(G, _SHOWN_LEVELS)):
            for k in range(q):
                label = names[g] if q == 1 else f"{names[g]} [{cols[k]}]"
                rows.append([label, mode[g, k], se[g, k], sec[g, k]])
        title = f"random effect {self.name}: conditional modes, {G} {'level' if G == 1 else 'levels'}"
        text = format_table(["level", "mode", "se", "se_conditional"], rows, title)
        if G > _SHOWN_LEVELS:
            text += f"\n... {G - _SHOWN_LEVELS} more levels (to_frame() has them all)"
        return text


#: rows of ``str(RandomEffectEstimate)`` before it says how many more there are
_SHOWN_LEVELS = 30


def short_names(names: tuple) -> str:
    """Up to 6 names in full, else the first three and the last two around ``...``."""
    shown = names if len(names) <= 6 else tuple(names[:3]) + ("...",) + tuple(names[-2:])
    return ", ".join(shown)


def _nan_as_zero(a: jax.Array) -> jax.Array:
    return jnp.where(jnp.isnan(a), 0.0, a)


def conditional_program(model: Any) -> Callable:
    """Compiled ``(params_flat, cov, data, u0) -> (modes, se_conditional, se, converged)``,
    each ``{name: array}`` (the first three shaped like the random effect, ``converged`` one
    flag per level), the inner maximisation started at ``u0`` ``(G, q)`` (the fit's modes,
    ``FitResult.random_modes``, where it kept them: one Newton step instead of ~20 on
    grouseticks' crossed path; else zeros): the modes,
    ``sqrt(diag((-H_uu)^{-1}))`` and ``sqrt`` of that variance plus ``diag(J V J')`` with
    ``J = du_hat/dtheta`` ``(G, q, p)`` (NaN where ``V``'s NaN entries reach it)."""
    lap, spec = model.laplace, model.spec

    def run(params_flat, cov, data, u0):
        u, var_c, solve, inner = lap.conditional_moments(spec.unflatten(params_flat), data, u0)
        # J = (-H_uu)^{-1} d_theta g_u at the mode: the implicit function theorem, as the mode's
        # own derivative rule (``_implicit_jvp``) applies it, with the factorisation above.
        # Taking ``jacfwd`` of ``lap.mode`` instead traced a second inner Newton loop and a
        # second factorisation into this program (cbpp: 1.6 s CPU to compile, 2/3 of it those)
        u0 = jax.lax.stop_gradient(u)
        dg = jax.jacfwd(lambda t: lap.grad_u(u0, spec.unflatten(t), data))(params_flat)  # (G, q, p)
        J = solve(dg)
        var_p = jnp.einsum("gik,kl,gil->gi", J, _nan_as_zero(cov), J)
        touched = jnp.einsum("gik,kl,gil->gi", jnp.abs(J), jnp.isnan(cov).astype(cov.dtype), jnp.abs(J)) > 0
        var_p = jnp.where(touched, jnp.nan, var_p)
        # square roots and the split by random effect here, not op by op after the call
        # (three programs fewer to compile)
        s = lap.structure
        conv = {b.name: inner.converged if s.block_diagonal else jnp.broadcast_to(inner.converged, (b.n_levels,))
                for b in s.blocks}
        return s.split(u), s.split(jnp.sqrt(var_c)), s.split(jnp.sqrt(var_c + var_p)), conv

    # run once per fit, so compiled without LLVM's optimiser (``compiler_options(once=True)``):
    # grouseticks' program 3.0 -> 1.2 s CPU to compile, 0.9 -> 1.8 ms to run; cbpp 0.64 ->
    # 0.36 s, 0.19 -> 0.25 ms. (Level 1 compiled as slowly as level 2; for the solve program,
    # run ~7 times per fit, level 1 saved 10-15% of its compile and level 0 halved its speed.)
    return model._jitted("random_effects", lambda: jax.jit(run, compiler_options=compiler_options(once=True)))


def random_effects(model: Any, params_flat: jax.Array, cov: jax.Array, u0: Optional[jax.Array] = None) -> dict:
    """``{name: RandomEffectEstimate}`` at ``params_flat`` with parameter covariance ``cov``;
    ``u0`` ``(G, q)``: the modes there if known (the inner maximisation starts from them)."""
    s = model.laplace.structure
    if u0 is None:
        u0 = np.zeros((s.n_levels, s.q), model.dtype)  # numpy: no eager program per shape
    modes, ses_c, ses, converged = conditional_program(model)(params_flat, cov, model.data, u0)
    out = {}
    for b in s.blocks:
        levels, coefficients = level_names(model, b)
        out[b.name] = RandomEffectEstimate(b.name, modes[b.name], ses[b.name], ses_c[b.name], converged[b.name],
                                           levels, coefficients)
    return out


def level_names(model: Any, block: Block) -> tuple[Optional[tuple], Optional[tuple]]:
    """``(levels, coefficients)`` of random effect ``block`` from ``model.random_names`` (the
    zoo fills it; a user may set it): ``{name: levels}``, or ``{name: (levels, coefficients)}``
    for a ``(G, q)`` effect; each a sequence of names or ``None``. Checked against the
    effect's shape here, where the names are used."""
    entry = (getattr(model, "random_names", None) or {}).get(block.name)
    if entry is None or block.kind == "latent":
        return None, None
    levels, coefficients = entry, None
    if block.kind == "mvnormal" and isinstance(entry, tuple) and len(entry) == 2 and (
            entry[0] is None or not isinstance(entry[0], (str, int, np.integer))):
        levels, coefficients = entry
    out = []
    for names, size, what in ((levels, block.n_levels, "levels"), (coefficients, block.q, "coefficients")):
        if names is None:
            out.append(None)
            continue
        names = tuple(str(v) for v in names)
        if len(names) != size:
            raise ValueError(
                f"model.random_names[{block.name!r}] has {len(names)} names for the {what} but random effect "
                f"{block.name!r} has {size} {what} (groups data[{block.groups!r}]"
                + (f", {block.q} coefficients each" if block.q > 1 else "") + "): give one name per code 0.."
                f"{size - 1}, in code order"
            )
        out.append(names)
    return out[0], out[1]


def delta_random(model: Any, params_flat: jax.Array, cov: jax.Array, fn: Callable, flatten: Callable):
    """``(A, conditional)`` for ``fn(params, random)``: ``A`` the total derivative in ``theta``
    (through ``u_hat(theta)``) and ``G_u (-H_uu)^{-1} G_u'``, the conditional part of
    ``Var(fn) = A V A' + G_u (-H_uu)^{-1} G_u'`` (TMB's ``ADREPORT`` covariance)."""
    lap, spec, s = model.laplace, model.spec, model.laplace.structure
    data = model.data

    def run(params_flat):
        params = spec.unflatten(params_flat)
        u, C, _ = lap.conditional(params, data)
        A = jax.jacfwd(lambda t: flatten(fn(spec.unflatten(t), s.split(lap.mode(spec.unflatten(t), data)[0]))))(params_flat)
        Gu = jax.jacfwd(lambda v: flatten(fn(params, s.split(v))))(u)  # (m, G, q)
        return A, jnp.einsum("mgi,gij,ngj->mn", Gu, C, Gu)

    return jax.jit(run, compiler_options=compiler_options(once=True))(params_flat)


# ------------------------------------------------------------------------------------------
# What went wrong, in words (construction checks and the fit's diagnostics)
# ------------------------------------------------------------------------------------------
def _levels(structure: Structure, bad: np.ndarray) -> str:
    idx = np.flatnonzero(bad)
    shown = ", ".join(str(int(i)) for i in idx[:5]) + (", ..." if idx.size > 5 else "")
    if structure.block_diagonal:
        return f"{idx.size} of {structure.n_levels} groups of data[{structure.groups!r}] (group {shown})"
    return "the joint block of all random effects"


def joint_at_zero(model: Any) -> Callable:
    """Compiled ``(params, data) -> j(0, theta)`` per level: the joint log density at random
    effects 0, where the inner maximisation starts."""
    lap, s = model.laplace, model.laplace.structure
    return model._jitted("joint0", lambda: jax.jit(
        lambda p, d: lap.joint(jnp.zeros((s.n_levels, s.q), model.dtype), p, d), compiler_options=compiler_options(once=True)))


def inner_failures(model: Any, params: Any) -> list[tuple[str, str]]:
    """``[(kind, sentence)]`` for each way the inner maximisation fails at ``params``: the
    conditional log-likelihood not finite at the start ``u = 0``, no convergence, or ``-H_uu``
    not positive definite at the point reached (the conditional density of those random
    effects has no maximum there). Empty when every level converged."""
    lap = model.laplace
    s = lap.structure
    names = ", ".join(repr(b.name) for b in s.blocks)
    res = model._jitted("inner", lambda: jax.jit(lap.inner, compiler_options=compiler_options(once=True)))(params, model.data)
    j0 = np.asarray(joint_at_zero(model)(params, model.data))
    out = []
    start_bad = ~np.isfinite(j0)
    if start_bad.any():
        out.append(("inner", (
            f"the conditional log-likelihood given the random effects {names} is not finite at "
            f"random effects 0 for {_levels(s, start_bad)}: the inner maximisation cannot start there"
        )))
    pd = np.asarray(res.positive_definite)
    conv = np.asarray(res.converged)
    not_pd = ~pd & ~start_bad
    if not_pd.any():
        out.append(("inner", (
            f"the inner Hessian (of the joint log density in the random effects {names}) is not "
            f"negative definite where the inner maximisation stopped, for {_levels(s, not_pd)}: "
            "the conditional density of those random effects has no maximum there"
        )))
    stuck = ~conv & pd & ~start_bad
    if stuck.any():
        out.append(("inner", (
            f"the inner maximisation over the random effects {names} did not converge in "
            f"{int(np.asarray(res.iterations))} Newton iterations for {_levels(s, stuck)}"
        )))
    return out


def describe_parameter(model: Any, label: str) -> Optional[str]:
    """What a variance-component parameter is, in words, or ``None``: ``"the standard
    deviation of random effect 'b' (groups data['herd'])"``."""
    if model.laplace is None:
        return None
    base = label.split("[")[0]
    for b in model.laplace.structure.blocks:
        if base not in b.parameters:
            continue
        where = f" (groups data[{b.groups!r}])" if b.groups else ""
        role = "standard deviation" if base == b.parameters[0] else "correlation"
        if b.kind == "mvnormal" and b.q > 2 and role == "correlation":
            role = "canonical partial correlation"
        return f"the {role} of random effect {b.name!r}{where}"
    return None
