"""GARCH-t against Richardson finite differences; scores; chunked Hessians; no recompiles."""

import jax
import jax.numpy as jnp
import numdifftools as nd
import numpy as np
import pytest

import autohess as ah
from helpers import EXACT, RICHARDSON, dem2gbp, logistic_data, rel_err

GARCH_POINT = {"alpha": 0.1, "beta": 0.85, "mu": -0.01, "nu": 6.0, "omega": 0.01}


def _garch_params(model):
    return {k: jnp.asarray(v) for k, v in GARCH_POINT.items()}


@pytest.mark.parametrize("recursion", ["scan", "associative"])
def test_garch_t_hessian_vs_richardson(recursion):
    """Exact GARCH-t Hessian on the FCP DEM/GBP data vs numdifftools' Richardson extrapolation."""
    model = ah.models.garch11(dem2gbp()[:1500], recursion=recursion)
    params = _garch_params(model)
    H = ah.hessian(model, params)
    assert H.labels == ("alpha", "beta", "mu", "nu", "omega")
    x0 = np.asarray(model.flatten(params))
    nll = jax.jit(lambda t: model.negloglik_flat(t, model.data, None))
    # numdifftools' default: central differences with Richardson extrapolation over a sequence
    # of steps; an independent numerical reference. Its steps are absolute, so differentiate in
    # relative coordinates z = t / x0 (omega = 0.01 would otherwise be stepped below zero).
    H_z = nd.Hessian(lambda z: float(nll(jnp.asarray(z * x0))))(np.ones_like(x0))
    H_fd = H_z / np.outer(x0, x0)
    # Entries span 6 orders of magnitude (omega vs nu): compare each column on its own scale.
    Hm = np.asarray(H.matrix)
    for j in range(5):
        scale = np.max(np.abs(Hm[:, j]))
        assert np.max(np.abs(Hm[:, j] - H_fd[:, j])) / scale < RICHARDSON, H.labels[j]


def test_garch_recursions_agree():
    """Sequential and associative variance recursions: same Hessian to rounding."""
    y = dem2gbp()[:1500]
    a = ah.models.garch11(y)
    b = ah.models.garch11(y, recursion="associative", hessian_mode="fwd-rev")
    params = _garch_params(a)
    assert rel_err(ah.hessian(b, params).matrix, ah.hessian(a, params).matrix) < 1e-10


def test_scores_sum_to_minus_gradient(rng):
    """Scores are d loglik_i/d theta; gradient is of -loglik, so sum(scores) == -gradient."""
    X, y, beta = logistic_data(rng)
    model = ah.models.logistic(X, y)
    params = {"beta": jnp.asarray(beta)}
    S = ah.scores(model, params)
    assert S.shape == (1500, 12)
    g = ah.gradient(model, params)
    np.testing.assert_allclose(np.asarray(S.sum(0)), -np.asarray(g), rtol=0, atol=EXACT * np.abs(S).sum())
    prob = 1.0 / (1.0 + np.exp(-X @ beta))
    np.testing.assert_allclose(np.asarray(S), X * (y - prob)[:, None], rtol=1e-12, atol=1e-15)


def test_garch_scores_forward_mode():
    model = ah.models.garch11(dem2gbp()[:600])
    params = _garch_params(model)
    S = ah.scores(model, params)
    assert S.shape == (600, 5)
    assert rel_err(-S.sum(0), ah.gradient(model, params)) < EXACT


@pytest.mark.parametrize("chunk", [1, 7, 256, 1500, 5000])
def test_chunked_equals_unchunked(rng, chunk):
    X, y, beta = logistic_data(rng)
    model = ah.models.logistic(X, y)
    params = {"beta": jnp.asarray(beta)}
    H = ah.hessian(model, params)
    Hc = ah.hessian(model, params, chunk_size=chunk)
    assert rel_err(Hc.matrix, H.matrix) < EXACT


def test_chunked_with_weights_and_transforms(rng):
    n = 1000
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    y = rng.poisson(np.exp(X @ np.array([0.3, 0.2, -0.1])) * rng.gamma(2.0, 0.5, size=n))
    model = ah.models.negative_binomial(X, y)
    params = {"alpha": jnp.asarray(0.4), "beta": jnp.array([0.3, 0.2, -0.1])}
    w = rng.integers(0, 3, size=n).astype(float)
    for scale in ("natural", "unconstrained"):
        H = ah.hessian(model, params, weights=w, scale=scale)
        Hc = ah.hessian(model, params, weights=w, scale=scale, chunk_size=128)
        assert rel_err(Hc.matrix, H.matrix) < EXACT
    # frequency weights = duplicated observations
    rows = np.repeat(np.arange(n), w.astype(int))
    dup = ah.models.negative_binomial(X[rows], y[rows])
    assert rel_err(ah.hessian(model, params, weights=w).matrix, ah.hessian(dup, params).matrix) < EXACT


def test_chunking_refused_for_recursive_models():
    model = ah.models.garch11(dem2gbp()[:500])
    with pytest.raises(ValueError, match="independent=False"):
        ah.hessian(model, chunk_size=100)


def test_chunking_detects_undeclared_recursion():
    """A recursive model wrongly left independent=True is caught before a wrong Hessian."""
    y = dem2gbp()[:400]

    def ar_loglik(params, data):
        prev = jnp.concatenate([jnp.zeros(1), data["y"][:-1]])
        r = data["y"] - params["phi"] * prev - params["mu"] * jnp.mean(data["y"])
        return -0.5 * r * r

    model = ah.Model(ar_loglik, {"y": y}, {"phi": 0.1, "mu": 0.0})
    with pytest.raises(ValueError, match="not separable"):
        ah.hessian(model, chunk_size=100)


def test_repeated_calls_never_recompile(rng):
    X, y, beta = logistic_data(rng, n=500, p=4)
    model = ah.models.logistic(X, y)
    for i in range(5):
        params = {"beta": jnp.asarray(beta + 0.01 * i)}
        ah.hessian(model, params)
        ah.hessian(model, params, chunk_size=64)
        ah.gradient(model, params)
        ah.scores(model, params)
        ah.hvp(model, params, jnp.ones(4))
    assert model.trace_counts["hessian"] == 1
    assert model.trace_counts["hessian_chunked"] == 1
    assert model.trace_counts["gradient"] == 1
    assert model.trace_counts["scores"] == 1
    assert model.trace_counts["hvp"] == 1


def test_function_hessian_compiled_once():
    traces = []

    def f(x):
        traces.append(1)
        return jnp.sum(x**4)

    for i in range(4):
        ah.hessian(f, jnp.arange(3.0) + i)
    assert len(traces) == 1


def test_chunked_memory_is_bounded(rng):
    """Temporary memory of the chunked Hessian does not grow with N; unchunked does."""
    p, chunk = 20, 1024
    temps = {}
    for n in (20_000, 80_000):
        X = rng.normal(size=(n, p))
        model = ah.models.logistic(X, (rng.uniform(size=n) < 0.5).astype(float))
        temps[n] = (ah.chunked_memory_bytes(model, chunk), ah.chunked_memory_bytes(model, None))
    (c20, u20), (c80, u80) = temps[20_000], temps[80_000]
    assert c80 <= c20 * 1.01 + 4096  # independent of N
    assert u80 > 3 * u20  # unchunked grows linearly
    assert c80 < 64 * chunk * p * 8  # documented bound: k * chunk * p * 8 bytes, k <= 64


def test_hessian_under_vmap_and_jit(rng):
    """ah.hessian composes with JAX transformations (checks are skipped under tracing)."""
    X, y, beta = logistic_data(rng, n=200, p=3)
    model = ah.models.logistic(X, y)
    betas = jnp.asarray(beta + 0.1 * rng.normal(size=(4, 3)))
    batched = jax.jit(jax.vmap(lambda b: ah.hessian(model, {"beta": b}).matrix))(betas)
    for i in range(4):
        assert rel_err(batched[i], ah.hessian(model, {"beta": betas[i]}).matrix) < EXACT


def test_function_cache_does_not_keep_functions_alive():
    import gc
    import weakref

    def f(x):
        return jnp.sum(x**3)

    ah.hessian(f, jnp.ones(2))
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("method", ["scan", "associative"])
def test_linear_recurrence_against_a_python_loop(method, rng):
    """Both evaluations of h_t = a_t h_{t-1} + b_t against a float64 Python loop (rounding
    only, T = 1500 products of numbers below 1: 1e-12), and their derivatives agree."""
    a = rng.uniform(0.5, 0.99, size=1500)
    b = rng.uniform(0.0, 1.0, size=1500)
    h, ref = 2.0, []
    for t in range(1500):
        h = a[t] * h + b[t]
        ref.append(h)
    # compiled, as models use it (op by op, the associative scan's ~2 log2(T) levels of
    # slices and its Hessian each dispatched and compiled separately: 34 s of a 37 s test)
    out = jax.jit(lambda a, b: ah.linear_recurrence(a, b, 2.0, method=method))(jnp.asarray(a), jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-12)
    total = lambda s: jnp.sum(jnp.log(ah.linear_recurrence(s * jnp.asarray(a), jnp.asarray(b), 2.0, method=method)))  # noqa: E731
    seq = lambda s: jnp.sum(jnp.log(ah.linear_recurrence(s * jnp.asarray(a), jnp.asarray(b), 2.0)))  # noqa: E731
    np.testing.assert_allclose(float(jax.jit(jax.hessian(total))(0.9)), float(jax.jit(jax.hessian(seq))(0.9)), rtol=1e-10)
    with pytest.raises(ValueError, match="method must be one of"):
        ah.linear_recurrence(a, b, 2.0, method="parallel")


def test_garch_simulation_paths_agree_across_recursions(getkey):
    """The parametric bootstrap's GARCH paths through either recursion: the same draws."""
    y = dem2gbp()[:500]
    key = getkey()
    a = ah.models.garch11(y).simulate(key)
    b = ah.models.garch11(y, recursion="associative").simulate(key)
    np.testing.assert_allclose(np.asarray(b["y"]), np.asarray(a["y"]), rtol=1e-10)


def test_chunked_fit_equals_unchunked_in_bounded_memory(rng):
    """``ah.fit(chunk_size=...)`` (issue #16 part 4): the solver's value, gradient and Hessian
    summed over observation blocks in a compiled loop. Reference: the unchunked fit (itself
    checked against statsmodels in test_fit.py); the sums run in another order, so estimates
    and SEs agree to rounding amplified by the solve (1e-10, far above the ~1e-14 seen). With
    a remainder block (1000 = 3 x 300 + 100), frequency weights and a Positive sigma (the
    chain-rule path). The compiled solve's temporary memory does not grow with N chunked and
    does unchunked (the same measure as test_chunked_memory_is_bounded)."""
    from autohess._fit import _solve_program

    n = 1000
    X = np.c_[np.ones(n), rng.normal(size=(n, 3))]
    y_lin = X @ np.array([1.0, -0.5, 0.25, 0.0]) + 0.8 * rng.normal(size=n)
    y_bin = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ np.array([-0.3, 0.8, 0.0, 0.4])))).astype(float)
    w = rng.integers(1, 4, size=n).astype(float)
    for model, weights in ((ah.models.linear(X, y_lin), None), (ah.models.logistic(X, y_bin), w)):
        # the unchunked fit from the same start: chunked fits do not use the zoo's data start
        # (its N x p products are what chunking avoids), and the solves are compared step for step
        full = ah.fit(model, model.init_params, weights=weights)
        chunked = ah.fit(model, weights=weights, chunk_size=300)
        assert chunked.converged and int(chunked.iterations) == int(full.iterations)
        assert rel_err(chunked.params_flat, full.params_flat) < 1e-10
        assert rel_err(chunked.bse_flat, full.bse_flat) < 1e-10
        assert float(chunked.llf) == pytest.approx(float(full.llf), rel=1e-12)
    temps = {}
    for m in (2_000, 8_000):
        Xm = rng.normal(size=(m, 6))
        model = ah.models.logistic(Xm, (rng.uniform(size=m) < 0.5).astype(float))
        args = (model.init_params, model.data, None)
        temps[m] = [
            _solve_program(model, "trust-region", 50, None, chunk).lower(*args).compile().memory_analysis().temp_size_in_bytes
            for chunk in (256, None)
        ]
    (c2, u2), (c8, u8) = temps[2_000], temps[8_000]
    # chunked: what grows with N is O(N), not O(N p): at most two float64 N-vectors (the
    # start's contributions for the objective's scale); unchunked: N x p intermediates
    assert c8 - c2 <= 2 * 8 * (8_000 - 2_000)
    assert u8 - u2 > 6 * 8 * (8_000 - 2_000)


def test_chunked_fit_bad_input(rng):
    """chunk_size is checked before anything is compiled (bad-input catalogue)."""
    X, y, _ = logistic_data(rng, n=200, p=3)
    model = ah.models.logistic(X, y)
    for bad in (0, -5, 2.5, True, "100"):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            ah.fit(model, chunk_size=bad)
    with pytest.raises(ValueError, match="method='trust-region'"):
        ah.fit(model, method="lbfgs", chunk_size=50)
    with pytest.raises(ValueError, match="independent=False"):
        ah.fit(ah.models.garch11(dem2gbp()[:300]), chunk_size=100)
