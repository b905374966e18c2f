"""Model zoo: Hessians against numdifftools, and simulate() consistent with the likelihood."""

import jax
import jax.numpy as jnp
import numdifftools as nd
import numpy as np
import pytest

import autohess as ah
from helpers import dem2gbp


def _design(rng, n, p):
    return np.c_[np.ones(n), 0.5 * rng.normal(size=(n, p - 1))]


def _zoo(rng):
    n = 300
    X = _design(rng, n, 3)
    b = np.array([0.3, 0.5, -0.4])
    mu = np.exp(X @ b)
    t = np.exp(X @ b) * rng.weibull(1.5, size=n)
    return {
        "logistic": (ah.models.logistic(X, (rng.uniform(size=n) < 0.5).astype(float)), {"beta": b}),
        "poisson": (ah.models.poisson(X, rng.poisson(mu)), {"beta": b}),
        "negative_binomial": (ah.models.negative_binomial(X, rng.poisson(mu * rng.gamma(2, 0.5, n))), {"alpha": 0.5, "beta": b}),
        "linear": (ah.models.linear(X, X @ b + rng.normal(size=n)), {"beta": b, "sigma": 1.2}),
        "weibull": (ah.models.weibull(X, np.minimum(t, 2.0), (t <= 2.0).astype(float)), {"beta": b, "shape": 1.5}),
        "garch11_t": (ah.models.garch11(dem2gbp()[:400]), {"alpha": 0.1, "beta": 0.8, "mu": 0.0, "nu": 7.0, "omega": 0.02}),
        "garch11_normal": (ah.models.garch11(dem2gbp()[:400], dist="normal"), {"alpha": 0.1, "beta": 0.8, "mu": 0.0, "omega": 0.02}),
    }


@pytest.mark.parametrize("name", ["logistic", "poisson", "negative_binomial", "linear", "weibull", "garch11_t", "garch11_normal"])
def test_zoo_hessian_vs_numdifftools(rng, name):
    model, point = _zoo(rng)[name]
    params = {k: jnp.asarray(v, jnp.float64) for k, v in point.items()}
    H = np.asarray(ah.hessian(model, params).matrix)
    x0 = np.asarray(model.flatten(params))
    scale = np.where(x0 != 0, np.abs(x0), 1.0)  # relative steps: small positive params stay positive
    nll = jax.jit(lambda t: model.negloglik_flat(t, model.data, None))
    H_fd = nd.Hessian(lambda z: float(nll(jnp.asarray(z * scale))))(x0 / scale) / np.outer(scale, scale)
    # Richardson-extrapolated FD is good to ~1e-8 relative here; 1e-6 per column leaves room.
    for j in range(len(x0)):
        col = np.max(np.abs(H[:, j]))
        assert np.max(np.abs(H[:, j] - H_fd[:, j])) / col < 1e-6, (name, model.labels[j])


@pytest.mark.parametrize("name", ["logistic", "poisson", "negative_binomial", "linear", "weibull", "garch11_t"])
def test_simulate_matches_likelihood_information_equality(rng, name):
    """E[score score'] = E[Hessian] at the true parameters holds only if simulate() draws from
    the distribution the log-likelihood describes: a check that ties the two together."""
    model, point = _zoo(rng)[name]
    params = {k: jnp.asarray(v, jnp.float64) for k, v in point.items()}
    flat = model.flatten(params)
    reps = 2000
    keys = jax.random.split(jax.random.key(7), reps)

    @jax.jit
    def one(key):
        data = model.simulate_fn(key, params, model.data)
        nll = lambda t: model.negloglik_flat(t, data, None)  # noqa: E731
        g = jax.grad(nll)(flat)
        return jnp.outer(g, g), jax.hessian(nll)(flat)

    opg, hess = jax.lax.map(one, keys, batch_size=250)
    opg_mean, hess_mean = np.asarray(opg.mean(0)), np.asarray(hess.mean(0))
    # Monte Carlo SD of a diagonal of mean(g g') is about sqrt(2/reps) relative (g ~ normal);
    # 5 of those, ~0.16, flags a wrong distribution without flaking.
    tol = 5 * np.sqrt(2.0 / reps)
    d_opg, d_hess = np.diag(opg_mean), np.diag(hess_mean)
    np.testing.assert_array_less(np.abs(d_opg - d_hess) / d_hess, tol, err_msg=name)


def test_simulate_shapes_and_support(getkey, rng):
    zoo = _zoo(rng)
    for name, (model, point) in zoo.items():
        params = {k: jnp.asarray(v, jnp.float64) for k, v in point.items()}
        new = model.simulate(getkey(), params)
        assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(model.data), name
        for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(model.data)):
            assert a.shape == b.shape and a.dtype == jnp.float64, name
        assert np.isfinite(model.with_data(new).loglik(params)), name
    y = np.asarray(zoo["logistic"][0].simulate(getkey())["y"])
    assert set(np.unique(y)) <= {0.0, 1.0}
    counts = np.asarray(zoo["negative_binomial"][0].simulate(getkey())["y"])
    assert (counts >= 0).all() and (counts == np.round(counts)).all()
    weib = zoo["weibull"][0].simulate(getkey())
    assert (np.asarray(weib["time"]) <= 2.0).all() and set(np.unique(np.asarray(weib["event"]))) <= {0.0, 1.0}


def test_garch_simulate_unconditional_variance(getkey):
    model = ah.models.garch11(np.zeros(20000) + np.linspace(-1, 1, 20000))
    params = {"alpha": 0.05, "beta": 0.9, "mu": 0.1, "nu": 8.0, "omega": 0.05}
    y = np.asarray(model.simulate(getkey(), {k: jnp.asarray(v) for k, v in params.items()})["y"])
    # unconditional variance omega / (1 - alpha - beta) = 1; with persistence 0.95 the sample
    # variance of 20000 draws has a relative SD of roughly 5%, so allow 25%.
    assert abs(np.var(y) - 1.0) < 0.25
    assert abs(np.mean(y) - 0.1) < 0.05
