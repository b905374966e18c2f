"""Data and names as applied users have them (issue #13, part 5): integer codes kept integer so
they can index, pandas inputs, element names for array parameters and labelled frames."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import autohess as ah


# -- integer data as indices ------------------------------------------------------------------------
def ordered_logit_loglik(params, data):
    # cuts indexed by the integer outcome code: the habit that failed when codes became floats
    cuts = jnp.concatenate([jnp.array([-jnp.inf]), params["cuts"], jnp.array([jnp.inf])])
    eta = data["X"] @ params["beta"]
    y = data["y"]
    return jnp.log(jax.nn.sigmoid(cuts[y + 1] - eta) - jax.nn.sigmoid(cuts[y] - eta))


def ordered_data(rng, n=400):
    X = rng.normal(size=(n, 2))
    latent = X @ np.array([0.8, -0.5]) + rng.logistic(size=n)
    return X, np.digitize(latent, [-1.0, 0.3, 1.4])  # int64 codes 0..3


def test_ordered_logit_with_integer_codes_matches_statsmodels(rng):
    from statsmodels.miscmodels.ordinal_model import OrderedModel

    X, y = ordered_data(rng)
    model = ah.Model(
        ordered_logit_loglik, {"X": X, "y": y}, {"beta": jnp.zeros(2), "cuts": jnp.array([-1.0, 0.0, 1.0])},
        names={"beta": ["x1", "x2"], "cuts": ["0|1", "1|2", "2|3"]},
    )
    assert model.data["y"].dtype == jnp.int64  # kept: it indexes
    res = ah.fit(model)
    assert res.converged
    # Newton stops when a step is below 1e-8; quadratic convergence puts the estimate far closer
    sm = OrderedModel(y, X, distr="logit").fit(method="newton", maxiter=100, tol=1e-8, disp=False)
    assert sm.mle_retvals["converged"]
    # statsmodels parametrises the cuts as (c1, log(c2 - c1), log(c3 - c2)); the slopes, their
    # standard errors (the beta block of the inverse information is invariant to a
    # reparametrisation of the other parameters) and the log-likelihood are comparable.
    # Both solvers are Newton: estimates agree to 1e-8 relative; statsmodels' bse come from a
    # finite-difference Hessian (~1e-7 relative error at its default steps), hence 1e-6.
    cuts_sm = np.cumsum(np.r_[sm.params[2], np.exp(sm.params[3:])])
    np.testing.assert_allclose(res.params["beta"], sm.params[:2], rtol=1e-8)
    np.testing.assert_allclose(res.params["cuts"], cuts_sm, rtol=1e-8)
    np.testing.assert_allclose(res.bse["beta"], sm.bse[:2], rtol=1e-6)
    np.testing.assert_allclose(float(res.llf), sm.llf, rtol=1e-10)
    assert res.labels == ["beta[x1]", "beta[x2]", "cuts[0|1]", "cuts[1|2]", "cuts[2|3]"]


def poisson_fe_loglik(params, data):
    # group intercepts indexed by integer group ids, counts y kept integer
    eta = params["b"][data["g"]] + params["slope"] * data["x"]
    return data["y"] * eta - jnp.exp(eta) - jax.scipy.special.gammaln(data["y"] + 1.0)


def poisson_onehot_loglik(params, data):
    eta = data["D"] @ params["b"] + params["slope"] * data["x"]
    return data["y"] * eta - jnp.exp(eta) - jax.scipy.special.gammaln(data["y"] + 1.0)


def _simulate_fe(key, params, data):
    eta = params["b"][data["g"]] + params["slope"] * data["x"]
    return {**data, "y": jax.random.poisson(key, jnp.exp(eta))}  # integer draws for integer y


def fe_data(rng, n=120, groups=("north", "south", "east")):
    g = rng.integers(0, len(groups), size=n)
    x = rng.normal(size=n)
    y = rng.poisson(np.exp(np.array([0.2, -0.3, 0.6])[g] + 0.4 * x))
    return {"g": g, "x": x, "y": y}


@pytest.fixture(scope="module")
def fe_model():
    # one model for the module: its compiled programs are shared by the tests below
    data = fe_data(np.random.default_rng(7))
    return ah.Model(
        poisson_fe_loglik, data, {"b": jnp.zeros(3), "slope": 0.0}, simulate=_simulate_fe,
        names={"b": ["north", "south", "east"]},
    )


@pytest.fixture(scope="module")
def fe_fit(fe_model):
    return ah.fit(fe_model)


def test_group_ids_as_indices_equal_one_hot_float_model(fe_model, fe_fit):
    data = {k: np.asarray(v) for k, v in fe_model.data.items()}
    assert data["g"].dtype == np.int64 and data["y"].dtype == np.int64
    onehot = ah.Model(
        poisson_onehot_loglik,
        {"D": np.eye(3)[data["g"]], "x": data["x"], "y": data["y"].astype(float)},
        {"b": jnp.zeros(3), "slope": 0.0},
    )
    res, ref = fe_fit, ah.fit(onehot)
    # the same likelihood, summed in a different order: estimates and SEs agree to rounding
    # after ~6 Newton steps (1e-9 relative)
    np.testing.assert_allclose(res.params_flat, ref.params_flat, rtol=1e-9)
    np.testing.assert_allclose(res.bse_flat, ref.bse_flat, rtol=1e-9)
    # a chunked Hessian slices the integer leaves like the floats: equal up to summation order
    H = ah.hessian(fe_model, res.params)
    np.testing.assert_allclose(ah.hessian(fe_model, res.params, chunk_size=32).matrix, H.matrix, rtol=1e-12)
    # profile by the new label and by the old index label: the same parameter
    assert ah.profile(res, "b[south]", grid=[-0.5, -0.3]).name == "b[south]"
    assert ah.profile(res, "b[1]", grid=[-0.5, -0.3]).name == "b[south]"


def test_integer_data_in_batches_and_bootstraps(fe_model, fe_fit, getkey):
    res = fe_fit
    data = {k: np.asarray(v) for k, v in fe_model.data.items()}
    # a data batch keeps integer leaves integer. Member 1 relabels the groups (0->2, 1->0,
    # 2->1): the same likelihood with the intercepts permuted, so its estimate is member 0's
    # permuted (up to the solver's rounding, 1e-10) and member 0 equals the single fit
    perm = np.array([2, 0, 1])[data["g"]]
    batch = {"g": np.stack([data["g"], perm]), "x": np.stack([data["x"]] * 2), "y": np.stack([data["y"]] * 2)}
    bres = ah.fit_batch(fe_model, batch)
    np.testing.assert_allclose(bres.params_flat[0], res.params_flat, rtol=1e-10)
    b0, b1 = np.asarray(bres.params_flat[0]), np.asarray(bres.params_flat[1])
    np.testing.assert_allclose(b1[[2, 0, 1, 3]], b0, rtol=1e-10)
    assert bres.member(1).labels == ["b[north]", "b[south]", "b[east]", "slope"]
    # floats for an integer leaf: accepted when whole numbers, refused otherwise (a cast truncates)
    ok = ah.fit_batch(fe_model, {**batch, "g": batch["g"].astype(float)})
    np.testing.assert_array_equal(ok.params_flat, bres.params_flat)
    with pytest.raises(TypeError, match=r"data_batch\['g'\] has non-integer.*int64"):
        ah.fit_batch(fe_model, {**batch, "g": batch["g"] + 0.5})
    # a parametric bootstrap on integer data (the simulated counts are cast back to the integer
    # y): replicates finite, the comparison table labelled by name
    boot = ah.bootstrap(res, n=4, key=getkey(), kind="parametric")
    assert np.isfinite(np.asarray(boot.replicates)).all()
    assert "b[east]" in str(boot.compare())


def test_simulate_with_non_integer_values_for_integer_data_refused(fe_model, fe_fit):
    bad = ah.Model(
        poisson_fe_loglik, fe_model.data, {"b": jnp.zeros(3), "slope": 0.0},
        simulate=lambda k, p, d: {**d, "y": jnp.exp(p["slope"] * d["x"])},  # continuous draws
    )
    res = ah.evaluate(bad, fe_fit.params)  # no refit needed to reach the bootstrap's check
    with pytest.raises(ValueError, match=r"non-integer values for data\['y'\].*integers"):
        ah.bootstrap(res, n=2, key=0, kind="parametric")


def test_integer_cast_to_float_warns_when_it_loses_information(rng):
    X = rng.normal(size=(30, 2))
    big = np.full(30, 2**53 + 1, dtype=np.int64)  # not a float64: the zoo's float cast changes it
    with pytest.warns(UserWarning, match=r"linear: y holds integers beyond 2\*\*53.*30 of 30 entries change"):
        ah.models.linear(X, big + np.arange(30) * 2)
    # exact below 2**53: no warning, and the zoo's float copies equal float input exactly
    Xi = rng.integers(0, 5, size=(40, 2))
    yi = rng.poisson(1.0, size=40)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = ah.models.poisson(Xi, yi)
    ref = ah.models.poisson(Xi.astype(float), yi.astype(float))
    for k in ("X", "y", "log_y_factorial"):
        assert m.data[k].dtype == jnp.float64
        np.testing.assert_array_equal(m.data[k], ref.data[k])


# -- pandas -------------------------------------------------------------------------------------
def logistic_loglik(params, data):
    eta = data["X"] @ params["beta"]
    return data["y"] * eta - jnp.logaddexp(0.0, eta)


def test_pandas_inputs_equal_numpy_inputs_exactly(rng):
    n = 200
    df = pd.DataFrame(
        {"const": 1.0, "age": rng.normal(40, 10, n), "female": rng.integers(0, 2, n)},
        index=pd.RangeIndex(1000, 1000 + n),  # a non-default index: ignored
    )
    y = pd.Series((rng.uniform(size=n) < 0.4).astype(int), index=df.index[::-1], name="y")
    w = pd.Series(rng.integers(1, 3, n).astype(float))
    firm = pd.Series(rng.choice(["acme", "bolt", "crux", "dyne"], n))
    start = pd.Series([0.0, 0.0, 0.0], index=df.columns)
    pm = ah.Model(logistic_loglik, {"X": df, "y": y}, {"beta": start}, names={"beta": df.columns})
    nm = ah.Model(logistic_loglik, {"X": df.to_numpy(), "y": y.to_numpy()}, {"beta": np.zeros(3)})
    assert pm.columns == {"data['X']": ("const", "age", "female")}
    assert pm.labels == ["beta[const]", "beta[age]", "beta[female]"]
    for a, b in zip(jax.tree_util.tree_leaves(pm.data), jax.tree_util.tree_leaves(nm.data)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # parameter values as a Series (start=, evaluate): the same vector; a missing value named
    vals = pd.Series([0.1, 0.02, -0.3], index=df.columns)
    np.testing.assert_array_equal(pm.flatten({"beta": vals}), vals.to_numpy())
    with pytest.raises(ValueError, match=r"params: parameter 'beta' \(Series 'b'\) has 1 missing values"):
        pm.flatten({"beta": pd.Series(pd.array([1.0, None, 0.0], dtype="Float64"), name="b")})
    # weights and cluster ids as Series: the same fit as numpy (same arrays, same program)
    a = ah.fit(pm, weights=w, cov_type="cluster", groups=firm)
    b = ah.fit(nm, weights=w.to_numpy(), cov_type="cluster", groups=firm.to_numpy())
    np.testing.assert_array_equal(a.params_flat, b.params_flat)
    np.testing.assert_array_equal(a.cov, b.cov)


def test_zoo_takes_names_from_dataframe_columns(rng):
    X = pd.DataFrame({"const": 1.0, "age": rng.normal(size=30), "female": rng.integers(0, 2, 30)})
    y = pd.Series(rng.poisson(1.0, 30))
    m = ah.models.poisson(X, y)
    assert m.labels == ["beta[const]", "beta[age]", "beta[female]"]
    ref = ah.models.poisson(X.to_numpy(dtype=float), y.to_numpy(dtype=float))
    assert ref.labels == ["beta[0]", "beta[1]", "beta[2]"]
    for k in ("X", "y"):
        np.testing.assert_array_equal(m.data[k], ref.data[k])
    assert list(ah.models.weibull(X, np.ones(30), np.ones(30, int)).labels[:2]) == ["beta[const]", "beta[age]"]


def test_import_autohess_does_not_import_pandas():
    out = subprocess.run(
        [sys.executable, "-c", "import autohess, sys; print('pandas' in sys.modules)"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert out.stdout.strip() == "False"


def test_pandas_bad_columns_named(rng):
    n = 20
    good = {"x": rng.normal(size=n)}

    def loglik(p, d):
        return -0.5 * (d["x"] - p["mu"]) ** 2

    na = pd.Series(pd.array([1, 2, None] + [3] * (n - 3), dtype="Int64"), name="visits")
    with pytest.raises(ValueError, match=r"data\['v'\] \(Series 'visits'\) has 1 missing values.*row 2"):
        ah.Model(loglik, {**good, "v": na}, {"mu": 0.0})
    text = pd.DataFrame({"a": np.ones(n), "city": ["x"] * n})
    with pytest.raises(TypeError, match=r"data\['D'\] column 'city' has dtype (object|str).*get_dummies"):
        ah.Model(loglik, {**good, "D": text}, {"mu": 0.0})
    cat = pd.DataFrame({"region": pd.Categorical(["n", "s"] * (n // 2))})
    with pytest.raises(TypeError, match=r"column 'region' is categorical.*cat.codes"):
        ah.Model(loglik, {**good, "D": cat}, {"mu": 0.0})
    nan_col = pd.DataFrame({"a": np.r_[np.nan, np.ones(n - 1)]}, index=np.arange(n) + 7)
    with pytest.raises(ValueError, match=r"column 'a' has 1 missing.*index label 7"):
        ah.Model(loglik, {**good, "D": nan_col}, {"mu": 0.0})
    # nullable Int64 without missing values is plain int64 data
    ok = pd.Series(pd.array(np.arange(n), dtype="Int64"))
    assert ah.Model(loglik, {**good, "v": ok}, {"mu": 0.0}).data["v"].dtype == jnp.int64
    with pytest.raises(ValueError, match=r"groups contains 10 missing cluster ids.*first at observation 1"):
        ah.fit(ah.Model(loglik, good, {"mu": 0.0}), cov_type="cluster", groups=pd.Series(["a", None] * (n // 2)))


# -- names --------------------------------------------------------------------------------------
def mnl_loglik(params, data):
    # multinomial logit, outcome 0 the base: B is (outcomes - 1, regressors)
    eta = jnp.concatenate([jnp.zeros((data["X"].shape[0], 1)), data["X"] @ params["B"].T], axis=1)
    return jnp.take_along_axis(jax.nn.log_softmax(eta), data["y"][:, None], axis=1)[:, 0]


def mnl_data(rng, n=300):
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    B = np.array([[0.3, 0.5, -0.2], [-0.1, -0.4, 0.6]])
    eta = np.c_[np.zeros(n), X @ B.T]
    p = np.exp(eta) / np.exp(eta).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    return pd.DataFrame(X, columns=["const", "age", "income"]), y


def test_two_axis_names_flow_into_every_report(rng):
    X, y = mnl_data(rng)
    model = ah.Model(
        mnl_loglik, {"X": X, "y": y}, {"B": np.zeros((2, 3))}, names={"B": (["bus", "car"], X.columns)}
    )
    expected = [f"B[{o},{c}]" for o in ("bus", "car") for c in ("const", "age", "income")]
    assert model.labels == expected
    res = ah.fit(model)
    assert res.converged
    text = res.summary()
    assert all(lab in text for lab in expected)
    cov = res.cov_params(frame=True)
    assert list(cov.index) == expected and list(cov.columns) == expected
    np.testing.assert_array_equal(cov.to_numpy(), np.asarray(res.cov_params()))
    ci = res.conf_int(frame=True)
    np.testing.assert_array_equal(ci.to_numpy(), np.asarray(res.conf_int(flat=True)))
    assert list(ci.columns) == ["lower", "upper"] and ci.index[4] == "B[car,age]"
    sf = res.summary_frame()
    np.testing.assert_array_equal(sf["std err"].to_numpy(), np.asarray(res.bse_flat))
    assert ah.hessian(model, res.params).labels == expected
    assert ah.hessian(model, res.params, scale="unconstrained").labels == expected  # Real: no link
    H = ah.hessian(model, res.params)
    rep = ah.audit(model, res.params, {"mine": np.asarray(H.matrix) * (1 + 1e-3 * np.eye(6))})
    assert list(rep.labels) == expected
    assert "at [B[car,const], B[car,const]]" in str(rep)  # the entries named in the verdict
    # without pandas: an ImportError that says what to call instead
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "pandas", None)
        with pytest.raises(ImportError, match=r"pip install pandas, or use cov_params\(\) \(an array"):
            res.cov_params(frame=True)
        with pytest.raises(ImportError, match=r"or use conf_int\(flat=True\)"):
            res.conf_int(frame=True)
        with pytest.raises(ImportError, match=r"or use summary\(\)"):
            res.summary_frame()
    # partial names: one axis named, the other indexed; carried by with_data
    part = ah.Model(mnl_loglik, {"X": X, "y": y}, {"B": np.zeros((2, 3))}, names={"B": (None, X.columns)})
    assert list(part.labels[:2]) == ["B[0,const]", "B[0,age]"]
    assert part.with_data({"X": X.to_numpy(), "y": y}).labels == part.labels
    # the index label still names a parameter (profile), the named label too
    assert ah.profile(res, "B[1,1]", grid=[-0.5, -0.3]).name == "B[car,age]"
    with pytest.raises(ValueError, match=r"unknown parameter 'B\[car,sex\]'.*B\[car,age\]"):
        ah.profile(res, "B[car,sex]")


def test_names_on_transformed_parameters_and_least_squares(rng):
    x = np.linspace(0.0, 3.0, 40)
    y = 2.0 * np.exp(-0.7 * x) + 0.01 * rng.normal(size=40)
    m = ah.least_squares(
        lambda p, d: d["y"] - p["k"][0] * jnp.exp(-p["k"][1] * d["x"]), {"x": x, "y": y},
        {"k": ah.Positive(np.array([1.0, 1.0]))}, names={"k": ("amplitude", "rate")},
    )
    assert m.labels == ["k[amplitude]", "k[rate]"]
    assert m.spec.unconstrained_labels == ["log(k[amplitude])", "log(k[rate])"]
    assert m.with_data({"x": x, "y": y[::-1]}).labels == m.labels
    with pytest.raises(ValueError, match=r"outside the domain.*k\[rate\]=-1"):
        ah.least_squares(lambda p, d: d["y"] - p["k"][0], {"x": x, "y": y},
                         {"k": ah.Positive(np.array([1.0, -1.0]))}, names={"k": ("amplitude", "rate")})


@pytest.mark.parametrize(
    "names, error, message",
    [
        ({"gamma": ["a", "b"]}, ValueError, r"unknown parameter 'gamma'.*\['beta', 'sigma'\]"),
        ({"beta": ["a", "b"]}, ValueError, r"names\['beta'\] has 2 names but parameter 'beta' has 3 elements"),
        ({"beta": ["a", "b", "a"]}, ValueError, r"names\['beta'\] has duplicate names \['a'\]"),
        ({"beta": "abc"}, TypeError, r"names\['beta'\] must be a sequence of names.*str"),
        ({"sigma": ["s"]}, ValueError, r"parameter 'sigma' is a scalar"),
        ({"L": ["a", "b"]}, ValueError, r"names\['L'\]: parameter 'L' has shape \(2, 2\), so give 2 entries, one per axis"),
        ({"L": (["a", "b"], ["c"])}, ValueError, r"names\['L'\] axis 1 has 1 names but axis 1 of parameter 'L' has length 2"),
        (["beta"], TypeError, r"names must be a dict"),
    ],
)
def test_bad_names_are_named(names, error, message):
    params = {"beta": np.zeros(3), "sigma": ah.Positive(1.0)}
    if "L" in str(names):
        params = {**params, "L": np.zeros((2, 2))}
    with pytest.raises(error, match=message):
        ah.Model(lambda p, d: -0.5 * (d["y"] - p["beta"][0]) ** 2 - jnp.log(p["sigma"]), {"y": np.ones(5)}, params,
                 names=names)
