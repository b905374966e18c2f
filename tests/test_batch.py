"""fit_batch: one compiled vmap over data sets, weights or starts; bad members isolated."""

import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess._solver import Status


def _simulated(B=6, n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = np.c_[np.ones((B, n, 1)), rng.normal(size=(B, n, 2))]
    beta = np.array([-0.2, 0.5, -0.4])
    y = (rng.uniform(size=(B, n)) < 1 / (1 + np.exp(-X @ beta))).astype(float)
    return X, y


def test_batch_equals_loop_of_single_fits():
    X, y = _simulated()
    model = ah.models.logistic(X[0], y[0])
    bres = ah.fit_batch(model, {"X": X, "y": y, "offset": np.zeros(y.shape)})
    assert bres.params["beta"].shape == (6, 3) and bres.converged.all()
    for b in range(6):
        single = ah.fit(ah.models.logistic(X[b], y[b]))
        # same loop, same arithmetic: agreement to rounding (1e-10 leaves room for vmap's
        # batched reductions summing in another order)
        np.testing.assert_allclose(np.asarray(bres.params_flat[b]), np.asarray(single.params_flat), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(bres.bse_flat[b]), np.asarray(single.bse_flat), rtol=1e-10)
    assert model.trace_counts["fit_batch"] == 1


def test_one_nan_member_gets_a_status_not_an_exception():
    X, y = _simulated()
    y[2, 5] = np.nan
    model = ah.models.logistic(X[0], y[0])
    bres = ah.fit_batch(model, {"X": X, "y": y, "offset": np.zeros(y.shape)})
    assert bres.status_code[2] == Status.NONFINITE and "not finite" in bres.status[2]
    ok = [b for b in range(6) if b != 2]
    assert bres.converged[ok].all()
    clean = ah.fit_batch(model, {"X": X[ok], "y": np.where(np.isnan(y[ok]), 0.0, y[ok]), "offset": np.zeros((5, 300))})
    np.testing.assert_allclose(np.asarray(bres.params_flat[np.array(ok)]), np.asarray(clean.params_flat), rtol=1e-12)


def test_bootstrap_weights_and_batched_starts():
    X, y = _simulated(B=1, n=400)
    model = ah.models.logistic(X[0], y[0])
    rng = np.random.default_rng(1)
    w = rng.multinomial(400, np.full(400, 1 / 400), size=4).astype(float)
    bres = ah.fit_batch(model, weights=w, cov_type="robust")
    for b in range(4):
        single = ah.fit(model, weights=w[b], cov_type="robust")
        np.testing.assert_allclose(np.asarray(bres.params_flat[b]), np.asarray(single.params_flat), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(bres.bse_flat[b]), np.asarray(single.bse_flat), rtol=1e-10)
    starts = {"beta": jnp.asarray(rng.normal(size=(3, 3)))}
    many = ah.fit_batch(model, start=starts)
    np.testing.assert_allclose(np.asarray(many.params_flat), np.broadcast_to(np.asarray(ah.fit(model).params_flat), (3, 3)), rtol=1e-9)


def test_batch_bad_input_is_static():
    X, y = _simulated()
    model = ah.models.logistic(X[0], y[0])
    with pytest.raises(ValueError, match=r"expected \(B,\) \+ \(300, 3\)"):
        ah.fit_batch(model, {"X": X[:, :10], "y": y, "offset": np.zeros(y.shape)})
    with pytest.raises(ValueError, match="batch sizes disagree"):
        ah.fit_batch(model, {"X": X, "y": y, "offset": np.zeros(y.shape)}, weights=np.ones((2, 300)))
    with pytest.raises(ValueError, match="needs something batched"):
        ah.fit_batch(model)
    with pytest.raises(ValueError, match="cov_type must be one of"):
        ah.fit_batch(model, weights=np.ones((2, 300)), cov_type="cluster")
