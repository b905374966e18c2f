"""Bad input gets a clear error naming the array, the parameter or the shape (issue #2)."""

import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah


def normal_loglik(params, data):
    z = (data["y"] - params["mu"]) / params["sigma"]
    return -jnp.log(params["sigma"]) - 0.5 * z * z


def good_data(n=50):
    return {"y": np.linspace(-1.0, 1.0, n)}


def test_nan_in_data_names_array_and_count():
    data = good_data()
    data["y"][[3, 7]] = np.nan
    data["y"][9] = np.inf
    with pytest.raises(ValueError, match=r"data\['y'\] contains 2 NaN and 1 infinite entries.*first at index 3"):
        ah.Model(normal_loglik, data, {"mu": 0.0, "sigma": ah.Positive(1.0)})


def test_nan_in_zoo_design_matrix():
    X = np.ones((20, 2))
    X[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"data\['X'\] contains 1 NaN.*\(5, 1\)"):
        ah.models.logistic(X, np.zeros(20))


def test_wrong_output_shape_is_type_error():
    with pytest.raises(TypeError, match=r"returned shape \(\)"):
        ah.Model(lambda p, d: jnp.sum(normal_loglik(p, d)), good_data(), {"mu": 0.0, "sigma": ah.Positive(1.0)})
    with pytest.raises(TypeError, match=r"returned shape \(50, 2\)"):
        ah.Model(lambda p, d: jnp.stack([normal_loglik(p, d)] * 2, 1), good_data(), {"mu": 0.0, "sigma": ah.Positive(1.0)})
    with pytest.raises(TypeError, match=r"returned shape \(50,\); with per_observation=False"):
        ah.Model(normal_loglik, good_data(), {"mu": 0.0, "sigma": ah.Positive(1.0)}, per_observation=False)


def test_wrong_output_dtype_is_type_error():
    with pytest.raises(TypeError, match=r"floating values, got dtype int.*shape \(50,\)"):
        ah.Model(lambda p, d: jnp.zeros(50, dtype=jnp.int32), good_data(), {"mu": 0.0})


def test_numpy_inside_loglik_gets_a_hint():
    def bad(params, data):
        return np.log(params["sigma"]) + data["y"]

    with pytest.raises(TypeError, match="not traceable by JAX.*jax.numpy"):
        ah.Model(bad, good_data(), {"sigma": ah.Positive(1.0)})


def test_nonfinite_loglik_at_start_names_parameters():
    def loglik(params, data):
        return jnp.log(params["a"] - data["y"])  # needs a > max(y) = 1

    with pytest.raises(ValueError, match=r"not finite at the initial parameters \(a=0\.5\).*contributions"):
        ah.Model(loglik, good_data(), {"a": 0.5})


def test_nonfinite_loglik_at_given_params_in_hessian():
    model = ah.Model(normal_loglik, good_data(), {"mu": 0.0, "sigma": 1.0})  # sigma left Real
    with pytest.raises(ValueError, match=r"not finite at the given parameters \(mu=0, sigma=-1\)"):
        ah.hessian(model, {"mu": jnp.asarray(0.0), "sigma": jnp.asarray(-1.0)})


def test_integer_data_kept_integer_parameters_cast_to_float64():
    # integer and boolean data keep their dtype (codes and ids index, issue #13); integer
    # parameters become float64 (they are differentiated)
    model = ah.Model(normal_loglik, {"y": np.arange(10), "w": np.ones(10, bool)}, {"mu": 1, "sigma": ah.Positive(2)})
    assert model.data["y"].dtype == jnp.int64 and model.data["w"].dtype == jnp.bool_
    assert model.init_params["mu"].dtype == jnp.float64
    assert model.contributions().dtype == jnp.float64
    assert ah.hessian(model).matrix.dtype == jnp.float64
    assert ah.hessian(lambda x: jnp.sum(x**3), np.arange(3)).matrix.dtype == jnp.float64


@pytest.mark.parametrize(
    "declaration, message",
    [
        ({"sigma": ah.Positive(-1.0)}, r"parameter 'sigma': initial value outside the domain \(0, inf\) of Positive: sigma=-1\.0"),
        ({"sigma": ah.Positive(jnp.array([1.0, 0.0]))}, r"parameter 'sigma'.*sigma\[1\]=0\.0"),
        ({"rho": ah.Interval(-1.0, 1.0, 1.0)}, r"parameter 'rho'.*\(-1, 1\) of Interval: rho=1\.0"),
        ({"b": ah.Real(np.nan)}, r"parameter 'b'.*b=nan"),
    ],
)
def test_transform_init_outside_domain_names_parameter(declaration, message):
    with pytest.raises(ValueError, match=message):
        ah.Model(lambda p, d: jnp.zeros(3), {"y": np.zeros(3)}, declaration)


def test_interval_bounds_checked():
    with pytest.raises(ValueError, match="finite lo < hi"):
        ah.Interval(1.0, 0.0, 0.5)


def test_params_structure_mismatch_named():
    model = ah.Model(normal_loglik, good_data(), {"mu": 0.0, "sigma": ah.Positive(1.0)})
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['sd'\]; missing parameter\(s\) \['sigma'\]"):
        ah.hessian(model, {"mu": 0.0, "sd": 1.0})
    with pytest.raises(ValueError, match=r"parameter 'mu' has shape \(2,\), the model declares \(\)"):
        ah.hessian(model, {"mu": jnp.zeros(2), "sigma": 1.0})


def test_weights_checked():
    model = ah.Model(normal_loglik, good_data(), {"mu": 0.0, "sigma": ah.Positive(1.0)})
    with pytest.raises(ValueError, match=r"weights has shape \(49,\), expected \(50,\)"):
        ah.hessian(model, weights=np.ones(49))
    with pytest.raises(ValueError, match="1 negative"):
        ah.hessian(model, weights=np.r_[-1.0, np.ones(49)])


def test_scalar_loglik_features_unavailable():
    model = ah.Model(lambda p, d: jnp.sum(normal_loglik(p, d)), good_data(), {"mu": 0.0, "sigma": ah.Positive(1.0)}, per_observation=False)
    assert model.nobs is None
    assert ah.hessian(model).shape == (2, 2)
    with pytest.raises(ValueError, match="per_observation=False.*scores, OPG and sandwich"):
        ah.scores(model)
    with pytest.raises(ValueError, match="chunk_size needs per-observation"):
        ah.hessian(model, chunk_size=10)


def test_bad_chunk_size():
    model = ah.Model(normal_loglik, good_data(), {"mu": 0.0, "sigma": ah.Positive(1.0)})
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        ah.hessian(model, chunk_size=0)


def test_function_hessian_needs_point_and_scalar():
    with pytest.raises(TypeError, match="the point x is required"):
        ah.hessian(lambda x: x)
    with pytest.raises(TypeError, match=r"must return a scalar, got shape \(3,\)"):
        ah.hessian(lambda x: x**2, jnp.ones(3))


def test_nondifferentiable_point_is_named():
    with pytest.raises(FloatingPointError, match=r"non-finite entries for \['x\[1\]'\]"):
        ah.hessian(lambda x: x[0] ** 2 + jnp.sqrt(x[1]), jnp.array([1.0, 0.0]))


def test_zoo_shape_and_support_errors():
    with pytest.raises(ValueError, match="X has 10 rows but y has 9 entries"):
        ah.models.logistic(np.ones((10, 2)), np.zeros(9))
    with pytest.raises(ValueError, match="y must be 0 or 1; 1 entries are not"):
        ah.models.logistic(np.ones((3, 1)), np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="non-negative integer counts"):
        ah.models.poisson(np.ones((3, 1)), np.array([0.0, 1.5, 2.0]))
    with pytest.raises(ValueError, match="time must be positive"):
        ah.models.weibull(np.ones((3, 1)), np.array([1.0, 0.0, 2.0]), np.ones(3))
    with pytest.raises(ValueError, match="dist must be one of"):
        ah.models.garch11(np.ones(10), dist="skewt")


def test_float32_is_explicit_and_warned():
    data = {"y": np.linspace(-1, 1, 20, dtype=np.float32)}
    # float32 data with float64 (default) parameters: computation stays float64, no warning
    assert ah.Model(normal_loglik, data, {"mu": 0.0, "sigma": ah.Positive(1.0)}).dtype == np.float64
    # everything explicitly float32: float32, with a warning that names the consequence
    with pytest.warns(ah.Float32Warning, match="float32"):
        m32 = ah.Model(normal_loglik, data, {"mu": np.float32(0), "sigma": ah.Positive(np.float32(1))})
    assert m32.dtype == np.float32
    assert ah.hessian(m32).matrix.dtype == jnp.float32


def test_check_false_skips_checks_same_matrix():
    model = ah.Model(normal_loglik, good_data(), {"mu": 0.0, "sigma": 1.0})
    bad = {"mu": jnp.asarray(0.0), "sigma": jnp.asarray(-1.0)}
    H = ah.hessian(model, bad, check=False)  # log(-1) is NaN, the Hessian itself is finite
    assert np.isfinite(np.asarray(H.matrix)).all()
    good = {"mu": jnp.asarray(0.1), "sigma": jnp.asarray(0.9)}
    np.testing.assert_array_equal(
        np.asarray(ah.hessian(model, good, check=False).matrix), np.asarray(ah.hessian(model, good).matrix)
    )


def test_empty_data_named():
    with pytest.raises(ValueError, match=r"data\['y'\] is empty \(shape \(0,\)\)"):
        ah.Model(normal_loglik, {"y": np.zeros(0)}, {"mu": 0.0, "sigma": ah.Positive(1.0)})


def test_mismatched_leading_dimensions_show_data_shapes():
    def loglik(p, d):
        return d["y"] * (d["X"] @ p["b"])

    with pytest.raises(TypeError, match=r"data shapes \{'X': \(10, 2\), 'y': \(9,\)\}"):
        ah.Model(loglik, {"X": np.ones((10, 2)), "y": np.ones(9)}, {"b": jnp.zeros(2)})


def test_duplicate_parameter_labels_rejected():
    with pytest.raises(ValueError, match=r"duplicate parameter labels \['a.b'\]"):
        ah.Model(lambda p, d: d["y"] * 0.0, {"y": np.ones(3)}, {"a": {"b": 1.0}, "a.b": 2.0})


def test_unknown_parameter_name_in_start():
    model = ah.Model(normal_loglik, good_data(), {"mu": 0.0, "sigma": ah.Positive(1.0)})
    with pytest.raises(ValueError, match=r"start do not match the model's parameters: unknown parameter\(s\) \['muu'\]"):
        ah.fit(model, start={"muu": 0.0, "sigma": 1.0})
    with pytest.raises(ValueError, match=r"parameter 'sigma': start value outside the domain \(0, inf\)"):
        ah.fit(model, start={"mu": 0.0, "sigma": -1.0})


def test_evaluate_checks_domain_and_finiteness():
    """evaluate used to return llf = nan with a finite SE for mu at sigma = -1, and tables of
    NaN at sigma = 0 or a NaN parameter; fit(start=...) and ah.hessian already raised."""
    model = ah.Model(normal_loglik, good_data(), {"mu": 0.0, "sigma": ah.Positive(1.0)})
    with pytest.raises(ValueError, match=r"params value.*sigma"):
        ah.evaluate(model, {"mu": 0.0, "sigma": -1.0})
    with pytest.raises(ValueError, match=r"sigma"):
        ah.evaluate(model, {"mu": 0.0, "sigma": 0.0})
    free = ah.Model(lambda p, d: -0.5 * (d["y"] - p["beta"][0]) ** 2 + 0 * p["beta"][1], good_data(), {"beta": jnp.zeros(2)})
    with pytest.raises(ValueError, match=r"beta\[0\]=nan"):
        ah.evaluate(free, {"beta": np.array([np.nan, 0.2])})


def test_fit_from_a_start_where_the_likelihood_is_not_finite():
    """log(mu) at mu = -1 (mu is Real, so the domain check passes): an error naming the start
    and the observations, not a 'failed' fit printing finite standard errors."""
    data = good_data()
    model = ah.Model(lambda p, d: jnp.log(p["mu"]) + normal_loglik(p, d), data, {"mu": 1.0, "sigma": ah.Positive(1.0)})
    with pytest.raises(ValueError, match=r"not finite at the starting values \(mu=-1.*first at observation 0"):
        ah.fit(model, start={"mu": -1.0, "sigma": 1.0})


@pytest.mark.filterwarnings("ignore::autohess.InferenceWarning")  # beta[0] + beta[1] only: flat
def test_parameters_given_as_lists():
    model = ah.Model(lambda p, d: -0.5 * (d["y"] - p["beta"][0] - p["beta"][1]) ** 2, good_data(), {"beta": jnp.zeros(2)})
    a = ah.evaluate(model, {"beta": [0.1, 0.2]})
    b = ah.evaluate(model, {"beta": np.array([0.1, 0.2])})
    assert float(a.llf) == float(b.llf)
    assert ah.fit(model, start={"beta": (0.1, 0.2)}).status_code == ah.Status.SINGULAR
    with pytest.raises(ValueError, match=r"parameter 'beta' has shape \(3,\)"):
        ah.evaluate(model, {"beta": [0.1, 0.2, 0.3]})


def test_garch_constant_series_named():
    with pytest.raises(ValueError, match="zero variance"):
        ah.models.garch11(np.full(100, 0.5))
