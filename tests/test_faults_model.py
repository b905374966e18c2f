"""Fault campaign, model construction, data and caching (issue #18 items 9-11 and the
construction messages of section 3). Each test failed before its fix; the probes and their
outcomes are listed in tests/README.md, '### Fault campaign: model construction, data and
caching'."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah


def aligned(values, alignment=64):
    """A float64 copy of ``values`` whose buffer starts on an ``alignment``-byte boundary: the
    case in which ``jnp.asarray`` wrapped the caller's memory on CPU instead of copying it."""
    values = np.asarray(values, np.float64)
    raw = np.empty(values.size * 8 + alignment, np.uint8)
    start = (-raw.ctypes.data) % alignment
    out = raw[start:start + values.size * 8].view(np.float64).reshape(values.shape)
    out[...] = values
    assert out.ctypes.data % alignment == 0
    return out


def poisson_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.poisson(np.exp(0.3 + 0.5 * X[:, 1])).astype(np.float64)
    return X, y


# -- item 9: data are copied at construction -------------------------------------------------
@pytest.mark.parametrize("edit", ["y", "X"])
def test_editing_callers_arrays_after_construction_changes_nothing(edit):
    X, y = poisson_data()
    Xa, ya = aligned(X), aligned(y)
    model = ah.models.poisson(Xa, ya)
    # reference: the same model on private copies, which nobody edits
    reference = ah.fit(ah.models.poisson(X.copy(), y.copy()))
    if edit == "y":
        ya *= 7.0  # before the fix the fit read these counts, log_y_factorial kept the old ones
    else:
        Xa[:, 1] += 3.0
    res = ah.fit(model)
    # the same float64 program on the same numbers: only the rounding of separate
    # compilations can differ (tests/helpers.py EXACT)
    np.testing.assert_allclose(float(res.llf), float(reference.llf), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(res.params["beta"]), np.asarray(reference.params["beta"]), rtol=1e-9)


def test_user_model_data_copied_for_integer_and_float_leaves():
    rng = np.random.default_rng(1)
    y = aligned(rng.normal(size=64))
    g = np.arange(64) % 4  # integer leaf, kept as an integer array
    model = ah.Model(lambda p, d: -0.5 * (d["y"] - p["mu"][d["g"]]) ** 2, {"y": y, "g": g}, {"mu": jnp.zeros(4)})
    before = model.loglik()
    y += 100.0
    g[:] = 0
    # closed form: -0.5 * sum(y^2) at mu = 0 for the data given at construction
    assert model.loglik() == pytest.approx(before, rel=1e-15)
    assert np.asarray(model.data["g"]).tolist() == (np.arange(64) % 4).tolist()


def test_model_data_cannot_be_reassigned():
    X, y = poisson_data(50)
    model = ah.models.poisson(X, y)
    with pytest.raises(AttributeError, match=r"model.data cannot be reassigned.*with_data"):
        model.data = {"X": X, "y": y + 1.0, "offset": np.zeros(50), "log_y_factorial": np.zeros(50)}
    # the documented route checks the new data again: log_y_factorial must match y
    bad = dict(model.data, y=jnp.asarray(y + 1.0))
    with pytest.raises(ValueError, match="log_y_factorial must equal gammaln"):
        model.with_data(bad)


# -- item 10: plain-function caches see what the function closes over ----------------------------
def test_closed_over_numpy_array_edited_in_place():
    A = np.array([[2.0, 0.5], [0.5, 1.0]])
    f = lambda x: 0.5 * x @ jnp.asarray(A) @ x  # noqa: E731
    x = np.array([0.3, -0.2])
    np.testing.assert_array_equal(np.asarray(ah.hessian(f, x).matrix), A)
    A *= 10  # in place: the same object, new contents
    # closed form: the Hessian of 0.5 x'Ax is A (exact in floating point for these entries)
    np.testing.assert_array_equal(np.asarray(ah.hessian(f, x).matrix), A)
    np.testing.assert_allclose(np.asarray(ah.gradient(f, x)), A @ x, rtol=1e-15)
    np.testing.assert_allclose(np.asarray(ah.hvp(f, x, np.array([1.0, 0.0]))), A[:, 0], rtol=1e-15)
    # central differences of a quadratic are exact up to rounding of x +/- h (h ~ 1e-4 *
    # max(1, |x|)): 1e-6 relative leaves a wide margin over the ~1e-8 seen
    np.testing.assert_allclose(np.asarray(ah.fd_hessian(f, x).matrix), A, rtol=1e-6)


def test_rebound_closure_cell_global_style_scalar_bound_method_and_partial():
    scale = 1.0
    f = lambda x: scale * jnp.sum(x**2)  # noqa: E731
    x = np.ones(2)
    assert float(ah.hessian(f, x).matrix[0, 0]) == 2.0
    scale = 3.0  # rebinding the cell (a Python number, baked in as a constant when traced)
    assert float(ah.hessian(f, x).matrix[0, 0]) == 6.0

    class Quadratic:
        def __init__(self, A):
            self.A = A

        def value(self, x):
            return 0.5 * x @ jnp.asarray(self.A) @ x

    q = Quadratic(np.eye(2))
    bound = q.value
    assert float(ah.hessian(bound, x).matrix[1, 1]) == 1.0
    q.A[1, 1] = 5.0
    assert float(ah.hessian(bound, x).matrix[1, 1]) == 5.0

    w = np.array([1.0, 2.0])
    part = functools.partial(lambda x, w: jnp.sum(w * x**2), w=w)
    np.testing.assert_array_equal(np.diag(np.asarray(ah.hessian(part, x).matrix)), 2 * w)
    w[0] = 4.0
    np.testing.assert_array_equal(np.diag(np.asarray(ah.hessian(part, x).matrix)), [8.0, 4.0])


def test_unchanged_closure_reuses_the_compiled_program():
    from autohess._derivatives import _function_cache

    A = np.eye(3)
    f = lambda x: 0.5 * x @ jnp.asarray(A) @ x  # noqa: E731
    ah.hessian(f, np.ones(3))
    first = _function_cache(f)[("hessian", "fwd-rev")][2]
    ah.hessian(f, np.zeros(3))
    assert _function_cache(f)[("hessian", "fwd-rev")][2] is first
    A[0, 0] = 2.0
    ah.hessian(f, np.zeros(3))
    assert _function_cache(f)[("hessian", "fwd-rev")][2] is not first


# -- item 11: integer data cast to float ---------------------------------------------------------
def test_integers_beyond_2_53_warn_when_cast_to_float():
    X = np.column_stack([np.ones(4, np.int64), np.array([2**53 + 1, 1, 2, 3], dtype=np.int64)])
    with pytest.warns(UserWarning, match=r"beyond 2\*\*53.*1 of 8 entries change"):
        ah.models.linear(X, np.array([0.1, 0.2, 0.4, 0.3]))


# -- section 3: construction messages ------------------------------------------------------------
def loglik_logistic(p, d):
    eta = d["X"] @ p["b"]
    return d["y"] * eta - jnp.logaddexp(0.0, eta)


def test_python_lists_as_data_get_a_short_message():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 2)).tolist()  # 1,200 numbers
    y = [0.0, 1.0] * 300
    with pytest.raises(TypeError, match=r"data\['X'\] is a Python list of numbers \(shape \(600, 2\)\)") as info:
        ah.Model(loglik_logistic, {"X": X, "y": np.array(y)}, {"b": jnp.zeros(2)})
    assert len(str(info.value)) < 300
    with pytest.raises(TypeError, match=r"data\['y'\] is a Python list"):
        ah.Model(loglik_logistic, {"X": np.array(X), "y": y}, {"b": jnp.zeros(2)})


def test_many_data_leaves_are_summarised_in_the_loglik_failure():
    data = {f"x{i:02d}": np.ones(5) for i in range(40)}
    with pytest.raises(TypeError, match=r"\.\.\. \(40 arrays in all\)") as info:
        ah.Model(lambda p, d: d["x00"] @ p["b"], data, {"b": jnp.zeros(3)})
    assert len(str(info.value)) < 600


def test_list_residuals_named():
    y = np.linspace(0, 1, 20)
    with pytest.raises(TypeError, match=r"residual_fn must return one array of residuals, got a list of 3 entries.*jnp.stack"):
        ah.least_squares(lambda p, d: [d["y"][i] - p["b"][0] for i in range(3)], {"y": y}, {"b": jnp.zeros(1)})


def test_string_labels_in_y():
    X = np.ones((6, 1))
    with pytest.raises(TypeError, match=r"logistic: y must be numeric, got dtype <U3 \(first entry 'yes'\).*\(y == 'yes'\)"):
        ah.models.logistic(X, np.array(["yes", "no"] * 3))
    with pytest.raises(TypeError, match=r"data\['y'\] must be a numeric array, got dtype object \(first entry 'a'\)"):
        ah.Model(loglik_logistic, {"X": X, "y": np.array(["a", 1, 0, 1, 0, 1], dtype=object)}, {"b": jnp.zeros(1)})


@pytest.mark.parametrize("where", ["data", "params", "nested data"])
def test_mixed_type_dict_keys(where):
    y = np.linspace(0, 1, 10)
    data, params = {"y": y}, {"b": jnp.zeros(1)}
    if where == "data":
        data = {"y": y, 0: y}
    elif where == "params":
        params = {"b": jnp.zeros(1), 1: 0.0}
    else:
        data = {"y": y, "extra": {"a": y, 2.5: y}}
    name = {"data": "data", "params": "params", "nested data": r"data\['extra'\]"}[where]
    with pytest.raises(TypeError, match=name + r" is a dict whose keys mix types .*use strings for every key"):
        ah.Model(lambda p, d: d["y"] * p["b"][0], data, params)


class TwoArgError(ValueError):
    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code


class OwnError(Exception):
    pass


@pytest.mark.parametrize("cls", [TwoArgError, OwnError])
def test_user_exception_reraised_as_it_is(cls):
    def loglik(p, d):
        raise cls("E42", "bad row") if cls is TwoArgError else cls("mine")

    with pytest.raises(cls) as info:
        ah.Model(loglik, {"y": np.ones(5)}, {"b": 0.0})
    if cls is TwoArgError:
        assert info.value.code == "E42"  # the user's object, not a rebuilt one
        assert any("loglik failed on the initial parameters" in n for n in info.value.__notes__)


def test_builtin_exception_still_gets_context():
    def loglik(p, d):
        raise ValueError("mine")

    with pytest.raises(ValueError, match=r"loglik failed on the initial parameters and data \(data shapes \{'y': \(5,\)\}\): mine"):
        ah.Model(loglik, {"y": np.ones(5)}, {"b": 0.0})


def test_interval_array_bounds_named():
    with pytest.raises(TypeError, match=r"Interval bounds must be scalars; lo is a ndarray of shape \(2,\)"):
        ah.Interval(np.zeros(2), 1.0, 0.5)
    with pytest.raises(TypeError, match=r"hi is a list of shape \(2,\)"):
        ah.Interval(0.0, [1.0, 2.0], 0.5)


@pytest.mark.parametrize("lo, hi", [(-1e308, 1e308), (-1.5e308, 0.5e308)])
def test_interval_width_overflow_refused(lo, hi):
    with pytest.raises(ValueError, match=r"width hi - lo overflows float64"):
        ah.Interval(lo, hi, 0.0)


def test_wide_but_finite_interval_still_accepted():
    # 1e300 wide: forward() is finite; closed form: the natural value at u = 0 is the midpoint
    t = ah.Interval(-0.5e300, 0.5e300, 0.0)
    assert float(t.forward(0.0)) == 0.0


def normal_loglik(p, d):
    return -jnp.log(p["s"]) - 0.5 * (d["y"] / p["s"]) ** 2


@pytest.mark.parametrize("s", [-1.0, 0.0])
@pytest.mark.parametrize("fn", ["hessian", "gradient", "hvp"])
def test_unconstrained_scale_outside_domain_named(s, fn):
    model = ah.Model(normal_loglik, {"y": np.linspace(-1, 1, 11)}, {"s": ah.Positive(1.0)})
    args = (np.ones(1),) if fn == "hvp" else ()
    with pytest.raises(ValueError, match=r"'s'.*outside the domain \(0, inf\) of Positive.*scale='unconstrained'"):
        getattr(ah, fn)(model, {"s": s}, *args, scale="unconstrained")


def test_unconstrained_scale_inside_domain_unchanged():
    model = ah.Model(normal_loglik, {"y": np.linspace(-1, 1, 11)}, {"s": ah.Positive(1.0)})
    # closed form: with s = exp(u), the loglik -N u - S exp(-2u) / 2 has d2/du2 = -2 S exp(-2u)
    # (S = sum y^2), so at s = 2 the Hessian of the NEGATIVE loglik is 2 S / 4 = S / 2
    y = np.linspace(-1, 1, 11)
    h = ah.hessian(model, {"s": 2.0}, scale="unconstrained").matrix
    assert float(h[0, 0]) == pytest.approx(0.5 * np.sum(y**2), rel=1e-12)


def test_model_loglik_closing_over_an_edited_array_recompiles():
    rng = np.random.default_rng(3)
    X = np.column_stack([np.ones(80), rng.normal(size=80)])
    y = (rng.uniform(size=80) < 0.5).astype(float)
    w = np.ones(80)

    def loglik(p, d):
        eta = d["X"] @ p["b"]
        return jnp.asarray(w) * (d["y"] * eta - jnp.logaddexp(0.0, eta))

    model = ah.Model(loglik, {"X": X, "y": y}, {"b": jnp.zeros(2)})
    once = float(ah.fit(model).llf)
    w[:] = 2.0  # doubling every contribution doubles the maximised log-likelihood (closed form)
    assert float(ah.fit(model).llf) == pytest.approx(2.0 * once, rel=1e-10)
    # at b = 0 each contribution is -log 2 (closed form), now weighted by 2
    assert model.loglik() == pytest.approx(-2.0 * 80 * np.log(2.0), rel=1e-14)
    count = model.trace_counts["contributions"]
    model.loglik()
    assert model.trace_counts["contributions"] == count  # unchanged closure: no recompilation


_GLOBAL_B = jnp.eye(2)


def _uses_global(x):
    return 0.5 * x @ _GLOBAL_B @ x


def test_rebound_global_jax_array():
    global _GLOBAL_B
    x = np.ones(2)
    np.testing.assert_array_equal(np.asarray(ah.hessian(_uses_global, x).matrix), np.eye(2))
    _GLOBAL_B = 3.0 * jnp.eye(2)  # closed form: the Hessian of 0.5 x'Bx is B
    np.testing.assert_array_equal(np.asarray(ah.hessian(_uses_global, x).matrix), 3.0 * np.eye(2))


def test_jax_array_sharing_the_callers_buffer_is_copied_too():
    y = aligned(np.linspace(-1.0, 1.0, 200))
    y_jax = jnp.asarray(y, dtype=np.float64)  # on CPU this wraps y's aligned buffer
    model = ah.Model(lambda p, d: -0.5 * (d["y"] - p["mu"]) ** 2, {"y": y_jax}, {"mu": 0.0})
    # closed form: -0.5 * sum(y^2) at mu = 0
    expected = -0.5 * float(np.sum(np.linspace(-1.0, 1.0, 200) ** 2))
    y *= 10.0
    assert model.loglik() == pytest.approx(expected, rel=1e-14)


def test_namedtuple_of_numbers_in_data_is_still_accepted():
    import collections

    Record = collections.namedtuple("Record", "scale shift")
    model = ah.Model(
        lambda p, d: -0.5 * (d["y"] - p["m"] * d["c"].scale) ** 2, {"y": np.ones(5), "c": Record(1.0, 2.0)}, {"m": 0.0}
    )
    assert model.loglik() == pytest.approx(-2.5, rel=1e-15)  # closed form: 5 * -0.5 * 1^2
