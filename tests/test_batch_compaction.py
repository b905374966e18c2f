"""Compaction of unfinished batch members (issue 16 part 3): a straggler's result, status and
iteration count equal a single fit's, and the stages after the first ran on smaller batches.

The thresholds are lowered with ``monkeypatch`` so that a batch of a dozen members is staged
(by default only chunks of ``COMPACT_MIN_BATCH`` = 64 or more are); the staged programs are
the same code at any size.
"""

import jax
import numpy as np
import pytest

import autohess as ah
from autohess import _batch
from autohess._solver import Status

pytestmark = pytest.mark.compaction  # staged as users' batches are (tests/conftest.py)


@pytest.fixture
def small_stages(monkeypatch):
    # the vmapped layout (accelerators, meshes) is the one that stages; a 1-device CPU runs
    # members one after another (tests below: ``test_cpu_members_run_one_by_one``)
    monkeypatch.setattr(_batch, "SEQUENTIAL_ON_CPU", False)
    monkeypatch.setattr(_batch, "COMPACT_MIN_BATCH", 4)
    monkeypatch.setattr(_batch, "FIRST_STAGE_ITERATIONS", 6)
    monkeypatch.setattr(_batch, "STAGE_ITERATIONS", 2)
    monkeypatch.setattr(_batch, "MIN_BUCKET", 2)


def _logistic(n=300, seed=3):
    rng = np.random.default_rng(seed)
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ np.array([-0.3, 0.8, -0.5])))).astype(float)
    return ah.models.logistic(X, y)


def _assert_members_equal_single_fits(model, bres, starts, maxiter, members):
    for b in members:
        single = ah.fit(model, start={"beta": starts[b]}, maxiter=maxiter, warn=False)
        # same loop, same arithmetic, resumed from the state a stage stopped in: equal to
        # rounding (1e-10 as tests/test_batch.py: vmap's batched reductions may sum in another order)
        np.testing.assert_allclose(np.asarray(bres.params_flat[b]), np.asarray(single.params_flat), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(bres.bse_flat[b]), np.asarray(single.bse_flat), rtol=1e-10)
        assert int(bres.iterations[b]) == int(single.iterations), b  # the total over stages
        assert int(bres.status_code[b]) == int(single.status_code), b


def test_stragglers_equal_single_fits_and_the_batch_shrinks(small_stages, monkeypatch):
    model = _logistic()
    # what a member computes after its solve is traced in the full chunk's program and in one
    # "results" program per bucket size of the late members, never in a compacted stage
    # (before, every stage traced and ran it: most of a stage's time went on results that
    # were thrown away for the members still running)
    post_solve = []
    covariances = _batch._covariance_and_diagnostics
    monkeypatch.setattr(_batch, "_covariance_and_diagnostics",
                        lambda *a, **k: post_solve.append(1) or covariances(*a, **k))
    estimate = np.asarray(ah.fit(model).params_flat)
    rng = np.random.default_rng(0)
    # 12 members: 9 start near the estimate (few iterations), 3 stragglers start far out (the
    # trust region needs many steps), one member's start is refused (NaN: input problem)
    starts = estimate + 0.01 * rng.normal(size=(12, 3))
    starts[[2, 7, 11]] = estimate + np.array([[6.0, -5.0, 4.0], [-8.0, 6.0, 7.0], [5.0, 5.0, -6.0]])
    starts[5] = np.nan
    bres = ah.fit_batch(model, start={"beta": starts}, maxiter=200)
    stages = _batch.LAST_STAGES["fit_batch"]
    # first stage: all 12; later stages: only the stragglers, in smaller (power-of-2) batches
    assert stages[0] == (12, 12) and len(stages) >= 3, stages
    assert all(n <= 4 and size <= 4 for n, size in stages[1:]), stages
    assert model.trace_counts["fit_batch"] == 1 and model.trace_counts["fit_batch compacted"] >= 1
    assert len({size for _, size in stages[1:]}) >= 2, stages  # >= 2 compacted programs...
    assert len(post_solve) == 2, stages  # ...but the post-solve work traced twice: first + results
    its = np.asarray(bres.iterations)
    assert its[[2, 7, 11]].min() > 6 and np.delete(its, [2, 5, 7, 11]).max() <= 5, its  # stragglers are stragglers
    assert bres.status_code[5] == Status.NONFINITE and bres.input_problems[5] is not None
    _assert_members_equal_single_fits(model, bres, starts, 200, [0, 2, 7, 11])
    compiled = model.trace_counts["fit_batch compacted"]
    # a second call reuses every program (one per bucket size), and its members are the same
    again = ah.fit_batch(model, start={"beta": starts}, maxiter=200)
    assert model.trace_counts["fit_batch compacted"] == compiled and model.trace_counts["fit_batch"] == 1
    np.testing.assert_array_equal(np.asarray(again.params_flat), np.asarray(bres.params_flat))


def test_iteration_limit_counts_over_stages(small_stages):
    """``maxiter`` falls inside a later stage: the straggler stops with ``MAX_ITERATIONS`` after
    exactly ``maxiter`` iterations in all, as a single fit does."""
    model = _logistic(seed=4)
    estimate = np.asarray(ah.fit(model).params_flat)
    starts = np.repeat(estimate[None], 6, axis=0)
    starts[4] = estimate + np.array([9.0, -7.0, 8.0])
    single = ah.fit(model, start={"beta": starts[4]}, warn=False)
    maxiter = int(single.iterations) - 2  # the far start needs more: stops short, in stage 3 or later
    assert maxiter > 6 + 2
    bres = ah.fit_batch(model, start={"beta": starts}, maxiter=maxiter)
    assert int(bres.status_code[4]) == Status.MAX_ITERATIONS and int(bres.iterations[4]) == maxiter
    assert len(_batch.LAST_STAGES["fit_batch"]) >= 3
    _assert_members_equal_single_fits(model, bres, starts, maxiter, [0, 4])


def test_bootstrap_stages_keep_keys_and_order(small_stages, monkeypatch):
    """A bootstrap's member ``i`` is the fit of replicate ``i`` (its key), whatever stage it
    finished in: each equals a single fit to the data its key redraws."""
    monkeypatch.setattr(_batch, "FIRST_STAGE_ITERATIONS", 2)  # refits from the estimate take 3-4
    model = _logistic(n=120, seed=5)
    res = ah.fit(model)
    boot = ah.bootstrap(res, n=10, key=jax.random.key(2))
    fits = boot.fits
    assert len(_batch.LAST_STAGES["bootstrap"]) >= 2  # some replicates needed a second stage
    its = np.asarray(fits.iterations)
    for i in [int(np.argmax(its)), int(np.argmin(its))]:
        _, w = fits.replicate(fits.replicate_keys[i])
        single = ah.fit(model, weights=np.asarray(w), warn=False)
        np.testing.assert_allclose(np.asarray(fits.params_flat[i]), np.asarray(single.params_flat), rtol=1e-10)
        assert int(fits.iterations[i]) == int(single.iterations)


def test_random_effect_model_is_not_staged(small_stages):
    """A Laplace model runs its chunk to the end in one program even where an ordinary model's
    would be staged: each bucket size would be a Laplace program of its own (seconds to compile,
    again whenever a warm call's stragglers fall into a new size; cbpp's 200 warm refits took
    6-28 s staged, 0.52 s not). Its members, a straggler among them, equal single fits."""
    rng = np.random.default_rng(6)
    G, per = 12, 8
    codes = np.repeat(np.arange(G), per)
    X = np.c_[np.ones(G * per), rng.normal(size=G * per)]
    y = rng.poisson(np.exp(0.3 + 0.4 * X[:, 1] + 0.5 * rng.normal(size=G)[codes])).astype(float)
    model = ah.models.mixed_poisson(X, y, codes)
    res = ah.fit(model)
    assert res.converged
    x0 = np.asarray(res.params_flat)
    assert model.labels == ("beta[0]", "beta[1]", "sd")
    far = x0 + np.array([3.0, -1.0, 0.0])  # a straggler: starts far from the estimate
    starts = np.stack([x0, x0 + 0.01, far, x0 + 0.02, x0 - 0.01])
    start = {"beta": starts[:, :2], "sd": starts[:, 2]}
    bres = ah.fit_batch(model, start=start)
    # (an ordinary model's batch of 5 is staged under this fixture: the tests above)
    assert _batch.LAST_STAGES["fit_batch"] == []
    for b in (0, 2):
        single = ah.fit(model, start=jax.tree_util.tree_map(lambda a: a[b], start), warn=False)
        np.testing.assert_allclose(np.asarray(bres.params_flat[b]), np.asarray(single.params_flat), rtol=1e-10)
        assert int(bres.iterations[b]) == int(single.iterations)


_SHARDED = r"""
import json, sys
import numpy as np
import autohess as ah, jax
from autohess import _batch
assert jax.local_device_count() == 4, jax.devices()
_batch.COMPACT_MIN_BATCH, _batch.FIRST_STAGE_ITERATIONS, _batch.STAGE_ITERATIONS, _batch.MIN_BUCKET = 4, 6, 2, 2
_batch.SEQUENTIAL_ON_CPU = False  # the one-device reference in the same (vmapped) layout
rng = np.random.default_rng(3)
n = 200
X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
y = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ np.array([-0.3, 0.8, -0.5])))).astype(float)
model = ah.models.logistic(X, y)
est = np.asarray(ah.fit(model).params_flat)
starts = est + 0.01 * rng.normal(size=(10, 3))
starts[[3, 8]] = est + np.array([[6.0, -5.0, 4.0], [-8.0, 6.0, 7.0]])
out = {}
for shard in (True, False):
    bres = ah.fit_batch(model, start={"beta": starts}, shard=shard)
    out[str(shard)] = [np.asarray(bres.params_flat).tolist(), np.asarray(bres.iterations).tolist(),
                       [list(s) for s in _batch.LAST_STAGES["fit_batch"]]]
json.dump(out, sys.stdout)
"""


def test_sharded_stages_equal_one_device():
    """Compacted batches sharded over 4 (forced host) devices: bucket sizes are multiples of 4
    and the results equal a one-device run (1e-12, as tests/test_batch.py's sharding test)."""
    import json
    import os
    import subprocess
    import sys

    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    sharded, single = out["True"], out["False"]
    np.testing.assert_allclose(np.asarray(sharded[0]), np.asarray(single[0]), rtol=1e-12)
    assert sharded[1] == single[1]
    assert len(sharded[2]) >= 2 and all(size % 4 == 0 for _, size in sharded[2]), sharded[2]
    assert sharded[2][1][0] == 2  # the two stragglers went on alone


def test_cpu_members_run_in_groups(small_stages, monkeypatch, group=1):
    """On a 1-device CPU a chunk's members run one group after another in one program (group 1:
    each member unbatched, its own solver loop; vmapped groups: the next test):
    nothing to compact even where staging thresholds are met, and each member, stragglers
    included, equals its single fit (estimates, SEs, iterations, status; 1e-10 as above).
    Before, the chunk was vmapped whole and staged (``LAST_STAGES`` non-empty, compacted
    programs compiled): a vmapped GARCH-t Hessian cost 3x the unbatched one per member."""
    monkeypatch.setattr(_batch, "SEQUENTIAL_ON_CPU", True)
    monkeypatch.setattr(_batch, "GROUP", group)
    model = _logistic(seed=7)
    estimate = np.asarray(ah.fit(model).params_flat)
    rng = np.random.default_rng(1)
    starts = estimate + 0.01 * rng.normal(size=(9, 3))
    starts[[1, 6]] = estimate + np.array([[7.0, -6.0, 5.0], [-6.0, 8.0, 6.0]])
    starts[4] = np.nan
    bres = ah.fit_batch(model, start={"beta": starts}, maxiter=200)
    assert _batch.LAST_STAGES["fit_batch"] == []
    assert model.trace_counts["fit_batch"] == 1 and model.trace_counts["fit_batch compacted"] == 0
    its = np.asarray(bres.iterations)
    assert its[[1, 6]].min() > 6 and np.delete(its, [1, 4, 6]).max() <= 5, its  # stragglers are stragglers
    assert bres.status_code[4] == Status.NONFINITE and bres.input_problems[4] is not None
    _assert_members_equal_single_fits(model, bres, starts, 200, [0, 1, 6])


def test_cpu_group_size_follows_the_working_set():
    """Members vmapped together on the CPU: as many as fit ``CPU_GROUP_BYTES`` (256 KiB) by
    ``member_bytes``' per-member estimate ``8 (4 N p + 16 p^2)`` bytes, a power of 2, at
    least 1. GARCH-t at N = 1500 (p = 5: 243 KB) runs unbatched (vmapped it cost 3x per
    member); a logistic model at N = 100, p = 3 (10.8 KB) in groups of 16 (unbatched it cost
    3x the vmapped run: per-operation overheads that a vector amortises)."""
    rng = np.random.default_rng(0)
    garch = ah.models.garch11(rng.standard_t(6, size=1500))
    assert _batch.cpu_group_size(garch) == 1
    X = np.c_[np.ones(100), rng.normal(size=(100, 2))]
    tiny = ah.models.logistic(X, (rng.uniform(size=100) < 0.5).astype(float))
    assert _batch.cpu_group_size(tiny) == 16
    assert _batch.cpu_group_size(tiny, jax.numpy.zeros((64, 100)), 64) == 16  # + 800 B of weights each


def test_cpu_groups_round_chunks_up(monkeypatch):
    """``batch_size`` 10 with groups of 8: chunks of 16 (whole groups), so 100 members run as 7
    chunks; before the chunk count was recomputed after the rounding, the 10 chunks planned
    for chunks of 10 ran on, and the 8th sliced past the end (an empty chunk, which failed).
    Each member equals its single fit (1e-10, as above)."""
    monkeypatch.setattr(_batch, "GROUP", 8)
    model = _logistic(n=60, seed=8)
    estimate = np.asarray(ah.fit(model).params_flat)
    starts = estimate + 0.05 * np.random.default_rng(2).normal(size=(100, 3))
    bres = ah.fit_batch(model, start={"beta": starts}, batch_size=10)
    assert len(bres) == 100 and bres.converged.all()
    _assert_members_equal_single_fits(model, bres, starts, 200, [0, 57, 99])
