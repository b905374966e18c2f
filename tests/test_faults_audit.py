"""Fault campaign, audit (issue #18 item 3 and our own probes): the audit must not name a cause
that is not there. Every candidate here is built from the exact Hessian by a known operation
(a multiple, a reordering, a sub-sampled step), so the expected cause is known in closed form."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah


def _logistic(p, n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    X[:, 0] = 1.0
    beta = rng.normal(scale=0.3, size=p)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ beta))).astype(float)
    m = ah.models.logistic(X, y)
    return m, ah.fit(m, warn=False).params


@pytest.fixture(scope="module")
def small():
    m, at = _logistic(5)
    return m, at, np.asarray(ah.hessian(m, at).matrix)


def test_multiples_of_the_hessian_are_proportional_not_rounding(small):
    """c*H (c = 2: the deviance; c = 0.5; c = 1/n: a mean log-likelihood; c = -3; c = 1.5, which the finite-difference search is tried on first) and a covariance
    scaled by 4 are `proportional` with c named (closed form: the candidate is c*H exactly, so c is
    recovered to rounding; 1e-10 relative is far above it and far below any other explanation)."""
    m, at, H = small
    n = 200
    cands = {"2H": 2 * H, "half": 0.5 * H, "mean": H / n, "minus3": -3 * H, "4cov": (4 * np.linalg.inv(H), "inverse"),
             "1.5H": 1.5 * H}
    rep = ah.audit(m, at, cands)
    for name, c in [("2H", 2.0), ("half", 0.5), ("mean", 1 / n), ("minus3", -3.0), ("4cov", 0.25), ("1.5H", 1.5)]:
        cand = rep[name]
        assert cand.causes[0] == "proportional", (name, cand.causes, cand.evidence)
        assert "rounding" not in cand.causes and "inferred" not in cand.verdict
        assert f"c = {c:.4g}" in cand.evidence[0]


def test_unrelated_matrices_are_not_rounding(small):
    """An identity and a random positive definite matrix are not finite differences of anything:
    no inferred step (before the fix both were `rounding` with "inferred h = 3.1e-08")."""
    m, at, H = small
    rng = np.random.default_rng(1)
    A = rng.normal(size=(5, 5))
    rep = ah.audit(m, at, {"eye": np.eye(5), "random spd": A @ A.T + 5 * np.eye(5),
                           "eye as inverse": (np.eye(5), "inverse")})
    for name in ("eye", "random spd", "eye as inverse"):
        cand = rep[name]
        assert cand.causes[0] in ("unexplained", "not_a_hessian"), (name, cand.causes)
        assert "rounding" not in cand.causes and "inferred" not in cand.verdict


def test_labelled_frame_is_matched_by_label_or_refused(small):
    """A DataFrame in another label order is the exact Hessian (ok after matching labels); a frame
    whose labels are not the parameters' is refused, naming them; an unlabelled (RangeIndex)
    frame is positional, as an array."""
    pd = pytest.importorskip("pandas")
    m, at, H = small
    labels = list(m.labels)
    order = labels[::-1]
    idx = [labels.index(v) for v in order]
    frame = pd.DataFrame(H[np.ix_(idx, idx)], index=order, columns=order)
    cov = pd.DataFrame(np.linalg.inv(H)[np.ix_(idx, idx)], index=order, columns=order)
    rep = ah.audit(m, at, {"frame": frame, "cov frame": (cov, "inverse"), "plain frame": pd.DataFrame(H)})
    assert [rep[k].cause for k in ("frame", "cov frame", "plain frame")] == ["ok", "ok", "ok"]
    bad = pd.DataFrame(H, index=["const", "x1", "x2", "x3", "x4"], columns=["const", "x1", "x2", "x3", "x4"])
    with pytest.raises(ValueError, match=r"'sm'.*index labels.*missing \['beta\[0\]'.*unknown \['const'"):
        ah.audit(m, at, {"sm": bad})


def test_statsmodels_nb2_cov_params_alpha_last_is_order():
    """statsmodels' NB2 cov_params() (alpha last) as an inverse: named `order` (reference:
    statsmodels 0.14+ NegativeBinomial, Newton to convergence; its covariance is the inverse of its
    analytic Hessian in alpha itself, so after moving alpha first it agrees with ours to ~1e-10)."""
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(3)
    n = 400
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    mu = np.exp(X @ np.array([0.5, 0.3, -0.2]))
    y = rng.negative_binomial(1 / 0.5, 1 / (1 + 0.5 * mu))
    res = sm.NegativeBinomial(y, X, loglike_method="nb2").fit(disp=0, method="newton", maxiter=100)
    m = ah.models.negative_binomial(X, y)
    at = {"beta": res.params[:-1], "alpha": res.params[-1]}
    rep = ah.audit(m, at, {"sm cov": (res.cov_params(), "inverse"), "sm hessian": -res.model.hessian(res.params)})
    for name in ("sm cov", "sm hessian"):
        assert rep[name].causes[0] == "order", (name, rep[name].causes, rep[name].evidence)
        assert "its rows are beta[0], beta[1], beta[2], alpha" in rep[name].evidence[0]


@pytest.mark.parametrize("step, cause", [(1e-7, "rounding"), (0.5, "truncation")])
def test_fd_at_p40_gets_its_step_and_is_fast(step, cause):
    """A bare central-difference Hessian at p = 40 (above the 24-parameter sample): the cause is
    the one at p <= 24 (closed form: at 1e-7 rounding eps|f|/h^2 ~ 1e-2 dominates, at 0.5 the
    h^2 term does), and the inferred step is the true one within the noise (rounding: a factor 4,
    the noise's size only bounds it; truncation: reproduced, 10%). The search runs on 24
    parameters, so it stays well under the ~20 s the full search took at p = 60."""
    m, at = _logistic(40, n=300)
    fd = np.asarray(ah.fd_hessian(m, at, step=step).matrix)
    t0 = time.perf_counter()
    rep = ah.audit(m, at, {"fd": fd})
    elapsed = time.perf_counter() - t0
    cand = rep["fd"]
    assert cand.causes[0] == cause, (cand.causes, cand.evidence)
    assert "inferred on 24 of the 40 parameters" in cand.evidence[0]
    h = float(cand.evidence[0].split("h = ")[1].split(" ")[0].split("..")[0])
    assert step / (4 if cause == "rounding" else 1.1) <= h <= step * (4 if cause == "rounding" else 1.1)
    assert elapsed < 60  # generous for a loaded 2-core machine; the full search was ~20 s at p = 60


def test_sampled_search_on_a_plain_function():
    """The sample path restricts a plain function (not a model) too: ``sum cosh(x_i) +
    cosh(sum x / sqrt(p))`` at its minimum x = 0, p = 30, step 0.5: the cause is truncation
    (closed form: the diagonal's h^2 f^(4)/12 ~ 0.02 scaled, far above rounding) with the step
    recovered to 10% (the refinement's tolerance)."""
    def f(x):
        return jnp.sum(jnp.cosh(x)) + jnp.cosh(jnp.sum(x) / jnp.sqrt(30.0))

    x = jnp.zeros(30)
    fd = np.asarray(ah.fd_hessian(f, x, step=0.5).matrix)
    cand = ah.audit(f, x, {"fd": fd})["fd"]
    assert cand.causes[0] == "truncation", cand.evidence
    assert "inferred on 24 of the 30 parameters" in cand.evidence[0]
    h = float(cand.evidence[0].split("h = ")[1].split(" ")[0].split("..")[0])
    assert 0.45 <= h <= 0.55


def test_bad_arguments_named(small):
    m, at, H = small
    with pytest.raises(TypeError, match="candidate names must be strings.*0"):
        ah.audit(m, at, {0: H})
    with pytest.raises(ValueError, match=r"step has shape \(3,\).*5 parameters"):
        ah.fd_hessian(m, at, step=[1e-4, 1e-4, 1e-4])
    with pytest.raises(ValueError, match="steps must be a 1-d sequence.*wrap a single step in a list"):
        ah.step_sweep(m, at, steps=1e-4)
    with pytest.raises(ValueError, match="steps must be a 1-d sequence"):
        ah.step_sweep(m, at, steps=[1e-4, -1.0])


def test_fd_at_another_point_is_not_rounding(small):
    """An ``ah.fd_hessian`` result (its step known, 1.2e-4) computed at another point (beta + 0.3):
    its errors are neither reproduced by differences at that step nor of their rounding size
    (closed form: the Hessian moved by 0.3 in beta, ~0.2 scaled, vs rounding ~1e-9), so it is
    `unexplained` with "another point" named, never `rounding` (before the fix: `rounding`)."""
    m, at, H = small
    other = ah.fd_hessian(m, {"beta": np.asarray(at["beta"]) + 0.3})
    here = ah.fd_hessian(m, at, step=1e-7)  # its own point: still rounding, as before
    rep = ah.audit(m, at, {"other point": other, "here": here})
    assert rep["other point"].causes[0] == "unexplained", rep["other point"].evidence
    assert "another point" in rep["other point"].evidence[0]
    assert rep["here"].causes[0] == "rounding", rep["here"].evidence


def test_dict_candidates_checked_and_hessian_given_as_inverse(small):
    m, at, H = small
    with pytest.raises(ValueError, match=r"unknown dict keys \['stepp'\]"):
        ah.audit(m, at, {"c": {"matrix": H, "stepp": 1e-4}})
    with pytest.raises(ValueError, match=r"'c': step has shape \(2,\), the point has 5 parameters"):
        ah.audit(m, at, {"c": {"matrix": 2 * H, "step": [1e-4, 1e-4]}})
    cand = ah.audit(m, at, {"H as inverse": (H, "inverse")})["H as inverse"]
    assert cand.causes[0] == "inverse" and "pass it as a Hessian" in cand.evidence[0]
