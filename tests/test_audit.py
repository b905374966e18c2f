"""Finite differences and the audit: every cause planted and recognised (issue #4)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import autohess as ah

A = jnp.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])


def smooth(x):
    """Convex, with large fourth derivatives (exp(3x)), minimised near x = -0.2."""
    return jnp.sum(jnp.exp(3 * x)) + 0.5 * x @ A @ x


def _minimum():
    return ah.fit(ah.Model(lambda p, d: -smooth(p["x"])[None], {"dummy": np.zeros(1)}, {"x": jnp.zeros(3)}), warn=False).params["x"]


X0 = jnp.array([0.1, -0.2, 0.3])


@pytest.mark.parametrize("method, order", [("central", 2), ("forward", 1), ("richardson", 4)])
def test_fd_converges_at_expected_order(method, order):
    """Halving h divides the truncation error by 2^order (central: quarters it)."""
    exact = np.asarray(ah.hessian(smooth, X0).matrix)
    steps = [0.04, 0.02, 0.01] if method != "richardson" else [0.2, 0.1, 0.05]
    errs = [np.max(np.abs(np.asarray(ah.fd_hessian(smooth, X0, method=method, step=h).matrix) - exact)) for h in steps]
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    np.testing.assert_allclose(ratios, 2.0**order, rtol=0.15)  # asymptotic constant: 15% slack


def test_fd_defaults_are_accurate_and_one_vmapped_call():
    traces = []

    def f(x):
        traces.append(1)
        return smooth(x)

    exact = np.asarray(ah.hessian(smooth, X0).matrix)
    for method, tol in (("central", 1e-6), ("forward", 1e-6), ("richardson", 1e-9)):
        fd = ah.fd_hessian(f, X0, method=method)
        assert np.max(np.abs(np.asarray(fd.matrix) - exact)) / np.max(np.abs(exact)) < tol, method
    # each method traced f once (under vmap) for all its stencil points: no Python loop
    assert len(traces) == 3
    ah.fd_hessian(f, X0 + 0.1, method="central")
    assert len(traces) == 3  # and repeated calls reuse the compiled program
    rich = ah.fd_hessian(smooth, X0, method="richardson")
    assert rich.error_estimate.shape == (3, 3)
    eps = np.finfo(float).eps
    np.testing.assert_allclose(np.asarray(ah.fd_hessian(smooth, X0).step), eps**0.25 * np.maximum(np.abs(np.asarray(X0)), 1.0))


def test_cause_ok_at_optimum():
    xm = _minimum()
    rep = ah.audit(smooth, xm, {"richardson": ah.fd_hessian(smooth, xm, method="richardson")})
    assert rep["richardson"].causes == ("ok",) and rep.stationary
    assert rep["richardson"].verdict.startswith("trust it")


def test_cause_rounding_too_small_step_large_f():
    big = lambda x: 1e10 + smooth(x)  # noqa: E731  (|f| large, curvature O(1))
    xm = _minimum()
    fd = ah.fd_hessian(big, xm, step=1e-6)
    rep = ah.audit(big, xm, {"with step": fd, "matrix only": np.asarray(fd.matrix)})
    for name in ("with step", "matrix only"):
        assert rep[name].cause == "rounding", rep[name].evidence


def test_cause_truncation_too_large_step():
    xm = _minimum()
    fd = ah.fd_hessian(smooth, xm, step=0.1)
    rep = ah.audit(smooth, xm, {"with step": fd, "matrix only": np.asarray(fd.matrix)})
    for name in ("with step", "matrix only"):
        assert rep[name].causes == ("truncation",), rep[name].evidence
    assert "h = 0.1 (inferred, one step for all)" in rep["matrix only"].evidence[0]


def test_cause_bfgs_hess_inv_after_few_iterations():
    g = jax.jit(jax.grad(smooth))
    res = scipy.optimize.minimize(
        lambda z: float(smooth(jnp.asarray(z))), np.ones(3), jac=lambda z: np.asarray(g(jnp.asarray(z))),
        method="BFGS", options={"maxiter": 3},
    )
    rep = ah.audit_scipy(res, smooth)
    (cand,) = rep.candidates
    assert cand.cause == "not_a_hessian" and "not_at_optimum" in cand.causes
    assert "rank-two update" in cand.evidence[0]


def test_cause_not_at_optimum():
    rep = ah.audit(smooth, X0 + 0.5, {"exact copy": np.asarray(ah.hessian(smooth, X0 + 0.5).matrix)})
    assert rep["exact copy"].causes == ("not_at_optimum",) and not rep.stationary


def test_cause_indefinite_saddle_named():
    saddle = lambda x: x[0] ** 2 - 3 * x[1] ** 2 + x[0] * x[2] + x[2] ** 2  # noqa: E731
    rep = ah.audit(saddle, jnp.zeros(3), {"exact copy": np.diag([2.0, -6.0, 2.0]) + np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0.0]])})
    cand = rep["exact copy"]
    assert cand.causes == ("saddle",)  # the exact Hessian's finding; the copy itself agrees
    assert "1.00*x[1]" in cand.evidence[1] and "saddle" in cand.evidence[1]
    assert np.isnan(cand.se[1])


def test_cause_sign_flip():
    xm = _minimum()
    rep = ah.audit(smooth, xm, {"loglik Hessian": -np.asarray(ah.hessian(smooth, xm).matrix)})
    assert rep["loglik Hessian"].cause == "sign"


def test_inverse_candidates_and_report_text():
    xm = _minimum()
    H = np.asarray(ah.hessian(smooth, xm).matrix)
    rep = ah.audit(smooth, xm, {"covariance": (np.linalg.inv(H), "inverse")})
    assert rep["covariance"].causes == ("ok",)
    text = str(rep)
    assert "covariance" in text and "trust it" in text
    json.dumps(rep.to_dict())  # serialisable


def test_step_sweep_v_shape():
    xm = _minimum()
    sweep = ah.step_sweep(lambda x: 1e4 + smooth(x), xm)
    k = int(np.argmin(sweep.errors))
    assert 0 < k < len(sweep.steps) - 1  # rounding on the left, truncation on the right
    assert sweep.errors[0] > 100 * sweep.best_error and sweep.errors[-1] > 100 * sweep.best_error
    assert "best step" in str(sweep)


def test_step_sweep_plot():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = ah.step_sweep(smooth, X0).plot()
    assert ax.get_xscale() == "log"


def test_audit_on_a_model():
    rng = np.random.default_rng(0)
    X = np.c_[np.ones(400), rng.normal(size=(400, 2))]
    model = ah.models.logistic(X, (rng.uniform(size=400) < 0.4).astype(float))
    res = ah.fit(model)
    rep = ah.audit(model, res.params, {"richardson": ah.fd_hessian(model, res.params, method="richardson")})
    assert rep["richardson"].causes == ("ok",)
    assert rep.labels == model.labels


def test_audit_bad_input():
    with pytest.raises(ValueError, match="at least one candidate"):
        ah.audit(smooth, X0, {})
    with pytest.raises(ValueError, match=r"candidate 'c' has shape \(2, 2\)"):
        ah.audit(smooth, X0, {"c": np.eye(2)})
    with pytest.raises(ValueError, match="kind must be"):
        ah.audit(smooth, X0, {"c": (np.eye(3), "covariance")})
    with pytest.raises(ValueError, match="method must be one of"):
        ah.fd_hessian(smooth, X0, method="backward")
    with pytest.raises(ValueError, match="step must be positive"):
        ah.fd_hessian(smooth, X0, step=0.0)


def test_relative_steps_for_small_parameters():
    """A parameter of size 0.01: the max(|x|, 1) floor makes the step 1% of it; relative
    steps are ~100x more accurate (bench_fd measured the same on GARCH's omega)."""
    f = lambda x: jnp.sum(jnp.exp(x / 0.01)) * 1e-4  # noqa: E731
    x = jnp.array([0.01, 0.02])
    exact = np.asarray(ah.hessian(f, x).matrix)
    err = lambda step: np.max(np.abs(np.asarray(ah.fd_hessian(f, x, method="richardson", step=step).matrix) - exact)) / np.abs(exact).max()  # noqa: E731
    assert err("relative") < 1e-2 * err(None)
    with pytest.raises(ValueError, match="'relative' or None"):
        ah.fd_hessian(f, x, step="absolute")


# -- review round (stop 11): flat valleys, bare matrices, other matrices, bad input ---------------
def _valley():
    """y ~ N(a*b, 1): f is constant along a*b = mean(y) (only the product is identified)."""
    z = jnp.asarray(np.random.default_rng(3).normal(3.0, 1.0, 400))
    return (lambda t: 0.5 * jnp.sum((z - t[0] * t[1]) ** 2)), float(jnp.mean(z))


@pytest.mark.parametrize("delta", [-1e-6, 1e-6, 0.0])
def test_flat_valley_is_flat_whatever_the_sign_of_the_leftover_gradient(delta):
    """Off the valley by delta (|gradient| ~ 8e-4, as BFGS leaves it), the flat eigenvalue is
    +-3.8e-4 of 2536 (closed form det H = sum(r) (2 N a b - sum(r)) follows the residual's
    sign). Both signs, and the exact valley, are 'flat': not 'ok', not a saddle."""
    f, zbar = _valley()
    x = jnp.array([1.5, (zbar + delta) / 1.5])
    rep = ah.audit(f, x, {"exact copy": np.asarray(ah.hessian(f, x).matrix)})
    cand = rep["exact copy"]
    assert cand.causes == ("flat",), cand.evidence
    assert "0.80*x[1] - 0.60*x[0]" in cand.evidence[-1]  # the valley direction, b/a-weighted
    assert not rep.exact_positive_definite and rep.flat_directions == 1 and rep.negative_directions == 0
    assert np.all(np.isnan(cand.se_exact))  # both parameters load on the flat direction
    assert "1 flat direction" in str(rep)


def test_flat_valley_from_scipy_bfgs_is_not_trusted():
    f, _ = _valley()
    g = jax.jit(jax.grad(f))
    res = scipy.optimize.minimize(lambda t: float(f(jnp.asarray(t))), np.array([2.9, 2.7]),
                                  jac=lambda t: np.asarray(g(jnp.asarray(t))), method="BFGS")
    rep = ah.audit_scipy(res, f, extra={"exact": np.asarray(ah.hessian(f, jnp.asarray(res.x)).matrix)})
    assert "flat" in rep["exact"].causes and "ok" not in rep["exact"].causes
    assert all("saddle" not in c.causes for c in rep.candidates)


def test_saddle_only_at_a_stationary_point():
    """Negative curvature far from the optimum is 'not_at_optimum' (with the direction named),
    not a saddle: a saddle is a stationary point."""
    saddle = lambda x: x[0] ** 2 - 3 * x[1] ** 2  # noqa: E731
    x = jnp.array([0.0, 1.0])
    rep = ah.audit(saddle, x, {"exact copy": np.diag([2.0, -6.0])})
    cand = rep["exact copy"]
    assert cand.causes == ("not_at_optimum",)
    assert "negative curvature here along 1.00*x[1]" in cand.evidence[-1]


def _logistic_bfgs():
    """The demo's logistic data (covariates on scales 1e-3..1e5) at scipy BFGS's answer."""
    from autohess._demo import _data, naive_central_hessian

    X, y = _data(1500, 0)

    def negloglik(b):
        eta = X @ b
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta))

    res = scipy.optimize.minimize(negloglik, np.zeros(X.shape[1]), method="BFGS")
    return ah.models.logistic(X, y), res, negloglik, naive_central_hessian


def test_bare_matrices_step_inferred_statsmodels_and_seed_code():
    """statsmodels' approx_hess (of the negative log-likelihood) and the question's code, as bare
    matrices: the audit finds their steps. statsmodels uses h_i = eps^(1/4) max(|x_i|, 0.1) with
    x +/- 2h on the diagonal; its error at [11, 11] scales as c^2 when its steps are multiplied
    by c (0.40, 0.094, 9.4e-3 at c = 3, 1, 0.3: truncation, measured independently in review)."""
    from statsmodels.tools.numdiff import approx_hess

    model, res, negloglik, naive = _logistic_bfgs()
    at = {"beta": jnp.asarray(res.x)}
    rep = ah.audit(model, at, {"statsmodels": approx_hess(res.x, negloglik), "seed code": naive(negloglik, res.x),
                               "statsmodels loglik": approx_hess(res.x, lambda b: -negloglik(b))})
    sm = rep["statsmodels"]
    assert sm.causes == ("truncation",), sm.evidence
    assert "(inferred, h_i = 0.00012*max(|x_i|, 0.1), statsmodels approx_hess's stencil)" in sm.evidence[0]
    assert "[beta[11], beta[11]]" in sm.evidence[0]
    seed = rep["seed code"]
    assert seed.causes == ("rounding", "truncation", "indefinite"), seed.evidence
    assert "h = 1e-05 (inferred, one step for all)" in seed.evidence[0]
    # measured errors are reported, not only the bound: the largest scaled error is 1.0 (beta[6])
    assert f"errors there up to {np.max(np.abs(seed.hessian - rep.exact) / np.outer(np.sqrt(np.diag(rep.exact)), np.sqrt(np.diag(rep.exact)))):.2g}" in seed.evidence[0]
    assert rep["statsmodels loglik"].causes == ("sign", "truncation")
    assert rep["statsmodels loglik"].evidence[1].startswith("after flipping the sign")


def test_other_matrices_are_named():
    """The exact covariance and BFGS's hess_inv passed as Hessians; the OPG; an analytic
    Hessian with a bug; an asymmetric matrix."""
    model, res, _, _ = _logistic_bfgs()
    at = {"beta": jnp.asarray(res.x)}
    H = np.asarray(ah.hessian(model, at).matrix)
    S = np.asarray(ah.scores(model, at))
    buggy = H.copy()
    buggy[2, 5] *= 1.5
    buggy[5, 2] *= 1.5  # a wrong factor in one cross term
    lopsided = H.copy()
    lopsided[0, 1] *= 1.2
    rep = ah.audit(model, at, {"covariance": np.linalg.inv(H), "hess_inv": res.hess_inv, "opg": S.T @ S,
                               "buggy": buggy, "lopsided": lopsided})
    assert rep["covariance"].causes == ("inverse",) and "pass it as (matrix, 'inverse')" in rep["covariance"].evidence[0]
    assert rep["hess_inv"].causes == ("inverse",) and "BFGS's hess_inv" in rep["hess_inv"].evidence[0]
    assert rep["opg"].causes == ("not_a_hessian",) and "outer product of the scores" in rep["opg"].evidence[0]
    assert rep["buggy"].causes == ("unexplained",) and "[beta[2], beta[5]]" in rep["buggy"].evidence[0]
    assert rep["lopsided"].causes[0] == "asymmetric" and "rounding" not in rep["lopsided"].causes


def test_scale_of_a_transformed_model():
    """A Hessian on the log(sigma) scale given to a natural-scale audit is named; audited on
    its own scale it is exact (closed form: d2/dlog(sigma)^2 = 2N at the MLE)."""
    y = np.random.default_rng(9).normal(2.0, 0.5, 300)
    model = ah.Model(lambda p, d: -0.5 * ((d["y"] - p["mu"]) / p["sigma"]) ** 2 - jnp.log(p["sigma"]),
                     {"y": y}, {"mu": 0.0, "sigma": ah.Positive(1.0)})
    at = {"mu": y.mean(), "sigma": y.std()}
    Hu = np.asarray(ah.hessian(model, at, scale="unconstrained").matrix)
    np.testing.assert_allclose(Hu[1, 1], 2 * len(y), rtol=1e-12)  # rounding only
    rep = ah.audit(model, at, {"unconstrained": Hu})
    assert rep["unconstrained"].causes == ("scale",) and "scale='unconstrained'" in rep["unconstrained"].evidence[0]
    rep_u = ah.audit(model, at, {"unconstrained": Hu}, scale="unconstrained")
    assert rep_u["unconstrained"].causes == ("ok",) and rep_u.labels == ("mu", "log(sigma)")
    assert "unconstrained scale" in str(rep_u)


def test_nonfinite_candidates_and_domain_warning():
    y = jnp.asarray(np.random.default_rng(1).normal(0.0, 1e-4, 300))
    nll = lambda t: 300 * jnp.log(t[1]) + 0.5 * jnp.sum((y - t[0]) ** 2) / t[1] ** 2  # noqa: E731
    x = jnp.array([float(jnp.mean(y)), float(jnp.std(y))])
    with pytest.warns(RuntimeWarning, match="leaves its"):
        fd = ah.fd_hessian(nll, x)  # default step 1.2e-4 > sigma = 1e-4: log of a negative
    rep = ah.audit(nll, x, {"default fd": fd})
    assert rep["default fd"].causes == ("nonfinite",) and "domain" in rep["default fd"].evidence[0]


def test_audit_bad_input_named():
    H = np.asarray(ah.hessian(smooth, X0).matrix)
    with pytest.raises(TypeError, match="candidates must be a dict"):
        ah.audit(smooth, X0, [H])
    with pytest.raises(ValueError, match="candidate 'c' is complex"):
        ah.audit(smooth, X0, {"c": H + 1j})
    with pytest.raises(ValueError, match="dtype"):
        ah.audit(smooth, X0, {"c": np.array([["a"] * 3] * 3)})
    with pytest.raises(ValueError, match="not finite at this point"):
        ah.audit(lambda x: jnp.sum(jnp.log(x)), jnp.array([-1.0, 1.0, 1.0]), {"c": np.eye(3)})
    with pytest.raises(TypeError, match="the audited objective is not traceable.*jax.numpy"):
        ah.audit(lambda x: np.sum(np.asarray(x) ** 2), X0, {"c": np.eye(3)})
    with pytest.raises(ValueError, match="scale='unconstrained' needs an ah.Model"):
        ah.audit(smooth, X0, {"c": H}, scale="unconstrained")


def test_step_sweep_relative_to_x():
    """Parameters of size 1e-3..1e-2 (as the demo's coefficients): steps proportional to |x_i|
    reach a smaller error than steps floored at 1 (9.6e-9 vs 5.9e-8 measured here on the
    half-decade grid; review: 4.3e-5 vs 6.2e-4 on the demo)."""
    f = lambda x: jnp.sum(jnp.exp(x / jnp.array([0.01, 0.002]))) * 1e-4  # noqa: E731
    x = jnp.array([0.01, 0.002])
    floored, proportional = ah.step_sweep(f, x), ah.step_sweep(f, x, relative="x")
    assert proportional.best_error < 0.25 * floored.best_error
    with pytest.raises(ValueError, match="relative must be"):
        ah.step_sweep(f, x, relative="yes")
