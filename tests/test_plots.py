"""``ah.plot`` (issue #14 part 2): what each picture draws, checked on the Agg backend.

No pixels: the tests read back the artists (lines' x/y data, patches, images, texts, axis
labels) and compare them with the result objects' arrays and with closed forms (the Wald
quadratic, the normal density, the chi-square cut-off, the binomial Monte-Carlo band, scaled
eigenvalues of quadratic log-likelihoods). Few small fits, built once per module.
"""

import dataclasses
import pathlib
import subprocess
import sys
import warnings

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, same artists
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import autohess as ah  # noqa: E402

Q95 = 3.841458820694124  # chi2_1(0.95), published tables (= 1.959963984540054^2)
Z975 = 1.959963984540054  # the standard normal 0.975 quantile
# drawn data are our own arrays passed through matplotlib unchanged (float64 in, float64 out);
# curves computed here and in ah.plot from the same formula differ by rounding only
SAME = 1e-12


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def normal_fit():
    rng = np.random.default_rng(7)
    y = 3.0 + 2.0 * rng.standard_normal(40)
    model = ah.models.linear(np.ones((y.size, 1)), y, sigma=1.5)
    return model, ah.fit(model)


def _span(patch, axis):
    """Data extent of an axhspan / axvspan along ``axis`` ("x" or "y"): a Rectangle in recent
    matplotlib, a Polygon in older ones."""
    if hasattr(patch, "get_height"):
        start, size = (patch.get_x(), patch.get_width()) if axis == "x" else (patch.get_y(), patch.get_height())
        return sorted([start, start + size])
    v = np.asarray(patch.get_xy())[:, 0 if axis == "x" else 1]
    return [v.min(), v.max()]


def _lines(ax, label):
    return [ln for ln in ax.get_lines() if ln.get_label() == label]


# ------------------------------------------------------------------------------------------
# matplotlib stays optional
# ------------------------------------------------------------------------------------------
def test_import_autohess_does_not_import_matplotlib():
    code = ("import sys, autohess as ah; assert 'matplotlib' not in sys.modules, 'imported'; "
            "ah.plot.step_sweep; assert 'matplotlib' not in sys.modules, 'by ah.plot'; print('clean')")
    # from the repository root, so the interpreter imports this checkout's autohess
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr


def test_missing_matplotlib_raises_a_clear_import_error(monkeypatch):
    sweep = ah.StepSweep(np.array([1e-4, 1e-3]), np.array([1e-6, 1e-5]), "central", True)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    for call in (lambda: ah.plot.step_sweep(sweep), sweep.plot):
        with pytest.raises(ImportError, match=r"matplotlib.*pip install 'autohess\[plot\]'"):
            call()
    with pytest.raises(ImportError, match=r"ah.plot.profile draws with matplotlib"):
        ah.plot.profile(None)


# ------------------------------------------------------------------------------------------
# Hessians: step sweep, audit, eigenvalues
# ------------------------------------------------------------------------------------------
def _bowl(x):
    # minimum at 0: curvature 1 + 1 + ... from cosh, a bilinear coupling (exact under central
    # cross differences) and an offset of 1e4 that makes small steps lose to rounding
    return 1e4 + jnp.sum(jnp.cosh(x)) + 0.5 * x[0] * x[1] + 0.25 * x[1] * x[2]


X0 = jnp.zeros(3)


def test_step_sweep_draws_the_sweep():
    sweep = ah.step_sweep(_bowl, X0, steps=np.logspace(-7, -1, 7))
    for ax in (ah.plot.step_sweep(sweep), sweep.plot()):
        (curve,) = _lines(ax, "max scaled error")
        np.testing.assert_array_equal(curve.get_xdata(), sweep.steps)
        np.testing.assert_array_equal(curve.get_ydata(), sweep.errors)
        (best,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("best step")]
        assert best.get_xdata()[0] == sweep.best_step
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert "step h" in ax.get_xlabel() and "max(|x_i|, 1)" in ax.get_xlabel()


@pytest.fixture(scope="module")
def bowl_audit():
    H = np.asarray(ah.hessian(_bowl, X0).matrix)
    return ah.audit(_bowl, X0, {
        "h=0.3": ah.fd_hessian(_bowl, X0, step=0.3),  # diagonal off by (2 cosh h - 2)/h^2 - 1 = 7.5e-3
        "h=1e-6": ah.fd_hessian(_bowl, X0, step=1e-6),  # rounding 4 eps 1e4 / h^2 ~ 9 per entry
        "minus H": -H,
        "identity": np.eye(3),  # unit diagonal right, the couplings missing: unexplained
    })


def test_audit_entry_causes(bowl_audit):
    """Entry by entry (new: ``CandidateAudit.entry_causes``). Closed forms for step 0.3: the
    diagonal's central second difference of cosh is off by 2(cosh h - 1)/h^2 - 1 = 7.5e-3
    (truncation, above OK_TOL = 1e-3); the off-diagonal terms are bilinear, which central cross
    differences get exactly (their rounding, eps 1e4 / h^2 ~ 2e-11, is far below 1e-3)."""
    big = bowl_audit["h=0.3"]
    assert big.causes == ("truncation",)
    np.testing.assert_array_equal(np.diag(big.entry_causes), ["truncation"] * 3)
    assert set(big.entry_causes[~np.eye(3, dtype=bool)]) == {"ok"}
    # up to the rounding of f = 1e4 + ...: 4 eps 1e4 / h^2 = 1e-10
    np.testing.assert_allclose(np.diag(big.hessian) - 1.0, 2 * (np.cosh(0.3) - 1) / 0.09 - 1, rtol=0, atol=1e-10)
    small = bowl_audit["h=1e-6"]
    assert small.causes == ("rounding",)
    # every entry whose error exceeds the tolerance is rounding; the diagonal's noise (8.9) is
    # thousands of times the tolerance, so each of its entries is among them
    assert set(np.diag(small.entry_causes)) == {"rounding"}
    assert set(small.entry_causes.ravel()) <= {"rounding", "ok"}
    ident = bowl_audit["identity"]
    assert ident.causes == ("unexplained",)
    # the identity's diagonal is the exact one (H_ii = 1); its errors are the missing couplings
    np.testing.assert_array_equal(ident.entry_causes, np.where(np.asarray(ah.hessian(_bowl, X0).matrix) - np.eye(3) == 0, "ok", "unexplained"))
    import json

    assert json.loads(json.dumps(big.to_dict()))["entry_causes"] == big.entry_causes.tolist()
    sign = bowl_audit["minus H"]
    assert sign.causes == ("sign",)
    # where H_ij = 0 (x[0], x[2]) minus H is exact; everywhere else the entry's cause is the sign
    expected = np.where(np.asarray(ah.hessian(_bowl, X0).matrix) == 0, "ok", "sign")
    np.testing.assert_array_equal(sign.entry_causes, expected)


def test_audit_picture(bowl_audit):
    from autohess._audit_steps import _scaled_error

    fig = bowl_audit.plot()
    assert fig is not None and len(fig.axes) == 1 + 4  # errors, then one heat map per candidate
    err_ax = fig.axes[0]
    iu = np.triu_indices(3)
    for c in bowl_audit.candidates:
        (line,) = [ln for ln in err_ax.get_lines() if ln.get_label() == f"{c.name} ({c.cause})"]
        want = np.maximum(np.abs(_scaled_error(c.hessian, bowl_audit.exact))[iu], np.finfo(float).eps)
        np.testing.assert_allclose(line.get_ydata(), want, rtol=SAME)
    assert [t.get_text() for t in err_ax.get_xticklabels()][:2] == ["[x[0], x[0]]", "[x[0], x[1]]"]
    assert err_ax.get_yscale() == "log" and "unit-free" in err_ax.get_ylabel()
    legend = {t.get_text(): tuple(h.get_facecolor()) for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
    assert set(legend) == {"ok", "truncation", "rounding", "sign", "unexplained"}
    assert len(set(legend.values())) == len(legend)  # one colour per cause, none shared
    # each heat map's image is its candidate's causes, coded in the order the colours are listed
    for hax, c in zip(fig.axes[1:], bowl_audit.candidates):
        (img,) = hax.get_images()
        codes = np.asarray(img.get_array())
        for kind in ("ok", "rounding", "truncation"):
            assert np.all((codes == ["ok", "rounding", "truncation"].index(kind)) == (c.entry_causes == kind))
        assert hax.get_title().startswith(c.name)
    # one candidate by name, into a caller's figure
    fig2 = plt.figure()
    assert ah.plot.audit(bowl_audit, ["h=0.3"], fig=fig2) is fig2 and len(fig2.axes) == 2
    with pytest.raises(KeyError, match="no candidate named 'nope'"):
        ah.plot.audit(bowl_audit, ["nope"])


def _quadratic_model(curvature, n=3):
    """Per-observation log-likelihood -0.5 x'Ax / n: the Hessian of the negative total is A."""
    A = jnp.asarray(curvature, dtype=jnp.float64)

    def loglik(p, d):
        x = jnp.stack([p["a"], p["b"], p["c"]])
        return -0.5 * (x @ A @ x) * d["w"] / n

    return ah.Model(loglik, {"w": jnp.ones(n)}, params={"a": 0.0, "b": 0.0, "c": 0.0})


@pytest.fixture(scope="module")
def saddle():
    # scaled Hessian [[1, 0, .5], [0, -1, 0], [.5, 0, 1]]: eigenvalues -1 (along b), 0.5, 1.5
    model = _quadratic_model([[2.0, 0.0, 1.0], [0.0, -3.0, 0.0], [1.0, 0.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ah.InferenceWarning)
        return ah.evaluate(model, {"a": 0.0, "b": 0.0, "c": 0.0})


def test_eigenvalues_of_a_saddle(saddle):
    rep = saddle.diagnostics
    assert [p.kind for p in rep.problems] == ["saddle"]
    np.testing.assert_allclose(rep.eigenvalues, [-1.0, 0.5, 1.5], rtol=1e-12)  # closed form
    ax = saddle.plot()  # FitResult.plot: the diagnostics' eigenvalue picture
    (neg,) = _lines(ax, "negative curvature")
    (pos,) = _lines(ax, "positive curvature")
    np.testing.assert_allclose(neg.get_ydata(), [1.0], rtol=1e-12)  # |lambda| on the log axis
    np.testing.assert_allclose(pos.get_ydata(), [0.5, 1.5], rtol=1e-12)
    np.testing.assert_array_equal(neg.get_xdata(), [1])
    assert ax.get_yscale() == "log" and "scaled eigenvalue" in ax.get_ylabel()
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["[saddle] 1.00*b"]  # the problem direction, named, and nothing else
    # symlog: the signed eigenvalues themselves; label="all" names every direction
    ax2 = ah.plot.eigenvalues(rep, scale="symlog", label="all")
    np.testing.assert_allclose(_lines(ax2, "negative curvature")[0].get_ydata(), [-1.0], rtol=1e-12)
    assert ax2.get_yscale() == "symlog"
    assert sorted(t.get_text() for t in ax2.texts) == sorted(
        ["[saddle] 1.00*b", "0.71*a - 0.71*c", "0.71*a + 0.71*c"])


def test_eigenvalues_flat_direction_named():
    # y ~ N(a + b, 1) and N(c, 1): scaled Hessian [[1, 1, 0], [1, 1, 0], [0, 0, 1]], eigenvalues
    # 0 (along a - b, the unidentified combination), 1, 2
    model = _quadratic_model([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ah.InferenceWarning)
        rep = ah.evaluate(model, {"a": 0.0, "b": 0.0, "c": 0.0}).diagnostics
    ax = rep.plot()
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["[flat] 0.71*a - 0.71*b"]
    (pos,) = _lines(ax, "positive curvature")
    np.testing.assert_allclose(pos.get_ydata()[1:], [1.0, 2.0], rtol=1e-12)
    # the flat eigenvalue (rounding-level) sits below the flat line drawn at 1e-12 of the largest
    (flat_line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("flat below")]
    assert pos.get_ydata()[0] < flat_line.get_ydata()[0] == pytest.approx(2e-12, rel=1e-12)
    # a report without eigenvectors (made by hand) still draws, without names
    bare = dataclasses.replace(rep, eigenvectors=None)
    assert len(ah.plot.eigenvalues(bare).texts) == 0
    with pytest.raises(ValueError, match="scale must be 'log-abs' or 'symlog'"):
        ah.plot.eigenvalues(rep, scale="log")
    with pytest.raises(TypeError, match="needs a FitResult or a DiagnosticReport, got int"):
        ah.plot.eigenvalues(3)
    with pytest.raises(ValueError, match="1 of the 3 scaled eigenvalues are not finite"):
        ah.plot.eigenvalues(dataclasses.replace(rep, eigenvalues=np.array([np.nan, 1.0, 2.0])))


# ------------------------------------------------------------------------------------------
# Many fits: bootstrap, profile, simulation study, random effects
# ------------------------------------------------------------------------------------------
def test_bootstrap_histograms_and_wald_normal(normal_fit):
    _, res = normal_fit
    boot = ah.bootstrap(res, n=60, key=0)
    fig = boot.plot(bins=12)
    assert len(fig.axes) == 2
    good = np.asarray(boot.replicates)[boot.ok]
    est, se = np.asarray(boot.estimate), np.asarray(boot.estimate_se)
    for j, ax in enumerate(fig.axes):
        heights, _ = np.histogram(good[:, j], bins=12, density=True)
        np.testing.assert_allclose([p.get_height() for p in ax.patches], heights, rtol=SAME)
        (wald,) = _lines(ax, "Wald normal (hessian)")
        x = wald.get_xdata()
        # closed form: the N(estimate, se^2) density, se of the fit (the replicates' cov_type)
        np.testing.assert_allclose(wald.get_ydata(), np.exp(-0.5 * ((x - est[j]) / se[j]) ** 2) / (se[j] * np.sqrt(2 * np.pi)), rtol=SAME)
        assert _lines(ax, "estimate")[0].get_xdata()[0] == est[j]
        assert ax.get_xlabel() == f"{boot.labels[j]} (natural scale)"
    np.testing.assert_allclose(se, np.asarray(res.bse_flat), rtol=SAME)
    # one parameter, into the caller's axes
    _, axes = plt.subplots(1, 1)
    fig2 = ah.plot.bootstrap(boot, "sigma", axes=[axes])
    assert fig2 is axes.figure and axes.get_title() == "sigma"
    with pytest.raises(ValueError, match=r"no parameter 'tau'; the labels are \['beta\[0\]', 'sigma'\]"):
        ah.plot.bootstrap(boot, "tau")
    with pytest.raises(ValueError, match="axes has 1 panels, 2 are needed"):
        ah.plot.bootstrap(boot, axes=[axes])


def test_profile_curve_wald_quadratic_cutoff(normal_fit):
    _, res = normal_fit
    prof = ah.profile(res, "sigma")
    ax = prof.plot()
    ok = prof.status_code == ah.Status.CONVERGED
    (curve,) = _lines(ax, "profile likelihood ratio")
    np.testing.assert_array_equal(curve.get_xdata(), prof.values[ok])
    np.testing.assert_array_equal(curve.get_ydata(), prof.lr[ok])
    (wald,) = _lines(ax, "Wald quadratic")
    x = wald.get_xdata()
    se = float(res.bse_flat[1])  # the fit's standard error: the quadratic's curvature
    np.testing.assert_allclose(wald.get_ydata(), ((x - prof.estimate) / se) ** 2, rtol=1e-9)  # se from the Wald interval's width: 1e-15 relative
    (cut,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("chi2_1(0.95)")]
    np.testing.assert_allclose(cut.get_ydata(), Q95, rtol=1e-12)
    ends = [ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_color() == "k" and ln.get_linestyle() == "-" and ln is not curve]
    np.testing.assert_array_equal(sorted(ends), prof.interval)
    assert ax.get_xlabel() == "sigma (natural scale)" and "2 (llf_hat - profile llf)" == ax.get_ylabel()
    assert "profile likelihood of sigma" in ax.get_title()


def test_coverage_with_monte_carlo_band(normal_fit):
    model, res = normal_fit
    study = ah.simulation_study(model, res.params, n=40, key=3, cov_type=("hessian", "robust"))
    t = study.table()
    ax = study.plot()
    for c in ("hessian", "robust"):
        (pts,) = [cont for cont in ax.containers if cont.get_label() == f"cov_type={c!r}"]
        np.testing.assert_array_equal(pts.lines[0].get_ydata(), t.coverage[c])
    # the band: nominal +/- z_0.975 sqrt(0.95 * 0.05 / R), the binomial's normal approximation
    (band,) = [p for p in ax.patches if p.get_label().startswith("95% Monte-Carlo band")]
    half = Z975 * np.sqrt(0.95 * 0.05 / t.n_ok)
    np.testing.assert_allclose(_span(band, "y"), [0.95 - half, 0.95 + half], rtol=1e-12)
    assert [tk.get_text() for tk in ax.get_xticklabels()] == ["beta[0]", "sigma"]
    assert "coverage" in ax.get_ylabel() and f"{t.n_ok} of 40" in ax.get_title()


@pytest.fixture(scope="module")
def glmm():
    rng = np.random.default_rng(0)
    G, per = 6, 5
    g = np.repeat(np.arange(G), per)
    b = 0.8 * rng.standard_normal(G)
    y = rng.binomial(10, 1.0 / (1.0 + np.exp(-(-0.3 + b[g])))).astype(float)

    def loglik(p, d):
        eta = p["mu"] + p["b"][d["g"]]
        return d["y"] * eta - 10.0 * jnp.logaddexp(0.0, eta)

    model = ah.Model(loglik, {"y": y, "g": g}, {"mu": 0.0, "sd": ah.Positive(1.0)},
                     random={"b": ah.Normal(sd="sd", groups="g")})
    return ah.fit(model)


def test_random_effects_caterpillar(glmm):
    r = glmm.random["b"]
    names = [f"group {k}" for k in range(6)]
    ax = ah.plot.random_effects(glmm, levels=names)
    order = np.argsort(np.asarray(r.mode), kind="stable")
    sd_report, conditional = ax.containers
    np.testing.assert_array_equal(sd_report.lines[0].get_xdata(), np.asarray(r.mode)[order])
    # error bars span mode -/+ z se: the intervals RandomEffectEstimate.conf_int gives
    for cont, cond in ((sd_report, False), (conditional, True)):
        segs = np.asarray(cont.lines[2][0].get_segments())
        np.testing.assert_allclose(segs[:, :, 0], np.asarray(r.conf_int(conditional=cond))[order], rtol=1e-9, atol=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()] == [names[i] for i in order]
    sd = float(glmm.params["sd"])
    (band,) = [p for p in ax.patches if p.get_label().startswith("95% of N(0, sd^2)")]
    np.testing.assert_allclose(_span(band, "x"), [-Z975 * sd, Z975 * sd], rtol=1e-12)
    # the same from the RandomEffectEstimate itself (no fit at hand: no band)
    ax2 = ah.plot.random_effects(r, sort=False)
    np.testing.assert_array_equal(ax2.containers[0].lines[0].get_xdata(), np.asarray(r.mode))
    assert not ax2.patches
    # the estimate's own level names (the zoo's, or model.random_names) are the default labels
    import dataclasses

    ax3 = ah.plot.random_effects(dataclasses.replace(r, levels=tuple(names)))
    assert [t.get_text() for t in ax3.get_yticklabels()] == [names[i] for i in order]
    with pytest.raises(ValueError, match=r"no random effect 'u'; the model has \['b'\]"):
        ah.plot.random_effects(glmm, "u")
    with pytest.raises(ValueError, match="levels has 2 names, the random effect 'b' has 6 groups"):
        ah.plot.random_effects(glmm, levels=["x", "y"])
