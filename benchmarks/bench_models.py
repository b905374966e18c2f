#!/usr/bin/env python
"""Benchmark: ``ah.fit`` + standard errors against the fastest peer a user could run instead
(statsmodels' analytic Newton fits, a closed-form numpy Newton loop, the numpy closed-form
Hessian), issue #16 part 1 ("never slower than analytic code").

Run from the repository root::

    python benchmarks/bench_models.py            # full run, writes benchmarks/results/models.json
    python benchmarks/bench_models.py --quick    # fewer repetitions, for a smoke test
    python benchmarks/bench_models.py --output /tmp/m.json

Workloads (float64, CPU, one process; each written as a user would from the README; every
workload's two sides are timed side by side, interleaved, and the ratio is ours / peer, below 1
meaning autohess is faster):

1. Multinomial logit, 36 parameters: statsmodels' ``anes96`` data (N = 944, party
   identification in 7 categories, 6 non-base equations x (constant + 5 covariates in their own
   units)), a user-written ``ah.Model`` (log-softmax with a zero base column) against
   ``sm.MNLogit(y, X).fit(method="newton")`` + ``.bse``.
2. Tobit left-censored at 0, N = 6366, p = 10 (constant + 9 normal covariates, sigma) simulated
   with seed 0 (~40% censored), a user-written ``ah.Model`` with ``sigma = ah.Positive(1.0)``
   against a Newton loop in numpy with the analytic gradient and Hessian in Olsen's
   parameterisation (``delta = beta / sigma``, ``theta = 1 / sigma``, concave), its covariance
   mapped to ``(beta, sigma)`` by the delta method (exact at the optimum); the loop is checked
   to reach autohess's optimum to 1e-8.
3. The zoo (``ah.models.logistic``, ``poisson``, ``negative_binomial``, ``linear``) against
   statsmodels' ``Logit``, ``Poisson``, ``NegativeBinomial`` (nb2, ``method="newton"``) and
   ``OLS`` (+ ``.bse``); the zoo has no multinomial logit (workload 1 is the user-written one).
   N = 1500 each; logistic p = 12 is the issue's ``sm.Logit`` workload (target ratio <= 1/3).
4. The exact Hessian of the README's user-written logistic ``ah.Model`` (``ah.hessian(model,
   params)``) against the numpy closed form ``X' diag(p(1-p)) X`` with ``p`` computed in the
   call, N = 1500, p = 12 (target ratio <= 1.5); also the zoo's model and ``check=False``.

The peers' model objects are built once outside the timing, as autohess's are: the ratio is
fit + SEs against fit + SEs. numpy/scipy run with one OpenBLAS thread (see bench_fit.py's
BLAS_NOTE; ``--blas-threads``).

Timing: process CPU time per call (``Interleaved(clock=time.process_time)``), run with one
OpenBLAS thread and one XLA thread (``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1"``): the machine is shared with five other sessions and wall
times swing several-fold; medians are still noisy (CPU caches are shared), minima are the floor.

Idle VM after the merges (main at 2a51bf8, 2026-12-02 01:21 UTC, 0% busy before, load 1.1;
``--quick``, default threads, results/models_quick_quiet.json), ratio ours / peer by medians
(by minima): MNLogit 0.77 (0.73) PASS, Poisson 0.79 (0.94) PASS, NB2 0.79 (0.64) PASS; Tobit
4.42 (5.03) FAIL, zoo logistic 0.82 (0.70) against 1/3 FAIL, OLS by ML 1.63 (1.43) FAIL, the
README's logistic exact Hessian / closed form 1.51 (1.48) against 1.5: FAIL by 0.01 of its
median (2.40 in the previous idle run; ``check=False`` 1.30, the zoo's model 1.49).

Fourth round (issue #16 part 1, the failing targets; 2-core AMD EPYC VM, 2026-12-02 00:51, full
run and --quick at 249d6ed; ``uptime`` load average 9.6-10.3 on 2 cores before and after (other
sessions' tests): medians swing; single-threaded as below; ratio = ours / peer by medians, by
minima in brackets; results/models.json, the --quick run in models_quick.json):

* Exact Hessian of the README's logistic model / numpy closed form: on the line. Full run 1.67
  (1.47): FAIL by the median at load 10; --quick 1.49 (1.45): PASS; earlier full and --quick
  runs at load ~7: 1.46 (1.44), 1.51 (1.43), 1.49 (1.49); interleaved A/B in one process against
  the previous commit (load 5-7, 10 rounds x 500): 1.40 (1.42) against 2.57 (2.12), i.e. ~56-62
  against ~84-86 us with numpy at ~37-38 (2.2-2.4 before). ``check=False`` 1.26-1.31, the zoo's
  model 1.34-1.46 by minima.
* MNLogit 0.77 (0.59): PASS; Poisson 0.68 (0.74): PASS; NB2 0.77 (0.66): PASS.
* Tobit 3.97 (4.24): FAIL (10 iterations against numpy's 5: not attempted this round).
* Zoo logistic 0.73 (0.70) against 1/3: FAIL; OLS by ML 1.55 (1.23), --quick 1.20 (1.22): FAIL
  (the linear start ~10 us cheaper; the rest is the solve's machinery ~50 us at 0 iterations,
  the covariance program ~100 us and host code, in ``_fit.py``/``_covariance.py``, outside this
  round's scope).

Where the README's logistic Hessian went (before; N = 1500, p = 12, CPU us, load ~5, medians):
~86 = the program ~65 (3 ``exp`` and a ``log1p`` per row: ``jnp.logaddexp``'s rule
``t exp(x - out)`` needs the primal ``log1p`` at every order, and XLA's float64 ``log1p`` costs
~10 ns per element against ~3 for ``exp``; its ``N x p`` tangent fusion carried the rule's
infinity selects) + ~20 of host code (the closure fingerprint 4-14 us in context, the parameter
check ~2-5, the result). Measured pieces: the closed form in JAX 40 us, plus the value (the
check's ``log1p``) 56 us, numpy 38.

What changed (fourth round):

* ``_rules.py``: ``jnp.logaddexp`` (so ``jax.nn.softplus`` and ``log_sigmoid``) is differentiated
  by ``sigmoid`` weights inside autohess's Hessian and fit programs (the jaxpr evaluated with
  the rule bound in its place; values are JAX's own): one ``exp`` per row, no ``log1p`` in the
  derivatives. Written as ``m = sigmoid(-|d|)`` and ``1 - m``: with ``sigmoid(d)``,
  ``sigmoid(-d)`` the larger weight's second derivative cancelled to 0 beyond |d| ~ 37 (JAX's
  own rule loses the same term: H[2, 2] = 0 instead of 1.2e-21 at d = -50, see the test).
* ``ah.hessian``'s finiteness check evaluates the log-likelihood with each ``logaddexp`` (and the
  zoo's ``softplus``) replaced by a stand-in finite exactly where it is (the ``max`` of its
  arguments: the ``log1p`` term lies in ``[0, log 2]``), when it feeds only sums, products and
  selects; else the value itself. The check costs ~3 us instead of ~16.
* The closure fingerprint: exact-type dispatch (9 -> 4.4 us), then memoised where a function
  reads only numbers, modules and functions, checked by the identity of every slot read (code,
  cells, defaults, named globals): ~1 us per ``_jitted`` call, in fits too.
* ``_model_params``: parameters that are already the model's jax arrays pass after one flatten.
* The zoo's starts form ``X' W X`` and ``X' W z`` as matrix products over the rows (``X' y`` was a
  loop fusion), the linear start without its product by ones: ~10 us of the linear start's ~50.

Measured, not kept: the Hessian through the linear predictors (``_rowwise``) for ``ah.hessian``:
XLA recomputes the weights inside the ``N x p`` product either way, 41-53 us against 43-46
(fwd-rev); ``rev-rev`` runs this model's program ~3 us faster than ``fwd-rev`` (the transposed
copy of ``w X`` before the product) but a user's model keeps its declared mode; the program
with the older CPU emitters or without YNNPACK: equal or slower.

Third round, for reference (2-core AMD EPYC VM, 2026-12-01 21:49, run at c29b57b, full run; ``uptime``
load average 9.5-10.7 on 2 cores before and after: other sessions' tests were running, the
process got about half a CPU; single-threaded as above; ratio = ours / peer by medians, by
minima in brackets; results/models.json, the --quick run beside it in models_quick.json):

* MNLogit (36 parameters): 0.82 (0.64): PASS (1.65-1.82 before). 6 iterations at ~0.25-0.3 ms
  (the pass through the linear predictors, ``_rowwise``: 6 tangents instead of 36) + ~1.0 ms
  fixed (a fit started at the optimum: one pass, the covariance and diagnostics program at
  p = 36, host code); statsmodels 7 Newton iterations, 4.1-4.7 ms.
* Tobit: 4.06 (4.36): FAIL (6.9-8.2 before). Still 10 iterations from beta = 0, sigma = 1 against
  numpy's 5 from OLS; each ~0.68 ms (the pass ~0.55 ms, 2 tangents instead of 11, against the
  closed form written in JAX ~0.44 ms and ~0.85 ms before) + ~1.8 ms fixed.
* Zoo: logistic 0.89 (0.76) against 1/3: FAIL (unchanged: its 9 operations per row keep
  forward-over-reverse, see ``_rowwise.FEW_OPS``); Poisson 0.71 (0.78): PASS; NB2 0.81 (0.65):
  PASS; OLS by ML 1.50 (1.30): FAIL (0.78x its own time before, A/B below).
* Exact Hessian of the README's logistic model / numpy closed form: 2.27 (2.18) against 1.5:
  FAIL (unchanged; ``check=False`` 2.05, the zoo's model 2.14).

Where the Tobit's 20 ms went (before; CPU ms, minima on the loaded VM, one XLA thread): 10
passes of value + gradient + Hessian at 0.85-1.3 ms each (forward-over-reverse: 11 tangents
through 50 operations per observation after ``X @ beta``: ``log_ndtr`` computes all three of
its branches (``log(ndtr)``, ``log1p(-ndtr(-x))``, the asymptotic series) for every observation,
and its ``custom_jvp`` rule evaluates ``log_ndtr`` again inside the derivative; 6.9 Mflop by
XLA's count against 4.2 now) + ~1.8 ms fixed: the solve program at the optimum 1.07 ms (one pass,
the objective's scale = one log-likelihood evaluation ~0.22 ms, the trust-region algebra), the
covariance and diagnostics program and host code ~0.5-0.8 ms, of which the closure fingerprint
0.08-0.14 ms (it followed ``log_ndtr`` into JAX's rule and globals: 87 parts; now 1). The
iterations: the start's Hessian is indefinite, so the region starts at sqrt(p) marginal SDs and
grows 3x per accepted step (the largest coefficient moves 0.019, 0.077, 0.245, 0.71 of its 0.95
distance, one overshoot), then 5 Newton steps including the one that confirms convergence. No
host round trips inside the solve (one read of its flags, one of ``flagged``).

Third round (issue #16 part 1, this run; A/B in one process, the fit programs compiled with and
without ``_rowwise``, interleaved, CPU time, load ~10, medians (minima) over 40 fits + SEs):
MNLogit 3.95 (3.13) against 7.37 (6.54) ms: 0.54x; Tobit 9.76 (7.87) against 16.56 (15.31) ms:
0.59x; NB2 0.83x; OLS by ML 0.78x; logistic and Poisson 1.01x and 0.94x (their programs are the
same). Estimates within 6e-16 and SEs within 2e-13 relative; iteration counts unchanged.

* ``_rowwise.py``: where the log-likelihood meets its parameters only in products of data with
  a selection of them (``X @ beta``, ``X @ B.T``) and is otherwise row by row, the solver's
  value, gradient and Hessian come from one forward-over-reverse pass with one tangent per
  predictor column and per parameter used directly (``ones`` down the rows: row i depends on its
  own predictors only), then ``X' diag(.) X``; found in the jaxpr (nested ``jit`` and custom
  rules followed), else the pass as before. Exact: the same chain rule, equal to rounding
  (tests/test_rowwise.py). Used by ``fit`` (``_problem._unconstrained_value_grad_hess``), not by
  ``ah.hessian``, batches or the profile.
* The closure fingerprint records JAX's own module-level functions by name.
* Tried and not kept: ``X.T @ (w X)`` (XLA formed it in a loop fusion inside the solver's loop)
  and the objective's scale applied per row (XLA moved it onto the design, hoisted it out of the
  loop and sent ``X' W X`` to a YNNPACK fusion): the zoo logistic's solve was 10% slower until
  both were changed, and the single-predictor GLMs still measured ~equal at best, so those with
  few operations per row keep forward-over-reverse.

Not done (third round): the Tobit's iterations (a user-written model has no data start; the
solver's handling of an indefinite start is shared with GARCH, where the last round's attempts
cost iterations); ``ah.hessian`` through the predictors; the fixed costs of the zoo logistic,
OLS by ML and the user-written Hessian (two programs and two host reads per fit, see below).

Second round, for reference (2026-12-01 19:05, run at 0fb439b, load average 9.5-10.8):
MNLogit 1.65 (1.58); Tobit 6.9 (6.8); zoo logistic 0.78 (0.74), Poisson 0.75 (0.77), NB2 0.93
(0.76), OLS by ML 2.21 (1.45); exact Hessian of the README's logistic 2.29 (2.15).

This branch against main (c0a5010), the same workloads in one process (main's package imported
under another name, /tmp script), interleaved, CPU time, load ~10, medians (minima): zoo logistic
fit + SEs 0.59x (0.74x) the time, Poisson 0.59x (0.66x), NB2 0.92x (0.90x), OLS by ML 0.26x
(0.20x); estimates within 7e-14 and SEs within 1e-14 relative (of max(|estimate|, SE)):
logistic 4 iterations instead of 6, Poisson 5 instead of 7, OLS by ML 0 instead of 10.

What changed (issue #16 part 1, second round):

* The zoo starts from its data (``Model.start_fn``, evaluated inside the compiled solve, so no
  host work and no construction cost): the normal linear model from least squares and
  ``sigma^2 = RSS / N``, the MLE itself (the solve confirms it in one pass: 10 -> 0
  iterations); logistic and Poisson from one IRLS step from means near ``y`` (R's ``glm``
  start: 6 -> 4 and 7 -> 4-5 iterations; the step's ``X' W X`` costs ~50 us, about one pass,
  against ~80 us of passes saved). Collinear designs, exact fits, chunked fits and a user's
  ``start=``/``beta=`` keep the initial values. NB2 has none (a Poisson start did not cut its
  7 iterations).
* ``linear_loglik`` multiplies the residuals by ``1/sigma`` instead of dividing: one scalar
  derivative in sigma instead of one per observation; its value + gradient + Hessian program
  188 -> 107 us (N = 1500, p = 13).
* ``res.bse`` is the covariance program's own square root (memo by the covariance array), not
  a ``device_put`` of the host's (30-45 us per fit + SEs); the closure fingerprint records
  autohess's own module-level functions by name (the zoo's: 22 -> 5 us per fit or Hessian);
  ``bounds_arrays`` looks its cache up by the dtype object (~5 us).

Where the warm time goes now (logistic N = 1500, p = 12, minima on the loaded machine): fit +
SEs ~575 us = the solve program ~330 us (the start ~50, 5 passes at ~40 us each inside the loop,
the objective's scale ~18 (one more log-likelihood evaluation), ~20 outputs ~1 us each) + the
covariance and diagnostics program ~66 us (eigh, Cholesky, LU and three triangular solves on
12 x 12; compiled at LLVM level 0) + ~150 us of host code (two host reads of ~15 us: the solve's
flags, then ``flagged``; the fingerprint; argument checks; the result). A pass costs ~44 us
against numpy's closed form ~31 us: XLA's ``X' (W X)`` ~24 us against OpenBLAS's ~22 us, the
rest is elementwise work and per-op overhead. The 1/3 target needs ~300 us: merging the two
programs (one dispatch and one read fewer, ~40 us) was left out for part 2's first-call
target, as before.

Measured, not changed (``_config.compiler_options`` is another engineer's scope): with XLA's
YNNPACK fusions off (``xla_cpu_experimental_ynn_fusion_type=""``) the normal linear model's
value + gradient + Hessian program ran in 108-132 us instead of 174-189 (its 13 x 1500 reductions
go through YNNPACK), MNLogit's 701-716 instead of 764-799 us, logistic and Poisson unchanged
and the Tobit mixed (fwd-rev 890 vs 943, rev-rev 1046 vs 917 us); minima under load ~10.

Not done: MNLogit (a fold of one-hot class tangents into gathers, as ``fold_basis`` does for
``X @ I``); the Tobit (a cheaper ``log_ndtr`` is the user's; tried and not kept: a first region
as long as the scaled gradient where the start's Hessian is indefinite cut the Tobit's 10
iterations to 8 but took GARCH-t from two poor starts 17 -> 23 and 14 -> 18; growing the
region 10x instead of 3x at rho > 0.75 left the Tobit at 10 and slowed the same GARCH fits);
the user-written Hessian's ~57 us program + ~17 us of host code against 37 us.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _harness import (  # noqa: E402  (shared by the benchmark scripts; none touch JAX at import time; puts this checkout on sys.path)
    Interleaved,
    busy_fraction,
    machine_info,
    print_markdown_table,
    print_run_header,
)

RESULTS_FILE = HERE / "results" / "models.json"
SEED = 0
N_TOBIT, P_TOBIT = 6366, 10
N_ZOO, P_ZOO = 1500, 12
P_COUNT = 6  # Poisson and NB2 covariates (constant included)

TARGETS = {
    # ours / peer, median per fit + SEs (or per Hessian)
    "fit_over_statsmodels_max": 1.0,
    "logit_fit_over_sm_logit_max": 1.0 / 3.0,
    "hessian_over_closed_form_max": 1.5,
}


# ------------------------------------------------------------------------------------------
# Data (numpy only)
# ------------------------------------------------------------------------------------------
def anes96():
    import statsmodels.api as sm

    d = sm.datasets.anes96.load_pandas()
    X = np.column_stack([np.ones(len(d.endog)), d.exog.to_numpy(np.float64)])
    return X, d.endog.to_numpy().astype(np.int64)


def tobit_data(n=N_TOBIT, p=P_TOBIT, seed=SEED):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    beta = np.r_[0.3, 0.5 * rng.standard_normal(p - 1)]
    ystar = X @ beta + 1.5 * rng.standard_normal(n)
    return X, np.maximum(ystar, 0.0)


def glm_data(kind, n=N_ZOO, p=P_ZOO, seed=SEED):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    beta = np.r_[-0.5 if kind == "logistic" else 0.5, 0.4 * rng.standard_normal(p - 1)]
    if kind in ("poisson", "nb2"):
        beta = np.r_[0.5, 0.25 * rng.standard_normal(p - 1)]
    eta = X @ beta
    if kind == "logistic":
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-eta))).astype(np.float64)
    elif kind == "poisson":
        y = rng.poisson(np.exp(eta)).astype(np.float64)
    elif kind == "nb2":
        alpha = 0.5
        y = rng.poisson(rng.gamma(1.0 / alpha, alpha * np.exp(eta))).astype(np.float64)
    else:
        y = eta + 0.7 * rng.standard_normal(n)
    return X, y


# ------------------------------------------------------------------------------------------
# The Tobit peer: Newton in numpy with the analytic derivatives (Olsen's parameterisation)
# ------------------------------------------------------------------------------------------
def tobit_newton_np(X, y, tol=1e-10, maxiter=100):
    """``(beta, sigma, cov of (beta, sigma), iterations)``: Newton on the concave Tobit
    log-likelihood in ``(delta, theta) = (beta / sigma, 1 / sigma)``, started from OLS."""
    from scipy.special import log_ndtr

    cens = y <= 0.0
    Xc, Xu, yu = X[cens], X[~cens], y[~cens]
    b0, *_ = np.linalg.lstsq(X, y, rcond=None)
    s0 = np.std(y - X @ b0)
    w = np.r_[b0 / s0, 1.0 / s0]
    p = X.shape[1]
    for it in range(1, maxiter + 1):
        delta, theta = w[:p], w[p]
        r = theta * yu - Xu @ delta  # uncensored: log theta - r^2 / 2
        z = -(Xc @ delta)  # censored: log Phi(z)
        lam = np.exp(-0.5 * z * z - 0.5 * np.log(2.0 * np.pi) - log_ndtr(z))
        g = np.r_[Xu.T @ r - Xc.T @ lam, len(yu) / theta - yu @ r]
        H = np.empty((p + 1, p + 1))
        H[:p, :p] = -(Xu.T @ Xu) - (Xc.T * (lam * (z + lam))) @ Xc
        H[:p, p] = H[p, :p] = Xu.T @ yu
        H[p, p] = -len(yu) / theta**2 - yu @ yu
        step = np.linalg.solve(H, g)
        w = w - step
        if np.max(np.abs(step) / (np.abs(w) + 1.0)) < tol:
            break
    delta, theta = w[:p], w[p]
    # the Hessian at the optimum (the last one is one step old; recompute for exact SEs)
    r = theta * yu - Xu @ delta
    z = -(Xc @ delta)
    lam = np.exp(-0.5 * z * z - 0.5 * np.log(2.0 * np.pi) - log_ndtr(z))
    H[:p, :p] = -(Xu.T @ Xu) - (Xc.T * (lam * (z + lam))) @ Xc
    H[p, p] = -len(yu) / theta**2 - yu @ yu
    cov_w = np.linalg.inv(-H)
    J = np.zeros((p + 1, p + 1))  # d(beta, sigma) / d(delta, theta)
    J[:p, :p] = np.eye(p) / theta
    J[:p, p] = -delta / theta**2
    J[p, p] = -1.0 / theta**2
    return delta / theta, 1.0 / theta, J @ cov_w @ J.T, it


# ------------------------------------------------------------------------------------------
# Workloads: each returns (name, {method: callable}, estimates dict, notes)
# ------------------------------------------------------------------------------------------
def ah_fit_bse(ah, model):
    res = ah.fit(model)
    return res, np.asarray(res.bse_flat)


def diffs(ah_params, ah_bse, peer_params, peer_bse) -> dict:
    return {
        "params_max_abs_diff": float(np.max(np.abs(np.asarray(ah_params) - np.asarray(peer_params)))),
        "bse_max_abs_diff": float(np.max(np.abs(np.asarray(ah_bse) - np.asarray(peer_bse)))),
    }


def mnlogit_workload(ah, jnp):
    import jax
    import statsmodels.api as sm

    X, y = anes96()
    k, j = X.shape[1], int(y.max())  # 6 covariates, 6 non-base categories

    def loglik(params, data):
        eta = data["X"] @ params["B"].T  # (N, 6)
        eta = jnp.concatenate([jnp.zeros((eta.shape[0], 1)), eta], axis=1)
        return jnp.take_along_axis(eta, data["y"][:, None], axis=1)[:, 0] - jax.scipy.special.logsumexp(eta, axis=1)

    model = ah.Model(loglik, {"X": X, "y": y}, params={"B": jnp.zeros((j, k))})
    sm_model = sm.MNLogit(y, X)

    def peer():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = sm_model.fit(method="newton", disp=0)
        return r, np.asarray(r.bse)

    res, bse = ah_fit_bse(ah, model)
    r, sbse = peer()
    # statsmodels: params (k, j), column = equation; autohess: B (j, k) row-major
    d = diffs(res.params_flat, bse, np.asarray(r.params).T.ravel(), sbse.T.ravel())
    notes = f"ah {int(res.iterations)} it., sm {r.mle_retvals['iterations']} it.; p = {j * k}"
    return "MNLogit anes96 N=944 p=36", model, (lambda: ah_fit_bse(ah, model)), "sm.MNLogit newton", peer, d, notes, res


def tobit_workload(ah, jnp):
    from jax.scipy.special import log_ndtr
    from jax.scipy.stats import norm

    X, y = tobit_data()

    def loglik(params, data):
        xb, s = data["X"] @ params["beta"], params["sigma"]
        censored = log_ndtr(-xb / s)
        observed = norm.logpdf(data["y"], xb, s)
        return jnp.where(data["y"] <= 0.0, censored, observed)

    model = ah.Model(loglik, {"X": X, "y": y}, params={"beta": jnp.zeros(P_TOBIT), "sigma": ah.Positive(1.0)})
    res, bse = ah_fit_bse(ah, model)
    b, s, cov, it = tobit_newton_np(X, y)
    peer_params = np.r_[b, s]  # labels: beta[0..9], sigma
    d = diffs(res.params_flat, bse, peer_params, np.sqrt(np.diag(cov)))
    if d["params_max_abs_diff"] > 1e-8:
        raise AssertionError(f"the numpy Tobit Newton loop did not reach autohess's optimum: {d}")
    notes = f"ah {int(res.iterations)} it., numpy {it} it.; {np.mean(y <= 0):.0%} censored"
    return ("Tobit N=6366 p=11", model, (lambda: ah_fit_bse(ah, model)), "numpy analytic Newton",
            (lambda: tobit_newton_np(X, y)), d, notes, res)


def zoo_workloads(ah):
    import statsmodels.api as sm

    out = []
    for kind in ("logistic", "poisson", "nb2", "linear"):
        p = P_ZOO if kind in ("logistic", "linear") else P_COUNT
        X, y = glm_data(kind, p=p)
        if kind == "logistic":
            model, sm_model, how, label = ah.models.logistic(X, y), sm.Logit(y, X), {}, "sm.Logit newton"
        elif kind == "poisson":
            model, sm_model, how, label = ah.models.poisson(X, y), sm.Poisson(y, X), {}, "sm.Poisson newton"
        elif kind == "nb2":
            model = ah.models.negative_binomial(X, y)
            sm_model, how, label = sm.NegativeBinomial(y, X, loglike_method="nb2"), {"method": "newton", "maxiter": 100}, "sm.NegativeBinomial nb2 newton"
        else:
            model, sm_model, how, label = ah.models.linear(X, y), sm.OLS(y, X), None, "sm.OLS"

        def peer(sm_model=sm_model, how=how):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = sm_model.fit() if how is None else sm_model.fit(disp=0, **how)
            return r, np.asarray(r.bse)

        res, bse = ah_fit_bse(ah, model)
        r, sbse = peer()
        sp = np.asarray(r.params)
        labels = res.labels
        if kind == "nb2":  # ah: alpha, beta[...]; sm: beta..., alpha
            sp, sbse = np.r_[sp[-1], sp[:-1]], np.r_[sbse[-1], sbse[:-1]]
        notes = f"ah {int(res.iterations)} it."
        if kind == "linear":  # ah: beta..., sigma (ML, / N); OLS: beta (s^2 with N - p)
            n = len(y)
            sbse = sbse * np.sqrt((n - p) / n)  # the ML covariance of beta is s^2_ML (X'X)^-1
            d = diffs(res.params_flat[:-1], np.asarray(bse)[:-1], sp, sbse)
            notes += "; bse of beta compared with OLS's rescaled by sqrt((N-p)/N); sigma not in OLS"
        else:
            d = diffs(res.params_flat, bse, sp, sbse)
            notes += f", sm {r.mle_retvals.get('iterations', '?')} it."
        assert labels  # noqa: S101
        out.append((f"zoo {kind} N={N_ZOO} p={len(labels)}", model, (lambda model=model: ah_fit_bse(ah, model)),
                    label, peer, d, notes, res))
    return out


def hessian_workload(ah, jnp, reps, rounds):
    from scipy.special import expit

    X, y = glm_data("logistic")

    def loglik(params, data):  # the README's example
        eta = data["X"] @ params["beta"]
        return data["y"] * eta - jnp.logaddexp(0.0, eta)

    model = ah.Model(loglik, {"X": X, "y": y}, params={"beta": jnp.zeros(P_ZOO)})
    zoo = ah.models.logistic(X, y)
    beta = np.asarray(ah.fit(zoo).params_flat)
    params = {"beta": jnp.asarray(beta)}

    def closed_form():
        prob = expit(X @ beta)
        return X.T @ (X * (prob * (1.0 - prob))[:, None])

    ref = closed_form()
    timer = Interleaved(rounds, clock=time.process_time)
    methods = {
        "ah.hessian user Model": lambda: ah.hessian(model, params).matrix.block_until_ready(),
        "ah.hessian user Model check=False": lambda: ah.hessian(model, params, check=False).matrix.block_until_ready(),
        "ah.hessian zoo logistic": lambda: ah.hessian(zoo, params).matrix.block_until_ready(),
        "numpy closed form": closed_form,
    }
    for key, fn in methods.items():
        timer.add(key, fn, reps)
    times = timer.run()
    err = float(np.max(np.abs(np.asarray(ah.hessian(model, params).matrix) - ref)) / np.max(np.abs(ref)))
    return times, err


# ------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help="JSON results path")
    parser.add_argument("--blas-threads", type=int, default=1, metavar="N",
                        help="OpenBLAS threads for numpy/scipy (default 1; 0 leaves the environment alone)")
    args = parser.parse_args(argv)
    if args.blas_threads > 0 and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.blas_threads):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.blas_threads)}
        script = str(Path(__file__).resolve())
        os.execve(sys.executable, [sys.executable, script, *(sys.argv[1:] if argv is None else argv)], env)

    t_start = time.perf_counter()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    busy_start = busy_fraction()
    s = ({"fit_reps": 40, "peer_reps": 20, "hess_reps": 400, "rounds": 4} if args.quick
         else {"fit_reps": 300, "peer_reps": 150, "hess_reps": 3000, "rounds": 10})

    s["clock"] = "time.process_time: CPU time of this process (one BLAS thread; run with one XLA thread too)"
    import autohess as ah  # before any JAX array: float64 + synchronous CPU dispatch
    import jax
    import jax.numpy as jnp

    workloads = [mnlogit_workload(ah, jnp), tobit_workload(ah, jnp), *zoo_workloads(ah)]
    rows = []
    for name, _model, ours, peer_label, peer, d, notes, res in workloads:
        timer = Interleaved(s["rounds"], clock=time.process_time)
        timer.add("ours", ours, s["fit_reps"], warmup=5)
        timer.add("peer", peer, s["peer_reps"], warmup=3)
        t = timer.run()
        rows.append({
            "workload": name, "ours": "ah.fit + bse", "peer": peer_label,
            "ours_median_us": t["ours"]["median_us"], "ours_min_us": t["ours"]["min_us"],
            "peer_median_us": t["peer"]["median_us"], "peer_min_us": t["peer"]["min_us"],
            "ratio": t["ours"]["median_us"] / t["peer"]["median_us"],
            "ratio_min": t["ours"]["min_us"] / t["peer"]["min_us"],
            "status": res.status_code.item(), **d, "notes": notes,
        })
    htimes, herr = hessian_workload(ah, jnp, s["hess_reps"], s["rounds"])
    closed = htimes["numpy closed form"]
    for key in ("ah.hessian user Model", "ah.hessian user Model check=False", "ah.hessian zoo logistic"):
        rows.append({
            "workload": f"logistic Hessian N={N_ZOO} p={P_ZOO}", "ours": key, "peer": "numpy closed form",
            "ours_median_us": htimes[key]["median_us"], "ours_min_us": htimes[key]["min_us"],
            "peer_median_us": closed["median_us"], "peer_min_us": closed["min_us"],
            "ratio": htimes[key]["median_us"] / closed["median_us"],
            "ratio_min": htimes[key]["min_us"] / closed["min_us"], "status": None,
            "params_max_abs_diff": None, "bse_max_abs_diff": None,
            "notes": f"max|H - closed| / max|closed| = {herr:.1e}" if key == "ah.hessian user Model" else "",
        })

    targets = []
    for r in rows:
        if r["ours"] == "ah.fit + bse":
            limit = TARGETS["logit_fit_over_sm_logit_max" if "logistic" in r["workload"] else "fit_over_statsmodels_max"]
        elif r["ours"] == "ah.hessian user Model":
            limit = TARGETS["hessian_over_closed_form_max"]
        else:
            continue
        targets.append({"workload": r["workload"], "ours": r["ours"], "ratio": r["ratio"], "ratio_min": r["ratio_min"],
                        "max": limit, "status": "PASS" if r["ratio"] <= limit else "FAIL"})

    info = machine_info(jax)
    info["OPENBLAS_NUM_THREADS"] = os.environ.get("OPENBLAS_NUM_THREADS")
    info["load_average_at_start"] = load_start
    info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    info["cpu_busy_fraction_before_run"] = busy_start
    total_s = time.perf_counter() - t_start
    print_run_header("autohess models benchmark (ours / fastest peer)", info, busy_start,
                     flags=f"{' [--quick]' if args.quick else ''}; load average {load_start}")
    print(f"\nMedian (min) per call, interleaved in {s['rounds']} rounds (fits: {s['fit_reps']} ah / {s['peer_reps']} peer; "
          f"Hessians: {s['hess_reps']} each); ratio = ours / peer (< 1: autohess faster).\n")
    print_markdown_table(
        ["workload", "ours", "peer", "ours ms (min)", "peer ms (min)", "ratio (of mins)", "max |params diff|",
         "max |bse diff|", "notes"],
        [[r["workload"], r["ours"], r["peer"], f"{r['ours_median_us'] / 1e3:.3f} ({r['ours_min_us'] / 1e3:.3f})",
          f"{r['peer_median_us'] / 1e3:.3f} ({r['peer_min_us'] / 1e3:.3f})", f"{r['ratio']:.2f} ({r['ratio_min']:.2f})", "—" if r["params_max_abs_diff"] is None else f"{r['params_max_abs_diff']:.1e}",
          "—" if r["bse_max_abs_diff"] is None else f"{r['bse_max_abs_diff']:.1e}", r["notes"]] for r in rows],
    )
    print("\n## targets")
    for t in targets:
        print(f"- {t['workload']} {t['ours']}: ratio {t['ratio']:.2f} (of mins {t['ratio_min']:.2f}) <= "
              f"{t['max']:.2f} -> {t['status']}")
    print(f"\ntotal benchmark time {total_s:.0f} s")
    result = {"benchmark": "bench_models", "quick": args.quick, "settings": s, "machine": info, "rows": rows,
              "targets": targets, "total_s": total_s}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
