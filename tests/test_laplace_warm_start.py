"""The inner maximisation warm-started from the previous outer iterate (issue #15 part 1).

``trust_region_newton(..., aux0=)`` carries the modes of the last accepted point; the Laplace
marginal's value and derivatives must not depend on where its inner Newton started (it
converges to rounding level either way), only the work does. References: the cold start
(``u = 0``) at the same point, and the same model's fit without the warm start."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import autohess as ah
from autohess import _laplace
from autohess._solver import trust_region_newton


def _crossed_model(seed=3, N=40):
    """Poisson GLMM, an observation-level intercept crossed with a 5-level factor."""
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 5, N)
    x = rng.normal(size=N)
    y = rng.poisson(np.exp(0.3 + 0.5 * x + 0.5 * rng.normal(size=5)[b] + 0.3 * rng.normal(size=N)))
    data = {"y": y.astype(float), "x": x, "b": b, "obs": np.arange(N)}

    def loglik(p, d):
        eta = p["beta"][0] + p["beta"][1] * d["x"] + p["ub"][d["b"]] + p["uo"][d["obs"]]
        return d["y"] * eta - jnp.exp(eta)

    return ah.Model(loglik, data, params={"beta": jnp.zeros(2), "sdb": ah.Positive(0.5), "sdo": ah.Positive(0.5)},
                    random={"ub": ah.Normal(sd="sdb", groups="b"), "uo": ah.Normal(sd="sdo", groups="obs")})


def test_solver_carries_aux_of_accepted_points_only():
    """aux = (number of evaluations seen, x of the last accepted point): the solver passes the
    last accepted point's aux, so aux[1] at the end is the returned x."""
    A = jnp.array([[3.0, 1.0], [1.0, 2.0]])

    def fun(x, aux):
        v = 0.5 * x @ A @ x - x[0] + 10.0 * jnp.sum(jnp.maximum(x - 2.0, 0.0) ** 2)
        g = jax.grad(lambda z: 0.5 * z @ A @ z - z[0] + 10.0 * jnp.sum(jnp.maximum(z - 2.0, 0.0) ** 2))(x)
        return v, g, A, (aux[0] + 1, x)

    res = trust_region_newton(fun, jnp.array([5.0, -4.0]), aux0=(jnp.zeros((), jnp.int32), jnp.zeros(2)))
    plain = trust_region_newton(lambda x: fun(x, (0, x))[:3], jnp.array([5.0, -4.0]))
    # same path with or without aux (aux does not touch the solve): exactly equal
    np.testing.assert_array_equal(res.x, plain.x)
    assert int(res.iterations) == int(plain.iterations)


def test_solver_aux_is_the_last_accepted_points():
    """Each evaluation gets the aux of the last accepted point: aux = x of the point that
    produced it, so the aux a call sees is either the previous call's aux (trial rejected) or
    the previous call's x (accepted), and the solve ends at the last x passed on."""
    calls = []
    f = lambda z: jnp.sum((z - 1.0) ** 4) + jnp.sum(z**2) + 3.0 * jnp.sin(z[0])  # noqa: E731

    def fun(x, aux):
        jax.debug.callback(lambda a, b: calls.append((np.array(a), np.array(b))), aux, x)
        return f(x), jax.grad(f)(x), jax.hessian(f)(x), x

    x0 = jnp.array([4.0, -3.0, 9.0])
    res = jax.jit(lambda x: trust_region_newton(fun, x, aux0=jnp.full(3, -7.0)))(x0)
    assert res.status == ah.Status.CONVERGED
    np.testing.assert_array_equal(calls[0][0], np.full(3, -7.0))
    accepted = 0
    for (a_prev, x_prev), (a_next, _) in zip(calls, calls[1:]):
        if np.array_equal(a_next, x_prev):
            accepted += 1
        else:
            np.testing.assert_array_equal(a_next, a_prev)
    assert accepted >= 3
    np.testing.assert_array_equal(res.x, calls[-1][0] if not np.array_equal(res.x, calls[-1][1]) else calls[-1][1])


def test_warm_started_evaluation_equals_cold_and_is_cheaper():
    model = _crossed_model()
    lap, spec, data = model.laplace, model.spec, model.data
    assert lap.structure.crossed
    x = spec.to_unconstrained(spec.flatten(model.init_params, model.dtype))
    params_of = lambda u: spec.unflatten(spec.to_natural(u))  # noqa: E731

    def fun(u):
        f = lambda t: -jnp.sum(lap.marginal(params_of(t), data))  # noqa: E731
        return f(u), jax.grad(f)(u), jax.hessian(f)(u)

    run, u0 = _laplace.warm_started(lap, fun, params_of, data, x.dtype)
    cold = jax.jit(fun)(x)
    mode = lap.inner(params_of(x), data).u
    for u_prev in (u0, mode, 0.5 * mode):
        warm = jax.jit(run)(x, u_prev)
        # the marginal and its derivatives at a mode found from another start: equal to
        # rounding (relative 1e-10: the inner stops at a rounding-level Newton decrement, and
        # the Hessian carries that through third derivatives of the joint density)
        for a, b in zip(warm[:3], cold):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(b))))
        np.testing.assert_allclose(warm[3], mode, rtol=0, atol=1e-8)
    # the work: from the exact mode the inner Newton stops after its first step
    assert int(lap.inner(params_of(x), data, mode).iterations) == 1
    assert int(lap.inner(params_of(x), data).iterations) > 1
    # and the derivative pass takes the modes found there as they are: the program's only
    # loops are the inner Newton loop and the loop that runs it from the warm start, then
    # from 0 where that did not converge (each of value, gradient and Hessian ran one more
    # Newton loop from them: 5 loops, ~10% of grouseticks' fit; a ``cond`` between the warm
    # and the cold solve compiled the inner loop twice)
    from jax.extend.core import jaxprs_in_params

    def loops(jpr, inside=0):
        """(depth of each while loop) for the loops in ``jpr``."""
        out = []
        for e in jpr.eqns:
            here = e.primitive.name == "while"
            if here:
                out.append(inside)
            for j in jaxprs_in_params(e.params):
                out += loops(j, inside + here)
        return out

    assert sorted(loops(jax.make_jaxpr(run)(x, u0).jaxpr)) == [0, 1]


def test_warm_start_that_fails_falls_back_to_the_cold_solve():
    """Modes carried from a point where the inner problem had none (NaN: the joint density is
    not finite there, so the warm solve fails at once): the evaluation runs the inner Newton
    again from 0 and equals the cold one (reference: ``fun`` with the inner solve from 0 at the
    same point; 1e-12, the same arithmetic)."""
    model = _crossed_model(seed=4)
    lap, spec, data = model.laplace, model.spec, model.data
    x = spec.to_unconstrained(spec.flatten(model.init_params, model.dtype))
    params_of = lambda u: spec.unflatten(spec.to_natural(u))  # noqa: E731

    def fun(u):
        f = lambda t: -jnp.sum(lap.marginal(params_of(t), data))  # noqa: E731
        return f(u), jax.grad(f)(u)

    run, u0 = _laplace.warm_started(lap, lambda u: (*fun(u), None), params_of, data, x.dtype)
    value, grad, _, modes = jax.jit(run)(x, jnp.full_like(u0, jnp.nan))
    cold_value, cold_grad = jax.jit(fun)(x)
    assert np.isfinite(float(value))
    np.testing.assert_allclose(value, cold_value, rtol=1e-12)
    np.testing.assert_allclose(grad, cold_grad, rtol=1e-12, atol=1e-12 * float(jnp.max(jnp.abs(cold_grad))))
    np.testing.assert_array_equal(modes, jax.jit(lambda p: lap.inner(p, data).u)(params_of(x)))


def test_fit_with_warm_start_equals_fit_without(monkeypatch):
    model = _crossed_model(seed=5)
    res = ah.fit(model, warn=False)
    monkeypatch.setattr(_laplace, "warm_started",
                        lambda lap, fun, params_of, data, dtype, start=None: ((lambda x, a: (*fun(x), a)),
                                                                  jnp.zeros((lap.structure.n_levels, 1), dtype)))
    cold = ah.fit(model.with_data(model.data), warn=False)
    # both converge to rounding level (the solver's tolerance) at the same optimum; the SEs
    # come from the same cold-start evaluation at nearly the same point: 1e-7 relative
    assert res.converged and cold.converged
    np.testing.assert_allclose(res.params_flat, cold.params_flat, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(res.bse_flat, cold.bse_flat, rtol=1e-7)
    np.testing.assert_allclose(float(res.llf), float(cold.llf), rtol=1e-12)


def test_fit_keeps_the_modes_and_its_ses_start_there():
    """The solve carries the modes of its last accepted point (``SolverResult.aux``) and the
    fit keeps them (``FitResult.random_modes``): the SE program's inner Newton starts there
    (one step) instead of at 0. References: the cold inner solve at the estimate, and the SEs
    from a start at 0 (``random_effects`` without modes)."""
    from autohess._laplace_results import random_effects

    model = _crossed_model(seed=7)
    res = ah.fit(model, warn=False)
    assert res.converged and res.random_modes is not None
    lap, s = model.laplace, model.laplace.structure
    assert res.random_modes.shape == (s.n_levels, s.q)
    cold = lap.inner(res.params, model.data)
    # the modes of the same point, reached from another start: the inner solve stops at a
    # rounding-level Newton decrement, |du| ~ sqrt(eps) * |u| at worst; measured 1e-15
    np.testing.assert_allclose(res.random_modes, cold.u, rtol=0, atol=1e-8)
    assert int(lap.inner(res.params, model.data, res.random_modes).iterations) == 1
    assert int(cold.iterations) > 2
    warm_ses = res.random
    cold_ses = random_effects(model, res.params_flat, res.cov)
    for name in warm_ses:
        # the same modes (above) and the same factorisation at them: 1e-10 relative
        for field in ("mode", "se", "se_conditional"):
            np.testing.assert_allclose(getattr(warm_ses[name], field), getattr(cold_ses[name], field),
                                       rtol=1e-10, atol=1e-12)


def _intercept_glmm(c=1.0, seed=11, G=6, m=4):
    """Poisson random-intercept GLMM (block-diagonal path), its log-likelihood times ``c``."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(G), m)
    x = rng.normal(size=G * m)
    y = rng.poisson(np.exp(0.2 + 0.4 * x + 0.6 * rng.normal(size=G)[g]))
    data = {"y": y.astype(float), "x": x, "g": g}

    def loglik(p, d):
        eta = p["beta"][0] + p["beta"][1] * d["x"] + p["b"][d["g"]]
        return c * (d["y"] * eta - jnp.exp(eta))

    return ah.Model(loglik, data, params={"beta": jnp.zeros(2), "sd": ah.Positive(0.5)},
                    random={"b": ah.Normal(sd="sd", groups="g")})


def _inner_loops_traced(monkeypatch, fn, *args):
    """How many inner Newton loops tracing ``fn(*args)`` puts in its program (each call of
    ``Laplace.inner`` while tracing is one ``while_loop`` in the jaxpr)."""
    calls = []
    inner = _laplace.Laplace.inner
    monkeypatch.setattr(_laplace.Laplace, "inner", lambda self, *a, **k: calls.append(1) or inner(self, *a, **k))
    jax.make_jaxpr(fn)(*args)
    monkeypatch.undo()
    return len(calls)


def test_solve_program_holds_one_inner_loop(monkeypatch):
    """found: the fit's solve program traced the inner Newton loop twice, once for the
    objective's scale at the start (the marginal there; on the crossed path that inner solve
    also seeded ``warm_started``) and once in the solver's loop: ~0.45 s of cbpp's and ~1.2 s of
    grouseticks' first-call compile. Both paths, block-diagonal and crossed."""
    from autohess._fit import _solve_program

    for model in (_intercept_glmm(), _crossed_model()):
        solve = _solve_program(model, "trust-region", 50, None)
        n = _inner_loops_traced(monkeypatch, solve, model.init_params, model.data, None)
        assert n == 1, (model.laplace.structure.crossed, n)


def test_objective_scale_of_a_random_effects_model_runs_no_inner_solve(monkeypatch):
    """The scale (``_problem._objective_scale``) only decides whether the mean |contribution|
    lies outside ``SCALE_BAND``: for a random-effects model it comes from the joint density at
    u = 0, no inner solve. Reference: the mean |marginal| (what it was measured from before);
    the two agree to the order of magnitude the band needs, and decide the same (inside the
    band: 1; a log-likelihood times 1e6 or 1e-6: outside, the proxy within 10x of the mean
    |marginal|)."""
    from autohess._problem import SCALE_BAND, _objective_scale

    for c in (1.0, 1e6, 1e-6):
        model = _intercept_glmm(c)
        flat = model.spec.flatten(model.init_params, model.dtype)
        n = _inner_loops_traced(monkeypatch, lambda f: _objective_scale(model, f, model.data, None), flat)
        assert n == 0
        scale = float(_objective_scale(model, flat, model.data, None))
        marginal = float(jnp.mean(jnp.abs(model.laplace.marginal(model.spec.unflatten(flat), model.data))))
        outside = not (SCALE_BAND[0] <= marginal <= SCALE_BAND[1])
        assert outside == (c != 1.0), marginal
        if outside:
            assert 0.1 < scale / marginal < 10.0, (scale, marginal)
        else:
            assert scale == 1.0
    # a scalar marginal (crossed path) keeps the scale 1, as any total log-likelihood
    model = _crossed_model()
    flat = model.spec.flatten(model.init_params, model.dtype)
    assert _inner_loops_traced(monkeypatch, lambda f: _objective_scale(model, f, model.data, None), flat) == 0
    assert float(_objective_scale(model, flat, model.data, None)) == 1.0


def test_scaled_random_effects_fit_keeps_its_estimates():
    """A random-intercept GLMM whose log-likelihood is multiplied by 1e4 (as if each observation
    were repeated 1e4 times) has a mean |marginal| above ``SCALE_BAND``: the objective is
    rescaled, by the proxy now. Reference: the same model fitted with the scale measured from
    the marginal itself (the previous definition; 6x smaller here). The same objective solved
    to its rounding floor, only the solver's first trust region differs: 1e-8 relative
    (measured 3e-13 for the estimates, 3e-14 for the SEs, the same 13 iterations)."""
    from autohess import _problem

    model = _intercept_glmm(1e4, seed=12, G=8, m=6)
    res = ah.fit(model, warn=False)
    proxy = _problem._laplace_proxy
    try:
        _problem._laplace_proxy = lambda m, flat, data: jnp.abs(m._loglik(m.spec.unflatten(flat), data))
        ref = ah.fit(model.with_data(model.data), warn=False)
    finally:
        _problem._laplace_proxy = proxy
    assert res.converged and ref.converged, (res.status, ref.status)
    np.testing.assert_allclose(res.params_flat, ref.params_flat, rtol=1e-8)
    np.testing.assert_allclose(res.bse_flat, ref.bse_flat, rtol=1e-8)
