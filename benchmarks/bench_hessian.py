#!/usr/bin/env python
"""Benchmark: exact Hessians with autohess against closed forms, plain JAX and finite differences.

Run from the repository root::

    python benchmarks/bench_hessian.py            # full run, writes benchmarks/results/hessian.json
    python benchmarks/bench_hessian.py --quick    # fewer repetitions, for a smoke test
    python benchmarks/bench_hessian.py --pin-cpu 1 --output /tmp/h.json   # warm timings on one CPU

Workloads (float64, CPU, all in one process except the first-call timings):

1. Logistic regression, N = 1500, p = 12 (simulated, seed 0), at the true beta.
   ``ah.hessian`` in each differentiation mode, a bare ``jax.jit(jax.hessian(f))`` on a flat
   vector, the numpy closed form ``X' diag(p(1-p)) X`` and statsmodels' ``approx_hess``
   (finite differences of a numpy negative log-likelihood).
2. GARCH(1,1) with Student-t innovations, first 1500 DEM/GBP returns (benchmarks/data), at
   ``mu = mean(y), omega = 0.01, alpha = 0.1, beta = 0.85, nu = 6``. ``ah.hessian`` per mode
   and recursion, a bare ``jax.jit(jax.hessian(f))``, and ``approx_hess`` on a numpy
   log-likelihood whose variance recursion runs in ``scipy.signal.lfilter``.
3. First call (trace + compile + run) of ``ah.hessian``, each in a fresh interpreter.
4. Issue #16 part 4 (``--no-large`` skips it): logistic N = 10^6, p = 50 (constant + 49 normal
   covariates, seed 0), at the true beta: the numpy closed form against ``ah.hessian``
   unchunked and with ``chunk_size=4096``, and ``ah.fit(model, chunk_size=4096)`` + SEs (checked
   against statsmodels' ``Logit``), in process CPU time, interleaved in 3 rounds. Run with one
   BLAS and one XLA thread (``OPENBLAS_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
   intra_op_parallelism_threads=1"``) so CPU time is the call's own work.

Warm times are per call (median and min over 2000 calls after warm-up, the methods of a
workload interleaved in 10 rounds, garbage collector off), including
``.matrix.block_until_ready()``; "rel. error" is ``max|H - H_ref| / max|H_ref|``.

Headline numbers (2-core AMD EPYC VM, Linux, Python 3.11.7, jax 0.10.2, numpy 2.4.6,
statsmodels 0.15.0; 2026-11-24, unpinned, 27 s in all):

* Logistic N=1500, p=12: ``ah.hessian`` 48 us median in its default mode rev-rev (fwd-rev
  48 us, fwd-fwd 290 us); numpy closed form 29 us; bare ``jax.jit(jax.hessian)`` of a
  hand-written loglik (``jnp.logaddexp``) 48 us; statsmodels ``approx_hess`` 6.7 ms.
  Exact / closed form = 1.67 (target <= 2: PASS); approx_hess / exact = 139 (target >= 100:
  PASS). Errors vs the closed form: exact <= 2e-15, approx_hess 1.4e-6. ``check=False``
  (no in-program log-likelihood value and finiteness flag) takes 33 us; the bare compiled
  program of the same loglik and mode 27 us.
* GARCH(1,1)-t N=1500 (DEM/GBP): default fwd-rev 161 us (rev-rev 169, fwd-fwd 856,
  associative scan 328-338 us); bare ``jax.jit(jax.hessian)`` 123 us; ``approx_hess`` (numpy +
  lfilter) 1.9 ms, 12x slower than exact, error 2.3e-6. Pinned to one CPU (``--pin-cpu``)
  the default drops to ~139 us and stops drifting.
* First call in a fresh process: logistic 0.12 s (target <= 1 s: PASS), GARCH-t 0.77 s
  (target <= 2 s: PASS; fwd-fwd 0.70 s); import 0.26 s and model construction 0.06 / 0.19 s
  on top. Associative-scan Hessians take 2-3.5 s to compile.

Issue #16 part 4 (2026-12-01 16:10-16:22, load average 15-18 on the 2 cores, one BLAS/XLA
thread, CPU time, medians of 3): numpy closed form 0.60 s; ``ah.hessian`` unchunked 0.70 s
(ratio 1.18, target <= 1.2: PASS; 2.2x before the tangent basis was folded out, see
``autohess/_basis.py``), ``chunk_size=4096`` 0.33 s (0.56: PASS; cache-sized blocks beat the
closed form's N x p temporaries), both within 5e-15 of the closed form; temporary memory 3.5 MB
chunked against 408 MB unchunked (beside 408 MB of data). ``ah.fit(chunk_size=4096)`` + SEs:
2.2 s CPU, 5 iterations, estimates and SEs equal to statsmodels' ``Logit`` to 6e-17 (its first
call, compiling and checking separability, 7.8 s CPU). The other rows of that run (wall time,
same load) are 3-7x the idle-machine numbers above and not comparable with them: import 7 s,
first calls 3-9 s, logistic exact / closed form 2.95.

See benchmarks/README.md for how to run and read these numbers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import (  # noqa: E402  (shared by the benchmark scripts; puts this checkout on sys.path)
    Interleaved,
    busy_fraction,
    first_call_runs,
    machine_info,
    median_and_min,
    print_markdown_table,
    print_run_header,
    write_json,
)
DATA_FILE = HERE / "data" / "dem2gbp.csv.gz"
RESULTS_FILE = HERE / "results" / "hessian.json"

N_LOGISTIC, P_LOGISTIC, SEED = 1500, 12, 0
N_GARCH = 1500
N_LARGE, P_LARGE, CHUNK_LARGE = 1_000_000, 50, 4096
GARCH_POINT = {"omega": 0.01, "alpha": 0.1, "beta": 0.85, "nu": 6.0}  # mu = mean(y)

TARGETS = {
    "logistic_exact_over_closed_form_max": 2.0,
    "logistic_approx_over_exact_min": 100.0,
    "logistic_first_call_s_max": 1.0,
    "garch_first_call_s_max": 2.0,
    "logistic_exact_rel_error_max": 1e-12,
    # issue #16 part 4: N = 10^6, p = 50, exact Hessian / numpy closed form (CPU time)
    "large_exact_over_closed_form_max": 1.2,
}

FIRST_CALL_WORKLOADS = {
    # name: (model, mode); None = the model's default hessian_mode
    "logistic": ("logistic", None),
    "garch": ("garch", None),
    "garch-fwd-rev": ("garch", "fwd-rev"),
    "garch-fwd-fwd": ("garch", "fwd-fwd"),
}


# ------------------------------------------------------------------------------------------
# Data (numpy only: nothing here touches JAX, so it can run before ``import autohess``)
# ------------------------------------------------------------------------------------------
def logistic_data(n: int = N_LOGISTIC, p: int = P_LOGISTIC, seed: int = SEED):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    beta = 0.3 * rng.standard_normal(p)
    prob = 1.0 / (1.0 + np.exp(-(X @ beta)))
    y = (rng.random(n) < prob).astype(np.float64)
    return X, y, beta


def garch_data(n: int = N_GARCH) -> np.ndarray:
    with gzip.open(DATA_FILE) as fh:
        y = np.loadtxt(fh, skiprows=1)
    return y[:n]


def garch_point(y: np.ndarray) -> dict:
    return {"mu": float(np.mean(y)), **GARCH_POINT}


# ------------------------------------------------------------------------------------------
# Pure-numpy negative log-likelihoods (what a competent numpy user would hand to approx_hess)
# ------------------------------------------------------------------------------------------
def logistic_negloglik_np(beta, X, y):
    eta = X @ beta
    return -np.sum(y * eta - np.logaddexp(0.0, eta))


def logistic_closed_form(beta, X):
    from scipy.special import expit

    prob = expit(X @ beta)
    w = prob * (1.0 - prob)
    return X.T @ (X * w[:, None])


def garch_negloglik_np(theta, y):
    """GARCH(1,1)-t negative log-likelihood; theta = (alpha, beta, mu, nu, omega)."""
    from scipy.signal import lfilter
    from scipy.special import gammaln

    alpha, beta, mu, nu, omega = theta
    e = y - mu
    h1 = np.mean(e * e)
    drive = omega + alpha * e[:-1] ** 2
    # h_t = drive_{t-1} + beta * h_{t-1}: a first-order IIR filter started from h_1.
    rest, _ = lfilter([1.0], [1.0, -beta], drive, zi=[beta * h1])
    h = np.concatenate([[h1], rest])
    const = gammaln(0.5 * (nu + 1.0)) - gammaln(0.5 * nu) - 0.5 * np.log(np.pi * (nu - 2.0))
    return -np.sum(const - 0.5 * np.log(h) - 0.5 * (nu + 1.0) * np.log1p(e * e / ((nu - 2.0) * h)))


# ------------------------------------------------------------------------------------------
# Timing helpers
# ------------------------------------------------------------------------------------------
def hessian_transform(jax, mode: str):
    """Plain-JAX Hessian of ``f(x, *args)`` in x for one of autohess's mode names."""
    return {
        "fwd-rev": lambda f: jax.jacfwd(jax.grad(f)),
        "rev-rev": lambda f: jax.jacrev(jax.grad(f)),
        "fwd-fwd": lambda f: jax.jacfwd(jax.jacfwd(f)),
    }[mode]


def rel_error(h, ref) -> float:
    h, ref = np.asarray(h, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(h - ref)) / np.max(np.abs(ref)))


# ------------------------------------------------------------------------------------------
# First-call timing, run in a fresh interpreter by the main process
# ------------------------------------------------------------------------------------------
def first_call(which: str) -> dict:
    model_name, mode = FIRST_CALL_WORKLOADS[which]
    t0 = time.perf_counter()
    import autohess as ah  # before any JAX array exists (float64, synchronous dispatch)
    import jax.numpy as jnp

    import_s = time.perf_counter() - t0

    if model_name == "logistic":
        X, y, beta = logistic_data()
        t0 = time.perf_counter()
        model = ah.models.logistic(X, y)
        params = {"beta": jnp.asarray(beta, dtype=jnp.float64)}
    else:
        y = garch_data()
        t0 = time.perf_counter()
        model = ah.models.garch11(y)
        params = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in garch_point(y).items()}
    construct_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ah.hessian(model, params, mode=mode).matrix.block_until_ready()
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ah.hessian(model, params, mode=mode).matrix.block_until_ready()
    second_s = time.perf_counter() - t0
    return {
        "workload": which,
        "mode": mode or model.hessian_mode,
        "import_s": import_s,
        "construct_s": construct_s,
        "first_call_s": first_s,
        "second_call_s": second_s,
    }


def first_call_in_subprocess(which: str, repeats: int) -> dict:
    runs = first_call_runs(__file__, which, repeats)
    return {"workload": which, "mode": runs[0]["mode"], "repeats": repeats,
            **median_and_min(runs, ("import_s", "construct_s", "first_call_s", "second_call_s"))}


# ------------------------------------------------------------------------------------------
# Workloads
# ------------------------------------------------------------------------------------------
def row(workload, method, timing, err=None, ref=None, notes=""):
    return {
        "workload": workload, "method": method, **timing,
        "rel_error": err, "error_reference": ref, "notes": notes,
    }


def bench_logistic(ah, jax, jnp, reps: int, approx_reps: int, rounds: int) -> tuple[list, dict]:
    from statsmodels.tools.numdiff import approx_hess

    wl = f"logistic N={N_LOGISTIC} p={P_LOGISTIC}"
    X, y, beta = logistic_data()
    model = ah.models.logistic(X, y)
    params = {"beta": jnp.asarray(beta, dtype=jnp.float64)}
    default = model.hessian_mode
    closed = logistic_closed_form(beta, X)
    timer = Interleaved(rounds)
    results = {}  # method -> (matrix, notes)

    modes = [default] + [m for m in ("fwd-rev", "rev-rev", "fwd-fwd") if m != default]
    for mode in modes:
        method = f"ah.hessian {mode}"
        results[method] = (np.asarray(ah.hessian(model, params, mode=mode).matrix),
                           "default mode" if mode == default else "")
        timer.add(method, lambda mode=mode: ah.hessian(model, params, mode=mode).matrix.block_until_ready(), reps)

    method = f"ah.hessian {default} check=False"
    results[method] = (np.asarray(ah.hessian(model, params, check=False).matrix), "skips the finiteness check")
    timer.add(method, lambda: ah.hessian(model, params, check=False).matrix.block_until_ready(), reps)

    def nll(b, Xj, yj):
        eta = Xj @ b
        return -jnp.sum(yj * eta - jnp.logaddexp(0.0, eta))

    jax_hess = jax.jit(jax.hessian(nll))
    Xj, yj, bj = jnp.asarray(X), jnp.asarray(y), jnp.asarray(beta)
    method = "jax.jit(jax.hessian) flat"
    results[method] = (np.asarray(jax_hess(bj, Xj, yj)),
                       "bare JAX, hand-written jnp loglik (jnp.logaddexp), data as arguments")
    timer.add(method, lambda: jax_hess(bj, Xj, yj).block_until_ready(), reps)

    # The library's own loglik and default mode without the wrapper: isolates its overhead.
    def nll_ah(b, data):
        return -jnp.sum(ah.models.logistic_loglik({"beta": b}, data))

    bare_default = jax.jit(hessian_transform(jax, default)(nll_ah))
    data_j = {"X": Xj, "y": yj, "offset": jnp.zeros_like(yj)}
    method = f"jax.jit({default}) of ah's loglik"
    results[method] = (np.asarray(bare_default(bj, data_j)),
                       "bare JAX, same function and mode as ah.hessian: the wrapper's overhead")
    timer.add(method, lambda: bare_default(bj, data_j).block_until_ready(), reps)

    method = "numpy closed form"
    results[method] = (None, "X' diag(p(1-p)) X (reference)")
    timer.add(method, lambda: logistic_closed_form(beta, X), reps)

    method = "statsmodels approx_hess"
    results[method] = (approx_hess(beta, logistic_negloglik_np, args=(X, y)), "numpy negloglik (np.logaddexp)")
    timer.add(method, lambda: approx_hess(beta, logistic_negloglik_np, args=(X, y)), approx_reps, warmup=2)

    timings = timer.run()
    rows = [
        row(wl, method, timings[method],
            None if H is None else rel_error(H, closed), None if H is None else "closed form", notes)
        for method, (H, notes) in results.items()
    ]
    med = {method: t["median_us"] for method, t in timings.items()}
    exact_med = med[f"ah.hessian {default}"]
    ratios = {
        "default_mode": default,
        "exact_over_closed_form": exact_med / med["numpy closed form"],
        "approx_hess_over_exact": med["statsmodels approx_hess"] / exact_med,
        "exact_over_bare_jax": exact_med / med["jax.jit(jax.hessian) flat"],
        "wrapper_overhead_us": exact_med - med[f"jax.jit({default}) of ah's loglik"],
        "exact_max_rel_error": max(rel_error(results[f"ah.hessian {m}"][0], closed) for m in modes),
        "approx_hess_rel_error": rel_error(results["statsmodels approx_hess"][0], closed),
    }
    return rows, ratios


def bench_garch(ah, jax, jnp, reps: int, approx_reps: int, rounds: int) -> tuple[list, dict]:
    from statsmodels.tools.numdiff import approx_hess

    wl = f"GARCH(1,1)-t N={N_GARCH}"
    y = garch_data()
    point = garch_point(y)
    params = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in point.items()}
    model = ah.models.garch11(y)
    model_assoc = ah.models.garch11(y, recursion="associative")
    labels = model.labels
    assert labels == ("alpha", "beta", "mu", "nu", "omega"), labels
    theta = np.array([point[k] for k in labels])

    nll_np = garch_negloglik_np(theta, y)
    nll_ah = -model.loglik(params)
    assert abs(nll_np - nll_ah) <= 1e-10 * abs(nll_ah), (nll_np, nll_ah)

    default = model.hessian_mode
    ref_name = f"ah {default} (scan)"
    timer = Interleaved(rounds)
    results = {}  # method -> (matrix, notes)
    # The default mode comes first: its result is the reference for the others.
    scan_modes = [default] + [m for m in ("fwd-rev", "rev-rev", "fwd-fwd") if m != default]
    variants = [(model, "scan", mode) for mode in scan_modes] + [
        (model_assoc, "associative", "fwd-rev"),
        (model_assoc, "associative", "fwd-fwd"),
    ]
    for m, rec, mode in variants:
        t0 = time.perf_counter()
        H = np.asarray(ah.hessian(m, params, mode=mode).matrix)
        compile_s = time.perf_counter() - t0
        note = "default mode, " if (rec == "scan" and mode == default) else ""
        method = f"ah.hessian {mode} ({rec})"
        results[method] = (H, note + f"first call here {compile_s:.2f} s (JAX already warm)")
        timer.add(method, lambda m=m, mode=mode: ah.hessian(m, params, mode=mode).matrix.block_until_ready(), reps)
    ref = results[f"ah.hessian {default} (scan)"][0]

    def nll(th, yj):
        return -jnp.sum(ah.models.garch11_loglik(dict(zip(labels, th)), {"y": yj}))

    jax_hess = jax.jit(jax.hessian(nll))
    yj, tj = jnp.asarray(y), jnp.asarray(theta)
    method = "jax.jit(jax.hessian) of ah's loglik"
    results[method] = (np.asarray(jax_hess(tj, yj)), "bare JAX (= fwd-rev), scan recursion, data as argument")
    timer.add(method, lambda: jax_hess(tj, yj).block_until_ready(), reps)

    method = "statsmodels approx_hess"
    results[method] = (approx_hess(theta, garch_negloglik_np, args=(y,)),
                       "numpy negloglik, variance recursion in scipy.signal.lfilter")
    timer.add(method, lambda: approx_hess(theta, garch_negloglik_np, args=(y,)), approx_reps, warmup=2)

    timings = timer.run()
    rows = [
        row(wl, method, timings[method], None, None, "reference; " + notes) if H is ref
        else row(wl, method, timings[method], rel_error(H, ref), ref_name, notes)
        for method, (H, notes) in results.items()
    ]
    med = {method: t["median_us"] for method, t in timings.items()}
    exact_med = med[f"ah.hessian {default} (scan)"]
    best = min((m for m in med if m.startswith("ah.hessian")), key=med.get)
    ratios = {
        "default_mode": default,
        "approx_hess_over_exact": med["statsmodels approx_hess"] / exact_med,
        "approx_hess_over_fastest_exact": med["statsmodels approx_hess"] / med[best],
        "fastest_exact_method": best,
        "default_over_fastest_exact": exact_med / med[best],
        "approx_hess_rel_error": rel_error(results["statsmodels approx_hess"][0], ref),
        "exact_modes_max_rel_disagreement": max(
            rel_error(H, ref) for method, (H, _) in results.items() if method.startswith("ah.hessian")
        ),
        "numpy_negloglik": nll_np,
        "autohess_negloglik": nll_ah,
    }
    return rows, ratios


def large_logistic_data(n: int = N_LARGE, p: int = P_LARGE, seed: int = SEED):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.standard_normal((n, p - 1))])
    beta = np.r_[-0.5, 0.1 * rng.standard_normal(p - 1)]
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(X @ beta)))).astype(np.float64)
    return X, y, beta


def bench_large(ah, jax, jnp, rounds: int) -> tuple[list, dict]:
    """Issue #16 part 4: logistic N = 10^6, p = 50. Process CPU time per call (the machine is
    shared; run with one BLAS/XLA thread, see the module docstring), the methods interleaved
    in ``rounds`` rounds after one warm-up call each."""
    wl = f"logistic N={N_LARGE} p={P_LARGE}"
    X, y, beta = large_logistic_data()
    model = ah.models.logistic(X, y)
    params = {"beta": jnp.asarray(beta)}
    closed = logistic_closed_form(beta, X)
    t0 = time.process_time()
    res = ah.fit(model, chunk_size=CHUNK_LARGE)
    bse = np.asarray(res.bse_flat)
    first_fit_cpu_s = time.process_time() - t0
    methods = {
        "numpy closed form": lambda: logistic_closed_form(beta, X),
        "ah.hessian unchunked": lambda: ah.hessian(model, params).matrix.block_until_ready(),
        f"ah.hessian chunk_size={CHUNK_LARGE}": lambda: ah.hessian(model, params, chunk_size=CHUNK_LARGE).matrix.block_until_ready(),
        f"ah.fit + bse chunk_size={CHUNK_LARGE}": lambda: np.asarray(ah.fit(model, chunk_size=CHUNK_LARGE).bse_flat),
    }
    errors = {
        "ah.hessian unchunked": rel_error(ah.hessian(model, params).matrix, closed),
        f"ah.hessian chunk_size={CHUNK_LARGE}": rel_error(ah.hessian(model, params, chunk_size=CHUNK_LARGE).matrix, closed),
    }
    times = {k: [] for k in methods}
    for fn in methods.values():
        fn()
    for _ in range(rounds):
        for key, fn in methods.items():
            t0 = time.process_time()
            fn()
            times[key].append(time.process_time() - t0)
    # statsmodels' Logit on the same data: the fit's reference (estimates and SEs)
    import statsmodels.api as sm

    ref = sm.Logit(y, X).fit(disp=0, method="newton")
    fit_diff = {"params": float(np.max(np.abs(np.asarray(res.params_flat) - ref.params))),
                "bse": float(np.max(np.abs(bse - ref.bse)))}
    memory = {
        "data_bytes": int(X.nbytes + y.nbytes),
        "hessian_temp_bytes_unchunked": ah.chunked_memory_bytes(model, None),
        f"hessian_temp_bytes_chunk_{CHUNK_LARGE}": ah.chunked_memory_bytes(model, CHUNK_LARGE),
    }
    rows = []
    for key, ts in times.items():
        timing = {"median_us": float(np.median(ts) * 1e6), "min_us": float(np.min(ts) * 1e6), "reps": len(ts)}
        note = "process CPU time"
        if key.startswith("ah.fit"):
            note += (f"; {int(res.iterations)} iterations; vs statsmodels Logit max |params diff| "
                     f"{fit_diff['params']:.1e}, max |bse diff| {fit_diff['bse']:.1e}; first call (compile, "
                     f"separability check) {first_fit_cpu_s:.1f} s CPU")
        rows.append(row(wl, key, timing, errors.get(key), "closed form" if key in errors else None, note))
    med = {key: float(np.median(ts)) for key, ts in times.items()}
    ratios = {
        "chunked_over_closed_form": med[f"ah.hessian chunk_size={CHUNK_LARGE}"] / med["numpy closed form"],
        "unchunked_over_closed_form": med["ah.hessian unchunked"] / med["numpy closed form"],
        "fit_with_ses_s": med[f"ah.fit + bse chunk_size={CHUNK_LARGE}"],
        "fit_iterations": int(res.iterations),
        "fit_vs_statsmodels_logit": fit_diff,
        "memory": memory,
    }
    return rows, ratios


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------
def fmt_us(x: float) -> str:
    return f"{x:,.1f}" if x < 1e4 else f"{x:,.0f}"


def print_table(rows: list) -> None:
    header = ["workload", "method", "median µs", "min µs", "rel. error vs exact/closed form", "notes"]
    lines = [
        [r["workload"], r["method"], fmt_us(r["median_us"]), fmt_us(r["min_us"]),
         "—" if r["rel_error"] is None else f"{r['rel_error']:.1e} (vs {r['error_reference']})",
         r["notes"]]
        for r in rows
    ]
    print_markdown_table(header, lines)


def print_first_calls(fc: list) -> None:
    print("| workload | mode | import s | model construction s | first ah.hessian s (median / min) "
          "| second call s |")
    print("|---|---|---|---|---|---|")
    for r in fc:
        print(f"| {r['workload']} | {r['mode']} | {r['import_s']:.2f} | {r['construct_s']:.3f} | "
              f"{r['first_call_s']:.3f} / {r['first_call_min_s']:.3f} | {r['second_call_s']:.5f} |")


def evaluate_targets(lr: dict, fc: dict, large: dict) -> list:
    T = TARGETS
    checks = [
        ("logistic: exact warm (default mode) / numpy closed form", "<=",
         T["logistic_exact_over_closed_form_max"], lr["exact_over_closed_form"]),
        ("logistic: approx_hess / exact warm (default mode)", ">=",
         T["logistic_approx_over_exact_min"], lr["approx_hess_over_exact"]),
        ("logistic: first ah.hessian call in a fresh process, s", "<=",
         T["logistic_first_call_s_max"], fc["logistic"]["first_call_s"]),
        ("GARCH-t: first ah.hessian call in a fresh process, s", "<=",
         T["garch_first_call_s_max"], fc["garch"]["first_call_s"]),
        ("logistic: exact max rel. error vs closed form (all modes)", "<=",
         T["logistic_exact_rel_error_max"], lr["exact_max_rel_error"]),
        (f"logistic N=10^6 p=50: exact (chunk_size={CHUNK_LARGE}) / numpy closed form, CPU time", "<=",
         T["large_exact_over_closed_form_max"], large["chunked_over_closed_form"]),
        ("logistic N=10^6 p=50: exact (unchunked) / numpy closed form, CPU time", "<=",
         T["large_exact_over_closed_form_max"], large["unchunked_over_closed_form"]),
    ]
    out = []
    for name, op, target, value in checks:
        ok = value <= target if op == "<=" else value >= target
        out.append({"target": name, "op": op, "threshold": target, "measured": value,
                    "status": "SKIPPED" if value != value else ("PASS" if ok else "FAIL")})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--first-call", choices=sorted(FIRST_CALL_WORKLOADS), default=None,
                        help="internal: time the first ah.hessian call and print JSON")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help="JSON results path")
    parser.add_argument("--no-large", action="store_true", help="skip the N = 10^6, p = 50 workload (~1 min, 2 GB)")
    parser.add_argument("--pin-cpu", type=int, default=None, metavar="N",
                        help="run the warm timings on CPU N only (steadier numbers; the first-call "
                             "subprocesses stay unpinned)")
    args = parser.parse_args(argv)

    if args.first_call:
        print(json.dumps(first_call(args.first_call)))
        return 0

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy_start = busy_fraction()
    reps, approx_reps, rounds, fc_repeats = (200, 5, 5, 1) if args.quick else (2000, 20, 10, 3)

    # First-call timings first, in fresh interpreters, before this process loads JAX.
    fc = {name: first_call_in_subprocess(name, fc_repeats) for name in ("logistic", "garch")}
    # The GARCH mode that is not the default, for comparison (fwd-rev vs fwd-fwd).
    other = "garch-fwd-fwd" if fc["garch"]["mode"] == "fwd-rev" else "garch-fwd-rev"
    fc[other] = first_call_in_subprocess(other, fc_repeats)

    if args.pin_cpu is not None:
        # Before JAX starts, so that XLA's thread pool is confined to this CPU too.
        os.sched_setaffinity(0, {args.pin_cpu})

    import autohess as ah  # must precede any JAX array: float64 + synchronous CPU dispatch
    import jax
    import jax.numpy as jnp

    logistic_rows, logistic_ratios = bench_logistic(ah, jax, jnp, reps, approx_reps, rounds)
    garch_rows, garch_ratios = bench_garch(ah, jax, jnp, reps, approx_reps, rounds)
    rows = logistic_rows + garch_rows
    large_ratios = {"chunked_over_closed_form": float("nan"), "unchunked_over_closed_form": float("nan")}
    if not args.no_large:
        large_rows, large_ratios = bench_large(ah, jax, jnp, 1 if args.quick else 3)
        rows += large_rows
    targets = evaluate_targets(logistic_ratios, fc, large_ratios)
    info = machine_info(jax)
    info["load_average_1min_at_start"] = load_start
    info["cpu_busy_fraction_before_run"] = busy_start
    total_s = time.perf_counter() - t_start

    print_run_header(
        "autohess Hessian benchmark", info, busy_start,
        flags=f"{' [--quick]' if args.quick else ''}"
        f"{f' [warm timings pinned to CPU {args.pin_cpu}]' if args.pin_cpu is not None else ''}",
    )
    print(f"\nWarm per-call times ({reps} calls; approx_hess {approx_reps}; interleaved in {rounds} rounds); "
          "rel. error = max|H - H_ref| / max|H_ref|.\n")
    print_table(rows)
    print(f"\nFirst call (trace + compile + run) in a fresh process, {fc_repeats} process(es) each:\n")
    print_first_calls(list(fc.values()))
    print("\n## ratios")
    print(f"logistic: exact ({logistic_ratios['default_mode']}) / numpy closed form = "
          f"{logistic_ratios['exact_over_closed_form']:.2f}; approx_hess / exact = "
          f"{logistic_ratios['approx_hess_over_exact']:.0f}; exact / bare jax.hessian = "
          f"{logistic_ratios['exact_over_bare_jax']:.2f}; ah.hessian wrapper overhead = "
          f"{logistic_ratios['wrapper_overhead_us']:.1f} µs")
    print(f"GARCH-t: approx_hess / exact ({garch_ratios['default_mode']}, default) = "
          f"{garch_ratios['approx_hess_over_exact']:.1f}; approx_hess / fastest exact "
          f"({garch_ratios['fastest_exact_method']}) = {garch_ratios['approx_hess_over_fastest_exact']:.1f}; "
          f"default / fastest exact = {garch_ratios['default_over_fastest_exact']:.1f}; "
          f"approx_hess rel. error = {garch_ratios['approx_hess_rel_error']:.1e}")
    if not args.no_large:
        print(f"logistic N=10^6 p=50: exact / numpy closed form = {large_ratios['chunked_over_closed_form']:.2f} "
              f"(chunk_size={CHUNK_LARGE}), {large_ratios['unchunked_over_closed_form']:.2f} (unchunked); "
              f"ah.fit + SEs chunked {large_ratios['fit_with_ses_s']:.2f} s CPU "
              f"({large_ratios['fit_iterations']} iterations); temporary memory {large_ratios['memory']}")
    print("\n## targets")
    for t in targets:
        print(f"- {t['target']}: {t['op']} {t['threshold']:g}; measured {t['measured']:.3g} -> {t['status']}")
    print(f"\ntotal benchmark time {total_s:.0f} s")

    result = {
        "benchmark": "bench_hessian",
        "quick": args.quick,
        "settings": {"reps": reps, "approx_hess_reps": approx_reps, "rounds": rounds, "pin_cpu": args.pin_cpu, "first_call_processes": fc_repeats,
                     "logistic": {"N": N_LOGISTIC, "p": P_LOGISTIC, "seed": SEED},
                     "garch": {"N": N_GARCH, "data": "benchmarks/data/dem2gbp.csv.gz",
                               "params": garch_point(garch_data())}},
        "machine": info,
        "rows": rows,
        "first_call": list(fc.values()),
        "ratios": {"logistic": logistic_ratios, "garch": garch_ratios, "large": large_ratios},
        "targets": targets,
        "total_s": total_s,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, result)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
