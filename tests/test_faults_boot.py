"""Fault campaign, resampling and chunking (issue #18): chunked Hessians of models whose
dependence is switched off at the initial values, a ``simulate`` that ignores its key, the
bootstrap of a frequency-weighted fit with large weights, and argument checks.

References: the unchunked Hessian (chunking is exact for a separable model, so the two agree
to rounding); the multinomial's closed-form moments; the BCa acceleration's closed form under
equal weights (``a`` of rows repeated ``k`` times is ``a / sqrt(k)``); the Wald SE of the
weighted fit, which is that of its repeated rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess._resampling import _weighted_multinomial_weights, key_data


# ------------------------------------------------------------------------------------------
# Item 4: chunked Hessians must be checked where they are computed
# ------------------------------------------------------------------------------------------
def _ar1_data(n=400, phi=0.5, seed=0):
    e = np.random.default_rng(seed).standard_normal(n)
    y = np.zeros(n)
    for t in range(1, n):
        y[t] = phi * y[t - 1] + e[t]
    return y


def _ar1_loglik(p, d):
    """A user's conditional AR(1), lag by shifting: separable exactly when phi = 0."""
    y = d["y"]
    prev = jnp.concatenate([jnp.zeros(1), y[:-1]])
    r = y - p["phi"] * prev
    return -0.5 * (jnp.log(2 * jnp.pi) + r * r)


def _pooled_loglik(p, d):
    """Centres y on lam times its own sample mean: pooled over observations unless lam = 0."""
    r = d["y"] - p["mu"] - p["lam"] * jnp.mean(d["y"])
    return -0.5 * r * r


def test_chunked_ar1_refused_at_phi_half_when_started_at_zero():
    """The issue's case: phi = 0 at the start (separable there), Hessian asked at phi = 0.5,
    where chunking at 100 rows was 9% off with no warning."""
    model = ah.Model(_ar1_loglik, {"y": _ar1_data()}, {"phi": 0.0})
    with pytest.raises(ValueError, match=r"not separable.*phi=0\.5|phi=0\.5.*not separable"):
        ah.hessian(model, {"phi": 0.5}, chunk_size=100)
    # and at the start itself: the perturbed point sees the dependence phi = 0 hides
    model = ah.Model(_ar1_loglik, {"y": _ar1_data()}, {"phi": 0.0})
    with pytest.raises(ValueError, match="a perturbed point"):
        ah.hessian(model, chunk_size=100)


def test_chunked_pooled_model_refused_when_its_pooling_weight_starts_at_zero():
    y = np.random.default_rng(3).normal(size=300)
    model = ah.Model(_pooled_loglik, {"y": y}, {"mu": 0.0, "lam": 0.0})
    with pytest.raises(ValueError, match="not separable"):
        ah.hessian(model, {"mu": 0.1, "lam": 0.7}, chunk_size=64)


def test_separable_model_still_chunks_and_matches_unchunked_at_several_points():
    """Reference: the unchunked Hessian; 1e-10 relative: the same sums blocked differently."""
    rng = np.random.default_rng(5)
    X = np.c_[np.ones(500), rng.normal(size=(500, 2))]
    y = (rng.uniform(size=500) < 0.4).astype(float)
    model = ah.models.logistic(X, y)
    for beta in ([0.0, 0.0, 0.0], [0.3, -0.2, 0.5]):
        p = {"beta": jnp.asarray(beta)}
        np.testing.assert_allclose(
            np.asarray(ah.hessian(model, p, chunk_size=77).matrix), np.asarray(ah.hessian(model, p).matrix), rtol=1e-10
        )


def test_chunked_hessian_under_jit_needs_the_check_made_outside_first():
    """Inside jax.jit the separability check cannot run (it used to fail with a
    TracerArrayConversionError); once made outside, the jitted chunked Hessian equals the
    unchunked one (1e-10 relative: the same sums blocked differently)."""
    d = _logit_data(150, seed=6)
    model = ah.models.logistic(d["X"], d["y"])
    f = jax.jit(lambda b: ah.hessian(model, {"beta": b}, chunk_size=40).matrix)
    b = jnp.array([0.1, -0.2])
    with pytest.raises(ValueError, match="outside the transformation"):
        f(b)
    ah.hessian(model, chunk_size=40)
    np.testing.assert_allclose(np.asarray(f(b)), np.asarray(ah.hessian(model, {"beta": b}).matrix), rtol=1e-10)


# ------------------------------------------------------------------------------------------
# Item 5: a simulate that does not depend on its key
# ------------------------------------------------------------------------------------------
def _logit(p, d):
    eta = d["X"] @ p["beta"]
    return d["y"] * eta - jnp.logaddexp(0.0, eta)


def _logit_data(n=200, seed=1):
    rng = np.random.default_rng(seed)
    X = np.c_[np.ones(n), rng.normal(size=(n, 1))]
    return {"X": X, "y": (rng.uniform(size=n) < 0.5).astype(float)}


def _numpy_simulate(key, p, d):  # the mistake: numpy's RNG runs once, at trace time
    u = np.random.default_rng().uniform(size=d["y"].shape)
    return {"X": d["X"], "y": (u < jax.nn.sigmoid(d["X"] @ p["beta"])).astype(float)}


def _fixed_key_simulate(key, p, d):  # ignores the key it is given
    u = jax.random.uniform(jax.random.key(0), d["y"].shape)
    return {"X": d["X"], "y": (u < jax.nn.sigmoid(d["X"] @ p["beta"])).astype(float)}


@pytest.mark.parametrize("simulate", [_numpy_simulate, _fixed_key_simulate])
def test_simulate_that_ignores_its_key_is_refused(simulate):
    model = ah.Model(_logit, _logit_data(), {"beta": np.zeros(2)}, simulate=simulate)
    res = ah.fit(model)
    with pytest.raises(ValueError, match="simulate returned identical data.*numpy"):
        ah.bootstrap(res, n=10, key=0, kind="parametric")
    with pytest.raises(ValueError, match="simulate returned identical data"):
        ah.simulation_study(model, res.params, n=10, key=0)


def test_replicates_that_do_not_vary_are_refused():
    """simulate varies only a column the likelihood never reads: the data differ by key, the
    refits do not, so the SE would be 0 and coverage 1."""
    d = _logit_data()
    d["z"] = np.zeros(d["y"].shape[0])

    def simulate(key, p, d):
        return {"X": d["X"], "y": d["y"], "z": jax.random.normal(key, d["z"].shape)}

    model = ah.Model(_logit, d, {"beta": np.zeros(2)}, simulate=simulate)
    res = ah.fit(model)
    with pytest.raises(ValueError, match="exactly the same estimates"):
        ah.bootstrap(res, n=6, key=0, kind="parametric")
    with pytest.raises(ValueError, match="exactly the same estimates"):
        ah.simulation_study(model, res.params, n=6, key=0)


# ------------------------------------------------------------------------------------------
# Bootstrap of a frequency-weighted fit: memory must not depend on the weights' size
# ------------------------------------------------------------------------------------------
def test_weighted_multinomial_memory_does_not_grow_with_the_number_of_draws():
    """Drawing each of sum(w) units took 23 GiB at weights of 1e4 on 300 rows; the compiled
    sampler's temporary memory must be the same for 300 and 3e6 draws."""
    w = jnp.ones(300)
    raw = key_data(0, 1)[0]

    def temp(total):
        fn = jax.jit(lambda k, w: _weighted_multinomial_weights(k, w, total))
        return fn.lower(raw, w).compile().memory_analysis().temp_size_in_bytes

    assert temp(300) == temp(3_000_000)


def test_weighted_multinomial_has_multinomial_moments():
    """Reference: counts ~ Multinomial(T, w / sum w): mean T p_i, variance T p_i (1 - p_i).
    Over 4000 draws the mean's standard error is sqrt(T p (1-p) / 4000); 5 of those. The
    variance's relative SE is ~sqrt(2 / 4000) = 2.2%; 12% is over 5 of those."""
    w = jnp.asarray([1.0, 2.0, 3.0, 0.0, 4.0]) * 1e4
    total = int(w.sum())
    raw = key_data(7, 4000)
    counts = np.asarray(jax.vmap(lambda k: _weighted_multinomial_weights(k, w, total))(raw))
    assert np.all(counts.sum(axis=1) == total) and np.all(counts[:, 3] == 0)
    p = np.asarray(w) / total
    mean_se = np.sqrt(total * p * (1 - p) / counts.shape[0])
    assert np.all(np.abs(counts.mean(axis=0) - total * p) <= 5 * mean_se + 1e-12)
    keep = p > 0
    np.testing.assert_allclose(counts.var(axis=0, ddof=1)[keep], (total * p * (1 - p))[keep], rtol=0.12)


def test_bootstrap_of_a_heavily_weighted_fit_matches_its_repeated_rows():
    """Weights of 1e4 on 300 rows (3e6 observations). References: the Wald SE of the weighted
    fit is that of the repeated rows (a correctly specified logistic model, N = 3e6: the
    bootstrap SE equals it to well under 1%); with B = 60 a bootstrap SE has relative SD
    1/sqrt(2B) = 9%, so 30% allows over 3 of those. BCa's acceleration of rows repeated k
    times is the unweighted one over sqrt(k) (closed form: a = sum U^3 / 6 (sum U^2)^1.5)."""
    rng = np.random.default_rng(2)
    n = 300
    X = np.c_[np.ones(n), rng.normal(size=(n, 1))]
    y = (rng.uniform(size=n) < jax.nn.sigmoid(X @ np.array([0.2, 0.5]))).astype(float)
    model = ah.models.logistic(X, y)
    heavy = ah.fit(model, weights=np.full(n, 1e4))
    boot = ah.bootstrap(heavy, n=60, key=0)
    assert boot.n_failed == 0
    np.testing.assert_allclose(boot.se_flat, np.asarray(heavy.bse_flat), rtol=0.30)
    # the unweighted rows' acceleration at the same estimate (equal weights move no estimate)
    S = np.asarray(ah.scores(model, heavy.params))
    U = np.linalg.solve(np.asarray(ah.hessian(model, heavy.params).matrix), S.T).T
    U = U - U.mean(axis=0)
    plain = np.sum(U**3, axis=0) / (6.0 * np.sum(U**2, axis=0) ** 1.5)
    np.testing.assert_allclose(boot.acceleration(), plain / np.sqrt(1e4), rtol=1e-8)
    assert np.all(np.isfinite(boot.conf_int(method="bca", flat=True)))


# ------------------------------------------------------------------------------------------
# Argument checks (issue section 3 and this campaign)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_fit():
    d = _logit_data(120, seed=4)
    return ah.fit(ah.models.logistic(d["X"], d["y"]))


@pytest.mark.parametrize("key", [0.5, "0", True, np.float64(3.0)])
def test_bootstrap_key_must_be_a_key_or_an_integer(small_fit, key):
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        ah.bootstrap(small_fit, n=4, key=key)


def test_bootstrap_accepts_old_style_raw_key_data(small_fit):
    boot = ah.bootstrap(small_fit, n=4, key=jax.random.PRNGKey(3))
    assert boot.n == 4


@pytest.mark.parametrize("n", [1, 0, -5, 2.0, True])
def test_bootstrap_needs_at_least_two_replicates(small_fit, n):
    with pytest.raises(ValueError, match=">= 2"):
        ah.bootstrap(small_fit, n=n, key=0)


@pytest.mark.parametrize("chunk", [0, -1, 2.5, True])
def test_chunked_memory_bytes_rejects_bad_chunk_sizes(small_fit, chunk):
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        ah.chunked_memory_bytes(small_fit.model, chunk)


def test_hvp_takes_a_direction_shaped_like_the_parameters(small_fit):
    """Reference: H @ v from the exact Hessian (1e-12: the same derivatives, two routes)."""
    model, p = small_fit.model, small_fit.params
    H = np.asarray(ah.hessian(model, p).matrix)
    v = np.array([0.3, -1.0])
    np.testing.assert_allclose(np.asarray(ah.hvp(model, p, {"beta": v})), H @ v, rtol=1e-12)
    with pytest.raises(ValueError, match="v has shape"):
        ah.hvp(model, p, np.ones(3))


# ------------------------------------------------------------------------------------------
# This campaign's own findings
# ------------------------------------------------------------------------------------------
def test_weights_beyond_2_to_53_are_refused_not_a_zero_se(small_fit):
    """Weights of 1e300 gave a bootstrap SE of exactly 0 (Wald ~1e-151): counts beyond 2^53
    are not whole float64 numbers and the spread is below rounding."""
    model = small_fit.model
    for w in (1e300, 1e15):
        heavy = ah.fit(model, weights=np.full(model.nobs, w))
        with pytest.raises(ValueError, match="beyond 2\\^53"):
            ah.bootstrap(heavy, n=4, key=0)


def test_a_block_of_all_observations_is_refused(small_fit):
    """block_length = N only rotates the data: a logistic fit's replicates were all the
    estimate and the bootstrap SE exactly 0."""
    n = small_fit.model.nobs
    with pytest.raises(ValueError, match=f"\\[1, {n - 1}\\].*rotates"):
        ah.bootstrap(small_fit, n=4, key=0, kind="block", block_length=n)


def test_replicates_that_do_not_vary_are_refused_for_resampling_kinds_too():
    """A likelihood that reads only a position-independent summary of the data (every resample
    of a constant column leaves the estimate where it is) gives identical replicates."""
    d = {"y": np.ones(50)}

    def loglik(p, d):
        return -0.5 * (p["mu"] - d["y"]) ** 2

    res = ah.fit(ah.Model(loglik, d, {"mu": 0.0}))
    with pytest.raises(ValueError, match="exactly the same estimates.*Wald"):
        ah.bootstrap(res, n=4, key=0)


def test_simulation_study_needs_two_replicates_and_a_proper_key(small_fit):
    with pytest.raises(ValueError, match=">= 2"):
        ah.simulation_study(small_fit.model, small_fit.params, n=1, key=0)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        ah.simulation_study(small_fit.model, small_fit.params, n=4, key=0.5)


def test_seed_too_large_and_nonfinite_hvp_direction(small_fit):
    with pytest.raises(ValueError, match="does not fit in 64 bits"):
        ah.bootstrap(small_fit, n=4, key=2**70)
    with pytest.raises(ValueError, match="non-finite"):
        ah.hvp(small_fit.model, small_fit.params, jnp.array([np.nan, 0.0]))


# ------------------------------------------------------------------------------------------
# boot.fits.member(i) is the fit its replicate made (its counts or its data set)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nonparametric", "parametric", "block"])
def test_bootstrap_member_is_the_fit_its_replicate_made(small_fit, kind):
    # found: member(i) carried weights=None and the original data, so its df_resid, bic and
    # profile were those of the original sample, not of the resample the replicate maximised
    extra = {"block_length": 10} if kind == "block" else {}
    boot = ah.bootstrap(small_fit, n=2, key=5, kind=kind, **extra)
    for i in (1,):  # one refit per kind (each with_data model compiles its own fit)
        mem = boot.fits.member(i)
        ref = ah.fit(mem.model, weights=mem.weights, warn=False)
        # reference: a single fit of the likelihood the member carries; it is the replicate's
        # exactly when it reproduces the replicate's estimate (both at the rounding floor:
        # 1e-9 relative leaves ~10^7 ulps; another resample moves them by ~0.1 SE = 1e-2)
        np.testing.assert_allclose(mem.params_flat, ref.params_flat, rtol=1e-9, atol=1e-12)
        assert float(mem.llf) == pytest.approx(float(ref.llf), rel=1e-12)
        assert not np.allclose(mem.params_flat, small_fit.params_flat, rtol=1e-6)  # a resample
        if kind == "nonparametric":
            counts = np.asarray(mem.weights)
            assert counts.sum() == 120 and np.all(counts == np.round(counts))  # N draws
            assert mem.df_resid == pytest.approx(120 - 2)
        else:
            assert mem.weights is None
    # a sub-batch keeps each member's own replicate
    np.testing.assert_array_equal(
        np.asarray(boot.fits[np.array([False, True])].member(0).params_flat), np.asarray(boot.fits.params_flat[1])
    )


def test_weighted_bootstrap_member_profiles_its_own_resample():
    d = _logit_data(120, seed=6)
    w = np.tile([1.0, 2.0, 3.0], 40)
    m = ah.models.logistic(d["X"], d["y"])
    boot = ah.bootstrap(ah.fit(m, weights=w), n=2, key=1)
    mem = boot.fits.member(1)
    counts = np.asarray(mem.weights)
    # sum(w) = 240 draws from the observations the weights stand for
    assert counts.sum() == 240 and mem.df_resid == pytest.approx(240 - 2)
    ref = ah.fit(m, weights=counts, warn=False)
    # reference: the profile of the single fit with the replicate's counts (same likelihood;
    # profile ends located to ~1e-8 of the interval: 1e-6 with room)
    np.testing.assert_allclose(
        ah.profile(mem, "beta[1]", refine=3).conf_int(), ah.profile(ref, "beta[1]", refine=3).conf_int(), atol=1e-6
    )
