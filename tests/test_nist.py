"""autohess against the 27 certified NIST StRD nonlinear regression problems.

Reference: the NIST certified estimates, standard deviations and residual sums of squares,
11 significant digits each (``tests/data/nist_strd/``, parsed by ``tests/nist.py``). Every
problem is fitted with ``ah.least_squares`` + ``ah.fit(cov_type="gauss-newton")`` from both
NIST starting vectors (54 cases), with the solver's defaults (``maxiter=200``), and, as a
control that separates the optimiser's path from the accuracy of the answer, from the
certified estimates themselves (27 cases).

Tolerances (relative, per component), what the StRD ask of double-precision software:

* estimates: 6 significant digits, ``|b - c| <= 1e-6 |c|``. Every certified estimate has its
  own 11 significant digits, whatever its size (Nelson's b2 = 5.6e-9 next to b1 = 2.6,
  Hahn1's b7 = -1.2e-7), so the test is per component: an absolute tolerance scaled by
  ``max|c|`` would let those small coefficients be wrong by 10^2-10^8 times their size. None of
  the 162 certified estimates is zero, so no absolute fallback is needed; ``digits`` below has
  one (``1e-6 * max|c|``) only for a certified value that is exactly 0, for which a relative
  error does not exist.
* standard deviations: 4 digits, ``1e-4``; they are ``sqrt(diag(s^2 (J'J)^-1))``, computed by
  autohess from the exact Jacobian through an SVD, and agree to ~1e-10 in practice.
* residual sum of squares: 6 digits, ``1e-6``.

Lanczos1 (certified RSS 1.43e-25) is the one problem where double precision cannot meet these:
its residuals (~1e-13) are only ~100 ulps of the data (~1), so the RSS carries ~1e-3 relative
rounding and the standard deviations, proportional to sqrt(RSS), half of that; see the README
of the data. It is checked (from the certified estimates, the only start from which the solver
reaches it) with estimates at 6 digits, standard deviations at 3 digits and RSS at 2 digits.

Cases that genuinely fail are ``xfail(strict=True)`` with what the solver did; the global
tolerances above are never loosened for them.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
import nist
from autohess import Status

EST_RTOL = 1e-6  # 6 significant digits
SD_RTOL = 1e-4  # 4 significant digits
RSS_RTOL = 1e-6  # 6 significant digits

# Lanczos1's double-precision floor (module docstring): measured 2.1e-3 (RSS) and 1.1e-3 (SDs)
# when re-solved from the certified estimates; a 1e-3 SD tolerance would sit exactly on that
# floor, so "about 3 digits" is 2e-3 (2.7 digits) for the SDs and 5e-3 for the RSS.
LANCZOS1_SD_RTOL = 2e-3
LANCZOS1_RSS_RTOL = 5e-3


def rel_errors(estimate, certified) -> np.ndarray:
    """Per-component relative error; for a certified value of exactly 0 (none in the StRD) the
    absolute error in units of ``max|certified|`` instead (see the module docstring)."""
    e, c = np.asarray(estimate, np.float64), np.asarray(certified, np.float64)
    scale = np.where(c != 0.0, np.abs(c), np.max(np.abs(c)))
    return np.abs(e - c) / scale


@functools.lru_cache(maxsize=None)
def problem_and_model(name: str):
    """One parsed problem and its least-squares model, shared by all of its fits (so the
    compiled solver is reused across starts: one compilation per problem)."""
    prob = nist.load(name)
    model = ah.least_squares(
        nist.residual_for(name), nist.data_for(prob), {"b": jnp.asarray(prob.start1)}, name=name
    )
    return prob, model


@functools.lru_cache(maxsize=None)
def fitted(name: str, start: str):
    """``(problem, model, result, rss)`` for ``start`` in ``"1"``, ``"2"``, ``"certified"``."""
    prob, model = problem_and_model(name)
    b0 = prob.certified if start == "certified" else prob.start(int(start))
    res = ah.fit(model, start={"b": jnp.asarray(b0)}, cov_type="gauss-newton", warn=False)
    return prob, model, res, model.rss(res.params)


def describe(res, prob, rss) -> str:
    b = np.asarray(res.params_flat)
    return (
        f"status {Status(int(res.status_code)).name} after {int(res.iterations)} iterations; "
        f"b = {np.array2string(b, precision=6)} (certified "
        f"{np.array2string(prob.certified, precision=6)}); RSS {rss:.6g} (certified {prob.rss:.6g})"
    )


# ---------------------------------------------------------------------------------------------
# Known failures from the NIST starts, with what the solver does (default maxiter=200).
# All were checked to be the optimiser's path, not the answer's accuracy: from the certified
# estimates every problem but Lanczos1 re-converges in 2-3 iterations with estimates, SDs and
# RSS at >= 9.5 digits, and Lanczos1 keeps its estimates at ~10 digits (test below).

_SADDLE = (
    "the trust-region Newton solve ends at the coalesced-exponential saddle b2 == b4 (the best "
    "two-exponential fit, RSS {rss} vs certified {cert}; b1 - b3 then flat): status SINGULAR "
    "after {it} iterations with b2 = b4 = {b2}. A genuine stationary point (scipy's MINPACK LM "
    "started there stays there), but MINPACK LM from the same NIST start reaches the certified "
    "values, so this is the solver's path"
)

KNOWN_FAILURES = {
    ("Lanczos3", 1): _SADDLE.format(rss="4.35e-6", cert="1.61e-8", it=80, b2="1.87342"),
    ("Lanczos3", 2): _SADDLE.format(rss="4.35e-6", cert="1.61e-8", it=71, b2="1.87342"),
    ("Lanczos2", 1): _SADDLE.format(rss="4.30e-6", cert="2.23e-11", it=81, b2="1.87253"),
    ("Lanczos2", 2): _SADDLE.format(rss="4.30e-6", cert="2.23e-11", it=71, b2="1.87253"),
    ("Lanczos1", 1): _SADDLE.format(rss="4.29e-6", cert="1.43e-25", it=81, b2="1.87247"),
    ("Lanczos1", 2): _SADDLE.format(rss="4.29e-6", cert="1.43e-25", it=71, b2="1.87247"),
    ("MGH17", 1): (
        "MAX_ITERATIONS at 200: the solve crawls along the valley where the two exponentials "
        "nearly coincide (b4 = 0.01663, b5 = 0.01677, b2 = 104.7, b3 = -104.2; RSS 7.98e-5 vs "
        "certified 5.46e-5); with maxiter=5000 it converges to the certified values after 1138 "
        "iterations"
    ),
    ("MGH09", 1): (
        "MAX_ITERATIONS at 200: the solve heads for the minimum at infinity the MGH09 file "
        "warns about (b1 -> 0, b2 -> -inf: b1 = -8.29e-3, b2 = -306.4 at 200 iterations, "
        "b1 = -7.8e-7, b2 = -3.1e6 at 5000, where the status is UNBOUNDED; RSS 9.45e-4 vs "
        "certified 3.08e-4)"
    ),
    ("MGH10", 1): (
        "MAX_ITERATIONS at 200 (b1 = 7.5e-11, b2 = 3.05e4, b3 = 854; RSS 5.8e5 vs certified "
        "87.9): trust-region steps along MGH10's curved, badly scaled valley (Hessian eigenvalues "
        "2e-3 .. 2e13) are repeatedly rejected; with maxiter=5000 still MAX_ITERATIONS, at 4 "
        "digits (RSS 87.94593)"
    ),
    ("MGH10", 2): (
        "MAX_ITERATIONS at 200 (b = 7.15e-3, 5981, 338.4; RSS 612 vs certified 87.9): the same "
        "slow valley as from start 1; with maxiter=300 it converges to the certified values "
        "after 251 iterations"
    ),
    ("Bennett5", 1): (
        "MAX_ITERATIONS at 200 (b = -3119, 48.97, 0.8972; RSS 5.344e-4 vs certified 5.240e-4): "
        "slow progress along Bennett5's ill-conditioned valley (J condition number 3e8); with "
        "maxiter=1000 it converges to the certified values after 725 iterations (from start 2 "
        "it needs 187 of the 200)"
    ),
}

def _cases(known: dict) -> list:
    """All 54 (dataset, start) cases; those in ``known`` are strict xfails with their reason."""
    return [
        pytest.param(
            name, start,
            id=f"{name}-start{start}",
            marks=[pytest.mark.xfail(strict=True, raises=AssertionError, reason=known[(name, start)])]
            if (name, start) in known else [],
        )
        for name in nist.NAMES
        for start in (1, 2)
    ]  # fmt: skip


CASES = _cases(KNOWN_FAILURES)


def test_parser_and_models_reproduce_certified_rss():
    """The parser and the transcribed formulas, independent of autohess: at the certified
    estimates each model's RSS equals the certified RSS to 1e-9 (observed <= 5e-11; Lanczos1,
    whose RSS at 11-digit estimates is ~4e-21 against 1.43e-25, is excluded), the residual SD
    is sqrt(RSS / (n - p)) and the counts match the README table (27 sets; 8/11/8 by level)."""
    levels = {"Lower": 0, "Average": 0, "Higher": 0}
    for name in nist.NAMES:
        prob = nist.load(name)
        levels[prob.difficulty] += 1
        assert prob.start1.shape == prob.start2.shape == prob.certified_sd.shape == (prob.n_params,)
        assert prob.x.shape == ((prob.n_obs, 2) if name == "Nelson" else (prob.n_obs,))
        assert np.all(prob.certified_sd > 0) and np.all(prob.certified != 0)
        # Rat43's file says 9 degrees of freedom; n - p = 11 is what its residual SD uses.
        assert prob.dof_in_file == (9 if name == "Rat43" else prob.dof)
        assert math.isclose(math.sqrt(prob.rss / prob.dof), prob.residual_sd, rel_tol=1e-9)
        if name != "Lanczos1":
            assert math.isclose(nist.rss_at(prob, prob.certified), prob.rss, rel_tol=1e-9), name
    assert levels == {"Lower": 8, "Average": 11, "Higher": 8}
    assert nist.load("ENSO").n_params == 9


@pytest.mark.parametrize("name,start", CASES)
def test_nist_from_nist_start(name, start):
    prob, _, res, rss = fitted(name, str(start))
    info = describe(res, prob, rss)
    assert res.converged, info
    assert int(res.status_code) == Status.CONVERGED, info
    assert np.max(rel_errors(res.params_flat, prob.certified)) <= EST_RTOL, info
    assert np.max(rel_errors(res.bse_flat, prob.certified_sd)) <= SD_RTOL, info
    assert abs(rss - prob.rss) / prob.rss <= RSS_RTOL, info


# method="gauss-newton": Levenberg-Marquardt steps (the trust region on J'J) to reach the basin,
# then exact Newton to finish. Known failures, checked case by case (default maxiter=200):
KNOWN_FAILURES_GN = {
    ("Lanczos1", 1): "CONVERGED after 96 iterations with the estimates at 10.6 digits, but RSS "
    "1.4e-25 is at the rounding level of the data, so the RSS and the SDs match only ~3 digits "
    "(see the certified-start test)",
    ("Lanczos1", 2): "as from start 1 (132 iterations; estimates at 10.6 digits, RSS and SDs at "
    "~3.5: rounding level of the data at RSS ~ 1e-25)",
    ("BoxBOD", 1): "SINGULAR after 4 iterations at b = (172.5, 104.9): the Levenberg-Marquardt "
    "steps saturate the exponential (b2 * x >> 1, so the model is flat in b2) far from the "
    "certified b2 = 0.547; the default trust-region Newton solves this case",
    ("MGH10", 1): "MAX_ITERATIONS: the Levenberg-Marquardt phase runs away to b ~ (1e7, -5e7, 7e6) "
    "(RSS 1.4e9) and the Newton phase cannot come back within 200 iterations",
    ("MGH17", 1): "MAX_ITERATIONS: both phases crawl along the valley where the two exponentials "
    "nearly coincide (RSS 6.7e-5 vs certified 5.5e-5 after 400 iterations)",
}

CASES_GN = _cases(KNOWN_FAILURES_GN)


@pytest.mark.parametrize("name,start", CASES_GN)
def test_nist_gauss_newton_method(name, start):
    """Same accuracy requirements with method="gauss-newton"; Lanczos solutions are compared
    up to relabelling of their three exponential terms (same curve, same RSS)."""
    prob, model = problem_and_model(name)
    res = ah.fit(model, start={"b": jnp.asarray(prob.start(start))}, method="gauss-newton",
                 cov_type="gauss-newton", warn=False)
    rss = model.rss(res.params)
    info = describe(res, prob, rss)
    assert int(res.status_code) == Status.CONVERGED, info
    mine, cert = nist.canonical_order(name, res.params_flat), nist.canonical_order(name, prob.certified)
    assert np.max(rel_errors(np.asarray(res.params_flat)[mine], prob.certified[cert])) <= EST_RTOL, info
    assert np.max(rel_errors(np.asarray(res.bse_flat)[mine], prob.certified_sd[cert])) <= SD_RTOL, info
    assert abs(rss - prob.rss) / prob.rss <= RSS_RTOL, info


@pytest.mark.parametrize("name", nist.NAMES)
def test_nist_from_certified_estimates(name):
    """Re-solving from the certified estimates: the answer's accuracy without the path."""
    prob, _, res, rss = fitted(name, "certified")
    info = describe(res, prob, rss)
    assert np.max(rel_errors(res.params_flat, prob.certified)) <= EST_RTOL, info
    if name == "Lanczos1":
        # RSS 1.4e-25: the objective (log RSS) is rounding noise at the ~1e-3 level near the
        # optimum, so no step passes the ratio test and the solver reports STALLED (parameters
        # at ~10 digits all the same); SDs and RSS to the double-precision floor (docstring).
        assert int(res.status_code) in (Status.CONVERGED, Status.STALLED), info
        assert np.max(rel_errors(res.bse_flat, prob.certified_sd)) <= LANCZOS1_SD_RTOL, info
        assert abs(rss - prob.rss) / prob.rss <= LANCZOS1_RSS_RTOL, info
        return
    assert int(res.status_code) == Status.CONVERGED, info
    assert int(res.iterations) <= 5, info
    assert np.max(rel_errors(res.bse_flat, prob.certified_sd)) <= SD_RTOL, info
    assert abs(rss - prob.rss) / prob.rss <= RSS_RTOL, info
