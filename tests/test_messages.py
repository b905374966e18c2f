"""Messages that point at the cause (issue #13 part 4) and a preconditioned L-BFGS (part 5).

* A Hessian that is not finite where the log-likelihood is: ``fit`` (both methods),
  ``evaluate`` and ``hessian`` give one message naming the parameters and the common cause
  (``jnp.inf`` as a constant inside the likelihood).
* "At the optimum" is one rule in ``evaluate`` and ``audit``: the Newton step's length in
  standard errors; ``evaluate``'s advice fits a function without ``maxiter``.
* ``simulate``'s signature is checked when the model is built.
* L-BFGS reaches statsmodels' MNLogit optimum on a 36-parameter multinomial logit.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

import autohess as ah


# ------------------------------------------------------------------------------------------
# A finite log-likelihood with a non-finite Hessian
# ------------------------------------------------------------------------------------------
def _ordered_probit(outer):
    """Ordered probit with 3 categories and outer cut points -outer, +outer."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = np.digitize(0.8 * x + rng.normal(size=300), [-0.5, 0.7])

    def loglik(p, d):
        cuts = jnp.concatenate([jnp.array([-outer]), p["c"], jnp.array([outer])])
        eta = d["x"] * p["b"]
        yi = d["y"].astype(jnp.int32)
        return jnp.log(norm.cdf(cuts[yi + 1] - eta) - norm.cdf(cuts[yi] - eta))

    return ah.Model(loglik, {"x": x, "y": y}, {"b": 0.0, "c": jnp.array([-0.3, 0.4])})


def _truncated_normal(upper):
    """Normal truncated to (0, upper): the truncation's normalising constant holds ``upper``."""
    y = np.abs(np.random.default_rng(1).normal(0.5, 1.0, 200))

    def loglik(p, d):
        mu, s = p["mu"], p["sigma"]
        mass = norm.cdf((upper - mu) / s) - norm.cdf((0.0 - mu) / s)
        return norm.logpdf(d["y"], mu, s) - jnp.log(mass)

    return ah.Model(loglik, {"y": y}, {"mu": 0.5, "sigma": ah.Positive(1.0)})


CAUSE = r"jnp\.inf or -jnp\.inf used as a constant.*inf \* 0 = nan.*large finite value"


@pytest.mark.parametrize("build, named", [(_ordered_probit, r"\['b'\]"), (_truncated_normal, r"\['mu', 'sigma'\]")])
def test_nonfinite_hessian_message_is_the_same_from_fit_evaluate_and_hessian(build, named):
    """Two likelihoods with jnp.inf inside (ordered-probit outer cut points; a truncation at
    +inf) are finite, but their Hessians contain inf * 0. fit used to say "not finite ...
    raise maxiter" (trust region) or "no step reduces ... (a saddle point ...)" (L-BFGS);
    every entry point now names the parameters and the cause, and the fix the message
    suggests (a large finite constant) works."""
    model = build(jnp.inf)
    start = model.init_params
    for call, where in [
        (lambda: ah.hessian(model, start), "given parameters"),
        (lambda: ah.evaluate(model, start), "given parameters"),
        (lambda: ah.fit(model), "starting values"),
    ]:
        with pytest.raises(FloatingPointError, match=f"non-finite entries for {named}.*finite at the {where}.*{CAUSE}"):
            call()
    if build is _ordered_probit:  # its gradient is finite: L-BFGS reaches an estimate first
        with pytest.raises(FloatingPointError, match=f"non-finite entries for {named}.*L-BFGS estimate.*{CAUSE}"):
            ah.fit(model, method="lbfgs")
    # the advice: +-1e10 gives the same log-likelihood (cdf(1e10) = 1 exactly in float64) and
    # finite derivatives (1e10 * pdf(1e10) = 0)
    fixed = build(1e10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ah.InferenceWarning)
        res = ah.fit(fixed)
    assert res.converged and np.isfinite(np.asarray(res.bse_flat)).all()
    assert model.loglik(res.params) == fixed.loglik(res.params)


# ------------------------------------------------------------------------------------------
# "At the optimum": one rule for evaluate and audit
# ------------------------------------------------------------------------------------------
def _logistic_model():
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(400), rng.normal(size=(400, 3))])
    y = (rng.uniform(size=400) < 1.0 / (1.0 + np.exp(-X @ np.array([0.2, 0.5, -0.4, 0.3])))).astype(float)
    return ah.models.logistic(X, y)


def _normal_regression_model():
    rng = np.random.default_rng(4)
    x = rng.normal(size=300)
    y = 1.0 + 0.5 * x + 0.7 * rng.normal(size=300)
    return ah.Model(lambda p, d: norm.logpdf(d["y"], p["a"] + p["b"] * d["x"], p["sigma"]), {"x": x, "y": y},
                    {"a": 0.0, "b": 0.0, "sigma": ah.Positive(1.0)})


@pytest.mark.parametrize("build", [_logistic_model, _normal_regression_model])
def test_evaluate_and_audit_share_the_at_the_optimum_rule(build):
    """Another program's estimate, k standard errors (Mahalanobis length sqrt(d' H d) = k)
    from the optimum: at k = 3e-4 (Stata's ARMA digits in the issue) evaluate used to say "not
    a stationary point ... raise maxiter" while audit said "at the optimum"; both now say at
    the optimum. At k = 1 both say not, evaluate's advice is to fit or pass the optimum (it has
    no maxiter), and both measure the same distance (one helper). The distance is the Newton
    step's length in SEs, k up to third-derivative terms: within 10% at k = 1 (N = 300-400:
    the Hessian changes by O(k / sqrt(N)) over the step), 1e-3 at k = 3e-4."""
    model = build()
    res = ah.fit(model)
    H = np.asarray(res.hessian_matrix)
    v = np.asarray(res.bse_flat) * np.resize([1.0, -1.0], H.shape[0])
    for k in (3e-4, 1.0):
        x = np.asarray(res.params_flat) + k * v / np.sqrt(v @ H @ v)
        params = model.unflatten(x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ev = ah.evaluate(model, params)
        rep = ah.audit(model, params, {"exact": ah.hessian(model, params).matrix})
        assert rep.newton_length == pytest.approx(k, rel=0.1 if k == 1.0 else 1e-3)
        if k < 0.1:
            assert rep.stationary and ev.diagnostics.ok and not caught
            assert "not_at_optimum" not in rep["exact"].causes
        else:
            assert not rep.stationary and "not_at_optimum" in rep["exact"].causes
            (problem,) = ev.diagnostics.problems
            assert problem.kind == "not_converged"
            assert f"{rep.newton_length:.2g} standard errors" in problem.message
            assert "ah.fit(model, start=params)" in problem.suggestion and "maxiter" not in problem.suggestion
            assert len(caught) == 1 and "not at the optimum" in str(caught[0].message)


# ------------------------------------------------------------------------------------------
# simulate's signature, checked when the model is built
# ------------------------------------------------------------------------------------------
def test_simulate_signature_checked_at_construction():
    """The README used to say simulate(key, params); a custom Model needs (key, params, data)
    and the mismatch surfaced only inside bootstrap(kind="parametric") as a bare arity
    TypeError. Now the constructor names simulate, its signature and the expected one, for
    too few and too many required arguments, and for a bound model method passed by mistake;
    defaults, *args and partials (the zoo's GARCH) that accept three arguments pass."""
    import functools

    base = ah.models.poisson(np.ones((20, 1)), np.arange(20.0) % 3)
    loglik, data, params = ah.models.poisson_loglik, dict(base.data), {"beta": jnp.zeros(1)}

    def two(key, params):
        return data

    def four(key, params, data, scale):
        return data

    for bad, shown in [(two, r"two\(key, params\)"), (four, r"four\(key, params, data, scale\)"),
                       (base.simulate, r"simulate\(key: .*params: .*\).*")]:
        with pytest.raises(TypeError, match=f"simulate={shown} cannot be called as simulate\\(key, params, data\\).*"
                                            "Write it as simulate\\(key, params, data\\) -> data"):
            ah.Model(loglik, data, params, simulate=bad)
    with pytest.raises(TypeError, match="simulate must be a function simulate\\(key, params, data\\) -> data, got int"):
        ah.Model(loglik, data, params, simulate=3)
    for ok in [base.simulate_fn, lambda *a: a[2], functools.partial(four, scale=2.0),
               lambda key, params, data, scale=1.0: data]:
        model = ah.Model(loglik, data, params, simulate=ok)
        assert set(model.simulate(jax.random.key(0))) == set(data)


# ------------------------------------------------------------------------------------------
# L-BFGS, preconditioned by the start's Hessian
# ------------------------------------------------------------------------------------------
def test_lbfgs_reaches_statsmodels_mnlogit_with_covariates_in_their_own_units():
    """A 36-parameter multinomial logit (N = 944, 7 classes, 5 covariates in their own units:
    age in years, income in thousands, ...): plain L-BFGS stopped at maxiter 1000 about 0.5
    log-likelihood units short (benchmarks/bench_methods.py); preconditioned by the start's
    Hessian it converges in ~12 iterations. Reference: statsmodels MNLogit (Newton, to its
    gradient tolerance). Tolerances: L-BFGS stops once the gradient per standard error is
    below sqrt(eps) (1 + |llf|) ~ 2.5e-5, so the Newton step left is below ~sqrt(p) * 2.5e-5
    = 1.5e-4 SE (params within 1e-3 SE) and the log-likelihood gap below its square (1e-9
    relative leaves room for statsmodels' own stopping point)."""
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(0)
    n, J = 944, 7
    X = np.column_stack([np.ones(n), rng.normal(40, 12, n), rng.normal(12, 3, n), rng.gamma(4, 12, n),
                         rng.uniform(size=n) < 0.4, rng.poisson(2, n)]).astype(float)
    sd = X[:, 1:].std(0)
    B = np.vstack([np.zeros((1, J - 1)), 0.4 * rng.normal(size=(5, J - 1)) / sd[:, None]])
    B[0] = -(X[:, 1:].mean(0) @ B[1:])
    eta = np.column_stack([np.zeros(n), X @ B])
    prob = np.exp(eta - eta.max(1, keepdims=True))
    y = np.array([rng.choice(J, p=row / row.sum()) for row in prob])

    def loglik(p, d):
        eta = jnp.concatenate([jnp.zeros((d["X"].shape[0], 1)), d["X"] @ p["B"]], axis=1)
        return jnp.sum(d["Y"] * eta, axis=1) - jax.nn.logsumexp(eta, axis=1)

    model = ah.Model(loglik, {"X": X, "Y": np.eye(J)[y]}, {"B": jnp.zeros((6, J - 1))})
    ref = sm.MNLogit(y, X).fit(method="newton", maxiter=100, disp=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ah.InferenceWarning)
        res = ah.fit(model, method="lbfgs")
    assert res.converged and int(res.iterations) <= 50
    assert float(res.llf) == pytest.approx(ref.llf, rel=1e-9)
    se = np.asarray(res.bse["B"])
    assert np.max(np.abs(np.asarray(res.params["B"]) - ref.params) / se) < 1e-3
    np.testing.assert_allclose(se, ref.bse, rtol=1e-3)  # the Hessian at points 1e-3 SE apart
