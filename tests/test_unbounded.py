"""No finite maximum (the MLE lies at infinity): detected, named, never reported as converged.

The reference is the data themselves: in each case a closed-form argument shows the
log-likelihood has no maximum (a covariate that separates the outcomes, a group whose counts
are all 0), and the parameters not involved have closed-form estimates.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess._solver import ESCAPE_RATIO, Status


def _separated(rng, n=200, quasi=False, extra=False):
    x = rng.normal(size=n)
    y = (x > 0.3).astype(float)
    if quasi:  # two tied observations on the threshold with both outcomes: quasi-separation
        x[:2], y[:2] = 0.3, [0.0, 1.0]
    cols = [np.ones(n), x] + ([rng.normal(size=n)] if extra else [])
    return np.column_stack(cols), y


def test_separation_is_unbounded(rng):
    X, y = _separated(rng)
    with pytest.warns(ah.InferenceWarning, match=r"\[unbounded\] no finite maximum"):
        res = ah.fit(ah.models.logistic(X, y))
    assert res.status_code == Status.UNBOUNDED and not res.converged
    assert "no finite maximum" in res.status
    kinds = [p.kind for p in res.diagnostics.problems]
    assert kinds[0] == "unbounded"
    problem = res.diagnostics.problems[0]
    # the ridge: the slope grows (with the intercept following at -0.3 x slope)
    assert "beta[1]" in problem.direction and "beta[1]" in problem.parameters
    assert float(res.diagnostics_data.escape_ratio) < ESCAPE_RATIO
    assert np.all(np.isnan(np.asarray(res.bse_flat)))  # every parameter is on the ridge
    assert "Converged:                 False" in res.summary()


def test_separation_with_lbfgs_is_unbounded(rng):
    """L-BFGS stops at its gradient tolerance (llf ~ -6e-7 here) and has no Hessian of its
    own: the curvature test runs at its end point on a Hessian formed there."""
    X, y = _separated(rng)
    with pytest.warns(ah.InferenceWarning, match="unbounded"):
        res = ah.fit(ah.models.logistic(X, y), method="lbfgs")
    assert res.status_code == Status.UNBOUNDED
    assert np.all(np.isnan(np.asarray(res.bse_flat)))
    assert float(res.diagnostics_data.escape_ratio) < ESCAPE_RATIO


def test_quasi_separation_is_never_converged():
    """Quasi-complete separation: two tied observations on the threshold keep a rank-one
    Hessian once every other observation's weight has underflowed. Depending on where the
    crawl stops, the last Hessian is still positive definite (the curvature test then sees the
    ridge: ``unbounded``) or exactly singular (a ``flat`` direction, status SINGULAR). Either
    way the fit is not converged and every standard error on the ridge is NaN."""
    for seed in range(3):
        X, y = _separated(np.random.default_rng(seed), quasi=True)
        with pytest.warns(ah.InferenceWarning, match=r"\[(unbounded|flat)\]"):
            res = ah.fit(ah.models.logistic(X, y))
        assert not res.converged and res.status_code in (Status.UNBOUNDED, Status.SINGULAR)
        assert np.all(np.isnan(np.asarray(res.bse_flat)))
        problem = res.diagnostics.problems[0]
        assert {"beta[0]", "beta[1]"} <= set(problem.parameters)  # the ridge b0 = -0.3 b1
    # Which of the two it is depends on rounding in the last steps: all three seeds ended
    # UNBOUNDED on the machine this test was written on and SINGULAR on another (same versions
    # of jax and numpy), so the test accepts both, as the README says.


def test_separation_with_a_bystander_covariate(rng):
    """A third, irrelevant covariate moves with the ridge too (its estimate depends on where
    on the ridge the solver stopped): its standard error is not reported either."""
    X, y = _separated(rng, extra=True)
    with pytest.warns(ah.InferenceWarning, match="unbounded"):
        res = ah.fit(ah.models.logistic(X, y))
    assert res.status_code == Status.UNBOUNDED


def test_zero_count_group_only_that_coefficient(rng):
    """Poisson with a group indicator whose group has only zero counts: beta[1] -> -inf, while
    beta[0] is the log of group 0's mean with SE 1/sqrt(sum of its counts) (closed form; the
    coupling to beta[1] is exp(beta[1]) ~ 1e-12 small, hence 1e-9)."""
    g = np.repeat([0.0, 1.0], 100)
    y = np.where(g == 1, 0.0, rng.poisson(2.0, 200))
    X = np.column_stack([np.ones(200), g])
    with pytest.warns(ah.InferenceWarning, match="unbounded"):
        res = ah.fit(ah.models.poisson(X, y))
    assert res.status_code == Status.UNBOUNDED
    assert res.diagnostics.problems[0].parameters == ("beta[1]",)
    se = np.asarray(res.bse_flat)
    assert np.isnan(se[1])
    y0 = y[g == 0]
    assert float(res.params_flat[0]) == pytest.approx(np.log(y0.mean()), rel=1e-9)
    assert se[0] == pytest.approx(1 / np.sqrt(y0.sum()), rel=1e-9)
    assert float(res.params_flat[1]) < -15


def test_regular_fits_are_not_flagged(rng):
    """At a finite maximum the curvature hardly changes over the last (tiny) Newton step.
    ``fit`` skips the test after a quadratically converged solve (ratio NaN: not measured);
    ``fit_batch`` measures it for every member."""
    X = np.column_stack([np.ones(500), rng.normal(size=(500, 2))])
    y = (rng.uniform(size=500) < 1 / (1 + np.exp(-X @ [0.2, 1.0, -0.5]))).astype(float)
    counts = rng.poisson(np.exp(X @ [0.1, 0.3, -0.2])).astype(float)
    for model in (ah.models.logistic(X, y), ah.models.poisson(X, counts)):
        res = ah.fit(model)
        assert res.converged and res.diagnostics.ok
        assert np.isnan(float(res.diagnostics_data.escape_ratio))
        bres = ah.fit_batch(model, weights=rng.multinomial(500, np.full(500, 1 / 500), size=4).astype(float))
        assert bres.converged.all()
        np.testing.assert_allclose(np.asarray(bres.diagnostics_data.escape_ratio), 1.0, atol=1e-3)


def test_variance_heading_to_zero_is_a_boundary_not_unbounded():
    """On the log scale a variance creeping to 0 also runs off to -inf, but towards a finite
    bound of its natural domain: the maximum exists (on the boundary) and is reported so."""
    rng = np.random.default_rng(3)
    y = rng.normal(size=300)

    def loglik(p, d):  # y ~ N(mu, 1 + s2): the MLE of s2 is 0 when var(y) < 1
        v = 1.0 + p["s2"]
        return -0.5 * (np.log(2 * np.pi) + jnp.log(v) + (d - p["mu"]) ** 2 / v)

    y = y / y.std() * 0.9
    model = ah.Model(loglik, y, {"mu": 0.0, "s2": ah.Positive(0.5)})
    with pytest.warns(ah.InferenceWarning, match="boundary"):
        res = ah.fit(model)
    assert res.status_code == Status.CONVERGED
    assert [p.kind for p in res.diagnostics.problems] == ["boundary"]
    assert float(res.params["mu"]) == pytest.approx(float(y.mean()), rel=1e-8)


def test_batch_member_with_separation_is_isolated(rng):
    X, y = _separated(rng)
    y_ok = (rng.uniform(size=len(y)) < 1 / (1 + np.exp(-X @ [0.0, 1.0]))).astype(float)
    model = ah.models.logistic(X, y_ok)
    ys = np.stack([y_ok, y, y_ok])
    bres = ah.fit_batch(model, {"X": np.broadcast_to(X, (3,) + X.shape), "y": ys, "offset": np.zeros(ys.shape)})
    assert list(np.asarray(bres.status_code)) == [Status.CONVERGED, Status.UNBOUNDED, Status.CONVERGED]
    assert list(bres.usable) == [True, False, True]
    single = ah.fit(model)
    np.testing.assert_allclose(np.asarray(bres.params_flat[0]), np.asarray(single.params_flat), rtol=1e-10)
    assert bool(bres.diagnostics_data.unbounded[1].all())


def test_solver_lengthens_steps_along_a_ridge():
    """f = exp(-u) (1 + 0.1 v) + (v - 1)^2 / 2 has its infimum at u = +inf. Newton's step in u
    is exactly 1 every time and removes a share 1 - 1/e of the remaining gain, so plain steps
    need ~29 iterations to reach the rounding floor (e^-29 ~ 2e-13). Once the gain is below 1e-6
    (~14 steps), the repeated step is recognised and doubled: 19 iterations here (<= 22
    allowed). The ridge and its direction are reported; v converges to 1 as usual."""
    import jax

    from autohess._solver import trust_region_newton

    def f(x):
        return jnp.exp(-x[0]) * (1.0 + 0.1 * x[1]) + 0.5 * (x[1] - 1.0) ** 2

    res = trust_region_newton(lambda x: (f(x), jax.grad(f)(x), jax.hessian(f)(x)), jnp.zeros(2))
    assert bool(res.ridge) and int(res.iterations) <= 22
    np.testing.assert_allclose(np.asarray(res.ridge_step), [1.0, 0.0], atol=1e-6)
    assert float(res.x[1]) == pytest.approx(1.0, abs=1e-10)
    assert float(res.value) < 1e-11  # exp(-u) at u ~ 29


def test_separation_with_a_duplicated_column_is_still_unbounded(rng):
    """A duplicated separating column makes the Hessian exactly singular (no Cholesky factor):
    the escape test steps on its resolved directions and still finds the ridge, next to the
    flat direction beta[1] - beta[2]. Used to end SINGULAR with only the flat finding."""
    X, y = _separated(rng)
    X = np.column_stack([X, X[:, 1]])
    with pytest.warns(ah.InferenceWarning, match="unbounded"):
        res = ah.fit(ah.models.logistic(X, y))
    assert res.status_code == Status.UNBOUNDED
    kinds = {p.kind: p for p in res.diagnostics.problems}
    assert {"unbounded", "flat"} <= set(kinds)
    assert {"beta[1]", "beta[2]"} <= set(kinds["unbounded"].parameters)
    assert np.all(np.isnan(np.asarray(res.bse_flat)))


def _zip_loglik(p, d):
    """A user's zero-inflated Poisson: P(structural zero) = logistic(Z gamma)."""
    from jax.scipy.special import gammaln

    eta = d["Z"] @ p["gamma"]
    log_pi, log_1mpi = -jnp.logaddexp(0.0, -eta), -jnp.logaddexp(0.0, eta)
    log_lam = d["X"] @ p["beta"]
    lam = jnp.exp(log_lam)
    zero = jnp.logaddexp(log_pi, log_1mpi - lam)
    positive = log_1mpi + d["y"] * log_lam - lam - gammaln(d["y"] + 1.0)
    return jnp.where(d["y"] == 0, zero, positive)


@pytest.mark.parametrize("zeros", ["none", "fewer"])
def test_inflation_that_fades_takes_its_slope_with_it(zeros):
    """A zero-inflated Poisson on data without excess zeros (none at all, or fewer zeros than a
    Poisson predicts): the inflation intercept runs to -inf, and the inflation slope's
    information (~ pi (1 - pi)) fades with it, so its "standard error" is an arbitrary point on
    the path (62600 measured before: finite, with no problem named). Both inflation
    parameters must be NaN and named; the count part is then the plain Poisson model's.
    Reference: statsmodels' Poisson fit (Newton, analytic Hessian) of the same data; at the
    end of the ridge pi ~ exp(gamma[0]) < 1e-9 perturbs the count part by about that much, so
    estimates and SEs agree to 1e-6 relative."""
    import statsmodels.api as sm

    rng = np.random.default_rng(1813)
    n = 400
    x = rng.normal(size=n)
    X = np.column_stack([np.ones(n), x])
    y = rng.poisson(np.exp(1.2 + 0.3 * x))
    if zeros == "none":
        y = np.where(y == 0, 1, y)
    else:  # a Poisson mean floor of 1.5 leaves fewer zeros than exp(1.2 + 0.3x) predicts
        y = np.where((y == 0) & (rng.uniform(size=n) < 0.7), 1, y)
    model = ah.Model(_zip_loglik, {"X": X, "Z": X, "y": y}, params={"beta": jnp.zeros(2), "gamma": jnp.zeros(2)})
    with pytest.warns(ah.InferenceWarning, match="unbounded"):
        res = ah.fit(model)
    assert res.status_code == Status.UNBOUNDED
    assert np.all(np.isnan(np.asarray(res.bse["gamma"])))
    problem = next(p for p in res.diagnostics.problems if p.kind == "unbounded")
    assert {"gamma[0]", "gamma[1]"} <= set(problem.parameters)
    assert "(unconstrained scale)" not in problem.message  # every parameter is Real here
    ref = sm.Poisson(y, X).fit(method="newton", tol=1e-14, disp=0)
    np.testing.assert_allclose(np.asarray(res.params["beta"]), ref.params, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(res.bse["beta"]), ref.bse, rtol=1e-6)
