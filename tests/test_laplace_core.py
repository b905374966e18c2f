"""The Laplace core (autohess/_laplace.py): exact outer derivatives, the three structures
(block-diagonal, crossed, dense) agreeing, memory linear in the number of groups, and an inner
maximisation that did not converge reported as such.

References: Richardson-extrapolated finite differences of the exact gradient
(tests/laplace_reference.py); the dense path (all random coefficients in one Cholesky), which
shares no structure-specific code with the block-diagonal and crossed paths."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess._laplace import Laplace
from autohess._laplace_structure import make_structure

from helpers import rel_err
from laplace_reference import richardson_jacobian


def _binomial_glmm(rng, G=8, m=5):
    """Random-intercept logistic GLMM, binomial counts out of 6, 2 fixed effects."""
    herd = np.repeat(np.arange(G), m)
    x = rng.normal(size=G * m)
    b = 0.7 * rng.normal(size=G)
    n = np.full(G * m, 6.0)
    y = rng.binomial(6, 1 / (1 + np.exp(-(-0.4 + 0.8 * x + b[herd])))).astype(float)
    data = {"x": x, "y": y, "n": n, "herd": herd}

    def loglik(p, d):
        eta = p["beta"][0] + p["beta"][1] * d["x"] + p["b"][d["herd"]]
        return d["y"] * eta - d["n"] * jnp.logaddexp(0.0, eta)

    params = {"beta": jnp.array([-0.3, 0.5]), "sd": ah.Positive(0.8)}
    return ah.Model(loglik, data, params=params, random={"b": ah.Normal(sd="sd", groups="herd")})


def _slope_lmm(rng, G=6, m=5):
    """Gaussian LMM with correlated random intercept and slope (sleepstudy's shape)."""
    subject = np.repeat(np.arange(G), m)
    days = np.tile(np.arange(m, dtype=float), G)
    b = rng.normal(size=(G, 2)) * np.array([2.0, 0.7])
    y = 5.0 + 1.0 * days + b[subject, 0] + b[subject, 1] * days + 1.5 * rng.normal(size=G * m)
    data = {"y": y, "days": days, "subject": subject}

    def loglik(p, d):
        bb = p["b"][d["subject"]]
        mu = p["beta"][0] + p["beta"][1] * d["days"] + bb[:, 0] + bb[:, 1] * d["days"]
        return -0.5 * ((d["y"] - mu) / p["sigma"]) ** 2 - jnp.log(p["sigma"])

    params = {"beta": jnp.array([4.0, 1.2]), "sigma": ah.Positive(1.3), "sd": ah.Positive(jnp.array([1.5, 0.5])),
              "rho": ah.Interval(-1, 1, 0.3)}
    return ah.Model(loglik, data, params=params, random={"b": ah.MultivariateNormal(sd="sd", corr="rho", groups="subject")})


def _marginal_fn(lap, model):
    spec, data = model.spec, model.data
    return lambda t: jnp.sum(lap.marginal(spec.unflatten(t), data))


def _value_grad_hess(lap, model, x):
    f = _marginal_fn(lap, model)

    def grad_with_value(t):
        v, g = jax.value_and_grad(f)(t)
        return g, (v, g)

    # one forward-over-reverse pass (what jax.hessian does), value and gradient as its aux: the
    # marginal (an inner Newton loop and a factorisation) is traced and compiled once, not three times
    H, (v, g) = jax.jit(jax.jacfwd(grad_with_value, has_aux=True))(x)
    return v, g, H


def _point(model):
    return model.spec.flatten(model.init_params, model.dtype)


@pytest.mark.parametrize("build", [_binomial_glmm, _slope_lmm], ids=["binomial-intercept", "mvn-slope"])
def test_exact_hessian_matches_richardson(build, rng):
    model = build(rng)
    assert model.laplace.structure.block_diagonal
    f = _marginal_fn(model.laplace, model)
    x = _point(model)
    grad = jax.jit(jax.grad(f))
    H = np.asarray(jax.jit(jax.hessian(f))(x))
    # Reference: Richardson-extrapolated central differences of the exact gradient (steps
    # 1e-3, 5e-4, 2.5e-4 relative, O(h^6) truncation), ~1e-10 relative on these smooth
    # marginals; the inner solve is converged to rounding, so the gradient itself is smooth.
    # 1e-7 is the brief's bar: the derivative of the mode (implicit function theorem) and the
    # third/fourth derivatives inside d log det are either exact or wrong by O(1e-2) or more.
    H_fd = richardson_jacobian(lambda t: np.asarray(grad(jnp.asarray(t))), np.asarray(x))
    assert rel_err(H, 0.5 * (H_fd + H_fd.T)) < 1e-7
    assert np.allclose(H, H.T, rtol=0, atol=1e-12 * np.max(np.abs(H)))


def _dense_twin(model):
    s = model.laplace.structure
    return Laplace(model.laplace.loglik, make_structure(s.blocks, False, False))


@pytest.mark.parametrize("build", [_binomial_glmm, _slope_lmm], ids=["binomial-intercept", "mvn-slope"])
def test_block_path_equals_dense_path(build, rng):
    model = build(rng)
    dense = _dense_twin(model)
    assert not dense.structure.block_diagonal and not dense.structure.crossed
    x = _point(model)
    out = [_value_grad_hess(lap, model, x) for lap in (model.laplace, dense)]
    # Reference: the dense path (one Q x Q Cholesky, reverse-mode Hessian of the joint); the
    # block path uses per-level forward-mode blocks and closed-form 1x1/2x2 algebra. Same
    # float64 quantities in a different operation order: rounding only, far below 1e-10.
    for a, b in zip(out[0], out[1]):
        assert rel_err(a, b) < 1e-10


def _crossed_poisson(rng, N=60):
    """Poisson GLMM with a correlated slope factor (q = 2), a crossed intercept factor and an
    observation-level intercept: 14 + 5 + 60 random coefficients."""
    a = rng.integers(0, 7, N)
    b = rng.integers(0, 5, N)
    x = rng.normal(size=N)
    y = rng.poisson(np.exp(0.3 + 0.5 * x + 0.4 * rng.normal(size=7)[a] + 0.3 * rng.normal(size=5)[b]))
    data = {"y": y.astype(float), "x": x, "a": a, "b": b, "obs": np.arange(N)}

    def loglik(p, d):
        eta = (p["beta"][0] + p["beta"][1] * d["x"] + p["ua"][d["a"], 0] + p["ua"][d["a"], 1] * d["x"]
               + p["ub"][d["b"]] + p["uo"][d["obs"]])
        return d["y"] * eta - jnp.exp(eta)

    params = {"beta": jnp.array([0.1, 0.2]), "sda": ah.Positive(jnp.array([0.5, 0.3])), "rho": ah.Interval(-1, 1, 0.2),
              "sdb": ah.Positive(0.4), "sdo": ah.Positive(0.3)}
    random = {"ua": ah.MultivariateNormal(sd="sda", corr="rho", groups="a"), "ub": ah.Normal(sd="sdb", groups="b"),
              "uo": ah.Normal(sd="sdo", groups="obs")}
    return ah.Model(loglik, data, params=params, random=random)


def test_crossed_path_equals_dense_path(rng):
    # both elimination orders (q_e = 1 and q_e = 2) against one dense reference: the dense
    # twin's programs are the expensive compilation here, built once
    model = _crossed_poisson(rng)
    s = model.laplace.structure
    assert s.crossed and s.blocks[s.eliminated].name == "uo"  # the largest factor goes first
    assert s.single  # uo is observation-level: one observation per level
    dense = _dense_twin(model)
    x = _point(model)
    reference = _value_grad_hess(dense, model, x)
    u2, C2, _ = jax.jit(dense.conditional)(model.init_params, model.data)  # one program, not op by op
    # uo by per-observation Schur blocks and by dense rows of A^-1 B; ua (q_e = 2) by rows
    for eliminate, single in (("uo", True), ("uo", False), ("ua", False)):
        k = [b.name for b in s.blocks].index(eliminate)
        crossed = Laplace(model.laplace.loglik, dataclasses.replace(s, eliminated=k, single=single))
        # Reference: the dense path, as above; the crossed path assembles H_uu from
        # per-observation Hessians and a Schur complement: rounding-level differences only.
        for a, b in zip(_value_grad_hess(crossed, model, x), reference):
            assert rel_err(a, b) < 1e-10, eliminate
        # the random-effect SEs' pieces from the elimination (no Q solves): diag(C), C r; one
        # program with the full C (its inner loop compiled once for both)
        r = jnp.asarray(rng.normal(size=(1, s.q, 3)))

        def both(p, d, crossed=crossed):
            u, C, _ = crossed.conditional(p, d)
            _, var, solve, _ = crossed.conditional_moments(p, d)
            return u, C, var, solve(r)

        u1, C1, var, Cr = jax.jit(both)(model.init_params, model.data)
        assert rel_err(u1, u2) < 1e-10 and rel_err(C1, C2) < 1e-10, eliminate
        assert rel_err(var, jnp.diagonal(C2, axis1=-2, axis2=-1)) < 1e-10, eliminate
        assert rel_err(Cr, jnp.einsum("gij,gjk->gik", C2, r)) < 1e-10, eliminate


def _shapes(jaxpr) -> list:
    """Shapes of every value a jaxpr (and the jaxprs inside it) computes."""
    from jax.extend.core import jaxprs_in_params

    out = []
    for eqn in jaxpr.eqns:
        out += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for sub in jaxprs_in_params(eqn.params):
            out += _shapes(sub)
    return out


def test_crossed_single_form_has_no_dense_schur_complement(rng):
    """With an observation-level factor eliminated, the outer Hessian never forms the other
    factors' dense Q_C x Q_C block (only the second factor's coupling E and the rest's S2),
    and the random-effect SEs never solve Q right-hand sides (no Q x Q array). Both were the
    bulk of grouseticks' fit + SEs. Traced only (no compilation)."""
    from autohess._laplace_results import conditional_program
    from autohess._laplace_structure import _second_factor

    model = _crossed_poisson(rng, N=30)
    s = model.laplace.structure
    lay = _second_factor(s)
    QC = s.size - s.blocks[s.eliminated].size
    assert s.single and lay.rest.size not in (0, QC)
    f = _marginal_fn(model.laplace, model)
    hess = _shapes(jax.make_jaxpr(jax.hessian(f))(_point(model)).jaxpr)
    assert not [sh for sh in hess if sh.count(QC) >= 2], "dense Q_C x Q_C in the outer Hessian"
    assert any(sh[-2:] == (lay.rest.size, lay.rest.size) for sh in hess)  # S2 is there
    x = _point(model)
    cov = jnp.eye(x.size)
    program = conditional_program(model).__wrapped__
    # .trace: the program is compiled with options, which make_jaxpr's nested jit refuses
    ses = _shapes(program.trace(x, cov, model.data, jnp.zeros((s.n_levels, s.q))).jaxpr.jaxpr)
    assert not [sh for sh in ses if sh.count(s.size) >= 2], "Q x Q in the random-effect SEs"


def _observation_level_model(rng, N, levels):
    """Poisson GLMM with an observation-level intercept and one intercept factor per entry of
    ``levels`` (the number of levels of each), crossed at random."""
    x = rng.normal(size=N)
    data = {"y": rng.poisson(np.exp(0.2 + 0.4 * x)).astype(float), "x": x, "obs": np.arange(N)}
    names = [f"f{k}" for k in range(len(levels))]
    for name, G in zip(names, levels):
        data[name] = rng.permutation(np.arange(N) % G)

    def loglik(p, d):
        eta = p["beta"][0] + p["beta"][1] * d["x"] + p["uo"][d["obs"]]
        for name in names:
            eta = eta + p["u" + name][d[name]]
        return d["y"] * eta - jnp.exp(eta)

    params = {"beta": jnp.array([0.1, 0.3]), "so": ah.Positive(0.4), **{"s" + n: ah.Positive(0.6) for n in names}}
    random = {"uo": ah.Normal(sd="so", groups="obs"), **{"u" + n: ah.Normal(sd="s" + n, groups=n) for n in names}}
    return ah.Model(loglik, data, params=params, random=random)


def _factor_pieces(model, u, r, data=None):
    lap = model.laplace
    data = model.data if data is None else data

    def pieces(p, d):
        _, K = lap.neg_hess(u, p, d)
        logdet, solve = lap.factor(K)
        _, H = lap.grad_hess(u, p, d)
        return logdet, jax.vmap(solve, in_axes=-1, out_axes=-1)(r), -H[0], lap.conditional_moments(p, d)[1]

    return jax.jit(pieces)(model.init_params, data)


@pytest.mark.parametrize("levels", [(5,), (20, 8)], ids=["two-factors", "pairs"])
def test_crossed_single_form_factorisation_equals_dense(levels, rng):
    """The observation-level factor eliminated first, then the second factor: with two factors
    that is all of the Schur complement (no dense rest); with three, levels of 2 observations
    make ``E' D^-1 E`` summed over pairs of observations (``Structure.pairs``) cheaper than the
    dense coupling. Log det, solve and diag of the inverse vs numpy on the dense -H_uu."""
    model = _observation_level_model(rng, 40, levels)
    s = model.laplace.structure
    assert s.crossed and s.single and s.blocks[s.eliminated].name == "uo"
    assert (s.pairs is not None) == (len(levels) > 1)
    u = jnp.asarray(0.3 * rng.normal(size=(1, s.q)))
    r = jnp.asarray(rng.normal(size=(1, s.q, 2)))
    logdet, x_solved, dense, var = _factor_pieces(model, u, r)
    dense = np.asarray(dense)
    # Reference: numpy's slogdet, solve and inverse of the same matrix assembled densely
    # (rounding level: 1e-10)
    assert rel_err(logdet[0], np.linalg.slogdet(dense)[1]) < 1e-10
    assert rel_err(x_solved[0], np.linalg.solve(dense, np.asarray(r[0]))) < 1e-10
    _, C, _ = jax.jit(model.laplace.conditional)(model.init_params, model.data)
    assert rel_err(var[0], np.diag(np.asarray(C[0]))) < 1e-10
    if s.pairs is not None:
        # data given later whose observations pair up differently on the second factor (a
        # batch member, say): NaN, never a log det from the wrong pairs
        moved = {**model.data, "f0": np.r_[model.data["f0"][1:], model.data["f0"][:1]]}
        assert np.isnan(_factor_pieces(model, u, r, moved)[0]).all()


def test_take_is_jnp_take_with_slices_for_runs():
    """``_take`` (static positions as slices of their contiguous runs) equals ``jnp.take``
    exactly (it only moves entries), on one run, several, the whole axis, none, scattered
    positions and another axis; and a few runs leave no gather in the program."""
    from autohess._laplace_structure import _take

    x = jnp.arange(60.0).reshape(12, 5)
    for idx in ([3, 4, 5], [0, 1, 2, 7, 8, 11], list(range(12)), [], [5, 1, 9, 2, 0, 3, 11, 6, 4, 8], [10, 11, 0, 1]):
        np.testing.assert_array_equal(_take(x, np.array(idx, int)), jnp.take(x, np.array(idx, int), axis=0))
    np.testing.assert_array_equal(_take(x, np.array([1, 2, 4])), x[np.array([1, 2, 4])])
    np.testing.assert_array_equal(_take(x, np.array([0, 3, 4]), axis=1), x[:, np.array([0, 3, 4])])
    prims = {e.primitive.name for e in jax.make_jaxpr(lambda v: _take(v, np.array([0, 1, 7, 8]), 0))(x).jaxpr.eqns}
    assert "gather" not in prims


@pytest.mark.parametrize("which", ["three-factors", "slope"])
def test_crossed_hessian_takes_static_positions_by_slices(which, rng):
    """found: the crossed path picked its blocks, directions and the solve's permutation by
    gathers with static positions (``row[pos_e]``, ``second[np.ix_(de, dc)]``, ...), which the
    outer Hessian's reverse pass turns into scatter-adds, and added the factors' own gradients
    and blocks by scatter-adds at static positions: each a loop of its own in XLA's CPU
    program (grouseticks' solve: 76 -> 58 loops, 500 -> 442 kernels). Counted in the jaxpr of
    the marginal's Hessian (traced only): 141 -> 87 scatter-adds (three factors, grouseticks'
    shape), 133 -> 79 (a correlated slope factor, q = 2); the values are unchanged (the
    crossed-vs-dense tests above)."""
    import collections

    from jax.extend.core import jaxprs_in_params

    model = _observation_level_model(rng, 40, (20, 8)) if which == "three-factors" else _crossed_poisson(rng, N=30)

    def count(jaxpr, c):
        for e in jaxpr.eqns:
            c[e.primitive.name] += 1
            for sub in jaxprs_in_params(e.params):
                count(sub, c)
        return c

    f = _marginal_fn(model.laplace, model)
    c = count(jax.make_jaxpr(jax.hessian(f))(_point(model)).jaxpr, collections.Counter())
    assert c["scatter-add"] <= {"three-factors": 87, "slope": 79}[which], c["scatter-add"]


def test_single_observation_form_refuses_shared_levels(rng):
    """The per-observation Schur form is chosen on the model's data (one observation per level
    of the eliminated factor); data where two observations share a level (a batch member, say)
    give a NaN log det, not a wrong one."""
    model = _crossed_poisson(rng, N=20)
    lap, s = model.laplace, model.laplace.structure
    assert s.single
    u = jnp.zeros((1, s.q))
    _, K = lap.neg_hess(u, model.init_params, model.data)
    assert np.isfinite(lap.factor(K)[0]).all()
    shared = {**model.data, "obs": np.r_[0, np.arange(19)]}  # observations 0 and 1 on level 0
    _, K = lap.neg_hess(u, model.init_params, shared)
    assert np.isnan(lap.factor(K)[0]).all()


def test_crossed_needs_one_level_per_factor(rng):
    """An observation that uses two levels of one factor is not 'crossed': dense path."""
    N = 20
    data = {"y": rng.poisson(1.0, N).astype(float), "a": rng.integers(0, 4, N), "b": rng.integers(0, 3, N)}

    def loglik(p, d):
        eta = p["mu"] + p["ua"][d["a"]] + p["ua"][(d["a"] + 1) % 4] + p["ub"][d["b"]]
        return d["y"] * eta - jnp.exp(eta)

    m = ah.Model(loglik, data, params={"mu": 0.0, "sa": ah.Positive(0.5), "sb": ah.Positive(0.5)},
                 random={"ua": ah.Normal(sd="sa", groups="a"), "ub": ah.Normal(sd="sb", groups="b")})
    assert not m.laplace.structure.crossed and not m.laplace.structure.block_diagonal


def test_hundred_thousand_groups_bounded_memory():
    """10^5 groups of 2 observations: the fit works and the compiled Hessian program's memory
    grows linearly in the number of groups (10x the groups, ~10x the bytes, not 100x)."""
    rng = np.random.default_rng(7)

    def build(G):
        g = np.repeat(np.arange(G), 2)
        b = 0.5 * rng.normal(size=G)
        y = rng.poisson(np.exp(0.2 + b[g])).astype(float)

        def loglik(p, d):
            eta = p["mu"] + p["b"][d["g"]]
            return d["y"] * eta - jnp.exp(eta)

        return ah.Model(loglik, {"y": y, "g": g}, params={"mu": 0.0, "sd": ah.Positive(1.0)},
                        random={"b": ah.Normal(sd="sd", groups="g")})

    sizes = {}
    for G in (10_000, 100_000):
        m = build(G)
        f = _marginal_fn(m.laplace, m)
        compiled = jax.jit(jax.hessian(f)).lower(_point(m)).compile()
        mem = compiled.memory_analysis()
        sizes[G] = mem.temp_size_in_bytes + mem.output_size_in_bytes + mem.argument_size_in_bytes
    # O(G): a dense G x G Hessian would be 8e10 bytes at 10^5; linear is ~10x per 10x groups
    assert sizes[100_000] < 15 * sizes[10_000]
    assert sizes[100_000] < 2e9
    res = ah.fit(m, warn=False)
    assert bool(res.converged)
    sd = float(res.params["sd"])
    # Reference: the simulation's true sd 0.5; with 10^5 groups its ML SE is ~0.005
    assert abs(sd - 0.5) < 0.03
    assert res.random["b"].mode.shape == (100_000,)


def test_inner_non_convergence_is_reported(rng):
    """A group whose inner problem has no maximum (loglik increasing in b without bound) and a
    solve cut short are reported as not converged, and their marginal is NaN, not a number."""
    G = 4
    data = {"y": rng.poisson(2.0, 3 * G).astype(float), "g": np.repeat(np.arange(G), 3)}

    def loglik(p, d):
        eta = p["mu"] + p["b"][d["g"]]
        bad = d["g"] == 2  # group 2: exp(b)^2 grows faster than the N(0, sd^2) prior falls
        return jnp.where(bad, jnp.exp(2.0 * eta) * 0.5, d["y"] * eta - jnp.exp(eta))

    def good(p, d):
        eta = p["mu"] + p["b"][d["g"]]
        return d["y"] * eta - jnp.exp(eta)

    # the model itself refuses a non-finite start, so the planted loglik goes into its Laplace
    m = ah.Model(good, data, params={"mu": 0.0, "sd": ah.Positive(0.7)}, random={"b": ah.Normal(sd="sd", groups="g")})
    lap, params = Laplace(loglik, m.laplace.structure), m.init_params
    inner = jax.jit(lambda p: lap.inner(p, m.data))(params)
    assert np.asarray(inner.converged).tolist() == [True, True, False, True]
    contrib = np.asarray(jax.jit(lap.marginal)(params, m.data))
    assert np.isnan(contrib[2]) and np.all(np.isfinite(np.delete(contrib, 2)))
    # a solve stopped after one Newton step: not converged anywhere it had not finished
    short = lap.inner(params, m.data, maxiter=1)
    assert not np.any(np.asarray(short.converged))


def test_persistent_cache_settings(tmp_path):
    """AUTOHESS_CACHE_DIR moves JAX's persistent compilation cache, AUTOHESS_CACHE=0 turns it
    off, a JAX_COMPILATION_CACHE_DIR set by the user wins (fresh interpreters: JAX reads these
    once)."""
    import os
    import subprocess
    import sys

    code = "import autohess, jax; print(jax.config.values.get('jax_compilation_cache_dir'))"
    base = {k: v for k, v in os.environ.items() if k not in ("AUTOHESS_CACHE", "AUTOHESS_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def setting(**env):
        out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    assert setting(AUTOHESS_CACHE_DIR=str(tmp_path / "c")) == str(tmp_path / "c")
    assert setting(AUTOHESS_CACHE="0", AUTOHESS_CACHE_DIR=str(tmp_path / "c")) in ("None", "")
    assert setting(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine"), AUTOHESS_CACHE_DIR=str(tmp_path / "c")) == str(tmp_path / "mine")


def test_inner_loop_computes_the_parameter_only_terms_once():
    """The inner Newton loop's joint density and derivatives are split by dependence on the
    random effects (``_hoisted``): NB2's ``gammaln(y + 1/alpha)`` is computed once before the
    loop, not in every iteration (XLA did not hoist it). Reference for the modes: the
    gradient of the joint density in ``u`` vanishes there (to 1e-9 of the terms' size)."""
    from jax.extend.core import jaxprs_in_params
    from jax.scipy.special import gammaln

    rng = np.random.default_rng(11)
    G, per = 6, 10
    g = np.repeat(np.arange(G), per)
    x = rng.normal(size=G * per)
    y = rng.poisson(np.exp(0.5 + 0.3 * x + 0.5 * rng.normal(size=G)[g])).astype(float)

    def loglik(p, d):
        r, mu = 1.0 / p["alpha"], jnp.exp(p["beta"][0] + p["beta"][1] * d["x"] + p["b"][d["g"]])
        return gammaln(d["y"] + r) - gammaln(r) + r * jnp.log(r / (r + mu)) + d["y"] * jnp.log(mu / (r + mu))

    model = ah.Model(loglik, {"x": x, "y": y, "g": g},
                     {"beta": jnp.zeros(2), "sd": ah.Positive(0.7), "alpha": ah.Positive(0.5)},
                     random={"b": ah.Normal(sd="sd", groups="g")})
    lap = model.laplace
    jaxpr = jax.make_jaxpr(lambda p: lap.inner(p, model.data))(model.init_params).jaxpr

    def count(jpr, name, inside_loop=False):
        n = 0
        for e in jpr.eqns:
            loop = inside_loop or e.primitive.name == "while"
            n += (e.primitive.name == name) and inside_loop
            n += sum(count(sub, name, loop) for sub in jaxprs_in_params(e.params))
        return n

    assert count(jaxpr, "lgamma") == 0  # none in the loop's body
    assert count(jaxpr, "lgamma", inside_loop=True) > 0  # but before it
    res = jax.jit(lambda p: lap.inner(p, model.data))(model.init_params)
    assert bool(np.all(res.converged))
    grad = lap.grad_u(res.u, model.init_params, model.data)
    assert float(jnp.max(jnp.abs(grad))) < 1e-9 * float(np.sum(y) + G)


def test_inner_loop_checks_its_end_point_inside_the_loop(rng):
    """The inner maximisation's positive-definiteness check at the point reached is the loop's
    last pass, not a second copy of the Newton step (Hessian assembly and factorisation) after
    it: nothing but the flags' ``and`` follows the loop in the jaxpr, on the block-diagonal and
    crossed paths. Results: ``positive_definite`` as the eigenvalues of ``-H_uu`` at the
    returned modes say (numpy), and the extra pass is not counted as an iteration."""
    from autohess._laplace import INNER_MAXITER

    for model in (_binomial_glmm(rng), _slope_lmm(rng), _crossed_poisson(rng)):
        lap, data = model.laplace, model.data
        jpr = jax.make_jaxpr(lambda p: lap.inner(p, data))(model.init_params).jaxpr
        last = max(i for i, e in enumerate(jpr.eqns) if e.primitive.name == "while")
        after = [e.primitive.name for e in jpr.eqns[last + 1:]]
        assert after == ["and"], after
        res = jax.jit(lambda p: lap.inner(p, data))(model.init_params)
        _, H = lap.grad_hess(res.u, model.init_params, data)
        pd = np.array([np.all(np.linalg.eigvalsh(-np.asarray(h)) > 0) for h in np.asarray(H)])
        np.testing.assert_array_equal(np.asarray(res.positive_definite), pd)
        assert bool(np.all(res.converged)) and 1 <= int(res.iterations) < INNER_MAXITER
