"""Bad input per batch member, and the bad-input messages of delta_method, fit_batch's start
and cluster groups.

A batch never raises for one bad member: what a single ``fit`` refuses (negative, non-finite
or all-zero weights, data outside the model's support, a derived data leaf that disagrees
with ``y``, a start outside the domain) gives that member status ``NONFINITE`` and a reason
in ``status`` / ``input_problems``, and its neighbours equal their single fits.

Good members are compared with single ``ah.fit`` calls on the same inputs to 1e-10 relative:
the same trust-region loop and the same arithmetic run in both, only ``vmap``'s batched
reductions may sum in another order (rounding, ~1e-14 here), and a different iterate would
differ at the solver's own tolerance (~1e-8 in the estimates), so 1e-10 separates the two.
The batches are small (N = 40 to 60, B <= 5, two parameters) to keep compilation short.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammaln

import autohess as ah
from autohess._solver import Status

#: same loop and arithmetic, another summation order (see the module docstring)
SAME_FIT = 1e-10


def _poisson_data(n=50, seed=8):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.poisson(np.exp(0.3 + 0.5 * X[:, 1])).astype(float)
    return X, y


@pytest.fixture(scope="module")
def weights_batch():
    """Poisson, B = 5: member 0 good; 1 a negative weight; 2 a NaN weight; 3 all weights 0;
    4 good weights but a NaN start (outside Real's domain)."""
    X, y = _poisson_data()
    model = ah.models.poisson(X, y)
    W = np.random.default_rng(3).multinomial(50, np.full(50, 1 / 50), size=5).astype(float)
    W[1, 0] = -1.0
    W[2, 3] = np.nan
    W[3, :] = 0.0
    starts = np.zeros((5, 2))
    starts[4, 0] = np.nan
    bres = ah.fit_batch(model, weights=W, start={"beta": starts})
    return model, W, bres


def test_bad_weights_and_starts_get_a_status_per_member(weights_batch):
    model, W, bres = weights_batch
    codes = np.asarray(bres.status_code)
    assert codes[0] == Status.CONVERGED
    assert (codes[1:] == Status.NONFINITE).all()  # member 1 used to end CONVERGED, 3 SINGULAR
    problems = bres.input_problems
    assert problems[0] is None
    assert "non-negative" in problems[1] and "1 negative" in problems[1] and "observation 0" in problems[1]
    assert "1 non-finite" in problems[2] and "observation 3" in problems[2]
    assert "weights sum to 0: no observation is in the sample" in problems[3]
    assert "start of parameter 'beta'" in problems[4] and "beta[0]=nan" in problems[4]
    for i in range(1, 5):
        assert bres.status[i].startswith("failed: not fitted") and problems[i] in bres.status[i]
        assert bres.member(i).status == bres.status[i]  # the member's FitResult says why too
    assert bres.member(0).status == Status.CONVERGED.message
    # refused members are not run (they start from NaN and stop at once) and carry no numbers
    assert (np.asarray(bres.iterations[1:]) == 0).all()
    assert np.isnan(np.asarray(bres.params_flat[1:])).all() and np.isnan(np.asarray(bres.bse_flat[1:])).all()
    assert bres.n_failed == 4 and not bres.usable[1:].any()
    # a sub-batch keeps each member's reason
    sub = bres[np.array([3, 0])]
    assert sub.input_problems[0] == problems[3] and sub.input_problems[1] is None
    single = ah.fit(model, weights=W[0])
    np.testing.assert_allclose(np.asarray(bres.params_flat[0]), np.asarray(single.params_flat), rtol=SAME_FIT)
    np.testing.assert_allclose(np.asarray(bres.bse_flat[0]), np.asarray(single.bse_flat), rtol=SAME_FIT)
    # the single fit refuses each of these weight vectors
    for i, words in [(1, "finite and non-negative"), (2, "finite and non-negative"), (3, "weights sum to 0")]:
        with pytest.raises(ValueError, match=words):
            ah.fit(model, weights=W[i])


def test_all_zero_weights_raise_in_single_fits():
    """Used to give bic = -inf and df_resid = -2 without an error."""
    X, y = _poisson_data(n=40)
    model = ah.models.poisson(X, y)
    with pytest.raises(ValueError, match="weights sum to 0: no observation is in the sample"):
        ah.fit(model, weights=np.zeros(40))
    with pytest.raises(ValueError, match="weights sum to 0"):
        ah.hessian(model, weights=np.zeros(40))
    w = np.zeros(40)
    w[[0, 5, 9, 17, 30]] = 1.0  # a few observations in the sample is fine
    assert np.isfinite(ah.fit(model, weights=w, warn=False).llf)


def test_logistic_support_is_checked_per_member():
    """Logistic members with y = 2 / y = -1 used to end CONVERGED; now each is that member's
    status, and the good member is its single fit."""
    X, y = _poisson_data(n=60, seed=6)
    yb = (y > 1).astype(float)
    logit = ah.models.logistic(X, yb)
    ys = np.stack([yb, yb, yb])
    ys[1, 0], ys[2, 3] = 2.0, -1.0
    lres = ah.fit_batch(logit, {"X": np.repeat(X[None], 3, 0), "y": ys, "offset": np.zeros((3, 60))})
    assert list(np.asarray(lres.status_code)) == [Status.CONVERGED, Status.NONFINITE, Status.NONFINITE]
    assert "y must be 0 or 1: 1 of 60 observations fail (first at index 0)" in lres.status[1]
    assert "(first at index 3)" in lres.input_problems[2]
    single = ah.fit(logit)
    np.testing.assert_allclose(np.asarray(lres.params_flat[0]), np.asarray(single.params_flat), rtol=SAME_FIT)
    with pytest.raises(ValueError, match="y must be 0 or 1"):  # what the single constructor says
        ah.models.logistic(X, ys[1])


def test_poisson_support_and_log_y_factorial_are_checked_per_member():
    """Poisson members with y = -2 / y = 0.5 / a wrong derived leaf log_y_factorial (which
    silently shifted llf, AIC, BIC) used to end CONVERGED."""
    X, y = _poisson_data(n=60, seed=6)
    pois = ah.models.poisson(X, y)
    ys = np.stack([y] * 4)
    ys[1, 0], ys[2, 4] = -2.0, 0.5
    lyf = np.array(gammaln(ys + 1.0))  # what a user would compute; NaN at y = -2 is not finite
    lyf[1, 0] = 0.0
    lyf[3, 7] = gammaln(y[7])  # log((y-1)!) instead of log(y!): silently shifted llf before
    data = {"X": np.repeat(X[None], 4, 0), "y": ys, "offset": np.zeros((4, 60)), "log_y_factorial": lyf}
    pres = ah.fit_batch(pois, data)
    assert list(np.asarray(pres.status_code)) == [Status.CONVERGED] + [Status.NONFINITE] * 3
    assert "y must be non-negative integer counts: 1 of 60 observations fail (first at index 0)" in pres.status[1]
    assert "y must be non-negative integer counts" in pres.status[2] and "(first at index 4)" in pres.status[2]
    # only the count condition is reported where y is not a count, not a second one for log(y!)
    assert "log_y_factorial" not in pres.status[1]
    assert "log_y_factorial must equal gammaln(y + 1): 1 of 60 observations fail (first at index 7)" in pres.status[3]
    single = ah.fit(pois)
    np.testing.assert_allclose(np.asarray(pres.params_flat[0]), np.asarray(single.params_flat), rtol=SAME_FIT)
    np.testing.assert_allclose(float(pres.llf[0]), float(single.llf), rtol=SAME_FIT)
    # log_y_factorial from scipy-like and jax gammaln agree within the tolerance: no false alarm
    good = dict(data, y=np.stack([y] * 4), log_y_factorial=np.stack([np.asarray(gammaln(y + 1.0))] * 4))
    assert ah.fit_batch(pois, good).converged.all()
    with pytest.raises(ValueError, match="log_y_factorial must equal gammaln"):
        pois.with_data(dict(pois.data, log_y_factorial=jnp.zeros(60)))


def _exponential(y, support):
    loglik = lambda p, d: jnp.log(p["rate"]) - p["rate"] * d["y"]  # noqa: E731
    return ah.Model(loglik, {"y": y}, {"rate": ah.Positive(1.0)}, support=support)


def test_model_support_hook():
    """A user model declares its support; the constructor refuses data outside it and
    fit_batch gives such a member a status. The good member equals the closed-form MLE of an
    exponential rate, 1 / mean(y), and its Hessian SE rate / sqrt(N) (1e-8: the solver's
    stopping rule leaves ~1e-12 relative in the estimate; 1e-8 is far below any wrong answer)."""
    y = np.random.default_rng(2).exponential(0.5, size=40)
    named = lambda d: {"y must be positive": d["y"] > 0}  # noqa: E731
    model = _exponential(y, named)
    bad = y.copy()
    bad[[4, 9]] = -1.0
    with pytest.raises(ValueError, match=r"y must be positive: 2 of 40 observations fail \(first at index 4\)"):
        _exponential(bad, named)
    with pytest.raises(ValueError, match="data inside the model's support"):  # an unnamed array
        _exponential(bad, lambda d: d["y"] > 0)
    with pytest.raises(TypeError, match="support must return booleans"):
        _exponential(y, lambda d: d["y"])
    with pytest.raises(TypeError, match="jax.numpy"):
        _exponential(y, lambda d: np.asarray(d["y"]) > 0)
    with pytest.raises(TypeError, match="support must be a function"):
        _exponential(y, "positive")
    bres = ah.fit_batch(model, {"y": np.stack([y, bad])})
    assert list(np.asarray(bres.status_code)) == [Status.CONVERGED, Status.NONFINITE]
    assert "y must be positive: 2 of 40 observations fail (first at index 4)" in bres.status[1]
    rate = 1.0 / y.mean()
    np.testing.assert_allclose(float(bres.params["rate"][0]), rate, rtol=1e-8)
    np.testing.assert_allclose(float(bres.bse["rate"][0]), rate / np.sqrt(40), rtol=1e-8)


def test_batched_start_shapes_are_named():
    """Used to fail with 'Incompatible shapes for broadcasting', naming neither start nor beta."""
    X, y = _poisson_data(n=40)
    model = ah.models.poisson(X, y)
    with pytest.raises(ValueError, match=r"start: parameter 'beta' has shape \(3, 3\); expected \(2,\) .* or \(B, 2\)"):
        ah.fit_batch(model, start={"beta": np.zeros((3, 3))})
    with pytest.raises(ValueError, match=r"start: parameter 'beta' has shape \(3,\)"):
        ah.fit_batch(model, weights=np.ones((2, 40)), start={"beta": np.zeros(3)})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['gamma'\]"):
        ah.fit_batch(model, weights=np.ones((2, 40)), start={"beta": np.zeros(2), "gamma": 1.0})
    nb = ah.models.negative_binomial(X, y)
    with pytest.raises(ValueError, match=r"disagree on the batch size B: \{'alpha': 2, 'beta': 3\}"):
        ah.fit_batch(nb, start={"alpha": np.ones(2), "beta": np.zeros((3, 2))})
    with pytest.raises(ValueError, match=r"'alpha' has shape \(2, 1\); expected \(\) .* or \(B,\)"):
        ah.fit_batch(nb, start={"alpha": np.ones((2, 1)), "beta": np.zeros(2)})
    with pytest.raises(ValueError, match="outside the domain"):  # a shared start: as in fit
        ah.fit_batch(nb, weights=np.ones((2, 40)), start={"alpha": -1.0, "beta": np.zeros(2)})


def test_delta_method_bad_input_and_pytree_outputs(weights_batch):
    model, W, bres = weights_batch
    res = ah.fit(model)
    with pytest.raises(TypeError, match=r"needs a FitResult .* BatchResult of 5 members.*member\(i\)"):
        ah.delta_method(bres, lambda p: p["beta"][0])
    with pytest.raises(TypeError, match="needs a FitResult"):
        ah.delta_method(res.params, lambda p: p["beta"][0])
    with pytest.raises(TypeError, match="fn must be a function"):
        ah.delta_method(res, 3.0)
    with pytest.raises(TypeError, match="jax.numpy"):  # was a raw TracerArrayConversionError
        ah.delta_method(res, lambda p: np.exp(p["beta"][0]))
    with pytest.raises(TypeError, match="floating values"):
        ah.delta_method(res, lambda p: p["beta"] > 0)
    with pytest.raises(KeyError, match=r"'gamma'.*\['beta'\]"):
        ah.delta_method(res, lambda p: p["gamma"])
    # a dict output (was a raw JAX dtype error): flattened in pytree order and labelled;
    # reference: the closed form exp(b0) * SE(b0) and the fit's own SEs and covariances
    # (1e-12: one multiplication of the same numbers)
    d = ah.delta_method(res, lambda p: {"rate": jnp.exp(p["beta"][0]), "b": p["beta"]})
    assert d.labels == ["b[0]", "b[1]", "rate"]  # dict keys in sorted (pytree) order
    b, V = np.asarray(res.params_flat), np.asarray(res.cov_params())
    np.testing.assert_allclose(np.asarray(d.value), [b[0], b[1], np.exp(b[0])], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(d.se), np.sqrt([V[0, 0], V[1, 1], np.exp(2 * b[0]) * V[0, 0]]), rtol=1e-12)
    np.testing.assert_allclose(float(d.cov[2, 1]), np.exp(b[0]) * V[0, 1], rtol=1e-12)
    assert d.conf_int().shape == (3, 2)
    lst = ah.delta_method(res, lambda p: [p["beta"][1], 2.0 * p["beta"][0]])
    assert lst.labels == ["g[0]", "g[1]"]
    np.testing.assert_allclose(np.asarray(lst.se), [np.sqrt(V[1, 1]), 2.0 * np.sqrt(V[0, 0])], rtol=1e-12)
    assert ah.delta_method(res, lambda p: p["beta"][0]).labels is None  # arrays keep their shape


def test_cluster_groups_that_cannot_be_sorted_are_named():
    """groups=[None]*n used to raise a raw TypeError from np.unique."""
    X, y = _poisson_data(n=40)
    model = ah.models.poisson(X, y)
    with pytest.raises(ValueError, match=r"groups contains 40 missing cluster ids \(None or NaN; first at observation 0\)"):
        ah.fit(model, cov_type="cluster", groups=[None] * 40)
    with pytest.raises(ValueError, match=r"groups contains 1 missing cluster ids .* observation 3"):
        ah.fit(model, cov_type="cluster", groups=[f"g{i % 4}" if i != 3 else None for i in range(40)])
    mixed = np.array([i % 4 if i % 2 else f"g{i % 4}" for i in range(40)], dtype=object)
    with pytest.raises(ValueError, match="groups: cluster ids must be numbers or strings of one type.*int, str"):
        ah.fit(model, cov_type="cluster", groups=mixed)
    # a list mixing numbers and strings is read by numpy as strings: valid, 8 distinct ids
    as_list = ah.fit(model, cov_type="cluster", groups=list(mixed), warn=False)
    assert np.isfinite(np.asarray(as_list.bse_flat)).all()


def test_every_zoo_model_declares_its_support():
    """The zoo's hooks hold on the data their constructors accept, and refuse what the
    constructors refuse (checked through ``with_data``, which runs the hook; no fit needed)."""
    rng = np.random.default_rng(5)
    X, y = _poisson_data(n=40)
    t = rng.exponential(size=40)
    e = (rng.uniform(size=40) < 0.7).astype(float)
    cases = [
        (ah.models.logistic(X, (y > 1).astype(float)), {"y": np.r_[0.5, np.zeros(39)]}, r"y must be 0 or 1: 1 of 40"),
        (ah.models.poisson(X, y), {"y": np.r_[y[:-1], 2.5]}, r"non-negative integer counts: 1 of 40 .* index 39"),
        (ah.models.negative_binomial(X, y), {"y": np.r_[-1.0, y[1:]]}, "y must be non-negative integer counts"),
        (ah.models.weibull(X, t, e), {"time": np.r_[t[:5], 0.0, t[6:]]}, r"time must be positive: 1 of 40 .* index 5"),
        (ah.models.weibull(X, t, e), {"event": np.r_[2.0, e[1:]]}, "event must be 0 or 1"),
        (ah.models.garch11(rng.standard_t(5, size=40)), {"y": np.full(40, 0.3)}, "y must vary"),
    ]
    for model, change, words in cases:
        one = {k: v[None] for k, v in model.data.items()}
        assert all(ok.all() for ok in model.support_masks(one).values()), model.name
        with pytest.raises(ValueError, match=words):
            model.with_data({**model.data, **change})
    assert ah.models.linear(X, y).support_fn is None  # any real y is in the support
