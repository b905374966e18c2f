"""fit_batch: one compiled vmap over data sets, weights or starts; bad members isolated."""

import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess._solver import Status
from helpers import dem2gbp


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


def test_chunks_equal_one_chunk_and_compile_once(capsys):
    """Chunking pads the last chunk to the common size; results equal the one-chunk run
    (same per-member arithmetic, another vmap width: 1e-12) and one program serves all."""
    X, y = _simulated(B=7)
    model = ah.models.logistic(X[0], y[0])
    data = {"X": X, "y": y, "offset": np.zeros(y.shape)}
    whole = ah.fit_batch(model, data)
    chunked = ah.fit_batch(model, data, batch_size=3, progress=True)
    assert model.trace_counts["fit_batch"] == 2  # one for B=7 in one chunk, one for chunks of 3
    np.testing.assert_allclose(np.asarray(chunked.params_flat), np.asarray(whole.params_flat), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(chunked.bse_flat), np.asarray(whole.bse_flat), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(chunked.status_code), np.asarray(whole.status_code))
    assert "fit_batch: 7/7 members" in capsys.readouterr().err
    ah.fit_batch(model, data, batch_size=3, progress=False)
    assert capsys.readouterr().err == ""  # not a terminal and not asked: no progress line
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ah.fit_batch(model, data, batch_size=0)


def test_singular_and_diverging_members_are_isolated():
    """Member 1 has two identical covariates (a flat direction), member 3 perfectly
    separated data and a small iteration limit: each gets its own status and NaN SEs where
    the Hessian says so; the other members equal their clean fits."""
    X, y = _simulated(B=5)
    X[1, :, 2] = X[1, :, 1]
    y[3] = (X[3, :, 1] > 0).astype(float)
    model = ah.models.logistic(X[0], y[0])
    bres = ah.fit_batch(model, {"X": X, "y": y, "offset": np.zeros(y.shape)}, maxiter=25)
    codes = np.asarray(bres.status_code)
    assert codes[1] == Status.SINGULAR and np.isnan(np.asarray(bres.bse_flat[1, 1:])).all()
    assert bool(np.asarray(bres.diagnostics_data.bad_directions[1]).any())
    assert codes[3] == Status.MAX_ITERATIONS
    for b in (0, 2, 4):
        single = ah.fit(ah.models.logistic(X[b], y[b]))
        np.testing.assert_allclose(np.asarray(bres.params_flat[b]), np.asarray(single.params_flat), rtol=1e-10)
    kinds = [p.kind for p in bres.member(1).diagnostics.problems]
    assert "flat" in kinds and "x[2]" not in str(bres.member(1).diagnostics)
    assert "beta[1]" in str(bres.member(1).diagnostics) and "beta[2]" in str(bres.member(1).diagnostics)
    assert "not_converged" in [p.kind for p in bres.member(3).diagnostics.problems]
    assert "Diagnostics" in bres.member(0).summary() and bres.member(0).converged
    sub = bres[np.array([0, 2, 4])]
    assert len(sub) == 3 and sub.converged.all()


def test_several_cov_types_in_one_run():
    X, y = _simulated(B=3)
    model = ah.models.logistic(X[0], y[0])
    data = {"X": X, "y": y, "offset": np.zeros(y.shape)}
    both = ah.fit_batch(model, data, cov_type=("robust", "hessian"))
    assert both.cov_type == "robust" and both.cov_types == ("robust", "hessian")
    hess = ah.fit_batch(model, data)
    np.testing.assert_allclose(np.asarray(both.bse_flat_of("hessian")), np.asarray(hess.bse_flat), rtol=1e-12)
    single = ah.fit(ah.models.logistic(X[1], y[1]), cov_type="robust")
    np.testing.assert_allclose(np.asarray(both.bse_flat[1]), np.asarray(single.bse_flat), rtol=1e-10)
    with pytest.raises(ValueError, match="was not computed"):
        both.cov_params("opg")


def test_garch_associative_batch_equals_sequential_scan():
    """The parallel-in-time recursion (lax.associative_scan) against the sequential scan, in a
    batch of GARCH-t fits: same estimates and standard errors to 1e-10 relative (the two
    recursions differ only by rounding in the variance sums)."""
    y = dem2gbp()[:800]
    scan = ah.models.garch11(y)
    assoc = ah.models.garch11(y, recursion="associative")
    starts = {k: np.stack([np.asarray(v)] * 2) for k, v in scan.init_params.items()}
    starts["beta"] = np.array([0.9, 0.8])
    a = ah.fit_batch(scan, start=starts)
    b = ah.fit_batch(assoc, start=starts)
    assert a.converged.all() and b.converged.all()
    np.testing.assert_allclose(np.asarray(b.params_flat), np.asarray(a.params_flat), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(b.bse_flat), np.asarray(a.bse_flat), rtol=1e-8)


_SHARDED = r"""
import os, sys, json
import numpy as np
import autohess as ah, jax
assert jax.local_device_count() == 4, jax.devices()
rng = np.random.default_rng(0)
n = 200
X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
y = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ np.array([0.2, 0.5, -0.4])))).astype(float)
model = ah.models.logistic(X, y)
res = ah.fit(model)
out = {}
for shard in (True, False):
    boot = ah.bootstrap(res, n=10, key=1, shard=shard)   # 10 members: padded to 12 over 4 devices
    w = np.random.default_rng(1).multinomial(n, np.full(n, 1 / n), size=6).astype(float)
    bres = ah.fit_batch(model, weights=w, shard=shard, batch_size=4)   # chunks of 4 (1 per device)
    out[str(shard)] = [np.asarray(boot.replicates).tolist(), np.asarray(boot.fits.bse_flat).tolist(),
                       np.asarray(bres.params_flat).tolist()]
one = ah.fit_batch(model, weights=w[:4], batch_size=4)
out["devices"] = len(one.params_flat.sharding.device_set)
json.dump(out, sys.stdout)
"""


def test_sharded_equals_unsharded(tmp_path):
    """The batch axis split over 4 (forced host) devices gives the results of one device,
    and of this process (1 device): bit-for-bit is not promised (1e-12)."""
    import json
    import os
    import subprocess
    import sys

    # the suite's own XLA flags (conftest.py: the faster-compiling emitters) kept
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["devices"] == 4  # outputs really live on 4 devices
    for a, b in zip(out["True"], out["False"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
    rng = np.random.default_rng(0)
    n = 200
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ np.array([0.2, 0.5, -0.4])))).astype(float)
    boot = ah.bootstrap(ah.fit(ah.models.logistic(X, y)), n=10, key=1)
    np.testing.assert_allclose(np.asarray(out["True"][0]), np.asarray(boot.replicates), rtol=1e-12)


_LARGE = r"""
import numpy as np, autohess as ah
rng = np.random.default_rng(0)
X = rng.normal(size=(400, 12))
y = (rng.uniform(size=400) < 1 / (1 + np.exp(-X @ (0.3 * rng.normal(size=12))))).astype(float)
model = ah.models.logistic(X, y)
W = rng.multinomial(400, np.full(400, 1 / 400), size=800).astype(float)
bres = ah.fit_batch(model, weights=W, cov_type=("hessian", "robust", "opg"))
boot = ah.bootstrap(ah.fit(model), n=1000, key=0)
print(int(bres.converged.sum()), boot.n - boot.n_failed)
"""


def test_large_batches_do_not_deadlock():
    """Batches of ~1000 members at p = 12 once hung forever on 2 cores: two batched LAPACK
    factorisations ran at once and starved XLA's thread pool (see ``_solver.after``). Run in a
    subprocess with a timeout so a regression fails here instead of hanging the suite. What
    matters is the number of members (the LAPACK batch: 800 and 1000 12 x 12 factorisations),
    not N: 400 rows (1500 before; 25 s -> 17 s, same batches, larger chunks if anything)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _LARGE], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["800", "1000"]
