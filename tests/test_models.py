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


# -- the zoo's data starts (Model.start_fn): issue #16 part 1 --------------------------------
def _start_cases(rng):
    n = 200
    X = _design(rng, n, 4)
    b = np.array([0.3, 0.5, -0.4, 0.2])
    return {
        "logistic": ah.models.logistic(X, (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ b))).astype(float)),
        # counts around e^1: from beta = 0 the Newton solve needs 7 iterations, 4 from the start
        "poisson": ah.models.poisson(X, rng.poisson(np.exp(X @ b + 0.7)), offset=0.1 * rng.normal(size=n)),
        "linear": ah.models.linear(X, X @ b + 0.7 * rng.normal(size=n)),
    }


@pytest.mark.parametrize("name", ["logistic", "poisson", "linear"])
def test_zoo_data_start_same_optimum_fewer_iterations(rng, name):
    """The zoo's start (least squares; one IRLS step for the GLMs) reaches the optimum the zero
    start reaches (the reference: the same fit from ``init_params``, given explicitly, which
    switches the data start off), in fewer Newton iterations; the linear model's start is the
    closed-form MLE (numpy least squares, sigma^2 = RSS / N), so it converges at once."""
    model = _start_cases(rng)[name]
    assert model.start_fn is not None
    ours, zero = ah.fit(model), ah.fit(model, model.init_params)
    assert ours.converged and zero.converged
    # both stop at the rounding floor of the same optimum: Newton steps of ~1e-12 relative
    # (XTOL) leave the estimates within a few 1e-12 of each other; 1e-10 relative (of the
    # SEs' scale for coefficients near 0) is the issue's bound for an unchanged result
    scale = np.maximum(np.abs(np.asarray(zero.params_flat)), np.asarray(zero.bse_flat))
    assert np.max(np.abs(np.asarray(ours.params_flat - zero.params_flat)) / scale) < 1e-10
    np.testing.assert_allclose(ours.bse_flat, zero.bse_flat, rtol=1e-9)  # SEs: 1e-10 of H, conditioned
    assert int(ours.iterations) < int(zero.iterations), (int(ours.iterations), int(zero.iterations))
    if name == "linear":
        X, y = np.asarray(model.data["X"]), np.asarray(model.data["y"])
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        sigma = np.sqrt(np.mean((y - X @ beta) ** 2))
        assert int(ours.iterations) == 0
        # closed form vs Cholesky least squares inside the program: ~cond(X) eps
        np.testing.assert_allclose(ours.params_flat, np.r_[beta, sigma], rtol=1e-12)


@pytest.mark.parametrize("name", ["logistic", "poisson", "linear"])
def test_zoo_data_start_forms_normal_equations_as_matrix_products(rng, name):
    """The starts' ``X' W X`` and ``X' W z`` are both matrix products contracted over the rows
    (issue #16 part 1): written ``Xw.T @ z``, XLA formed ``X' y`` in a loop fusion (~10 us of the
    linear start's ~50, N = 1500). Their values are checked by the test above (the linear start
    = numpy's least squares, 1e-12)."""
    from autohess._config import compiler_options

    model = _start_cases(rng)[name]
    hlo = jax.jit(model.start_fn, compiler_options=compiler_options()).lower(model.data).compile().as_text()
    products = [line for line in hlo.splitlines() if " dot(" in line and "lhs_contracting_dims={0}" in line]
    assert len(products) == 2, products


def test_zoo_data_start_declines_collinear_exact_and_user_starts(rng):
    """Where its least-squares start is not well defined the zoo keeps the initial values, so
    fits are those of before: a design with a duplicated column (a flat valley: the point on
    it depends on the start), a linear model that fits exactly (no finite maximum; sigma = 0
    is outside the domain); a start the user gave (``beta=``, ``sigma=``) is kept, and
    ``with_data`` keeps the start function (it reads the new data)."""
    from autohess._fit import _data_start

    n = 60
    X = _design(rng, n, 3)
    Xc = np.c_[X, X[:, 1]]
    y = X @ np.array([0.5, 1.0, -1.0]) + rng.normal(size=n)
    cases = [(ah.models.linear(Xc, y), False), (ah.models.linear(X, X @ np.array([0.5, 1.0, -1.0])), False),
             (ah.models.logistic(Xc, (y > 0).astype(float)), False), (ah.models.linear(X, y), True)]
    for model, used in cases:
        fallback = jnp.full(model.n_params, 0.25)
        start = np.asarray(jax.jit(lambda d, m=model: _data_start(m, d, fallback))(model.data))
        assert np.array_equal(start, fallback) != used, (model.name, start)
    assert ah.models.linear(X, y, sigma=2.0).start_fn is None
    assert ah.models.linear(X, y, beta=np.zeros(3)).start_fn is None
    assert ah.models.logistic(X, (y > 0).astype(float), beta=np.zeros(3)).start_fn is None
    assert ah.models.poisson(X, np.ones(n), beta=np.zeros(3)).start_fn is None
    model = ah.models.linear(X, y)
    assert model.with_data({"X": X, "y": y + 1.0}).start_fn is model.start_fn


def test_start_fn_of_the_wrong_structure_is_named(rng):
    """A ``start_fn`` of one's own that returns other parameters than the model's is refused at
    trace time, naming the missing parameter or the wrong shape (bad-input catalogue)."""
    X = _design(rng, 40, 2)
    model = ah.models.linear(X, X @ np.array([1.0, 2.0]) + rng.normal(size=40))
    model.start_fn = lambda data: ({"beta": jnp.zeros(2)}, True)
    with pytest.raises(ValueError, match=r"start_fn.*missing parameter\(s\) \['sigma'\]"):
        ah.fit(model)
    model.start_fn = lambda data: ({"beta": jnp.zeros(3), "sigma": 1.0}, True)
    with pytest.raises(ValueError, match=r"start_fn.*'beta' has shape \(3,\), the model declares \(2,\)"):
        ah.fit(model)


def test_start_fn_point_with_non_finite_likelihood_falls_back_to_initial_values(rng):
    """A data start inside the domain whose log-likelihood is not finite (sigma = 1e-300: every
    z^2 overflows) does not fail the fit: it is solved again from the initial values, and equals
    that fit (reference: ``ah.fit`` from ``init_params`` given explicitly; the same program
    path, so to rounding)."""
    X = _design(rng, 40, 2)
    model = ah.models.linear(X, X @ np.array([1.0, 2.0]) + rng.normal(size=40))
    model.start_fn = lambda data: ({"beta": jnp.zeros(2), "sigma": jnp.asarray(1e-300)}, True)
    res, ref = ah.fit(model), ah.fit(model, model.init_params)
    assert res.converged and int(res.iterations) == int(ref.iterations)
    np.testing.assert_allclose(res.params_flat, ref.params_flat, rtol=1e-12)
