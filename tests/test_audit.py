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
    assert "(inferred)" in rep["matrix only"].evidence[0]


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
    assert cand.causes == ("indefinite",)
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
