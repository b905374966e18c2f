"""Parameter layout, labels and transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess._params import ParamSpec
from helpers import EXACT


def test_labels_follow_pytree_order():
    spec = ParamSpec({"sigma": ah.Positive(1.0), "beta": jnp.zeros(3), "L": jnp.zeros((2, 2))}, root="theta")
    assert spec.labels == ("L[0,0]", "L[0,1]", "L[1,0]", "L[1,1]", "beta[0]", "beta[1]", "beta[2]", "sigma")
    assert spec.unconstrained_labels[-1] == "log(sigma)"
    nested = ParamSpec({"a": {"b": 1.0, "c": jnp.zeros(2)}, "d": [0.0, 1.0]})
    assert nested.labels == ("a.b", "a.c[0]", "a.c[1]", "d[0]", "d[1]")
    assert ParamSpec(jnp.zeros(2), root="x").labels == ("x[0]", "x[1]")


@pytest.mark.parametrize(
    "transform, x",
    [
        (ah.Real(0.0), np.array([-3.0, 0.0, 2.5])),
        (ah.Positive(1.0), np.array([1e-6, 1.0, 1e6])),
        (ah.Interval(-1.0, 1.0, 0.0), np.array([-0.999, 0.0, 0.5])),
        (ah.Interval(2.0, 500.0, 8.0), np.array([2.001, 8.0, 499.0])),
    ],
)
def test_transform_round_trip_and_log_jacobian(transform, x):
    u = transform.inverse(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(transform.forward(u)), x, rtol=1e-12)
    # log|dx/du| against autodiff of forward
    dxdu = jax.vmap(jax.grad(transform.forward))(u)
    np.testing.assert_allclose(np.asarray(transform.log_abs_det_jacobian(u)), np.log(np.abs(dxdu)), rtol=1e-10, atol=1e-12)


def test_model_flat_round_trip_and_unconstrained():
    model = ah.Model(
        lambda p, d: jnp.sum(-0.5 * ((d["y"] - p["mu"]) / p["s"]) ** 2 - jnp.log(p["s"]), axis=1) + 0.0 * p["r"],
        {"y": np.arange(4.0).reshape(2, 2)},
        {"mu": jnp.array([0.5, 1.5]), "s": ah.Positive(2.0), "r": ah.Interval(-1, 1, 0.25)},
    )
    assert model.labels == ("mu[0]", "mu[1]", "r", "s")
    flat = model.flatten(model.init_params)
    np.testing.assert_allclose(np.asarray(flat), [0.5, 1.5, 0.25, 2.0])
    back = model.unflatten(flat)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), back, model.init_params))
    u = model.spec.to_unconstrained(flat)
    np.testing.assert_allclose(np.asarray(u), [0.5, 1.5, np.log(1.25 / 0.75), np.log(2.0)], rtol=EXACT)
    np.testing.assert_allclose(np.asarray(model.spec.to_natural(u)), np.asarray(flat), rtol=EXACT)


def test_hessian_accepts_transform_declarations_as_params():
    model = ah.models.linear(np.c_[np.ones(5), np.arange(5.0)], np.arange(5.0) + 0.1 * np.array([1, -1, 0, 1, -1]))
    declared = {"beta": jnp.zeros(2), "sigma": ah.Positive(1.0)}
    np.testing.assert_array_equal(np.asarray(ah.hessian(model, declared).matrix), np.asarray(ah.hessian(model).matrix))


def test_labels_compare_to_lists_and_tuples():
    H = ah.hessian(lambda x: jnp.sum(x**2), jnp.ones(2))
    assert H.labels == ["x[0]", "x[1]"] and H.labels == ("x[0]", "x[1]")
    assert H.labels != ["x[0]"] and hash(H.labels) == hash(("x[0]", "x[1]"))
