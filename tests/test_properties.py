"""Property tests (hypothesis): invariants that must hold for any input, with pinned examples."""

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

import autohess as ah
from autohess._params import ParamSpec

# Each new shape compiles a new program: keep example counts modest and deadlines off.
SETTINGS = settings(max_examples=25, deadline=None)
finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(hnp.arrays(np.float64, (4, 4), elements=finite), hnp.arrays(np.float64, 4, elements=finite))
@example(np.eye(4), np.zeros(4))
def test_hessian_of_quadratic_form_is_its_matrix(M, x):
    """f(x) = x'Ax/2 + b'x has Hessian A exactly (up to rounding in A's symmetrisation)."""
    A = 0.5 * (M + M.T)
    b = jnp.arange(4.0)
    H = ah.hessian(lambda z: 0.5 * z @ jnp.asarray(A) @ z + b @ z, jnp.asarray(x)).matrix
    np.testing.assert_allclose(np.asarray(H), A, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(A).max()))


@SETTINGS
@given(st.sampled_from(["real", "positive", "interval", "wide"]), hnp.arrays(np.float64, 5, elements=st.floats(-15, 15)))
@example("interval", np.array([-15.0, -1.0, 0.0, 1.0, 15.0]))
def test_transforms_round_trip_and_log_jacobian(kind, u):
    t = {"real": ah.Real(0.0), "positive": ah.Positive(1.0), "interval": ah.Interval(-1, 1, 0.0),
         "wide": ah.Interval(2.0, 500.0, 8.0)}[kind]
    u = jnp.asarray(u)
    x = t.forward(u)
    assert np.all(np.asarray(t.in_domain(np.asarray(x))) | ~np.isfinite(np.asarray(x)) | (kind == "interval"))
    back = t.inverse(x)
    ok = np.isfinite(np.asarray(back))  # the interval map saturates in float64 for |u| > ~36
    np.testing.assert_allclose(np.asarray(back)[ok], np.asarray(u)[ok], rtol=1e-7, atol=1e-7)
    dxdu = jax.vmap(jax.grad(t.forward))(u)
    np.testing.assert_allclose(np.asarray(t.log_abs_det_jacobian(u)), np.log(np.abs(np.asarray(dxdu))), rtol=1e-9, atol=1e-9)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 400), st.integers(0, 2**31 - 1))
@example(1, 0)
def test_chunked_equals_unchunked(chunk, seed):
    rng = np.random.default_rng(seed)
    X = np.c_[np.ones(300), rng.normal(size=(300, 2))]
    model = _POISSON.with_data({**_POISSON.data, "X": X})  # fixed shapes: one compile
    params = {"beta": jnp.asarray(0.3 * rng.normal(size=3))}
    H = np.asarray(ah.hessian(model, params).matrix)
    Hc = np.asarray(ah.hessian(model, params, chunk_size=chunk).matrix)
    np.testing.assert_allclose(Hc, H, rtol=1e-12, atol=1e-12 * np.abs(H).max())


_rng0 = np.random.default_rng(1)
_POISSON = ah.models.poisson(np.c_[np.ones(300), _rng0.normal(size=(300, 2))], _rng0.poisson(2.0, 300))
_FIT = ah.fit(_POISSON)


@SETTINGS
@given(hnp.arrays(np.float64, 3, elements=st.floats(-2, 2)))
@example(np.array([1.0, 0.0, 0.0]))
def test_delta_method_equals_direct_derivative(w):
    """J V J' with J from an independent forward-mode derivative of g."""
    g = lambda p: jnp.exp(jnp.dot(jnp.asarray(w), p["beta"])) + p["beta"][0] ** 2  # noqa: E731
    d = ah.delta_method(_FIT, g)
    b = np.asarray(_FIT.params_flat)
    e = math.exp(float(np.dot(w, b)))
    J = e * w + np.array([2 * b[0], 0.0, 0.0])  # closed-form gradient of g
    V = np.asarray(_FIT.cov_params())
    np.testing.assert_allclose(float(d.se), math.sqrt(J @ V @ J), rtol=1e-10)


@settings(max_examples=10, deadline=None)
@given(st.permutations(list(range(300))))
def test_permuting_observations_leaves_estimates_unchanged(perm):
    perm = np.asarray(perm)
    data = {k: np.asarray(v)[perm] for k, v in _POISSON.data.items()}
    res = ah.fit(_POISSON.with_data(data))
    np.testing.assert_allclose(np.asarray(res.params_flat), np.asarray(_FIT.params_flat), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(res.bse_flat), np.asarray(_FIT.bse_flat), rtol=1e-10)


def test_labels_round_trip_for_nested_trees():
    spec = ParamSpec({"a": {"L": jnp.zeros((2, 3))}, "s": ah.Positive(1.0)})
    flat = jnp.arange(7.0) + 1.0
    assert jnp.all(spec.flatten(spec.unflatten(flat)) == flat)
    assert spec.labels[:2] == ("a.L[0,0]", "a.L[0,1]") and spec.labels[-1] == "s"


def test_large_n_log_likelihood_sum_is_accurate():
    """N = 10^7 contributions: the total matches an exactly rounded sum (math.fsum) to a few
    ulps. XLA's CPU reduction is tree-shaped, so no compensated summation is needed; a
    sequential loop would drift by ~N * eps = 2e-9 relative."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=10_000_000) + 3.0
    model = ah.Model(lambda p, d: -0.5 * (d["y"] - p["mu"]) ** 2, {"y": y}, {"mu": 3.0})
    contributions = -0.5 * (y - 3.0) ** 2
    ref = math.fsum(contributions.tolist())
    assert abs(model.loglik() - ref) / abs(ref) < 1e-14
