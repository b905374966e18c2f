#!/usr/bin/env python
"""Benchmark: thousands of bootstrap refits with exact Hessians as one batched program.

Run from the repository root::

    python benchmarks/bench_batch.py            # full run, writes benchmarks/results/batch.json
    python benchmarks/bench_batch.py --quick    # small B and fewer repeats, for a smoke test
    python benchmarks/bench_batch.py --n-logistic 20000 --n-garch 2000 --output /tmp/batch.json

What is timed is one ``ah.bootstrap(res, n=B, key=...)`` call (every replicate refitted by
the trust-region Newton solver with its exact Hessian and standard errors, the resampling
drawn inside the compiled program), up to ``jax.block_until_ready`` of the replicates and
their standard errors. Workloads (float64):

1. Logistic regression, N = 1500, p = 12 (bench_hessian.py's data), nonparametric bootstrap
   (multinomial frequency weights). Baselines: a plain ``jax.jit(jax.vmap(newton))`` with 8
   full Newton steps (``jax.hessian`` + ``jnp.linalg.solve`` on the weighted negative
   log-likelihood, weights drawn inside from the same kind of keys, started at the estimate)
   and standard errors from ``inv(H)``, same B; and a loop of scipy
   ``minimize(method="BFGS")`` (its default 2-point numerical gradient) +
   ``statsmodels.tools.numdiff.approx_hess`` on a numpy negative log-likelihood, over a sample
   of resampled data sets.
2. GARCH(1,1)-t on the first 1500 DEM/GBP returns, parametric bootstrap (series simulated from
   the model at the estimate), with the ``lax.scan`` variance recursion and with
   ``recursion="associative"``. Baseline: the scipy BFGS + ``approx_hess`` loop on the numpy
   log-likelihood of bench_fit.py (``scipy.signal.lfilter`` recursion, ``-inf`` outside the
   domain) over a sample of series simulated by the model.

Per autohess row: B, the first call (trace + compile + run, in this process after ``ah.fit``
of the same model), the warm time (median of a few calls, a new key each), the time per fit
and the share of replicates that converged. "speed-up" is the scipy loop's mean time per fit
times B over the batch's warm time. The issue's targets are for one H100 (logistic B=100,000
in <= 50 ms; GARCH-t B=10,000 in <= 0.5 s); on a CPU they are reported as not applicable,
with the per-fit time scaled to the target B as a clearly labelled extrapolation.

Hangs: before autohess commit afa9a69 ("Order LAPACK calls by data dependency"), batched fits
of ~1000 or more members on the 2-core VM hung for good inside the compiled program (the
solver's batched Cholesky and eigendecomposition ran concurrently and both waited in jaxlib's
``ParallelBatchMap`` for thread-pool work that no thread was left to run). ``--xla-workaround``
adds ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` to XLA_FLAGS, which also
avoided it (at no measurable cost) for older versions; by default XLA_FLAGS is left alone. A
call that takes longer than ``--call-timeout`` seconds dumps every thread's stack and exits.

Headline numbers (2-core AMD EPYC VM, CPU only, Linux, Python 3.11.7, jax 0.10.2,
numpy 2.4.6, scipy 1.17.1, statsmodels 0.15.0, OPENBLAS_NUM_THREADS=1, XLA_FLAGS unset,
autohess 9c03404 (solver that stops at a 1e-12 Newton step and lengthens ridge steps);
2026-11-25, CPUs idle; no GPU was lent to this task):

* Logistic N=1500, p=12, nonparametric, B=5000: ``ah.bootstrap`` 1.46 s warm, 293 us per fit,
  all converged (first call 4.1 s; two equal chunks of 2,500 from the 2 GiB CPU budget;
  Newton iterations per replicate median 4, max 5). Plain ``jit(vmap(newton))``, 8
  ``jax.hessian`` steps: 4.07 s (814 us per fit). scipy BFGS + ``approx_hess``: 22.0 ms per
  fit, i.e. 110 s for B=5000 (extrapolated): speed-up 75x. One warm ``ah.fit`` + bse: 0.47 ms.
* GARCH(1,1)-t N=1500, parametric, B=1000: scan 7.1 s warm (7.1 ms per fit; first call
  12.3 s), associative 16.8 s (first call 31.0 s). scipy loop 14.7 ms per fit (BFGS stops with
  "precision loss" on all 20 series, yet agrees with ``ah.fit_batch`` to 2e-5 SE): speed-up
  2.1x (scan), 0.9x (associative). One warm ``ah.fit`` + bse costs 2.2 ms, so the batch is
  3.3x slower per fit than fitting one series at a time: the vmap-ed solver loop runs every
  member as long as the slowest (median 5 Newton iterations, 99th percentile 9, max 23; the
  stragglers are replicates heading for alpha = 1 with nu near its bound 2, crossing regions
  of indefinite Hessians before the ridge phase). The previous solver (cc75c5a) measured
  1.88 s / 375 us (logistic) and 10.4 ms per fit with max 30 iterations (GARCH scan).
* Targets (one H100): not applicable on this CPU. Extrapolated from the per-fit times (not
  measured): logistic B=100,000 29 s; GARCH-t B=10,000 71 s (scan), 168 s (associative).
  Timings on this VM drift by 10-25% between runs.
* Re-run at 217020e (diagnostics judged on the face, pseudo-inverse SEs beside flat
  directions, escape test on singular Hessians; results/batch.json): logistic 304 us per fit
  (67x), GARCH-t scan 8.1 ms, associative 14.3 ms. Side by side, alternating old (a3f73a7)
  and new in fresh processes: logistic B=2000 283-291 vs 297-311 us per fit (the escape
  test's eigendecomposition now runs for every member: a vmapped ``cond`` is a select);
  GARCH-t parametric B=400 7.7-8.2 vs 7.7-7.9 ms (no difference beyond noise).
* Re-run at 478951d (trust region widens "blind" regions at extreme starts; results/batch.json):
  logistic 300 us per fit (68x), GARCH-t scan 6.6 ms (max 23 iterations), associative
  15.2 ms: within this VM's run-to-run drift of the previous run.

* Compaction of unfinished members (#16 part 3, ``--compaction ROUNDS``: one warm ``ah.fit`` +
  bse against a bootstrap's time per member with and without compaction, interleaved in
  rounds; results/batch_compaction.json). 2026-12-01 on the shared 2-core VM at load average
  13-19 (several engineers' test suites): absolute times are not meaningful, ratios within a
  round only roughly. GARCH-t parametric B=1000, round 0 (every bucket program compiled by the
  warm-up): 3.1x a single fit's wall time per member compacted against 5.4x not compacted
  (CPU time: 2.4x against 5.2x); stages 1000 -> 83 members (bucket 128) -> 4 (8) -> 4 (8) -> 1
  (8). Round 1 needed a bucket size (64) the warm-up had not compiled, and its compilation
  (tens of seconds under that load) made it 11.9x: each new bucket size is compiled once per
  model and process. The target (<= 1x) is NOT met. Logistic nonparametric B=5000 (two
  chunks of 2500; every member stops within the first stage's 8 iterations, so nothing is
  compacted): 0.88x / 0.43x a single fit's wall time in rounds 0 / 1 (CPU time 0.63x / 0.44x);
  the target (<= 0.5x) is met in one round of two: not established on this machine.
  "Not compacted" still has the other change of that commit (the trust-region subproblem only
  in iterations where some member needs it).

* Post-solve work once per member, cheap set-up (#16 part 3, continued; 2026-12-01, autohess
  c1fb01d; the VM at load average 11-23 throughout: six engineers' test suites on 2 cores).
  Profile of the previous code (cf1d17f), GARCH-t parametric B=1000, CPU seconds of the
  whole batch: first stage (1000 members, 8 passes, with results) 8.0-8.5 s, of which the
  member set-up (simulating the series) 2.7 s, the post-solve results (Hessian on the natural
  scale, escape test, covariances, diagnostics) 1.3 s, 8 solver passes ~5.3 s; the set-up was
  nearly all ``jax.random.gamma`` (the t innovations' chi-square: a ``lax.map`` over every
  element, 1.4 us a draw; 2.7 s for 1000 x 2000 draws against 0.05 s for as many normals).
  Changes: compacted stages trace the solver only (``Stage.solve_only``), the late members'
  results come from one "results" program (0 solver passes) on their final states, and
  ``garch11`` draws its chi-square with ``_sampling.gamma`` (vectorised Marsaglia-Tsang,
  exact; 0.42-0.53 s for the same 2,000,000 draws, 5x). Side by side (``--compaction``;
  results/batch_compaction.json, default threads, 3 rounds;
  results/batch_compaction_1thread.json, ``OPENBLAS_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
  intra_op_parallelism_threads=1"``, 2 rounds), per member against one warm ``ah.fit`` + bse,
  by process CPU time (wall-time ratios swung 1.6-9x with the load: a single fit took 7.9-31
  ms wall against 1.65 ms idle):

  - GARCH-t parametric B=1000: compacted 1.52-2.01x (default threads, median 1.84x;
    single-threaded 1.66x, 1.52x), not compacted 3.2-4.0x (single-threaded 3.43x, 3.37x);
    previous measurement (load 13-19, jax.random.gamma) 2.4x / 5.2x. Stages 1000 -> 82 (bucket
    128) -> 4 (8) -> 3 (8) -> 1 (8). Target <= 1x: NOT met. What is left is mostly the first
    stage (not timed apart after the change): 8 solver passes for all 1000 members where the
    median member needs 6, plus each member's set-up and results; by the profile above a
    vmap-ed pass of the GARCH Hessian (a 1500-step scan, 1000 members) costs ~0.66 ms CPU per
    member, not much less than a single fit's pass (~6.2 ms CPU for ~6 passes and results).
  - Logistic nonparametric B=5000 (two chunks of 2500; every member stops in the first stage,
    so nothing is compacted or recomputed): 0.43x, 0.91x, 1.08x a single fit's CPU time in
    rounds 0-2 (single-threaded 0.44x, 0.62x; not compacted the same to noise). Target
    <= 0.5x: met in 2 rounds of 5, not established on this machine (the single fit's CPU time
    itself ranged 1.0-2.3 ms).
  - ``newton_start`` (the whole Newton step first at a positive-definite start) does not slow
    batches: logistic bootstrap B=2000, single-threaded, process CPU time, 3 interleaved
    rounds: 1.83 / 1.91 / 1.63 s with it, 1.83 / 2.05 / 1.89 s without (mean Newton
    iterations 4.00 against 4.07); the 2.6 s -> 5.5 s measured around that change was load.

* CPU members group after group (#16 part 3, concluded; 2026-12-01, autohess 96d3156, the VM at
  load average 8.6-12: other engineers' test suites). Profile, single-threaded, process CPU
  time: a vmapped GARCH-t value/gradient/Hessian (fwd-rev through the 1500-step scan) cost
  1163 us per member at B = 1000, 1144 at 64, 584 at 16, against 363 us unbatched
  (``fwd-fwd`` 2241 unbatched / 4616 at 1000; ``rev-rev`` 420 / 1350): per member a vmap of the
  scan does 3x the work of the unbatched program (per-step work on short vectors instead of
  scalars; at 1000 members arrays of tens of MB leave the cache), so no stage layout or first
  stage length could bring the vmapped bootstrap down to a single fit. ``lax.map`` over vmapped
  groups of 8 or 32: 553 / 537 us. On a 1-device CPU a chunk now runs as a ``lax.map`` over
  groups of ``_batch.cpu_group_size`` members (256 KiB of working set by
  ``default_batch_size``'s estimate): GARCH-t and the logistic model at N = 1500 run one member
  at a time, unbatched (own solver loop, real ``cond``s, nothing to compact); a logistic model
  at N = 100, p = 3 (B = 2000) in groups of 16: unbatched 85-103 us per member, groups of 16
  36 us, 64 25-28 us, 256 23-25 us, the whole vmap 28-43 us. Side by side (``--compaction 3``,
  results/batch_compaction_1thread.json, ``OPENBLAS_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
  intra_op_parallelism_threads=1"``), per member over one warm ``ah.fit`` + bse, CPU time:

  - GARCH-t parametric B=1000: sequential 0.66x, 0.80x, 1.00x (median 0.80x; wall 0.83x),
    vmapped compacted 1.39x, 1.69x, 2.15x, vmapped not compacted 3.85-6.91x (single fit
    3.96-5.81 ms CPU). Target <= 1x: PASS (median; one round of three on the line).
  - Logistic nonparametric B=5000: sequential 0.33x, 0.24x, 0.31x (median 0.31x; wall 0.29x),
    vmapped compacted 0.48-0.55x, not compacted 0.48-0.56x (single fit 1.55-2.05 ms CPU).
    Target <= 0.5x: PASS.
  - Default threads (``--compaction 2``, results/batch_compaction.json, load 4.5-5.8), CPU
    time: GARCH-t sequential 0.73x, 0.94x (median 0.83x; wall 0.62x, 1.05x), vmapped
    compacted 1.66x, 2.12x (single fit 4.28-5.19 ms CPU): PASS, with little margin in one
    round; logistic sequential 0.31x, 0.36x (wall 0.33x, 0.52x), vmapped compacted 0.50x,
    0.69x (single fit 1.25-1.91 ms CPU): PASS by CPU time (wall on the line in one round).
  - Results: members equal single fits (1e-10) in both layouts (tests/test_batch_compaction.py
    and the batch, bootstrap, simulation and profile tests, which now run the CPU layout).

See benchmarks/README.md for how to run and read these numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# Shared with the other benchmarks (none of these touch JAX at import time).
from bench_fit import GARCH_LABELS, garch_loglike_np  # noqa: E402
from _harness import busy_fraction, machine_info, print_markdown_table, print_run_header, write_json  # noqa: E402
from bench_hessian import (  # noqa: E402
    N_GARCH,
    N_LOGISTIC,
    P_LOGISTIC,
    garch_data,
    logistic_data,
    logistic_negloglik_np,
)

RESULTS_FILE = HERE / "results" / "batch.json"

#: The issue's targets, each for one H100, with the plain-JAX time the issue measured there.
TARGETS = {
    "logistic": {"B": 100_000, "max_s": 0.050, "plain_jax_on_h100_s": 0.23,
                 "what": "logistic N=1500 p=12, nonparametric bootstrap"},
    "garch": {"B": 10_000, "max_s": 0.5, "plain_jax_on_h100_s": 3.3,
              "what": "GARCH(1,1)-t N=1500, parametric bootstrap"},
}
DEFAULT_B = {  # (logistic, garch) replicates
    "gpu": (TARGETS["logistic"]["B"], TARGETS["garch"]["B"]),
    "cpu": (5000, 1000),
    "quick": (500, 50),
}
NEWTON_STEPS = 8  # the plain-JAX baseline's fixed number of full Newton steps
NOT_APPLICABLE = "not applicable: measured on CPU, target is for one H100"

#: issue 16 part 3: a bootstrap's time per member over one warm ``ah.fit`` + bse (GARCH-t
#: parametric B=1000; logistic nonparametric B=5000)
TARGET_PER_MEMBER = {"garch": 1.0, "logistic": 0.5}

#: ``--xla-workaround``: kept batched fits of autohess before afa9a69 from deadlocking on CPU.
XLA_WORKAROUND = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def watchdog(seconds: float, what: str):
    """Dump every thread's stack and exit if a call hangs (a wedged XLA thread pool)."""
    if seconds <= 0:
        yield
        return
    print(f"[{what}]", file=sys.stderr, flush=True)
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def time_calls(call, repeats: int, timeout_s: float, what: str) -> tuple[dict, list]:
    """``call(seed)`` once cold and ``repeats`` times warm (seeds 1, 2, ...), wall seconds."""
    times, outs = [], []
    for seed in range(repeats + 1):
        with watchdog(timeout_s, f"{what}, call {seed}"):
            t0 = time.perf_counter()
            outs.append(call(seed))
            times.append(time.perf_counter() - t0)
    warm = times[1:]
    return {"first_s": times[0], "warm_s": statistics.median(warm), "warm_min_s": min(warm),
            "warm_all_s": warm, "repeats": repeats}, outs


def summarise(workload, method, B, timing, *, converged, notes="", extra=None) -> dict:
    return {"workload": workload, "method": method, "B": B, **timing,
            "per_fit_us": timing["warm_s"] / B * 1e6, "converged_fraction": converged,
            "notes": notes, **(extra or {})}


def cpu_ticks():
    """(busy, total) jiffies of all CPUs, and this process's own CPU seconds (Linux)."""
    try:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    t = os.times()
    return sum(vals) - vals[3] - vals[4], sum(vals), t.user + t.system


def other_work_fraction(start, end):
    """Share of all CPUs busy outside this process between two ``cpu_ticks`` snapshots."""
    if start is None or end is None:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = end[0] - start[0] - (end[2] - start[2]) * hz
    return max(0.0, busy / max(end[1] - start[1], 1))


# ------------------------------------------------------------------------------------------
# autohess
# ------------------------------------------------------------------------------------------
def bench_bootstrap(ah, jax, res, workload, method, B, kind, repeats, timeout_s) -> dict:
    from autohess import BootstrapWarning

    def call(seed):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BootstrapWarning)
            boot = ah.bootstrap(res, n=B, key=jax.random.key(seed), kind=kind)
            jax.block_until_ready((boot.fits.params_flat, boot.fits.bse_flat))
        return boot

    timing, boots = time_calls(call, repeats, timeout_s, f"{method} B={B}")
    conv = [float(np.mean(np.asarray(b.fits.converged))) for b in boots]
    last = boots[-1]
    iters = np.asarray(last.fits.iterations)
    finite_se = np.all(np.isfinite(np.asarray(last.fits.bse_flat)), axis=1)
    ratio = np.asarray(last.se_flat) / np.asarray(res.bse_flat, dtype=np.float64)
    chunks = default_chunks(res.model, B)
    notes = (f"{kind}; Newton iterations per replicate median {np.median(iters):.0f}, 99th percentile "
             f"{np.quantile(iters, 0.99):.0f}, max {iters.max()} (members still running after "
             f"8 iterations are compacted into smaller batches); {int((~finite_se).sum())} replicate(s) with a NaN standard error (estimate at a "
             f"bound); bootstrap SE / Wald SE {ratio.min():.2f}-{ratio.max():.2f}"
             + (f"; default chunking: {chunks[0]} x {chunks[1]:,} members ({chunks[0] * chunks[1]:,} computed)"
                if chunks and chunks[0] > 1 else ""))
    return summarise(workload, method, B, timing, converged=min(conv), notes=notes, extra={
        "converged_fraction_each_call": conv, "finite_se_fraction": float(finite_se.mean()),
        "iterations_median": float(np.median(iters)), "iterations_mean": float(iters.mean()),
        "iterations_max": int(iters.max()), "iterations_histogram": np.bincount(iters).tolist(),
        "default_chunks": chunks, "bootstrap_se_over_wald_se": ratio.tolist(),
    })


def default_chunks(model, B: int):
    """(chunks, members per chunk) that ``run_members`` picks for B keys; None if unknown.

    Uses autohess's private ``default_batch_size`` (one device, no sharding), so a change there
    only loses this note.
    """
    try:
        import jax

        from autohess._batch import chunk_plan, default_batch_size

        keys = jax.ShapeDtypeStruct((B, 2), np.uint32)  # what bootstrap batches: raw key data
        return chunk_plan(B, default_batch_size(model, keys, B), 1)
    except Exception:  # noqa: BLE001 - a note, not a measurement
        return None


def bench_single_fit(ah, jax, model, workload, reps: int) -> dict:
    """Warm ``ah.fit`` + standard errors of one data set: what a batch's per-fit time is for."""
    def once():
        res = ah.fit(model)
        jax.block_until_ready((res.params_flat, res.bse_flat))
        return res

    once()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    timing = {"first_s": None, "warm_s": statistics.median(times), "warm_min_s": min(times),
              "warm_all_s": None, "repeats": reps}
    return summarise(workload, "ah.fit + bse, one data set (reference)", 1, timing,
                     converged=1.0, notes=f"median of {reps} warm calls; not batched")


def plain_newton_program(jax, jnp, n: int, steps: int = NEWTON_STEPS):
    """What a JAX user writes: ``jit(vmap(newton))`` with ``jax.hessian`` and a fixed step count."""
    def nll(b, w, X, y):
        eta = X @ b
        return -jnp.sum(w * (y * eta - jnp.logaddexp(0.0, eta)))

    grad, hess = jax.grad(nll), jax.hessian(nll)

    def newton(key, b, X, y):
        draws = jax.random.randint(key, (n,), 0, n)
        w = jnp.zeros(n, X.dtype).at[draws].add(1.0)  # multinomial counts, as the library
        for _ in range(steps):
            b = b - jnp.linalg.solve(hess(b, w, X, y), grad(b, w, X, y))
        g, H_inv = grad(b, w, X, y), jnp.linalg.inv(hess(b, w, X, y))
        # One factorisation at the end: a second, independent one (solve(H, g) beside inv(H))
        # can run concurrently with it and deadlock jaxlib 0.10.2's batched LAPACK on 2 cores.
        return b, jnp.sqrt(jnp.diag(H_inv)), g @ H_inv @ g, nll(b, w, X, y)

    batched = jax.jit(jax.vmap(newton, in_axes=(0, None, None, None)))

    def run(key, B, b0, X, y):
        return batched(jax.random.split(key, B), b0, X, y)

    return run


def bench_plain_newton(jax, jnp, res, X, y, B, repeats, timeout_s, workload) -> dict:
    program = plain_newton_program(jax, jnp, X.shape[0])
    b0 = jnp.asarray(res.params_flat)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    method = f"plain jit(vmap(newton)), {NEWTON_STEPS} jax.hessian steps"

    def call(seed):
        out = program(jax.random.key(seed), B, b0, Xj, yj)
        jax.block_until_ready(out)
        return out

    try:
        timing, outs = time_calls(call, repeats, timeout_s, f"{method} B={B}")
    except Exception as err:  # e.g. out of device memory at the B
        return summarise(workload, method, B, {"first_s": None, "warm_s": float("nan"), "warm_min_s": None,
                                               "warm_all_s": None, "repeats": 0},
                         converged=None, notes=f"failed: {type(err).__name__}: {str(err)[:200]}")
    eps = np.finfo(np.float64).eps
    conv = []
    for b, se, dec, val in outs:
        b, se, dec, val = (np.asarray(a) for a in (b, se, dec, val))
        ok = (np.all(np.isfinite(b), axis=1) & np.all(np.isfinite(se), axis=1)
              & (0.5 * dec <= 1e4 * eps * (1.0 + np.abs(val))))
        conv.append(float(ok.mean()))
    return summarise(workload, method, B, timing, converged=min(conv), extra={"converged_fraction_each_call": conv},
                     notes="started at the estimate; no trust region, line search or checks; 'converged': "
                           "finite and g'H^-1g/2 <= 1e4 eps (1 + |f|) after the last step (autohess's test)")


# ------------------------------------------------------------------------------------------
# scipy + statsmodels loop
# ------------------------------------------------------------------------------------------
def scipy_fit(negloglik, start, args) -> tuple:
    """``minimize(BFGS)`` + ``approx_hess`` + ``inv``: one fit with standard errors, timed."""
    from scipy.optimize import minimize
    from statsmodels.tools.numdiff import approx_hess

    t0 = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        r = minimize(negloglik, start, args=args, method="BFGS")
        H = approx_hess(r.x, negloglik, args=args)
        se = np.sqrt(np.diag(np.linalg.inv(H)))
    elapsed = time.perf_counter() - t0
    return elapsed, r, se


def scipy_row(workload, fits, B_batch, note) -> dict:
    times = np.array([f[0] for f in fits])
    ok = [bool(r.success) and bool(np.all(np.isfinite(se))) for _, r, se in fits]
    messages = sorted({r.message for _, r, _ in fits if not r.success})
    timing = {"first_s": None, "warm_s": float(times.mean()), "warm_min_s": float(times.min()),
              "warm_all_s": times.tolist(), "repeats": len(times)}
    row = summarise(workload, "scipy BFGS + approx_hess loop (numpy)", 1, timing,
                    converged=float(np.mean(ok)), extra={
                        "sample_fits": len(times), "per_fit_median_us": float(np.median(times) * 1e6),
                        "extrapolated_s_at_B": float(times.mean() * B_batch), "B_extrapolated": B_batch,
                        "nfev_mean": float(np.mean([r.nfev for _, r, _ in fits])),
                        "failure_messages": messages})
    row["notes"] = (f"{note}; {len(times)} fits, per fit = mean (median {np.median(times) * 1e3:.1f} ms); "
                    f"{row['nfev_mean']:.0f} loglik evaluations per BFGS on average; x B={B_batch}: "
                    f"{row['extrapolated_s_at_B']:.1f} s (extrapolated)"
                    + (f"; scipy's message where success is False: {'; '.join(messages)}" if messages else ""))
    return row


def agreement(ah_params, ah_bse, fits) -> dict:
    """scipy vs autohess on the same data sets: params in autohess SEs, SEs relative."""
    p = np.array([r.x for _, r, _ in fits])
    se = np.array([s for _, _, s in fits])
    ah_params, ah_bse = np.asarray(ah_params, np.float64), np.asarray(ah_bse, np.float64)
    return {"params_max_diff_in_se": float(np.max(np.abs(p - ah_params) / ah_bse)),
            "bse_max_rel_diff": float(np.max(np.abs(se - ah_bse) / ah_bse))}


def agreement_note(a: dict) -> str:
    return (f"; vs ah.fit_batch on the same data sets: params within {a['params_max_diff_in_se']:.0e} SE, "
            f"SEs within {a['bse_max_rel_diff']:.0e} relative")


# ------------------------------------------------------------------------------------------
# Workloads
# ------------------------------------------------------------------------------------------
def bench_logistic(ah, jax, jnp, B, repeats, n_scipy, timeout_s) -> tuple[list, dict]:
    wl = f"logistic N={N_LOGISTIC} p={P_LOGISTIC}"
    X, y, _ = logistic_data()
    model = ah.models.logistic(X, y)
    res = ah.fit(model)
    assert res.converged, res.status
    rows = [bench_single_fit(ah, jax, model, wl, reps=20 * repeats)]
    rows.append(bench_bootstrap(ah, jax, res, wl, "ah.bootstrap nonparametric", B, "nonparametric", repeats, timeout_s))
    rows.append(bench_plain_newton(jax, jnp, res, X, y, B, repeats, timeout_s, wl))

    # scipy loop on resampled rows; autohess fits the same resamples (as frequency weights).
    rng = np.random.default_rng(1)
    idx = [rng.integers(0, N_LOGISTIC, N_LOGISTIC) for _ in range(n_scipy)]
    start = np.asarray(res.params_flat, np.float64)
    scipy_fit(logistic_negloglik_np, start, (X, y))  # warm-up: first-use imports are not timed
    fits = [scipy_fit(logistic_negloglik_np, start, (X[i], y[i])) for i in idx]
    rows.append(scipy_row(wl, fits, B, "resampled rows, started at the estimate"))
    check = ah.fit_batch(model, weights=np.array([np.bincount(i, minlength=N_LOGISTIC) for i in idx], float))
    check_info = agreement(check.params_flat, check.bse_flat, fits)
    rows[-1]["notes"] += agreement_note(check_info)
    return rows, {"agreement_scipy_vs_ah_fit_batch": check_info, "estimate": start.tolist(),
                  "wald_se": np.asarray(res.bse_flat).tolist()}


def bench_garch(ah, jax, jnp, B, repeats, n_scipy, timeout_s) -> tuple[list, dict]:
    wl = f"GARCH(1,1)-t N={N_GARCH} (DEM/GBP)"
    y = garch_data()
    rows, extra = [], {}
    for recursion in ("scan", "associative"):
        model = ah.models.garch11(y, recursion=recursion)
        assert model.labels == GARCH_LABELS, model.labels
        t0 = time.perf_counter()
        res = ah.fit(model)
        extra[f"first_ah_fit_s_{recursion}"] = time.perf_counter() - t0
        assert res.converged, res.status
        if recursion == "scan":
            rows.append(bench_single_fit(ah, jax, model, wl, reps=10 * repeats))
            scan_model, scan_res = model, res
        rows.append(bench_bootstrap(ah, jax, res, wl, f"ah.bootstrap parametric ({recursion})", B, "parametric",
                                    repeats, timeout_s))

    # scipy loop on series simulated by the model at the estimate (the bootstrap's data sets).
    start = np.asarray(scan_res.params_flat, np.float64)
    keys = jax.random.split(jax.random.key(12345), n_scipy)
    series = np.stack([np.asarray(scan_model.simulate_fn(k, scan_res.params, scan_model.data)["y"]) for k in keys])

    def nll(theta, yy):
        return -garch_loglike_np(theta, yy)

    scipy_fit(nll, start, (y,))  # warm-up
    fits = [scipy_fit(nll, start, (s,)) for s in series]
    rows.append(scipy_row(wl, fits, B, "simulated series, started at the estimate; numpy loglik with lfilter"))
    check = ah.fit_batch(scan_model, {"y": series}, start=scan_res.params)
    extra["agreement_scipy_vs_ah_fit_batch"] = agreement(check.params_flat, check.bse_flat, fits)
    rows[-1]["notes"] += agreement_note(extra["agreement_scipy_vs_ah_fit_batch"])
    extra["estimate"] = dict(zip(GARCH_LABELS, start.tolist()))
    extra["wald_se"] = dict(zip(GARCH_LABELS, np.asarray(scan_res.bse_flat).tolist()))
    return rows, extra


# ------------------------------------------------------------------------------------------
# Compaction side by side (issue 16 part 3): batch per member vs one fit, interleaved
# ------------------------------------------------------------------------------------------
def side_by_side(ah, jax, B_log, B_garch, rounds, timeout_s) -> dict:
    """Per-member time of a bootstrap against one warm ``ah.fit`` + bse, in three layouts:
    "sequential" (the 1-device CPU default: members one after another in the chunk's program),
    vmapped with compaction ("compact", what accelerators run) and vmapped without ("plain":
    ``autohess._batch.COMPACT_MIN_BATCH`` above B, the whole chunk in one program until its
    slowest member stops), measured in rounds that alternate the four (machine load drifts
    between rounds on a shared machine: the ratios within one round are what is compared)."""
    from autohess import BootstrapWarning
    from autohess import _batch

    out = {}
    X, y, _ = logistic_data()
    work = [("garch", ah.models.garch11(garch_data()), B_garch, "parametric"),
            ("logistic", ah.models.logistic(X, y), B_log, "nonparametric")]
    for name, model, B, kind in work:
        res = ah.fit(model)

        def single():
            r = ah.fit(model)
            jax.block_until_ready((r.params_flat, r.bse_flat))

        def boot(seed, compact, sequential=False):
            saved = _batch.COMPACT_MIN_BATCH, _batch.SEQUENTIAL_ON_CPU
            _batch.COMPACT_MIN_BATCH = saved[0] if compact else B + 1
            _batch.SEQUENTIAL_ON_CPU = sequential
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", BootstrapWarning)
                    b = ah.bootstrap(res, n=B, key=jax.random.key(seed), kind=kind)
                    jax.block_until_ready((b.fits.params_flat, b.fits.bse_flat))
            finally:
                _batch.COMPACT_MIN_BATCH, _batch.SEQUENTIAL_ON_CPU = saved
            return b

        # compile both; the compacted programs (one per bucket size, solver-only stages and
        # the late members' results) for every seed timed below: a bucket size first met in a
        # timed call put its compilation (tens of seconds on the loaded VM) into that round
        for seed in range(rounds + 1):
            with watchdog(timeout_s, f"{name} warm-up compact, seed {seed}"):
                boot(seed, True)
        with watchdog(timeout_s, f"{name} warm-up not compacted"):
            boot(0, False)
        with watchdog(timeout_s, f"{name} warm-up sequential"):
            boot(0, True, True)
        single()
        rows = []
        for r in range(rounds):
            t = {}
            for what, call in (("single", single), ("sequential", lambda: boot(r + 1, True, True)),
                               ("compact", lambda: boot(r + 1, True)), ("plain", lambda: boot(r + 1, False))):
                reps = 20 if what == "single" else 1
                with watchdog(timeout_s, f"{name} {what} round {r}"):
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(reps):
                        b = call()
                    per = reps if what == "single" else B
                    t[what] = (time.perf_counter() - t0) / per
                    # CPU seconds of this process (all its threads): less distorted than wall time
                    # when other processes compete for the cores (a single fit's many short
                    # dispatches wait for a core each time; a batch's long kernels do not)
                    t[what + "_cpu"] = (time.process_time() - c0) / per
                if what == "compact":
                    t["stages"] = list(_batch.LAST_STAGES["bootstrap"])
                    t["iterations_max"] = int(np.asarray(b.fits.iterations).max())
            t["load_1min"] = os.getloadavg()[0]
            rows.append(t)
            print(f"{name} round {r}: single {t['single'] * 1e3:.2f} ms, batch per member sequential "
                  f"(the CPU default) {t['sequential'] * 1e3:.2f} ms ({t['sequential'] / t['single']:.2f}x; CPU "
                  f"time {t['sequential_cpu'] / t['single_cpu']:.2f}x), vmapped: compacted "
                  f"{t['compact'] * 1e3:.2f} ms ({t['compact'] / t['single']:.2f}x single), not compacted "
                  f"{t['plain'] * 1e3:.2f} ms ({t['plain'] / t['single']:.2f}x); CPU time: single "
                  f"{t['single_cpu'] * 1e3:.2f} ms, compacted {t['compact_cpu'] / t['single_cpu']:.2f}x, not "
                  f"compacted {t['plain_cpu'] / t['single_cpu']:.2f}x; stages {t['stages']}; "
                  f"load {t['load_1min']:.1f}", flush=True)
        ratio = [t["compact"] / t["single"] for t in rows]
        plain = [t["plain"] / t["single"] for t in rows]
        seq_cpu = [t["sequential_cpu"] / t["single_cpu"] for t in rows]
        target = TARGET_PER_MEMBER[name]
        out[name] = {"B": B, "kind": kind, "rounds": rows,
                     "sequential_over_single_median": statistics.median([t["sequential"] / t["single"] for t in rows]),
                     "sequential_over_single_cpu_median": statistics.median(seq_cpu),
                     "target_per_member_over_single": target,
                     "target_cpu_time": "PASS" if statistics.median(seq_cpu) <= target else "FAIL",
                     "compact_over_single_median": statistics.median(ratio),
                     "plain_over_single_median": statistics.median(plain),
                     "compact_over_single_cpu_median": statistics.median(
                         [t["compact_cpu"] / t["single_cpu"] for t in rows])}
    return out


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------
def fmt_s(x) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def print_table(rows: list, baseline: dict) -> None:
    header = ["workload", "method", "B", "first call s", "warm s (median)", "per fit µs", "converged",
              "speed-up vs scipy loop", "notes"]
    lines = []
    for r in rows:
        base = baseline[r["workload"]]
        scipy_loop = r["method"].startswith("scipy")
        ratio = base / r["per_fit_us"]
        speedup = "—" if scipy_loop or not np.isfinite(ratio) else f"{ratio:,.{0 if ratio >= 10 else 1}f}x"
        lines.append([
            r["workload"], r["method"], f"sample of {r['sample_fits']}" if scipy_loop else f"{r['B']:,}",
            fmt_s(r["first_s"]), "—" if scipy_loop else fmt_s(r["warm_s"]),
            f"{r['per_fit_us']:,.0f}" if np.isfinite(r["per_fit_us"]) else "—",
            "—" if r["converged_fraction"] is None
            else f"{r['converged_fraction']:.3f}{' (scipy success flag)' if scipy_loop else ''}",
            speedup, r["notes"],
        ])
    print_markdown_table(header, lines)


def evaluate_targets(rows: list, platform: str) -> list:
    out = []
    for key, method in (("logistic", "ah.bootstrap nonparametric"), ("garch", "ah.bootstrap parametric (")):
        T = TARGETS[key]
        for r in rows:
            if not r["method"].startswith(method):
                continue
            extrapolated = r["per_fit_us"] * 1e-6 * T["B"]
            item = {"target": f"{T['what']}, {r['method']}: B={T['B']:,} in <= {T['max_s']:g} s on one H100",
                    "measured_B": r["B"], "measured_warm_s": r["warm_s"],
                    "extrapolated_s_at_target_B": extrapolated}
            if platform != "gpu":
                item["status"] = NOT_APPLICABLE
                item["extrapolation"] = (f"CPU extrapolation (not measured): {r['per_fit_us']:,.0f} µs/fit x "
                                         f"{T['B']:,} = {extrapolated:,.1f} s")
            elif r["B"] == T["B"]:
                item["status"] = "PASS" if r["warm_s"] <= T["max_s"] else "FAIL"
                item["extrapolation"] = None
            else:
                item["status"] = f"not measured at B={T['B']:,} (ran B={r['B']:,})"
                item["extrapolation"] = (f"extrapolated (not measured): {r['per_fit_us']:,.1f} µs/fit x "
                                         f"{T['B']:,} = {extrapolated:.3f} s")
            out.append(item)
    return out


def restart_with_env(argv, blas_threads: int, xla_workaround: bool) -> None:
    """Re-execute the script with OPENBLAS_NUM_THREADS and XLA_FLAGS set, if they are not yet.

    OpenBLAS reads its variable when it loads, and numpy (imported above) has loaded it, hence
    the restart; XLA reads XLA_FLAGS when JAX's backend starts.
    """
    env = dict(os.environ)
    if blas_threads > 0:
        env["OPENBLAS_NUM_THREADS"] = str(blas_threads)
    if xla_workaround and XLA_WORKAROUND not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {XLA_WORKAROUND}".strip()
    if env != dict(os.environ):
        script = str(Path(__file__).resolve())
        os.execve(sys.executable, [sys.executable, script, *(sys.argv[1:] if argv is None else argv)], env)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small B, fewer repeats (smoke test)")
    parser.add_argument("--n-logistic", type=int, default=None, metavar="B",
                        help="logistic bootstrap replicates (default: 100,000 on a GPU, 5,000 on CPU, 500 quick)")
    parser.add_argument("--n-garch", type=int, default=None, metavar="B",
                        help="GARCH-t bootstrap replicates (default: 10,000 on a GPU, 1,000 on CPU, 50 quick)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help="JSON results path")
    parser.add_argument("--blas-threads", type=int, default=1, metavar="N",
                        help="OpenBLAS threads for numpy/scipy (default 1, as bench_fit.py; 0 leaves the "
                             "environment as it is)")
    parser.add_argument("--xla-workaround", action="store_true",
                        help=f"add {XLA_WORKAROUND} to XLA_FLAGS (see the module docstring)")
    parser.add_argument("--call-timeout", type=float, default=300.0, metavar="S",
                        help="dump stacks and exit if one timed call takes longer (0: no limit)")
    parser.add_argument("--compaction", type=int, default=0, metavar="ROUNDS",
                        help="only the compaction comparison (batch per member with and without "
                             "compaction vs one fit), ROUNDS interleaved rounds; writes "
                             "results/batch_compaction.json unless --output is given")
    args = parser.parse_args(argv)

    restart_with_env(argv, args.blas_threads, args.xla_workaround)
    if args.compaction:
        import autohess as ah  # noqa: F811 - float64 before any JAX array
        import jax

        b_log, b_garch = (args.n_logistic or DEFAULT_B["cpu"][0]), (args.n_garch or DEFAULT_B["cpu"][1])
        load = os.getloadavg()[0]
        found = side_by_side(ah, jax, b_log, b_garch, args.compaction, args.call_timeout)
        info = machine_info(jax)
        info["load_average_1min_at_start"] = load
        info["load_average_1min_at_end"] = os.getloadavg()[0]
        for name, r in found.items():
            print(f"target {name}: per member <= {r['target_per_member_over_single']}x one fit + bse: "
                  f"{r['target_cpu_time']} (sequential, CPU time, median over rounds "
                  f"{r['sequential_over_single_cpu_median']:.2f}x; wall {r['sequential_over_single_median']:.2f}x)")
        path = args.output if args.output != RESULTS_FILE else HERE / "results" / "batch_compaction.json"
        path.write_text(json.dumps({"benchmark": "bench_batch --compaction", "machine": info, **found},
                                   indent=2, default=float) + "\n")
        print(f"wrote {path}")
        return 0

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy_start = busy_fraction()
    ticks_start = cpu_ticks()

    import autohess as ah  # must precede any JAX array: float64 + synchronous CPU dispatch
    import jax
    import jax.numpy as jnp

    dev = jax.devices()[0]
    platform = dev.platform
    b_log, b_garch = DEFAULT_B["quick" if args.quick else ("gpu" if platform == "gpu" else "cpu")]
    b_log = args.n_logistic or b_log
    b_garch = args.n_garch or b_garch
    repeats = 2 if args.quick else (5 if platform == "gpu" else 3)
    n_scipy = 3 if args.quick else 20

    logistic_rows, logistic_extra = bench_logistic(ah, jax, jnp, b_log, repeats, n_scipy, args.call_timeout)
    garch_rows, garch_extra = bench_garch(ah, jax, jnp, b_garch, repeats, n_scipy, args.call_timeout)
    rows = logistic_rows + garch_rows
    baseline = {r["workload"]: r["per_fit_us"] for r in rows if r["method"].startswith("scipy")}
    for r in rows:
        if not r["method"].startswith("scipy") and np.isfinite(r["per_fit_us"]):
            r["speedup_vs_scipy_loop"] = baseline[r["workload"]] / r["per_fit_us"]
    targets = evaluate_targets(rows, platform)

    info = machine_info(jax)
    info["device"] = {"platform": platform, "device_kind": dev.device_kind, "count": jax.device_count()}
    info["OPENBLAS_NUM_THREADS"] = os.environ.get("OPENBLAS_NUM_THREADS")
    info["load_average_1min_at_start"] = load_start
    info["cpu_busy_fraction_before_run"] = busy_start
    info["cpu_busy_outside_process_during_run"] = other_work_fraction(ticks_start, cpu_ticks())
    total_s = time.perf_counter() - t_start

    print_run_header(
        "autohess batched bootstrap benchmark", info, busy_start,
        flags=f"{' [--quick]' if args.quick else ''}; device {platform} ({dev.device_kind}); "
        f"OPENBLAS_NUM_THREADS={info['OPENBLAS_NUM_THREADS'] or 'unset'}; XLA_FLAGS={info['XLA_FLAGS'] or 'unset'}",
    )
    other = info["cpu_busy_outside_process_during_run"]
    if other is not None:
        print(f"CPUs busy outside this process during the run (other processes, kernel threads): {100 * other:.0f}%"
              f"{' (times are noisier)' if other > 0.1 else ''}")
    print(f"\nB = {b_log:,} (logistic) and {b_garch:,} (GARCH-t) bootstrap replicates; warm = median of "
          f"{repeats} calls with new keys; per fit = warm / B; speed-up = scipy loop's mean time per fit "
          f"x B / warm.\n")
    print_table(rows, baseline)
    print("\n## targets (one H100)")
    for t in targets:
        print(f"- {t['target']}: {t['status']}; measured {fmt_s(t['measured_warm_s'])} s at B={t['measured_B']:,}"
              + (f". {t['extrapolation']}" if t["extrapolation"] else ""))
    print("\n## checks")
    for name, ex in (("logistic", logistic_extra), ("GARCH-t", garch_extra)):
        a = ex["agreement_scipy_vs_ah_fit_batch"]
        print(f"- {name}: scipy loop vs ah.fit_batch on the same {n_scipy} data sets: params differ by at most "
              f"{a['params_max_diff_in_se']:.1e} standard errors, standard errors by {a['bse_max_rel_diff']:.1e} "
              "relative")
    print(f"- GARCH-t first ah.fit (compiles the single-fit programs): scan {garch_extra['first_ah_fit_s_scan']:.1f} s, "
          f"associative {garch_extra['first_ah_fit_s_associative']:.1f} s")
    print(f"\ntotal benchmark time {total_s:.0f} s")

    result = {
        "benchmark": "bench_batch",
        "quick": args.quick,
        "settings": {"B_logistic": b_log, "B_garch": b_garch, "warm_repeats": repeats, "scipy_sample_fits": n_scipy,
                     "newton_steps_plain_jax": NEWTON_STEPS, "blas_threads": args.blas_threads,
                     "xla_workaround_flag": XLA_WORKAROUND if args.xla_workaround else None,
                     "logistic": {"N": N_LOGISTIC, "p": P_LOGISTIC, "data": "bench_hessian.logistic_data()"},
                     "garch": {"N": N_GARCH, "data": "benchmarks/data/dem2gbp.csv.gz", "dist": "t"}},
        "targets_definition": TARGETS,
        "machine": info,
        "rows": rows,
        "targets": targets,
        "logistic": logistic_extra,
        "garch": garch_extra,
        "total_s": total_s,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, result, default=float)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
