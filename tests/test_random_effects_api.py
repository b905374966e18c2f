"""Random effects: declarations, what the fit returns, and diagnostics that name the cause.

Numbers against independent references (statsmodels MixedLM, adaptive Gauss-Hermite
quadrature, lme4's published values) are in ``test_random_effects.py``; exactness of the
derivatives in ``test_laplace_core.py``. Here: the API's promises, on one small binomial GLMM
(8 groups of 5) fitted once, and the messages for bad declarations.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah

G, PER = 8, 5


def _data(seed=0, sd=0.8):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(G), PER)
    x = rng.standard_normal(G * PER)
    b = sd * rng.standard_normal(G)
    n = np.full(G * PER, 12.0)
    y = rng.binomial(12, 1.0 / (1.0 + np.exp(-(-0.5 + 0.7 * x + b[g])))).astype(float)
    return {"x": x, "y": y, "n": n, "g": g}


def loglik(p, d):
    eta = p["beta"][0] + p["beta"][1] * d["x"] + p["b"][d["g"]]
    return d["y"] * eta - d["n"] * jnp.logaddexp(0.0, eta)


PARAMS = {"beta": jnp.zeros(2), "sd": ah.Positive(1.0)}
RANDOM = {"b": ah.Normal(sd="sd", groups="g")}


#: programs compiled while the ``fitted`` fixture builds its model and fits it, in order
COMPILED = {"build": [], "fit": []}
_recording = []


def _record(event, duration, **kwargs):
    if _recording and event == "/jax/core/compile/backend_compile_duration":
        COMPILED[_recording[-1]].append(kwargs.get("fun_name"))


jax.monitoring.register_event_duration_secs_listener(_record)


@pytest.fixture(scope="module")
def fitted():
    _recording.append("build")
    try:
        model = ah.Model(loglik, _data(), PARAMS, random=RANDOM)
        _recording.append("fit")
        res = ah.fit(model)
        np.asarray(res.bse["sd"]), np.asarray(res.random["b"].se)
    finally:
        _recording.clear()
    return model, res


def test_result_views(fitted):
    model, res = fitted
    assert res.converged
    assert model.laplace.structure.block_diagonal
    assert model.nobs == G and res.nobs == G * PER  # contributions per group; observations
    assert res.labels == ("beta[0]", "beta[1]", "sd")
    r = res.random["b"]
    assert r.mode.shape == r.se.shape == r.se_conditional.shape == (G,)
    # the parameters' uncertainty only adds variance
    assert np.all(np.asarray(r.se) >= np.asarray(r.se_conditional))
    assert r.conf_int().shape == (G, 2)
    text = res.summary()
    assert f"Random effect b: N(0, sd^2), {G} groups of data['g']" in text
    assert "Laplace approximation" in text


def test_first_fit_compiles_only_what_it_needs(fitted):
    # what a first fit with random-effect SEs compiles (issue #15: the first call in a fresh
    # process is mostly compilation). Construction: no program per primitive of the user's
    # loglik (check_crossed's probe ran op by op: ~15 programs); a fit and its SEs: the solve,
    # the covariance, the random-effects program once each, and none of the square roots,
    # sums or negations that ran op by op after them. Generic programs other tests may have
    # compiled first (same shapes) only lower the counts, so bounds, not equalities.
    build, fit = COMPILED["build"], COMPILED["fit"]
    assert len(build) <= 16, build  # 12 measured in a fresh process (24 before)
    assert not {"jit(logaddexp)", "jit(gather)", "jit(mul)", "jit(multiply)"} & set(build), build
    assert fit.count("jit(solve)") == 1 and fit.count("jit(run)") == 1, fit
    assert not {"jit(sqrt)", "jit(add)", "jit(negative)", "jit(broadcast_in_dim)"} & set(fit), fit
    assert len(fit) <= 9, fit  # 7 measured in a fresh process (10 before)


def test_random_effects_program_has_one_inner_loop(fitted):
    # the modes' SEs use the implicit function theorem on the C they already have; taking
    # jacfwd of the mode traced a second inner Newton loop (while_loop) into the program
    from jax.extend.core import jaxprs_in_params

    from autohess._laplace_results import conditional_program

    model, res = fitted
    program = conditional_program(model).__wrapped__
    s = model.laplace.structure
    # .trace: the program is compiled with options, which make_jaxpr's nested jit refuses
    jaxpr = program.trace(res.params_flat, res.cov, model.data, jnp.zeros((s.n_levels, s.q))).jaxpr

    def loops(jpr):
        n = 0
        for eqn in jpr.eqns:
            n += eqn.primitive.name == "while"
            for sub in jaxprs_in_params(eqn.params):
                n += loops(sub)
        return n

    assert loops(jaxpr.jaxpr) == 1


def test_level_names_label_the_estimate(fitted):
    # a user's model takes integer codes only (text or categorical data are refused by the
    # data layer), so its levels have no names until model.random_names gives them
    model, res = fitted
    r = res.random["b"]
    assert r.levels is None and r.coefficients is None
    assert repr(r) == "RandomEffectEstimate('b', shape=(8,))"
    names = tuple(f"herd {c}" for c in "ABCDEFGH")
    model.random_names = {"b": names}
    try:
        named = res.random["b"]
        assert named.levels == names
        np.testing.assert_array_equal(np.asarray(named.mode), np.asarray(r.mode))
        assert repr(named) == "RandomEffectEstimate('b', shape=(8,), levels=(herd A, herd B, herd C, ..., herd G, herd H))"
        rows = str(named).splitlines()
        assert rows[0] == "random effect b: conditional modes, 8 levels" and rows[3].startswith("herd A ")
        assert "groups of data['g'] (levels herd A, herd B, herd C, ..., herd G, herd H)" in res.summary()
        pd = pytest.importorskip("pandas")
        frame = named.to_frame()
        assert list(frame.index) == list(names) and frame.index.name == "level"
        assert list(frame.columns) == ["mode", "se", "se_conditional", "lower", "upper", "lower_conditional", "upper_conditional"]
        np.testing.assert_array_equal(frame["se"].to_numpy(), np.asarray(r.se))
        # the interval ends are mode -/+ z_0.975 se (z to 16 digits, closed form); 1e-12:
        # the two sides compute it in different operation orders
        z = 1.959963984540054
        np.testing.assert_allclose(frame["upper"], np.asarray(r.mode) + z * np.asarray(r.se), rtol=1e-12)
        np.testing.assert_allclose(frame["lower_conditional"], np.asarray(r.mode) - z * np.asarray(r.se_conditional), rtol=1e-12)
        ci = named.conf_int(0.1, conditional=True, frame=True)
        assert isinstance(ci, pd.DataFrame) and list(ci.index) == list(names)
        np.testing.assert_array_equal(ci.to_numpy(), np.asarray(named.conf_int(0.1, conditional=True)))
        model.random_names = {"b": names[:2]}
        with pytest.raises(ValueError, match=r"random_names\['b'\] has 2 names for the levels but random effect 'b' has 8 levels"):
            res.random
    finally:
        model.random_names = {}


def test_modes_maximise_the_joint_density(fitted):
    # independent check of the conditional modes: at the mode, the derivative of
    # sum_i loglik_i + log N(b; 0, sd^2) in each b_g is 0 (to rounding: 1e-9 of the terms' size)
    model, res = fitted
    d, p = model.data, res.params
    b = res.random["b"].mode

    def joint(b):
        return jnp.sum(loglik({**p, "b": b}, d)) - 0.5 * jnp.sum((b / p["sd"]) ** 2)

    assert np.max(np.abs(np.asarray(jax.grad(joint)(b)))) < 1e-9
    # se_conditional is the inverse curvature of that joint density, group by group
    curv = -np.diag(np.asarray(jax.hessian(joint)(b)))
    np.testing.assert_allclose(np.asarray(res.random["b"].se_conditional), 1.0 / np.sqrt(curv), rtol=1e-10)


def test_delta_method_of_a_random_effect_is_its_se(fitted):
    # delta_method(fn(p, r)) and res.random use the same formula (TMB's): the SE of r["b"][3]
    # itself must be res.random["b"].se[3]; and beta[0] + b[3] combines both parts
    _, res = fitted
    one = ah.delta_method(res, lambda p, r: r["b"][3])
    np.testing.assert_allclose(float(one.se), float(res.random["b"].se[3]), rtol=1e-10)
    both = ah.delta_method(res, lambda p, r: p["beta"][0] + r["b"][3])
    assert float(both.value) == pytest.approx(float(res.params["beta"][0] + res.random["b"].mode[3]), rel=1e-12)
    # a function of the fixed parameters alone: plain delta method
    fixed = ah.delta_method(res, lambda p: p["beta"][0])
    assert float(fixed.se) == pytest.approx(float(res.bse["beta"][0]), rel=1e-12)


def test_groups_linked_by_the_likelihood_use_the_dense_path():
    # observation i also uses the next group's effect: the per-group blocks would be wrong, so
    # the construction check finds the link and integrates with one dense inner Hessian
    def linked(p, d):
        eta = p["beta"][0] + p["b"][d["g"]] + 0.5 * p["b"][(d["g"] + 1) % G]
        return d["y"] * eta - d["n"] * jnp.logaddexp(0.0, eta)

    model = ah.Model(linked, _data(), {"beta": jnp.zeros(1), "sd": ah.Positive(1.0)}, random=RANDOM)
    assert not model.laplace.structure.block_diagonal
    assert "changes when other groups' coefficients of 'b' move" in model.dense_reason
    assert not model.per_observation  # the marginal no longer splits by group


def test_inner_failure_is_named_at_construction():
    # log(b) is -inf at b = 0 for every group: the inner maximisation cannot start
    def bad(p, d):
        return d["y"] * jnp.log(p["b"][d["g"]]) + p["beta"][0] * d["x"]

    with pytest.raises(ValueError, match=r"not finite at random effects 0 for 8 of 8 groups of data\['g'\]"):
        ah.Model(bad, _data(), {"beta": jnp.zeros(1), "sd": ah.Positive(1.0)}, random=RANDOM)


@pytest.mark.parametrize(
    "random, params, data_edit, error, match",
    [
        ([("b", 1)], PARAMS, None, TypeError, "random must be a non-empty dict"),
        ({"b": "normal"}, PARAMS, None, TypeError, r"random\['b'\] must be a distribution"),
        ({"beta": ah.Normal(sd="sd", groups="g")}, PARAMS, None, ValueError, "also a key of params"),
        ({"b": ah.Normal(sd="sigma", groups="g")}, PARAMS, None, ValueError, "sd='sigma' is not a parameter"),
        ({"b": ah.Normal(sd="sd", groups="herd")}, PARAMS, None, ValueError, "groups='herd' is not an entry of data"),
        ({"b": ah.Normal(sd="beta", groups="g")}, PARAMS, None, ValueError, "must be a scalar standard deviation"),
        (RANDOM, PARAMS, lambda d: {**d, "g": d["g"].astype(float)}, TypeError, r"astype\(int\)"),
        (RANDOM, PARAMS, lambda d: {**d, "g": d["g"] - 1}, ValueError, "negative codes"),
        (RANDOM, PARAMS, lambda d: {**d, "g": d["g"][:-1]}, TypeError, r"data shapes \{'g': \(39,\)"),
        ({"b": ah.MultivariateNormal(sd="sd", corr=None, groups="g")}, PARAMS, None, ValueError, "vector of q standard deviations"),
        ({"b": ah.Latent(shape=(0,), logprior=lambda u, p: 0.0)}, PARAMS, None, ValueError, "positive sizes"),
    ],
)
def test_bad_declarations(random, params, data_edit, error, match):
    data = _data()
    if data_edit is not None:
        data = data_edit(data)
    with pytest.raises(error, match=match):
        ah.Model(loglik, data, params, random=random)


def test_mvnormal_correlation_shape_is_checked():
    params = {"beta": jnp.zeros(2), "sd": ah.Positive(jnp.ones(3)), "rho": ah.Interval(-1, 1, 0.0)}
    with pytest.raises(ValueError, match=r"q\(q-1\)/2 = 3 canonical partial correlations"):
        ah.Model(loglik, _data(), params, random={"b": ah.MultivariateNormal(sd="sd", corr="rho", groups="g")})


def test_corr_cholesky_gives_a_correlation_matrix():
    # any canonical partial correlations in (-1, 1) map to a valid correlation matrix; for
    # q = 2 the one entry is the correlation itself (exact arithmetic up to rounding)
    z = jnp.array([0.3, -0.8, 0.95, 0.1, -0.2, 0.5])
    L = np.asarray(ah.corr_cholesky(z, 4))
    R = L @ L.T
    np.testing.assert_allclose(np.diag(R), 1.0, atol=1e-14)
    assert np.all(np.linalg.eigvalsh(R) > 0)
    assert R[1, 0] == pytest.approx(0.3, abs=1e-15) and R[2, 0] == pytest.approx(-0.8, abs=1e-15)
    L2 = np.asarray(ah.corr_cholesky(jnp.array(0.6), 2))
    assert (L2 @ L2.T)[1, 0] == pytest.approx(0.6, abs=1e-15)


def test_zero_variance_is_named_as_a_variance_component():
    # data with no group effect at all: the ML estimate of sd is 0 (a boundary); the finding
    # must say which random effect has no variance, and advise the mixture LR test
    model = ah.Model(loglik, _data(seed=3, sd=0.0), PARAMS, random=RANDOM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ah.InferenceWarning)
        res = ah.fit(model)
    # seed 3 without a group effect gives an ML estimate of sd at 0 (checked: the Laplace
    # marginal is largest as sd -> 0 there)
    (found,) = [p for p in res.diagnostics.problems if p.kind == "boundary"]
    assert found.parameters == ("sd",)
    assert "the standard deviation of random effect 'b' (groups data['g'])" in found.message
    assert "50:50 mixture" in found.suggestion
    assert np.isnan(float(res.bse["sd"]))


def test_correlation_at_one_is_named():
    # random slopes planted as exactly half the random intercepts, tiny residual noise: the ML
    # correlation of the two random coefficients is 1 (a singular covariance), which must be
    # named as such, not as a bare non-positive-definite Hessian
    rng = np.random.default_rng(0)
    n_groups, per = 12, 3
    s = np.repeat(np.arange(n_groups), per)
    t = np.tile(np.arange(per), n_groups).astype(float)
    b0 = 3.0 * rng.standard_normal(n_groups)
    y = 1.0 + 0.5 * t + b0[s] + 0.5 * b0[s] * t + 0.02 * rng.standard_normal(n_groups * per)

    def lmm(p, d):
        b = p["b"][d["s"]]
        mu = p["beta"][0] + b[:, 0] + (p["beta"][1] + b[:, 1]) * d["t"]
        return -0.5 * ((d["y"] - mu) / p["sigma"]) ** 2 - jnp.log(p["sigma"]) - 0.5 * jnp.log(2 * jnp.pi)

    params = {"beta": jnp.zeros(2), "sigma": ah.Positive(1.0), "sd": ah.Positive(jnp.ones(2)), "rho": ah.Interval(-1, 1, 0.0)}
    model = ah.Model(lmm, {"y": y, "t": t, "s": s}, params, random={"b": ah.MultivariateNormal(sd="sd", corr="rho", groups="s")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ah.InferenceWarning)
        res = ah.fit(model)
    assert float(res.params["rho"]) > 1 - 1e-6
    (found,) = [p for p in res.diagnostics.problems if p.kind == "boundary"]
    assert found.parameters == ("rho",)
    assert "the correlation of random effect 'b' (groups data['s'])" in found.message
    assert "perfectly correlated" in found.suggestion and "corr=None" in found.suggestion
    assert np.isnan(float(res.bse["rho"]))
    # one finding, not two that contradict each other: the solver stalls here (rho sits at
    # rounding distance from 1 on its unconstrained scale) while the others are at their
    # optimum on the face (0.0002 standard errors away, measured); it used to add a
    # "not_converged" finding quoting rho's own outward gradient (5e6) as the evidence
    assert [p.kind for p in res.diagnostics.problems] == ["boundary"]
    assert res.converged
    head = str(res.diagnostics).splitlines()[0]
    assert head.startswith("with rho held fixed: max|gradient| ")
    assert res.diagnostics.face_gradient_max < 1.0 < res.diagnostics.gradient_max
    assert res.diagnostics.face_newton_decrement < 1e-4  # squared distance in SEs: 3e-8 measured
    assert "not converged" not in res.summary()


def test_face_distance_closed_form():
    # Newton step length on the face, in standard errors: sqrt(g_f' H_ff^-1 g_f) over the free
    # parameters (closed form with numpy's solve; agreement to rounding, CLOSED_FORM)
    from autohess._fit import face_distance

    rng = np.random.default_rng(1)
    A = rng.standard_normal((4, 4))
    H = A @ A.T + 4.0 * np.eye(4)
    g = rng.standard_normal(4)
    held = np.array([False, True, False, False])
    free = ~held
    want = np.sqrt(g[free] @ np.linalg.solve(H[np.ix_(free, free)], g[free]))
    assert abs(float(face_distance(jnp.asarray(g), jnp.asarray(H), jnp.asarray(held))) - want) < 1e-10 * want
    # a face that is not positive definite has no Newton step: inf, never "at the optimum"
    H[0, 0] = -1.0
    assert np.isinf(float(face_distance(jnp.asarray(g), jnp.asarray(H), jnp.asarray(held))))


@pytest.mark.parametrize("status, grad_free, want", [
    ("STALLED", 1e-6, "CONVERGED"),        # at the optimum on the face: the boundary explains the stall
    ("MAX_ITERATIONS", 1e-6, "CONVERGED"),
    ("STALLED", 1.0, "STALLED"),           # 1 SE from the optimum on the face: not converged
    ("NONFINITE", 1e-6, "NONFINITE"),      # other statuses are left as they are
])
def test_stall_at_a_bound_reads_on_the_face(status, grad_free, want):
    # a Positive parameter at 1e-12 with an outward gradient (its bound 0 within reach) and
    # two free parameters with unit curvature: the status follows the face's Newton step
    from autohess._diagnostics import compute_diagnostics
    from autohess._fit import _status_on_face
    from autohess._solver import Status

    x = jnp.array([1e-12, 0.3, -0.2])
    hess = jnp.array([[1.0, 0.2, 0.0], [0.2, 1.0, 0.1], [0.0, 0.1, 1.0]])
    grad = jnp.array([5.0, grad_free, 0.0])  # NLL gradient: rises away from the bound 0
    lower = jnp.array([0.0, -jnp.inf, -jnp.inf])
    upper = jnp.full(3, jnp.inf)
    d = compute_diagnostics(grad, hess, x, lower, upper)
    assert np.asarray(d.at_boundary).tolist() == [True, False, False]
    got = _status_on_face(jnp.asarray(Status[status]), d, grad, hess)
    assert Status(int(got)) == Status[want]
    # without the derivatives (the old call) nothing but SINGULAR is read on the face
    assert Status(int(_status_on_face(jnp.asarray(Status[status]), d))) == Status[status]


def test_construction_does_not_trace_the_marginal(monkeypatch):
    # the marginal's output shape is known from the structure (one contribution per group,
    # or a total on the crossed/dense paths); tracing it at construction (inner loop,
    # implicit derivatives) only to read that shape cost 0.1-0.4 s CPU per model
    from autohess._laplace import Laplace

    traced = []
    original = Laplace.marginal
    monkeypatch.setattr(Laplace, "marginal", lambda self, p, d: traced.append(1) or original(self, p, d))
    model = ah.Model(loglik, _data(), PARAMS, random=RANDOM)
    assert not traced
    assert model.nobs == G and model.per_observation
    two = ah.Model(lambda p, d: loglik(p, d) + 0.0 * p["c"][d["h"]], {**_data(), "h": np.arange(G * PER) % 3},
                   {**PARAMS, "sc": ah.Positive(1.0)}, random={**RANDOM, "c": ah.Normal(sd="sc", groups="h")})
    assert not traced
    assert two.nobs is None and not two.per_observation  # crossed: the marginal is one total
