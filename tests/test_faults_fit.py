"""Fault campaign, area "fit" (issue #18 items 1, 2, 6, 7, 8 and the fit's part of section 3):
no fit may return a wrong number quietly. Each test failed before its fix; the probes and what
they found are listed in tests/README.md, "Fault campaign: fit"."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess._solver import Status

N = 200


@pytest.fixture(scope="module")
def logit():
    rng = np.random.default_rng(18)
    X = np.column_stack([np.ones(N), rng.normal(size=N)])
    y = (rng.uniform(size=N) < 1.0 / (1.0 + np.exp(-(0.3 - 0.9 * X[:, 1])))).astype(float)
    m = ah.models.logistic(X, y)
    return m, ah.fit(m)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ah.InferenceWarning)
        return fn(*args, **kwargs)


# -- 1. a batch member keeps its own weights and data ----------------------------------------
def test_weights_batch_member_profiles_its_own_likelihood(logit):
    m, _ = logit
    w = np.stack([np.full(N, 0.5), np.r_[np.full(N // 2, 2.0), np.ones(N - N // 2)]])
    bres = ah.fit_batch(m, weights=w)
    for i in range(2):
        mem = bres.member(i)
        np.testing.assert_array_equal(np.asarray(mem.weights), w[i])
        # reference: the single weighted fit (same likelihood), and the closed form sum(w) - p
        assert mem.df_resid == pytest.approx(w[i].sum() - 2, abs=1e-9)
    single = ah.fit(m, weights=w[0])
    # reference: profile of the single weighted fit; the two fits agree to ~1e-12 and the
    # profile's root finder is run to 1e-8 of the interval, so 1e-6 holds with room
    prof_single = ah.profile(single, "beta[1]").conf_int()
    prof_member = ah.profile(bres.member(0), "beta[1]").conf_int()
    np.testing.assert_allclose(prof_member, prof_single, atol=1e-6)
    assert float(np.ptp(np.asarray(prof_member))) > 0.5  # not the zero-width interval of before


def test_data_batch_member_carries_its_own_data(logit):
    m, _ = logit
    rng = np.random.default_rng(3)
    data = {k: np.asarray(v) for k, v in m.data.items()}
    ys = (rng.uniform(size=(2, N)) < 0.4).astype(float)
    batch = {k: np.stack([v, v]) for k, v in data.items()}
    batch["y"] = ys
    bres = ah.fit_batch(m, batch)
    mem = bres.member(1)
    np.testing.assert_array_equal(np.asarray(mem.model.data["y"]), ys[1])
    # reference: the single fit of the model on member 1's data (bic uses its llf)
    ref = ah.fit(m.with_data({**data, "y": ys[1]}))
    assert mem.bic == pytest.approx(ref.bic, rel=1e-10)  # same fit, rounding only


# -- 2. rtol: an early stop is not CONVERGED ---------------------------------------------------
@pytest.mark.parametrize("rtol", [1e-3, 0.5])
def test_loose_rtol_is_an_approximate_optimum(logit, rtol):
    m, full = logit
    with pytest.warns(ah.InferenceWarning, match="stopped early by rtol") as rec:
        res = ah.fit(m, rtol=rtol)
    assert int(res.status_code) == Status.APPROXIMATE and not res.converged
    # the point is measurably off the optimum (reference: the default fit, which ends ~1e-10
    # SE from it; this data set: 0.037 SE at rtol=1e-3, several SE at 0.5)
    off = np.max(np.abs(np.asarray(res.params_flat - full.params_flat) / np.asarray(full.bse_flat)))
    assert off > 0.01
    assert "standard errors from the optimum" in str(rec[0].message)
    problem = [p for p in res.diagnostics.problems if p.kind == "not_converged"][0]
    assert "rtol=None" in problem.suggestion and "maxiter" not in problem.suggestion


def test_rtol_on_a_poisson_fit_and_a_tight_rtol():
    rng = np.random.default_rng(5)
    X = np.column_stack([np.ones(300), rng.normal(size=300)])
    y = rng.poisson(np.exp(0.5 + 0.4 * X[:, 1])).astype(float)
    m = ah.models.poisson(X, y)
    loose = _quiet(ah.fit, m, rtol=1e-2)
    assert not loose.converged and int(loose.status_code) == Status.APPROXIMATE
    # a tight rtol ends where the default does (within 1e-6 SE: the early stop then needs
    # g'H^-1g/2 <= 1e-13 * |llf|, a Newton step of ~1e-5 SE at most, and one more step squares it)
    full = ah.fit(m)
    tight = _quiet(ah.fit, m, rtol=1e-13)
    assert np.max(np.abs(np.asarray(tight.params_flat - full.params_flat) / np.asarray(full.bse_flat))) < 1e-5


@pytest.mark.parametrize("bad", ["abc", 0, 1.5, float("nan"), True, [1e-3]])
def test_rtol_validated(logit, bad):
    m, _ = logit
    with pytest.raises((TypeError, ValueError), match="rtol must be a number in \\(0, 1\\)"):
        ah.fit(m, rtol=bad)


def test_rtol_refused_with_lbfgs(logit):
    m, _ = logit
    with pytest.raises(ValueError, match="rtol applies to method='trust-region'"):
        ah.fit(m, method="lbfgs", rtol=1e-6)


# -- 8. scale-free convergence ----------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-100, 1e-30, 1e100])
def test_weight_scale_does_not_change_the_optimum(logit, scale):
    m, full = logit
    res = ah.fit(m, weights=np.full(N, scale))
    assert res.converged, res.status
    # reference: the unweighted fit; weights c * 1 have the same maximiser (closed form), and
    # both solves stop at the rounding floor (1e-10 relative leaves ~10^6 ulps)
    np.testing.assert_allclose(res.params_flat, full.params_flat, rtol=1e-10, atol=1e-12)
    # frequency weights c multiply the information by c: SEs scale as 1/sqrt(c) (closed form)
    np.testing.assert_allclose(res.bse_flat, full.bse_flat / np.sqrt(scale), rtol=1e-8)


def _scaled_logistic(m, c):
    """The logistic model's likelihood times ``c`` (no weights): a user's rescaled objective."""
    from autohess.models._glm import logistic_loglik

    return ah.Model(lambda p, d: c * logistic_loglik(p, d), dict(m.data), {"beta": np.zeros(2)}, name=f"{c:g} x logistic")


@pytest.mark.parametrize("c", [1e-100, 1e100])
def test_scaled_loglik_fits_like_the_unscaled_one(logit, c):
    # found: 1e-100 * loglik stopped at the start, SINGULAR, "[flat] ... does not depend on
    # beta[0], beta[1]"; 1e100 * loglik took 37 iterations (6 unscaled)
    m, full = logit
    with warnings.catch_warnings():
        warnings.simplefilter("error", ah.InferenceWarning)  # no flat / not-converged finding
        res = ah.fit(_scaled_logistic(m, c))
    assert res.converged, res.status
    # reference: the unscaled fit (c * l has the same maximiser: closed form). Both solves end
    # at a Newton step below 1e-12 relative; 1e-8 leaves room for the rounding of c * l_i
    # (each term rounded once, 1e-16 relative) and a last step taken or not (measured 6e-16)
    np.testing.assert_allclose(res.params_flat, full.params_flat, rtol=1e-8)
    # the information is c times the unscaled one: SEs / sqrt(c), i.e. x 1e50 or x 1e-50
    np.testing.assert_allclose(res.bse_flat, full.bse_flat / np.sqrt(c), rtol=1e-8)
    assert abs(int(res.iterations) - int(full.iterations)) <= 2
    # evaluate at the estimate sees a regular optimum too (its scale measured there)
    ev = ah.evaluate(res.model, res.params, warn=False)
    assert not bool(np.any(ev.diagnostics_data.no_curvature))
    np.testing.assert_allclose(ev.bse_flat, res.bse_flat, rtol=1e-8)  # same point, same Hessian


def test_scaled_poisson_with_weights_and_in_a_batch():
    # a second class: a Poisson log-likelihood times 1e-60 with non-uniform weights 1e-40,
    # the two scales compounded (1e-100 in all), and a fit_batch of the scaled model
    from autohess.models._glm import poisson_loglik

    rng = np.random.default_rng(21)
    X = np.column_stack([np.ones(150), rng.normal(size=150)])
    y = rng.poisson(np.exp(0.2 + 0.5 * X[:, 1])).astype(float)
    m = ah.models.poisson(X, y)
    w = 1.0 + (y > 1)
    ref = ah.fit(m, weights=w)
    scaled = ah.Model(lambda p, d: 1e-60 * poisson_loglik(p, d), dict(m.data), {"beta": np.zeros(2)})
    res = ah.fit(scaled, weights=1e-40 * w)
    assert res.converged, res.status
    # reference: the weights-w fit of the unscaled model (same maximiser), to the rounding floor
    np.testing.assert_allclose(res.params_flat, ref.params_flat, rtol=1e-8)
    np.testing.assert_allclose(res.bse_flat, ref.bse_flat * 1e50, rtol=1e-8)  # information x 1e-100
    bres = ah.fit_batch(scaled, weights=np.stack([1e-40 * w, 1e-40 * np.ones(150)]))
    assert bres.converged.all(), bres.status
    np.testing.assert_allclose(bres.params_flat[0], ref.params_flat, rtol=1e-8)


@pytest.mark.parametrize("c", [1e-100, 1e100])
def test_profile_of_scaled_weights_and_loglik(logit, c):
    # found: the profile refits used the raw weights, so with weights 1e-100 every refit
    # stopped at its start (the fit's nuisance values) and 1e100 ones STALLED (NaN)
    m, full = logit
    grid = np.linspace(-1.3, -0.5, 5)
    base = ah.profile(full, "beta[1]", grid=grid, refine=0)
    at = np.isin(base.values, grid)
    for res in (ah.fit(m, weights=np.full(N, c)), _quiet(ah.fit, _scaled_logistic(m, c))):
        prof = ah.profile(res, "beta[1]", grid=grid, refine=0)
        mine = np.isin(prof.values, grid)
        assert (prof.status_code[mine] == Status.CONVERGED).all()
        # reference: the profile of c * l is c times the profile of l (closed form: the
        # nuisance maximiser does not depend on c); LR values 0.03-5 from differences of
        # log-likelihoods ~130, refits to the rounding floor: 1e-8 relative with room
        np.testing.assert_allclose(prof.lr[mine] / c, base.lr[at], rtol=1e-8, atol=1e-10)


def test_tiny_weights_in_a_batch_and_a_poisson_fit():
    rng = np.random.default_rng(9)
    X = np.column_stack([np.ones(150), rng.normal(size=150)])
    y = rng.poisson(np.exp(0.2 + 0.5 * X[:, 1])).astype(float)
    m = ah.models.poisson(X, y)
    ref = ah.fit(m)
    bres = ah.fit_batch(m, weights=np.stack([np.full(150, 1e-100), np.full(150, 1e-100) * (1 + (y > 1))]))
    assert bres.converged.all(), bres.status
    # reference: the unweighted fit (member 0 has uniform weights), to the rounding floor
    np.testing.assert_allclose(bres.params_flat[0], ref.params_flat, rtol=1e-10)
    # reference: the same non-uniform weights at scale 1 (same maximiser)
    one = ah.fit(m, weights=1 + (y > 1))
    np.testing.assert_allclose(bres.params_flat[1], one.params_flat, rtol=1e-10)


# -- 6. cluster covariance counts clusters that carry weight ----------------------------------
def test_cluster_weights_leaving_one_cluster_raise(logit):
    m, _ = logit
    g = np.repeat([0, 1, 2], [70, 70, 60])
    with pytest.raises(ValueError, match="at least 2 clusters with positive weight.*leave 1 of the 3"):
        ah.fit(m, cov_type="cluster", groups=g, weights=(g == 1).astype(float))


def test_cluster_weights_leaving_two_clusters_match_the_subset(logit):
    m, _ = logit
    g = np.repeat([0, 1, 2], [70, 70, 60])
    keep = g != 2
    res = ah.fit(m, cov_type="cluster", groups=g, weights=keep.astype(float))
    # reference: the fit of the 140 rows kept, unweighted (zero weight = row absent): the same
    # G = 2 and N = 140 in the correction; two fits of the same data agree to rounding
    sub = ah.fit(m.with_data({k: np.asarray(v)[keep] for k, v in m.data.items()}),
                 cov_type="cluster", groups=g[keep])
    np.testing.assert_allclose(res.bse_flat, sub.bse_flat, rtol=1e-8)
    assert np.all(np.isfinite(np.asarray(res.bse_flat)))


# -- 7. OPG with a singular outer product -------------------------------------------------------
def test_opg_scores_confined_to_a_subspace():
    # y = +-1 around 0: at the MLE (beta 0, sigma 1) every score for sigma, (z^2 - 1)/sigma,
    # is exactly 0, while the Hessian is regular. Closed form: OPG variance of beta is 1/N.
    y = np.tile([1.0, -1.0], 50)
    m = ah.models.linear(np.ones((100, 1)), y)
    with pytest.warns(ah.InferenceWarning, match="outer product of the scores is singular"):
        res = ah.evaluate(m, {"beta": np.zeros(1), "sigma": 1.0}, cov_type="opg")
    se = np.asarray(res.bse_flat)
    assert np.isnan(se[1])
    assert se[0] == pytest.approx(0.1, rel=1e-12)  # 1/sqrt(100), rounding only
    names = {lab for p in res.diagnostics.problems for lab in p.parameters}
    assert "sigma" in names
    # the Hessian covariance there is finite (reference: closed form 1/N and 1/(2N))
    hes = ah.evaluate(m, {"beta": np.zeros(1), "sigma": 1.0})
    np.testing.assert_allclose(hes.bse_flat, [0.1, np.sqrt(1 / 200)], rtol=1e-12)


def test_opg_fewer_observations_than_parameters():
    rng = np.random.default_rng(1)
    m = ah.models.poisson(rng.normal(size=(3, 4)), np.array([0.0, 1.0, 2.0]))
    with pytest.warns(ah.InferenceWarning, match=r"outer product of the scores is singular \(3 observations"):
        res = ah.evaluate(m, {"beta": np.zeros(4)}, cov_type="opg")
    assert np.all(np.isnan(np.asarray(res.bse_flat)))  # rank 3 < 4: no direction is identified alone


def test_opg_of_a_regular_fit_unchanged(logit):
    m, full = logit
    res = ah.fit(m, cov_type="opg")
    # reference: numpy inverse of the outer product of the per-observation scores, closed form
    # logistic scores (y - p) x_i; inverse of a 2x2 with condition ~10: 1e-10 relative
    X, y = np.asarray(m.data["X"]), np.asarray(m.data["y"])
    p = 1.0 / (1.0 + np.exp(-X @ np.asarray(res.params_flat)))
    S = (y - p)[:, None] * X
    np.testing.assert_allclose(res.cov, np.linalg.inv(S.T @ S), rtol=1e-10)
    assert not res.diagnostics.problems


# -- section 3: crashes and messages ------------------------------------------------------------
def test_df_correction_with_n_equal_p_names_the_option():
    m = ah.models.logistic(np.array([[1.0, 0.3], [1.0, -0.2]]), np.array([0.0, 1.0]))
    start = {"beta": np.zeros(2)}
    with pytest.raises(ValueError, match="df_correction for cov_type='robust' divides by N - p.*N = 2"):
        ah.evaluate(m, start, cov_type="robust", df_correction=True)
    with pytest.raises(ValueError, match="df_correction for cov_type='cluster'"):
        ah.evaluate(m, start, cov_type="cluster", groups=np.array([0, 1]))
    # without the factor both are defined (HC0 at N = p: finite)
    assert np.all(np.isfinite(np.asarray(_quiet(ah.evaluate, m, start, cov_type="robust").bse_flat)))


def test_df_correction_with_weights_summing_to_p(logit):
    m, _ = logit
    w = np.zeros(N)
    w[:2] = 1.0
    with pytest.raises(ValueError, match=r"N = 2 \(the sum of the weights\)"):
        _quiet(ah.fit, m, weights=w, cov_type="robust", df_correction=True)


@pytest.mark.parametrize("kwargs,match", [
    ({"df_correction": "yes", "cov_type": "robust"}, "df_correction must be True, False or None"),
    ({"df_correction": True}, "df_correction applies to cov_type='robust' or 'cluster' only"),
    ({"df_correction": False, "cov_type": "opg"}, "df_correction applies to"),
])
def test_df_correction_validated(logit, kwargs, match):
    m, _ = logit
    with pytest.raises((TypeError, ValueError), match=match):
        ah.fit(m, **kwargs)


def test_fit_batch_with_no_members(logit):
    m, _ = logit
    with pytest.raises(ValueError, match="empty batch: weights \\(rows\\) has 0 members"):
        ah.fit_batch(m, weights=np.ones((0, N)))
    with pytest.raises(ValueError, match="empty batch: data_batch"):
        ah.fit_batch(m, {"X": np.ones((0, N, 2)), "offset": np.zeros((0, N)), "y": np.ones((0, N))})


def test_zero_residual_least_squares_is_an_exact_fit_not_a_saddle():
    x = np.linspace(0.0, 1.0, 20)
    m = ah.least_squares(lambda p, d: d["y"] - (p["b"][0] + p["b"][1] * d["x"]), {"x": x, "y": 1 + 2 * x},
                         {"b": jnp.array([0.5, 0.5])})
    with pytest.raises(ValueError, match="zero to rounding.*exact fit") as err:
        ah.fit(m)
    assert "saddle" not in str(err.value) and "method='gauss-newton'" in str(err.value)
    # the advice works: Levenberg-Marquardt reaches the exact solution (closed form 1, 2)
    res = ah.fit(m, method="gauss-newton", cov_type="gauss-newton")
    np.testing.assert_allclose(res.params_flat, [1.0, 2.0], rtol=1e-12)
    # a quadratic through 15 points, exactly, from another start: the same refusal
    t = np.linspace(-1.0, 2.0, 15)
    q = ah.least_squares(lambda p, d: d["y"] - (p["c"][0] + p["c"][1] * d["t"] + p["c"][2] * d["t"] ** 2),
                         {"t": t, "y": 3 - t + 0.5 * t**2}, {"c": jnp.array([1.0, 1.0, 1.0])})
    with pytest.raises(ValueError, match="exact fit"):
        ah.fit(q)


def test_noisy_least_squares_still_fits():
    rng = np.random.default_rng(2)
    x = np.linspace(0.0, 1.0, 30)
    y = 1 + 2 * x + 1e-9 * rng.normal(size=30)  # tiny but real residuals: not an exact fit
    m = ah.least_squares(lambda p, d: d["y"] - (p["b"][0] + p["b"][1] * d["x"]), {"x": x, "y": y},
                         {"b": jnp.array([0.5, 0.5])})
    res = _quiet(ah.fit, m, cov_type="gauss-newton")
    # reference: numpy's least squares (closed form); residual SD 1e-9, so 1e-6 relative
    ref = np.linalg.lstsq(np.column_stack([np.ones(30), x]), y, rcond=None)[0]
    np.testing.assert_allclose(res.params_flat, ref, rtol=1e-6)


@pytest.mark.parametrize("call", ["hessian", "evaluate", "fit-start", "gradient"])
def test_a_result_passed_as_parameters(logit, call):
    m, res = logit
    fn = {
        "hessian": lambda: ah.hessian(m, res),
        "evaluate": lambda: ah.evaluate(m, res),
        "fit-start": lambda: ah.fit(m, start=res),
        "gradient": lambda: ah.gradient(m, res),
    }[call]
    with pytest.raises(TypeError, match="got a FitResult: pass its estimates, res.params") as err:
        fn()
    assert "diagnostics_data" not in str(err.value)


@pytest.mark.parametrize("call", ["fit", "fit_batch"])
def test_maxiter_true_is_not_one_iteration(logit, call):
    m, _ = logit
    with pytest.raises(ValueError, match="maxiter must be a non-negative integer, got True"):
        if call == "fit":
            ah.fit(m, maxiter=True)
        else:
            ah.fit_batch(m, weights=np.ones((2, N)), maxiter=True)


def test_warn_must_be_a_bool(logit):
    m, _ = logit
    with pytest.raises(TypeError, match="warn must be True or False, got 'no'"):
        ah.fit(m, warn="no")
