#!/usr/bin/env python
"""Benchmark: finite-difference Hessians (autohess, numdifftools, statsmodels) against the exact one.

Run from the repository root::

    python benchmarks/bench_fd.py            # full run, writes benchmarks/results/fd.json
    python benchmarks/bench_fd.py --quick    # fewer repetitions, for a smoke test
    python benchmarks/bench_fd.py --output /tmp/fd.json   # write the JSON elsewhere

Workloads (float64, CPU, one process; the same data and points as bench_hessian.py):

1. Logistic regression, N = 1500, p = 12 (simulated, seed 0), at the true beta.
2. GARCH(1,1) with Student-t innovations, first 1500 DEM/GBP returns (benchmarks/data), at
   ``mu = mean(y), omega = 0.01, alpha = 0.1, beta = 0.85, nu = 6``.

Methods, per workload: ``ah.fd_hessian`` with ``method="central"``, ``"richardson"`` and
``"forward"`` at their default steps (every stencil point in one compiled vmapped call);
numdifftools' ``nd.Hessian(f)(x)`` with its defaults (central differences over 15 steps with
Richardson extrapolation), once with ``f`` a Python function that calls a jitted JAX negative
log-likelihood on a numpy vector and returns a float, once with ``f`` a pure-numpy negative
log-likelihood (GARCH: variance recursion in ``scipy.signal.lfilter``; both numpy versions are
asserted equal to autohess's value to 1e-10 relative); statsmodels' ``approx_hess3`` on the
numpy function; and the exact ``ah.hessian`` (reference, time only). When numdifftools'
default steps give non-finite entries (they do for GARCH: its absolute steps start at 2.0 and
step omega = 0.01 below zero), the result is reported as it is and numdifftools is run again in
relative coordinates ``z = x / x0`` (Hessian rescaled by ``1 / (x0_i x0_j)``). For GARCH two
supplementary rows run ``ah.fd_hessian`` with relative steps ``step = eps^(1/k) |x_i|``
instead of its default ``eps^(1/k) max(|x_i|, 1)``.

Warm times are per call (median and min, the methods of a workload interleaved in 10 rounds,
garbage collector off), including ``.matrix.block_until_ready()`` for autohess; the first call
of each method (compilation for the JAX ones, JAX itself already initialised) is reported
separately. Errors against the exact Hessian E: "rel. error" is ``max|H - E| / max|E|``,
"max scaled error" is ``max_ij |H_ij - E_ij| / sqrt(|E_ii E_jj|)``.

Headline numbers (2-core AMD EPYC VM, Linux, Python 3.11.7, jax 0.10.2, numpy 2.4.6,
scipy 1.17.1, statsmodels 0.15.0, numdifftools 0.11.2; 2026-11-24, idle machine, 27 s in all):

* Logistic N=1500, p=12 (exact rev-rev 0.048 ms): ``fd_hessian`` forward 0.079 ms (rel. error
  1.4e-8), central 2.2 ms (2.2e-8), richardson 5.1 ms (5.9e-10); numdifftools 110 ms with the
  jitted JAX f and 112 ms with the numpy f (4321 f calls; 3.9e-11 / 2.8e-11), i.e. 50x
  richardson and 1400x forward; statsmodels ``approx_hess3`` 6.5 ms (1.4e-6). The central and
  richardson stencils (289 / 578 evaluations of a 1500-term logaddexp sum) are compute-bound:
  only 3x / 1.3x faster than approx_hess3's Python loop. First calls 0.07-0.18 s.
* GARCH(1,1)-t N=1500 (exact fwd-rev 0.175 ms): ``fd_hessian`` forward 0.28 ms (1.4e-6),
  central 0.48 ms (5.8e-5), richardson 0.64 ms (1.5e-4: *worse* than central, because the
  default step ``eps^(1/6) max(|x_i|, 1)`` is 2.4e-3, a quarter of omega = 0.01; with relative
  steps ``eps^(1/k) |x_i|`` central gives 3.2e-8 and richardson 9.3e-10). numdifftools'
  defaults return NaN in the 9 omega entries (204 of its 751 f calls land at omega < 0: its
  steps run from 2.0 down to 2.8e-3); in relative coordinates it is the most accurate method
  (2.6e-11 JAX f / 8.8e-11 numpy f) at 42-64 ms (JAX f: a 1500-step scan call costs 55-85 us
  from Python, drifting between runs) / 24 ms (numpy f with lfilter). approx_hess3 1.8 ms
  (2.3e-6). First calls: fd_hessian 0.33-0.43 s, exact 0.6-1.3 s across runs.

See benchmarks/README.md for how to run and read these numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# Shared with the other benchmarks (none of these touch JAX at import time).
from _harness import Interleaved, busy_fraction, machine_info, print_markdown_table, print_run_header, write_json  # noqa: E402
from bench_hessian import (  # noqa: E402
    N_GARCH,
    N_LOGISTIC,
    P_LOGISTIC,
    SEED,
    garch_data,
    garch_negloglik_np,
    garch_point,
    logistic_closed_form,
    logistic_data,
    logistic_negloglik_np,
)

RESULTS_FILE = HERE / "results" / "fd.json"
FD_METHODS = ("central", "richardson", "forward")
FD_POWER = {"central": 0.25, "richardson": 1.0 / 6.0, "forward": 0.5}  # autohess's default rule


# ------------------------------------------------------------------------------------------
# Accuracy and helpers
# ------------------------------------------------------------------------------------------
def errors(H, exact) -> dict:
    """Relative and diagonal-scaled max errors of H against the exact Hessian (NaN-aware)."""
    H, E = np.asarray(H, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    diff = np.abs(H - E)
    nonfinite = int(np.sum(~np.isfinite(H)))
    if nonfinite:
        return {"rel_error": None, "max_scaled_error": None, "nonfinite_entries": nonfinite}
    d = np.sqrt(np.abs(np.diag(E)))
    return {
        "rel_error": float(np.max(diff) / np.max(np.abs(E))),
        "max_scaled_error": float(np.max(diff / np.outer(d, d))),
        "nonfinite_entries": 0,
    }


class Counted:
    """Wraps f, counting calls and non-finite values (used in one untimed call only)."""

    def __init__(self, f):
        self.f, self.calls, self.nonfinite = f, 0, 0

    def __call__(self, *a):
        v = self.f(*a)
        self.calls += 1
        self.nonfinite += not np.isfinite(v)
        return v


def quiet(fn):
    """Call fn() with numpy/numdifftools warnings silenced (NaN steps warn on every call)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return fn()


def first_call(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def fmt_s(s: float) -> str:
    return f"{s:.2f} s" if s >= 0.1 else f"{1e3 * s:.1f} ms"


class Workload:
    """Collects the methods of one workload, times them interleaved and builds the rows."""

    def __init__(self, name: str, exact, rounds: int):
        self.name, self.exact, self.timer = name, np.asarray(exact), Interleaved(rounds)
        self.entries: dict = {}  # method -> dict(matrix, first_s, notes, extra)

    def add(self, method, fn, result_fn, reps, warmup=20, notes="", extra=None, reference=False):
        """``fn()`` is the timed call; ``result_fn()`` the first call, returning the matrix
        (or a ``(matrix, first_call_seconds)`` tuple measured beforehand)."""
        H, first_s = result_fn if isinstance(result_fn, tuple) else first_call(result_fn)
        self.entries[method] = {"matrix": np.asarray(H), "first_s": first_s, "notes": notes,
                                "extra": extra or {}, "reference": reference}
        self.timer.add(method, fn, reps, warmup=warmup)
        return np.asarray(H)

    def rows(self) -> list:
        timings = self.timer.run()
        out = []
        for method, e in self.entries.items():
            t = timings[method]
            err = ({"rel_error": None, "max_scaled_error": None, "nonfinite_entries": 0}
                   if e["reference"] else errors(e["matrix"], self.exact))
            out.append({
                "workload": self.name, "method": method,
                "median_ms": t["median_us"] / 1e3, "min_ms": t["min_us"] / 1e3, "reps": t["reps"],
                "first_call_ms": 1e3 * e["first_s"], **err, "notes": e["notes"], **e["extra"],
            })
        return out


def add_fd_methods(wl, ah, model, params, reps, relative_steps=False):
    """ah.fd_hessian at default steps (and optionally relative steps) for one model."""
    p = model.n_params
    points = {"central": 1 + 2 * p * p, "richardson": 2 * (1 + 2 * p * p), "forward": p + 1}
    for method in FD_METHODS:
        what = "gradients (exact, reverse mode)" if method == "forward" else "f values"
        wl.add(
            f"ah.fd_hessian {method}",
            lambda method=method: ah.fd_hessian(model, params, method=method).matrix.block_until_ready(),
            lambda method=method: ah.fd_hessian(model, params, method=method).matrix.block_until_ready(),
            reps,
            notes=f"default step; {points[method]} {what} in one vmapped call",
            extra={"stencil_points": points[method]},
        )
    if relative_steps:
        x0 = np.asarray(model.flatten(params))
        for method in ("central", "richardson"):
            step = np.finfo(np.float64).eps ** FD_POWER[method] * np.abs(x0)
            wl.add(
                f"ah.fd_hessian {method}, relative step",
                lambda method=method, step=step: ah.fd_hessian(model, params, method=method, step=step)
                .matrix.block_until_ready(),
                lambda method=method, step=step: ah.fd_hessian(model, params, method=method, step=step)
                .matrix.block_until_ready(),
                reps,
                notes=f"supplementary: step = eps^{FD_POWER[method]:.3g}·abs(x_i) instead of the default "
                      f"eps^{FD_POWER[method]:.3g}·max(abs(x_i), 1) (same compiled program)",
                extra={"step": step.tolist()},
            )


def add_numdifftools(wl, nd, label, f_of_x, x0, reps, relative_if_nonfinite):
    """numdifftools' defaults on f_of_x (a float-returning Python function), plus the
    relative-coordinate variant when the default result has non-finite entries."""
    # The first call (which also compiles a jitted f) counts f's calls and non-finite values.
    counter = Counted(f_of_x)
    H_count, first_s = first_call(lambda: quiet(lambda: nd.Hessian(counter)(x0)))
    wl.add(
        f"numdifftools, {label}",
        lambda: quiet(lambda: nd.Hessian(f_of_x)(x0)),
        (H_count, first_s),
        reps, warmup=2,
        notes=f"defaults; {counter.calls} f calls in a Python loop"
              + (f", {counter.nonfinite} of them non-finite" if counter.nonfinite else ""),
        extra={"f_calls": counter.calls, "f_nonfinite": counter.nonfinite},
    )
    if not (relative_if_nonfinite and not np.all(np.isfinite(H_count))):
        return
    scale = np.outer(x0, x0)

    def rel(g=lambda z: f_of_x(z * x0)):
        return quiet(lambda: nd.Hessian(g)(np.ones_like(x0))) / scale

    counter = Counted(lambda z: f_of_x(z * x0))
    H_rel, first_s = first_call(lambda: rel(counter))
    wl.add(
        f"numdifftools, {label}, relative coords",
        rel, (H_rel, first_s), reps, warmup=2,
        notes=f"defaults in z = x / x0, H / (x0_i x0_j): the default run has non-finite entries; "
              f"{counter.calls} f calls" + (f", {counter.nonfinite} non-finite" if counter.nonfinite else ""),
        extra={"f_calls": counter.calls, "f_nonfinite": counter.nonfinite},
    )


# ------------------------------------------------------------------------------------------
# Workloads
# ------------------------------------------------------------------------------------------
def bench_logistic(ah, jax, jnp, nd, approx_hess3, reps: dict, rounds: int):
    X, y, beta = logistic_data()
    model = ah.models.logistic(X, y)
    params = {"beta": jnp.asarray(beta, dtype=jnp.float64)}
    x0 = np.asarray(model.flatten(params))
    nll_np = logistic_negloglik_np(x0, X, y)
    nll_ah = -float(model.loglik(params))
    assert abs(nll_np - nll_ah) <= 1e-10 * abs(nll_ah), (nll_np, nll_ah)

    exact, exact_first = first_call(lambda: ah.hessian(model, params).matrix.block_until_ready())
    wl = Workload(f"logistic N={N_LOGISTIC} p={P_LOGISTIC}", exact, rounds)
    wl.add(f"ah.hessian {model.hessian_mode} (exact)",
           lambda: ah.hessian(model, params).matrix.block_until_ready(), (exact, exact_first),
           reps["fast"], notes="reference (default mode)", reference=True)
    add_fd_methods(wl, ah, model, params, reps["fast"])

    nll_jit = jax.jit(model.negloglik_flat)
    data = model.data

    def f_jax(x):
        return float(nll_jit(x, data, None))

    add_numdifftools(wl, nd, "jitted JAX f", f_jax, x0, reps["nd"], relative_if_nonfinite=True)
    add_numdifftools(wl, nd, "numpy f", lambda b: logistic_negloglik_np(b, X, y), x0, reps["nd"],
                     relative_if_nonfinite=True)
    wl.add("statsmodels approx_hess3, numpy f",
           lambda: approx_hess3(x0, logistic_negloglik_np, args=(X, y)),
           lambda: approx_hess3(x0, logistic_negloglik_np, args=(X, y)), reps["sm"], warmup=3,
           notes=f"{2 * P_LOGISTIC * (P_LOGISTIC + 1)} f calls; step eps^(1/4)·max(abs(x_i), 0.1)")
    closed = logistic_closed_form(beta, X)
    closed_check = float(np.max(np.abs(np.asarray(exact) - closed)) / np.max(np.abs(closed)))
    return wl.rows(), {"negloglik_numpy": nll_np, "negloglik_autohess": nll_ah,
                       "exact_vs_closed_form_rel_error": closed_check}


def bench_garch(ah, jax, jnp, nd, approx_hess3, reps: dict, rounds: int):
    y = garch_data()
    point = garch_point(y)
    model = ah.models.garch11(y)
    params = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in point.items()}
    assert model.labels == ("alpha", "beta", "mu", "nu", "omega"), model.labels
    x0 = np.asarray(model.flatten(params))
    nll_np = garch_negloglik_np(x0, y)
    nll_ah = -float(model.loglik(params))
    assert abs(nll_np - nll_ah) <= 1e-10 * abs(nll_ah), (nll_np, nll_ah)

    exact, exact_first = first_call(lambda: ah.hessian(model, params).matrix.block_until_ready())
    wl = Workload(f"GARCH(1,1)-t N={N_GARCH}", exact, rounds)
    wl.add(f"ah.hessian {model.hessian_mode} (exact)",
           lambda: ah.hessian(model, params).matrix.block_until_ready(), (exact, exact_first),
           reps["fast"], notes="reference (default mode)", reference=True)
    add_fd_methods(wl, ah, model, params, reps["fast"], relative_steps=True)

    nll_jit = jax.jit(model.negloglik_flat)
    data = model.data

    def f_jax(x):
        return float(nll_jit(x, data, None))

    add_numdifftools(wl, nd, "jitted JAX f", f_jax, x0, reps["nd"], relative_if_nonfinite=True)
    add_numdifftools(wl, nd, "numpy f", lambda th: garch_negloglik_np(th, y), x0, reps["nd"],
                     relative_if_nonfinite=True)
    wl.add("statsmodels approx_hess3, numpy f",
           lambda: approx_hess3(x0, garch_negloglik_np, args=(y,)),
           lambda: approx_hess3(x0, garch_negloglik_np, args=(y,)), reps["sm"], warmup=3,
           notes=f"{2 * 5 * 6} f calls (lfilter recursion); step eps^(1/4)·max(abs(x_i), 0.1)")
    return wl.rows(), {"negloglik_numpy": nll_np, "negloglik_autohess": nll_ah,
                       "point": dict(zip(model.labels, x0.tolist()))}


# ------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------
def fmt_ms(x: float) -> str:
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def fmt_err(r: dict, key: str) -> str:
    if r["nonfinite_entries"]:
        return f"NaN ({r['nonfinite_entries']} entries)"
    return "—" if r[key] is None else f"{r[key]:.1e}"


def print_table(rows: list) -> None:
    header = ["workload", "method", "median ms", "min ms", "rel. error", "max scaled error", "notes"]
    lines = [
        [r["workload"], r["method"], fmt_ms(r["median_ms"]), fmt_ms(r["min_ms"]),
         fmt_err(r, "rel_error"), fmt_err(r, "max_scaled_error"),
         f"{r['notes']}; first call {fmt_s(r['first_call_ms'] / 1e3)}"]
        for r in rows
    ]
    lines = [[c.replace("|", "\\|") for c in ln] for ln in lines]  # keep the markdown table intact
    print_markdown_table(header, lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    parser.add_argument("--output", type=Path, default=RESULTS_FILE, help="JSON results path")
    parser.add_argument("--blas-threads", type=int, default=1, metavar="N",
                        help="OpenBLAS threads for numpy/scipy (default 1, as bench_fit.py; 0 leaves "
                             "the environment as it is)")
    args = parser.parse_args(argv)

    if args.blas_threads > 0 and os.environ.get("OPENBLAS_NUM_THREADS") != str(args.blas_threads):
        # OpenBLAS reads this when it loads (numpy is already imported): start again with it set.
        # One thread gains nothing at these sizes and keeps a busy second core from stalling
        # every split BLAS call (see the BLAS paragraph in benchmarks/README.md).
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.blas_threads)}
        script = str(Path(__file__).resolve())
        os.execve(sys.executable, [sys.executable, script, *(sys.argv[1:] if argv is None else argv)], env)

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy_start = busy_fraction()
    reps = {"fast": 100, "nd": 2, "sm": 10} if args.quick else {"fast": 1000, "nd": 20, "sm": 100}
    rounds = 2 if args.quick else 10

    import autohess as ah  # must precede any JAX array: float64 + synchronous CPU dispatch
    import jax
    import jax.numpy as jnp
    import numdifftools as nd
    from statsmodels.tools.numdiff import approx_hess3

    jax.jit(lambda a: a + 1.0)(jnp.ones(2)).block_until_ready()  # initialise the backend

    logistic_rows, logistic_info = bench_logistic(ah, jax, jnp, nd, approx_hess3, reps, rounds)
    garch_rows, garch_info = bench_garch(ah, jax, jnp, nd, approx_hess3, reps, rounds)
    rows = logistic_rows + garch_rows
    info = machine_info(jax)
    info["numdifftools"] = nd.__version__
    info["OPENBLAS_NUM_THREADS"] = os.environ.get("OPENBLAS_NUM_THREADS")
    info["load_average_1min_at_start"] = load_start
    info["cpu_busy_fraction_before_run"] = busy_start
    total_s = time.perf_counter() - t_start

    print_run_header(
        "autohess finite-difference Hessian benchmark", info, busy_start,
        versions=f", numdifftools {info['numdifftools']}",
        flags=f"{' [--quick]' if args.quick else ''}; OPENBLAS_NUM_THREADS="
        f"{info['OPENBLAS_NUM_THREADS'] or 'unset (library default)'}",
    )
    print(f"\nWarm per-call times (autohess {reps['fast']} calls, numdifftools {reps['nd']}, approx_hess3 "
          f"{reps['sm']}; interleaved in {rounds} rounds). Errors vs the exact Hessian E: rel. error = "
          "max|H - E| / max|E|, max scaled error = max |H_ij - E_ij| / sqrt(|E_ii E_jj|).\n")
    print_table(rows)
    print(f"\nexact vs numpy closed form (logistic): {logistic_info['exact_vs_closed_form_rel_error']:.1e}")
    print(f"total benchmark time {total_s:.0f} s")

    result = {
        "benchmark": "bench_fd",
        "quick": args.quick,
        "settings": {"reps": reps, "rounds": rounds, "blas_threads": args.blas_threads,
                     "logistic": {"N": N_LOGISTIC, "p": P_LOGISTIC, "seed": SEED},
                     "garch": {"N": N_GARCH, "data": "benchmarks/data/dem2gbp.csv.gz",
                               "params": garch_info["point"]}},
        "machine": info,
        "rows": rows,
        "checks": {"logistic": logistic_info, "garch": garch_info},
        "total_s": total_s,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, result)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
