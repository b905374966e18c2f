"""The block-diagonal Laplace marginal's value, gradient and Hessian written out per group
(autohess/_laplace_derivatives.py), which the fit's solver uses, against JAX's derivatives of
``Laplace.marginal`` through the implicit-function ``custom_jvp`` of the mode (the reference:
no code in common beyond the joint density and the inner Newton loop), and the Hessian against
Richardson differences of the gradient (tests/test_laplace_core.py checks the reference that way).

Tolerance 1e-10 relative (of the largest entry): both are exact, so they differ by rounding in
sums of ~10^2 terms of mixed sign (the log-det term's fourth derivatives) plus the inner
solve's rounding-level residual ``j_u``, which the written-out gradient drops (the envelope
theorem) and the AD one keeps (~1e-12 here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammaln

import autohess as ah
from autohess._laplace_derivatives import block_value_grad_hess

from helpers import rel_err


def _reference(model, x, weights=None, scale=None):
    """-sum(w * marginal) / scale, with JAX's gradient and forward-over-reverse Hessian."""
    lap, spec, data = model.laplace, model.spec, model.data

    def f(t):
        c = lap.marginal(spec.unflatten(t), data)
        c = c if weights is None else weights * c
        v = -jnp.sum(c)
        return v if scale is None else v / scale

    def gv(t):
        v, g = jax.value_and_grad(f)(t)
        return g, (v, g)

    H, (v, g) = jax.jit(jax.jacfwd(gv, has_aux=True))(x)
    return v, g, H


def _written_out(model, x, weights=None, scale=None):
    fun = block_value_grad_hess(model.laplace, model.spec.unflatten, model.data, weights, scale)
    return jax.jit(fun)(x)


def _binomial(rng, G=7, m=6):
    herd = np.repeat(np.arange(G), m)
    x = rng.normal(size=G * m)
    b = 0.8 * rng.normal(size=G)
    y = rng.binomial(5, 1 / (1 + np.exp(-(-0.3 + 0.7 * x + b[herd])))).astype(float)
    data = {"x": x, "y": y, "herd": herd}

    def loglik(p, d):
        eta = p["beta"][0] + p["beta"][1] * d["x"] + p["b"][d["herd"]]
        return d["y"] * eta - 5.0 * jnp.logaddexp(0.0, eta)

    return ah.Model(loglik, data, params={"beta": jnp.array([-0.2, 0.4]), "sd": ah.Positive(0.6)},
                    random={"b": ah.Normal(sd="sd", groups="herd")})


def _nb2(rng, G=6, m=8):
    """Negative binomial with a dispersion parameter inside lgamma: terms in theta alone."""
    site = np.repeat(np.arange(G), m)
    x = rng.normal(size=G * m)
    mu = np.exp(0.5 + 0.4 * x + 0.5 * rng.normal(size=G)[site])
    y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(float)
    data = {"x": x, "y": y, "site": site}

    def loglik(p, d):
        eta = p["beta"][0] + p["beta"][1] * d["x"] + p["b"][d["site"]]
        r = 1.0 / p["alpha"]
        mu = jnp.exp(eta)
        return gammaln(d["y"] + r) - gammaln(r) + r * jnp.log(r / (r + mu)) + d["y"] * jnp.log(mu / (r + mu))

    return ah.Model(loglik, data, params={"beta": jnp.array([0.3, 0.2]), "sd": ah.Positive(0.7),
                                          "alpha": ah.Positive(0.8)},
                    random={"b": ah.Normal(sd="sd", groups="site")})


def _loading(rng, G=6, m=7):
    """Poisson with a parameter multiplying the random effect (a factor loading): the mode's
    derivative and the log det's mixed third and fourth derivatives all depend on it."""
    g = np.repeat(np.arange(G), m)
    x = rng.normal(size=G * m)
    y = rng.poisson(np.exp(0.2 + 0.3 * x + 0.6 * rng.normal(size=G)[g])).astype(float)
    data = {"x": x, "y": y, "g": g}

    def loglik(p, d):
        eta = p["beta"][0] + p["beta"][1] * d["x"] + jnp.exp(p["lam"]) * p["b"][d["g"]] * (1.0 + 0.3 * d["x"])
        return d["y"] * eta - jnp.exp(eta)

    # (sd and lam are confounded at the optimum; the derivatives are compared at a start)
    return ah.Model(loglik, data, params={"beta": jnp.array([0.1, 0.2]), "lam": -0.3, "sd": ah.Positive(0.8)},
                    random={"b": ah.Normal(sd="sd", groups="g")})


def _slope(rng, G=6, m=5):
    """Correlated random intercept and slope (q = 2): the off-diagonal parts of C' dK C."""
    subject = np.repeat(np.arange(G), m)
    t = np.tile(np.linspace(-1.0, 1.0, m), G)
    b = rng.normal(size=(G, 2)) * np.array([0.6, 0.4])
    y = rng.poisson(np.exp(0.4 + 0.5 * t + b[subject, 0] + b[subject, 1] * t)).astype(float)
    data = {"y": y, "t": t, "subject": subject}

    def loglik(p, d):
        bb = p["b"][d["subject"]]
        eta = p["beta"][0] + p["beta"][1] * d["t"] + bb[:, 0] + bb[:, 1] * d["t"]
        return d["y"] * eta - jnp.exp(eta)

    return ah.Model(loglik, data, params={"beta": jnp.array([0.3, 0.4]), "sd": ah.Positive(jnp.array([0.5, 0.3])),
                                          "rho": ah.Interval(-1, 1, 0.2)},
                    random={"b": ah.MultivariateNormal(sd="sd", corr="rho", groups="subject")})


@pytest.mark.parametrize("build", [_binomial, _nb2, _loading, _slope], ids=["binomial", "nb2", "loading", "slope-q2"])
def test_written_out_derivatives_equal_jax_through_the_mode(build, rng):
    model = build(rng)
    assert model.laplace.structure.block_diagonal
    x = model.spec.flatten(model.init_params, model.dtype)
    G = model.laplace.structure.n_levels
    # per-group weights (a cluster bootstrap's counts, divided by their mean) and a scale:
    # the fit's solver passes both
    w = jnp.asarray(rng.integers(0, 3, size=G), model.dtype)
    w = w / jnp.mean(w)
    # (the unweighted, unscaled case once: each case is two more compilations)
    cases = ((None, None), (w, 3.5)) if build is _binomial else ((w, 3.5),)
    for weights, scale in cases:
        v, g, H = _written_out(model, x, weights, scale)
        v0, g0, H0 = _reference(model, x, weights, scale)
        assert abs(float(v - v0)) <= 1e-12 * abs(float(v0))
        assert rel_err(g, g0) < 1e-10
        assert rel_err(H, H0) < 1e-10
        assert np.array_equal(np.asarray(H), np.asarray(H).T)


def test_fit_uses_the_written_out_hessian_and_matches_richardson(rng):
    """The fit's Hessian at the optimum (what its SEs come from) against Richardson
    differences of the marginal's exact gradient: 1e-7, the reference's own accuracy."""
    from laplace_reference import richardson_jacobian

    model = _nb2(rng)
    res = ah.fit(model, warn=False)
    x = model.spec.flatten(res.params, model.dtype)
    grad = jax.jit(jax.grad(lambda t: -jnp.sum(model.laplace.marginal(model.spec.unflatten(t), model.data))))
    H_fd = richardson_jacobian(lambda t: np.asarray(grad(jnp.asarray(t))), np.asarray(x))
    _, _, H = _written_out(model, x)
    assert rel_err(H, 0.5 * (H_fd + H_fd.T)) < 1e-7
    # and the covariance the user sees is the inverse of that Hessian (natural scale)
    # (1e-6: the fit's Hessian is taken where its solve stopped, within its convergence
    # tolerance of x, and the covariance inverts it)
    assert rel_err(np.asarray(res.cov_params()), np.linalg.inv(np.asarray(H))) < 1e-6


def test_a_group_without_an_inner_maximum_makes_the_value_nan(rng):
    """A group whose joint density has no maximum in u (y enters with the wrong sign, so
    it grows without bound) gives a NaN value, which the solver treats as a failed step."""
    G, m = 3, 4
    g = np.repeat(np.arange(G), m)
    y = np.ones(G * m)

    def loglik(p, d):
        eta = p["beta"] + p["b"][d["g"]]
        return d["y"] * eta + jnp.exp(eta) * 0.0 + 5.0 * eta ** 3 * (d["g"] == 1)

    model = ah.Model(loglik, {"y": y, "g": g}, params={"beta": 0.1, "sd": ah.Positive(1.0)},
                     random={"b": ah.Normal(sd="sd", groups="g")})
    v, _, _ = _written_out(model, model.spec.flatten(model.init_params, model.dtype))
    assert np.isnan(float(v))


def test_escape_test_on_the_written_out_hessian_equals_jax(rng):
    """The escape test (the curvature one step ahead, and the diagonal where the solver's
    ridge step points) on the written-out Hessian (``_fit._escape_hessian``: batches and the
    fit's escape program use it) reads as on JAX's derivatives of the marginal: the same flags,
    the curvature ratio to 1e-9 (two exact second derivatives of an inner solve converged to
    rounding)."""
    from autohess._diagnostics import escape_info
    from autohess._fit import _escape_hessian
    from autohess._problem import _unconstrained, _unconstrained_value_grad_hess

    model = _binomial(rng)
    spec, data = model.spec, model.data
    res = ah.fit(model, warn=False)
    u = spec.to_unconstrained(model.spec.flatten(res.params, model.dtype))
    f = _unconstrained(model, data, None, None)
    value, grad, hess = jax.jit(_unconstrained_value_grad_hess(model, data, None, None, model.hessian_mode))(u)
    lower, upper = (jnp.asarray(b, model.dtype) for b in spec.bounds())
    hess_fn = _escape_hessian(model, data, None, None)
    assert hess_fn is not None
    step = jnp.asarray([0.2, -0.1, -0.6], model.dtype)  # the sd heading towards 0, as on a ridge
    # the solver's ridge flag set: the test itself does not fire at an optimum, so the
    # direction is the ridge step and the fading test reads the Hessian there (both points)
    run = lambda h: escape_info(f, u, grad, hess, value, lower, upper, True, step, 1.0, h)  # noqa: E731
    ours = jax.jit(lambda: run(hess_fn))()
    theirs = jax.jit(lambda: run(None))()
    assert bool(ours[0]) == bool(theirs[0])
    np.testing.assert_allclose(float(ours[1].ratio), float(theirs[1].ratio), rtol=1e-9)
    for a, b in zip(ours[1][2:], theirs[1][2:]):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert rel_err(ours[1].direction, theirs[1].direction) < 1e-12
    assert bool(np.asarray(ours[1].to_bound)[-1])  # the sd, heading to its bound at 0


def test_profile_of_a_variance_parameter_matches_scipy_refits(rng):
    """``ah.profile`` of a random-intercept SD (its constrained refits solve on the written-out
    Hessian's free rows and columns) against refits of the Laplace marginal with the SD held
    fixed by scipy's BFGS (an independent optimiser on the same marginal, its gradient from
    JAX): the profile log-likelihood at three of its points to 1e-7 (BFGS's gtol 1e-10 leaves
    ~1e-9 in the log-likelihood), and the interval brackets the estimate."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    model = _binomial(rng)
    res = ah.fit(model, warn=False)
    pr = ah.profile(res, "sd", n_grid=5, refine=1)
    assert pr.interval[0] < float(res.params["sd"]) < pr.interval[1]
    spec, lap, data = model.spec, model.laplace, model.data
    j = spec.index_of("sd")

    def negll(free, sd):
        x = jnp.concatenate([free[:j], jnp.asarray([sd]), free[j:]])
        return -jnp.sum(lap.marginal(spec.unflatten(x), data))

    value_and_grad = jax.jit(jax.value_and_grad(negll))
    x_hat = np.asarray(res.params_flat)
    for k in (0, len(pr.values) // 2, len(pr.values) - 1):
        sd = float(pr.values[k])
        out = scipy_optimize.minimize(lambda f: tuple(np.asarray(a, np.float64) for a in value_and_grad(jnp.asarray(f), sd)),
                                      np.delete(x_hat, j), jac=True, method="BFGS", options={"gtol": 1e-10})
        assert pr.llf[k] == pytest.approx(-out.fun, abs=1e-7)
