"""Tests of hypotheses (issue #14 part 4): Wald (chi-square and F, linear and nonlinear), t,
likelihood ratio (with the chi-bar-square boundary) and score tests.

References: statsmodels ``wald_test`` / ``t_test`` (Logit, Poisson HC0), ``compare_lr_test``
(OLS), a manual LR between two statsmodels GLM fits, GLM ``score_test``, scipy's chi-square
and F tails, and hand-computed delta methods and OPG score statistics (numpy closed forms).

Tolerance: the issue's bar, 1e-8 relative. autohess and statsmodels reach the same optimum to
~1e-15 in the parameters here (both Newton, quadratically converged), so the statistics agree
to ~1e-13 (measured); 1e-8 leaves room for a different BLAS order without hiding a wrong
formula (a wrong covariance or df changes them at the 1e-2 level).
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess._hypothesis_tests import chi2_sf, chibar_sf, f_sf

sm = pytest.importorskip("statsmodels.api")
stats = pytest.importorskip("scipy.stats")

TOL = 1e-8  # see the module docstring

_rng = np.random.default_rng(20261201)
N = 300
X = np.column_stack([np.ones(N), _rng.normal(size=(N, 3))])
Y_LOGIT = (_rng.uniform(size=N) < 1.0 / (1.0 + np.exp(-(X @ np.array([0.3, 0.8, -0.5, 0.0]))))).astype(float)
Y_POIS = _rng.poisson(np.exp(X @ np.array([0.4, 0.3, 0.0, 0.15]))).astype(float)
Y_LIN = X @ np.array([1.0, 0.5, 0.2, 0.0]) + _rng.normal(size=N)

LOGIT = ah.fit(ah.models.logistic(X, Y_LOGIT))
SM_LOGIT = sm.Logit(Y_LOGIT, X).fit(disp=0, tol=1e-12)

R2 = np.array([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
Q2 = np.array([0.3, 0.0])


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def test_same_optimum_as_statsmodels():
    # the premise of TOL: both fits at the same point
    assert rel(LOGIT.params_flat, SM_LOGIT.params) < 1e-10


@pytest.mark.parametrize("use_f", [False, True])
def test_wald_matrix_vs_statsmodels(use_f):
    ours = LOGIT.wald_test(R2, Q2, use_f=use_f)
    ref = SM_LOGIT.wald_test((R2, Q2), use_f=use_f, scalar=True)
    assert rel(ours.statistic, float(ref.statistic)) < TOL
    assert rel(ours.pvalue, float(ref.pvalue)) < TOL
    assert ours.df == 2
    if use_f:
        assert ours.distribution == "F" and ours.df_denom == ref.df_denom == N - 4
    else:
        assert ours.distribution == "chi2" and ours.df_denom is None


def test_wald_single_row_and_module_function():
    row = np.array([0.0, 1.0, -1.0, 0.0])
    ours = ah.wald_test(LOGIT, row)
    ref = SM_LOGIT.wald_test(row[None, :], scalar=True)
    assert rel(ours.statistic, float(ref.statistic)) < TOL
    assert ours.labels == ("beta[1] - beta[2]",)


def test_wald_uses_the_fits_cov_type():
    # Poisson, sandwich covariance: statsmodels Poisson(cov_type="HC0") is the same estimator
    res = ah.fit(ah.models.poisson(X, Y_POIS), cov_type="robust")
    ref = sm.Poisson(Y_POIS, X).fit(disp=0, tol=1e-12, cov_type="HC0")
    ours = res.wald_test(R2[:, :], Q2)
    theirs = ref.wald_test((R2, Q2), scalar=True)
    assert ours.cov_type == "robust"
    assert rel(ours.statistic, float(theirs.statistic)) < TOL
    assert rel(ours.pvalue, float(theirs.pvalue)) < TOL


def test_t_test_vs_statsmodels():
    ours = LOGIT.t_test(R2, Q2)
    ref = SM_LOGIT.t_test((R2, Q2))
    assert rel(ours.effect, ref.effect) < TOL
    assert rel(ours.se, np.ravel(ref.sd)) < TOL
    assert rel(ours.statistic, np.ravel(ref.tvalue)) < TOL
    assert rel(ours.pvalue, np.ravel(ref.pvalue)) < TOL
    assert rel(ours.conf_int(0.1), ref.conf_int(0.1)) < TOL
    frame = ours.to_frame()
    assert list(frame.index) == ["beta[1] + beta[2]", "beta[3]"]
    assert list(frame.columns) == ["coef", "std err", "z", "P>|z|", "[0.025", "0.975]"]
    assert np.allclose(frame["P>|z|"].to_numpy(), np.ravel(ref.pvalue), rtol=TOL, atol=0)


def test_nonlinear_wald_vs_hand_delta_method():
    # r(b) = b1 * b2 = -0.4: gradient (0, b2, b1, 0) by hand, W = (r - q)^2 / (g' V g)
    b = np.asarray(LOGIT.params_flat)
    V = np.asarray(LOGIT.cov)
    g = np.array([0.0, b[2], b[1], 0.0])
    W = (b[1] * b[2] + 0.4) ** 2 / (g @ V @ g)
    ours = LOGIT.wald_test(lambda p: p["beta"][1] * p["beta"][2], -0.4)
    assert rel(ours.statistic, W) < TOL
    assert rel(ours.pvalue, stats.chi2.sf(W, 1)) < TOL
    # two nonlinear restrictions jointly: (exp(b1), b1 / b3) with their hand Jacobian
    r = np.array([np.exp(b[1]), b[1] / b[3]])
    J = np.array([[0.0, np.exp(b[1]), 0.0, 0.0], [0.0, 1.0 / b[3], 0.0, -b[1] / b[3] ** 2]])
    d = r - np.array([2.0, 1.0])
    W2 = d @ np.linalg.solve(J @ V @ J.T, d)
    both = LOGIT.wald_test(lambda p: {"e": jnp.exp(p["beta"][1]), "ratio": p["beta"][1] / p["beta"][3]}, [2.0, 1.0])
    assert both.df == 2 and both.labels == ("e", "ratio")
    assert rel(both.statistic, W2) < TOL
    # t_test of the same function: one z per output, SE = sqrt(diag J V J')
    t = LOGIT.t_test(lambda p: jnp.stack([jnp.exp(p["beta"][1]), p["beta"][1] / p["beta"][3]]))
    assert rel(t.se, np.sqrt(np.diag(J @ V @ J.T))) < TOL


def test_tails_vs_scipy():
    # gammaincc / betainc in float64 against scipy's cephes: agreement to ~1e-14 measured
    for df in (1, 2, 3, 7.5, 40):
        for x in (1e-3, 0.5, 3.84, 20.0, 150.0):
            assert rel(chi2_sf(x, df), stats.chi2.sf(x, df)) < 1e-10
            for d2 in (5, 296, 1e4):
                assert rel(f_sf(x, df, d2), stats.f.sf(x, df, d2)) < 1e-10
    assert chi2_sf(0.0, 3) == 1.0 and chi2_sf(-1.0, 1) == 1.0
    # the point mass chi2_0 and the 50:50 mixture, closed form
    assert chi2_sf(2.0, 0) == 0.0
    assert chibar_sf(2.7, 1, 1) == pytest.approx(0.5 * stats.chi2.sf(2.7, 1), rel=1e-12)
    assert chibar_sf(2.7, 3, 1) == pytest.approx(0.5 * stats.chi2.sf(2.7, 2) + 0.5 * stats.chi2.sf(2.7, 3), rel=1e-12)
    assert chibar_sf(0.0, 1, 1) == 1.0


LIN_R = ah.fit(ah.models.linear(X[:, :2], Y_LIN))
LIN_F = ah.fit(ah.models.linear(X, Y_LIN))


def test_lr_ols_vs_compare_lr_test():
    r, f = LIN_R, LIN_F
    ref = sm.OLS(Y_LIN, X).fit().compare_lr_test(sm.OLS(Y_LIN, X[:, :2]).fit())
    ours = ah.lr_test(r, f)
    # compare_lr_test is the ML (concentrated-sigma) Gaussian LR, as ours at the MLE
    assert rel(ours.statistic, ref[0]) < TOL and rel(ours.pvalue, ref[1]) < TOL and ours.df == ref[2] == 2
    assert ours.pvalue_mixture is None and ours.boundary == 0
    with pytest.raises(ValueError, match="swapped"):
        ah.lr_test(f, r)
    with pytest.raises(ValueError, match=r"data\['y'\] \(shape \(300,\)\) differs"):
        ah.lr_test(r, ah.fit(ah.models.linear(X, Y_LIN + 1.0)))
    with pytest.raises(ValueError, match="300 observations, the full .* 299"):
        ah.score_test(r, ah.models.linear(X[:-1], Y_LIN[:-1]))  # checked before any derivative


POIS_R = ah.fit(ah.models.poisson(X[:, :2], Y_POIS))
SM_POIS_R = sm.GLM(Y_POIS, X[:, :2], family=sm.families.Poisson()).fit(tol=1e-13)
POIS_F = ah.fit(ah.models.poisson(X, Y_POIS))


def test_lr_and_score_poisson_vs_statsmodels():
    full = ah.models.poisson(X, Y_POIS)
    sm_full = sm.GLM(Y_POIS, X, family=sm.families.Poisson()).fit(tol=1e-13)
    lr = ah.lr_test(POIS_R, POIS_F)
    assert rel(lr.statistic, 2 * (sm_full.llf - SM_POIS_R.llf)) < TOL and lr.df == 2
    null = {"beta": jnp.concatenate([POIS_R.params["beta"], jnp.zeros(2)])}
    score = ah.score_test(POIS_R, full, null=null)
    ref = SM_POIS_R.score_test(exog_extra=X[:, 2:])
    # canonical link: GLM's expected information = the observed one
    assert rel(score.statistic, float(np.ravel(ref[0])[0])) < TOL
    assert rel(score.pvalue, float(np.ravel(ref[1])[0])) < TOL and score.df == 2
    # OPG form by hand: scores (y - mu) x_i at the null
    mu = np.exp(X[:, :2] @ np.asarray(POIS_R.params_flat))
    S = (Y_POIS - mu)[:, None] * X
    g = S.sum(0)
    opg = ah.score_test(POIS_R, full, null=null, information="opg")
    assert rel(opg.statistic, g @ np.linalg.solve(S.T @ S, g)) < TOL
    assert rel(opg.gradient, g) < 1e-6 or np.max(np.abs(opg.gradient - g)) < 1e-8 * np.max(np.abs(g))


def test_score_test_refusals():
    full = ah.models.poisson(X, Y_POIS)
    with pytest.raises(ValueError, match=r"null=\{'beta'"):
        ah.score_test(POIS_R, full)  # beta's shape differs: the null value must be given
    with pytest.raises(ValueError, match="not parameters of the full model"):
        ah.score_test(POIS_R, full, null={"gamma": 0.0})
    with pytest.raises(TypeError, match="full ah.Model"):
        ah.score_test(POIS_R, ah.fit(full))
    with pytest.raises(ValueError, match="information"):
        ah.score_test(POIS_R, full, null={"beta": jnp.zeros(4)}, information="expected")


def test_boundary_given_by_the_user():
    # Poisson vs NB2 (alpha = 0 on the boundary of NB2's domain) is the case the rule cannot
    # see; the mechanism is the same for any pair, so the OLS pair (df = 2) shows it without a
    # second compilation: boundary="variance" gives 0.5 P(chi2_1 > s) + 0.5 P(chi2_2 > s),
    # boundary=2 the binomial weights 1/4, 1/2, 1/4 over chi2_0, chi2_1, chi2_2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = ah.lr_test(LIN_R, LIN_F)  # no rule fires: no warning
    assert plain.pvalue_mixture is None
    s = plain.statistic
    with pytest.warns(ah.InferenceWarning, match="50:50 mixture of chi2\\(1\\) and chi2\\(2\\)"):
        given = ah.lr_test(LIN_R, LIN_F, boundary="variance")
    assert given.pvalue_mixture == pytest.approx(0.5 * stats.chi2.sf(s, 1) + 0.5 * stats.chi2.sf(s, 2), rel=1e-12)
    with pytest.warns(ah.InferenceWarning, match="2 parameters"):
        two = ah.lr_test(LIN_R, LIN_F, boundary=2)
    assert two.pvalue_mixture == pytest.approx(0.5 * stats.chi2.sf(s, 1) + 0.25 * stats.chi2.sf(s, 2), rel=1e-12)
    for bad in ("sd", -1, True, 1.5):
        with pytest.raises(ValueError, match="boundary must be"):
            ah.lr_test(LIN_R, LIN_F, boundary=bad)


def test_random_effect_sd_zero_by_lr():
    # linear vs mixed_linear: the random-intercept sd is 0 under the null -> the rule names sd
    rng = np.random.default_rng(7)
    n, G = 120, 12
    Xm = np.column_stack([np.ones(n), rng.normal(size=n)])
    grp = np.repeat(np.arange(G), n // G)
    y = Xm @ np.array([1.0, 0.5]) + 0.4 * rng.normal(size=G)[grp] + rng.normal(size=n)
    red = ah.fit(ah.models.linear(Xm, y))
    full = ah.fit(ah.models.mixed_linear(Xm, y, grp))
    with pytest.warns(ah.InferenceWarning, match="sd is on the boundary") as rec:
        lr = ah.lr_test(red, full)
    assert "mixture p" in str(rec[0].message) and "bootstrap" in str(rec[0].message)
    assert lr.df == 1 and lr.boundary == 1 and lr.boundary_parameters == ("sd",)
    assert lr.statistic == pytest.approx(2 * (float(full.llf) - float(red.llf)), rel=1e-12)
    assert lr.pvalue_mixture == pytest.approx(0.5 * stats.chi2.sf(lr.statistic, 1), rel=1e-12)
    assert "50:50" in str(lr) and "50:50" in lr._repr_html_()
    assert "Random effect b: N(0, sd^2)" in full._repr_html_()  # the summary's footer, in HTML too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        off = ah.lr_test(red, full, boundary=0)
    assert off.pvalue_mixture is None
    # Wald on the fixed effects of the random-effect fit: (b1 - 0.5)^2 / se^2
    w = full.wald_test(np.array([0.0, 1.0, 0.0, 0.0]), 0.5)
    b1, se1 = float(full.params_flat[1]), float(full.bse_flat[1])
    assert w.statistic == pytest.approx(((b1 - 0.5) / se1) ** 2, rel=1e-12)


@pytest.mark.parametrize(
    "r, value, match",
    [
        (np.ones(3), None, r"needs 4 columns"),
        (np.zeros((1, 4)), None, "all zero"),
        (np.array([[0, 1, 0, 0], [0, 2, 0, 0.0]]), None, "rank 1"),
        (R2, [1.0, 2.0, 3.0], r"shape \(2,\)"),
        (np.array([[0, np.nan, 0, 0]]), None, "non-finite"),
    ],
)
def test_wald_bad_restrictions(r, value, match):
    with pytest.raises(ValueError, match=match):
        LOGIT.wald_test(r, value)


def test_wald_refuses_batch_and_strings():
    with pytest.raises(TypeError, match="matrix over the flat parameters"):
        LOGIT.wald_test("beta[1] = 0")
    with pytest.raises(TypeError, match="FitResult"):
        ah.wald_test(object(), R2)
    # a restriction that does not move at the estimate cannot be tested by Wald
    with pytest.raises(ValueError, match="zero gradient"):
        LOGIT.wald_test(lambda p: 0.0 * p["beta"][0] + 1.0)


def test_nan_standard_error_named_and_not_spread():
    # a fit whose beta[3] has a NaN SE (as after a flat direction): restrictions using it are
    # refused naming it; those that do not use it are tested as before (same statistic, 1e-12)
    import dataclasses

    cov = jnp.asarray(LOGIT.cov).at[3, :].set(jnp.nan).at[:, 3].set(jnp.nan)
    broken = dataclasses.replace(LOGIT, cov=cov)
    with pytest.raises(ValueError, match=r"standard errors are NaN \(\['beta\[3\]'\]\)"):
        broken.wald_test(R2)
    row = np.array([0.0, 1.0, -1.0, 0.0])
    assert broken.wald_test(row).statistic == pytest.approx(LOGIT.wald_test(row).statistic, rel=1e-12)


def test_same_data_checks_without_fitting():
    import dataclasses

    other = ah.models.poisson(X, Y_POIS + 1.0)
    with pytest.raises(ValueError, match=r"data\['log_y_factorial'\] \(shape \(300,\)\), data\['y'\] \(shape \(300,\)\) differ "):
        ah.score_test(POIS_R, other, null={"beta": jnp.zeros(4)})
    names = ah.Model(lambda p, d: -0.5 * (d["z"] - p["m"]) ** 2, {"z": Y_POIS + 0.5}, {"m": 0.0})
    with pytest.raises(ValueError, match="share no data array"):
        ah.score_test(POIS_R, names, null={"m": 0.0})
    weighted = dataclasses.replace(POIS_R, weights=jnp.ones(N))
    with pytest.raises(ValueError, match="frequency weights"):
        ah.lr_test(weighted, POIS_F)

