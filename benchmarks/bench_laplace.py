#!/usr/bin/env python
"""Benchmark: random-effects fits by the Laplace approximation (issue #15), CPU, one run.

Run from the repository root::

    python benchmarks/bench_laplace.py            # writes benchmarks/results/laplace.json
    python benchmarks/bench_laplace.py --quick    # fewer repetitions, no bootstrap
    python benchmarks/bench_laplace.py --output /tmp/laplace.json

What is timed is "fit + all standard errors": ``res = ah.fit(model)`` followed by
``np.asarray(res.bse)`` and ``np.asarray(res.random[name].se)`` for every random effect (the
modes' SEs with the parameter uncertainty, sdreport's formula with the exact ``du/dtheta``).
Workloads (data in tests/data, loaded by tests/laplace_reference.py; likelihoods written as a
user would from the README, full constants so ``res.llf`` compares with lme4):

1. ``cbpp``: lme4's binomial GLMM ``incidence/size ~ period + (1 | herd)``, 56 rows, 15 herds
   (block-diagonal path, q = 1).
2. ``sleepstudy``: ``Reaction ~ Days + (Days | Subject)`` by ML, 180 rows, 18 subjects,
   correlated intercept and slope (``ah.MultivariateNormal``, q = 2). statsmodels
   ``MixedLM.fit(reml=False)`` side by side (its ``.bse`` included in its time).
3. ``nb2``: NB2 GLMM with a site intercept, 644 rows, 23 sites (tests/data/nb2_sites.csv).
4. ``grouseticks``: Poisson GLMM with three random-intercept factors (chick, brood,
   location: 403 + 118 + 63 = 584 random effects, 403 rows): the crossed path.
5. 1,000 parametric-bootstrap refits of ``cbpp`` (``ah.bootstrap(kind="parametric")``),
   warm (the second call of the same size is timed).
6. First call (trace + compile + run of fit + SEs) of each model in a fresh interpreter
   without the persistent compilation cache (``AUTOHESS_CACHE=0``); import and model
   construction (which evaluates the marginal once, so compiles it) are timed separately.
   Then cbpp and sleepstudy in two more fresh processes sharing a new cache directory: the
   second reads the first's programs.

Warm times are per call, median and min, models interleaved in rounds with the garbage
collector off (``Interleaved`` from bench_hessian.py).

Branch grouse15 (issue #15: the start's scale, grouseticks' first call), 00:00-01:10 UTC on a
VM loaded by others (load average 5-10 throughout: wall times 2-4x CPU, so only interleaved
process CPU times compare). (1) The objective's scale at the start no longer evaluates the
Laplace marginal (a second inner Newton loop in the solve program, and on the crossed path an
inner solve whose modes seeded ``warm_started``): it comes from the conditional log-likelihood
at u = 0 (block-diagonal) or is 1 (a scalar marginal, as before). Results: cbpp, sleepstudy
and NB2 bit-identical (estimates, SEs, llf, modes, iterations: their scales were 1 before and
after), grouseticks within 4e-14 (estimates), 1e-14 (SEs), 3e-16 (llf), 1e-12 (modes): the
first evaluation's inner solve now starts at 0. (2) The crossed path takes static positions
(blocks, directions, the solve's permutation) by slices, and adds the factors' own gradients
and blocks without scatters: grouseticks' warm-started value + gradient + Hessian program 500
-> 442 kernels, 76 -> 58 loops (scatter-adds that XLA's CPU backend compiles as loops), its
compile 8.2 -> 7.3 s CPU (one pair; 8.2/7.3/8.1 -> 6.7/6.7/7.4 s for the slices alone), one
warm evaluation min 3.17/2.65 -> 2.68/2.37 ms; results within 1e-14. Cold first call + SEs,
process CPU, base 066c044 -> branch, interleaved pairs (one XLA thread): grouseticks 21.7 ->
18.3, 21.8 -> 19.7, 22.2 -> 16.5 s (18.5 -> 15.6, 17.3 -> 15.0 with (1) alone); cbpp 6.6 ->
5.6, 6.9 -> 5.6, 6.6 -> 6.2 s (6.3 -> 4.6, 5.0 -> 4.5 with (1)); sleepstudy 11.6 -> 10.5, 11.2
-> 10.9, 13.2 -> 10.3 s; NB2 13.4 -> 12.6, 12.6 -> 12.9 s. Warm fit + SEs, CPU median (min),
interleaved, within this load's noise (+-25% between rounds): grouseticks base 30.0-36.8
(22.1-28.5) ms, branch 32.2-40.1 (25.3-30.5) ms; cbpp 3.3-4.1 vs 3.2-3.5 ms, sleepstudy 3.3-4.4
vs 3.1-4.0, NB2 11.9-16.0 vs 11.6-14.0. ``--quick`` at de78949 (01:07-01:11, 100% busy): first call wall (CPU) cbpp 7.6 (4.8) s,
sleepstudy 12.1 (7.9), NB2 13.6 (10.5), grouseticks 19.1 (14.6) s; warm medians 4.3 / 4.4 /
16.1 / 128 ms with MixedLM at 110 ms (40 ms idle): the load, not the branch (``--skip-first-call``
right after, base and branch alternating twice: grouseticks 373-403 ms both, the collapse under
oversubscription noted below). The idle-VM targets need a rerun when the VM is quiet.

Where grouseticks' first call still goes (pieces compiled alone, level 1, process CPU, loaded
VM): tracing + lowering of the solve ~3-4 s; the inner Newton loop 1.2 s of XLA compile; the
marginal's value + gradient 3.3 s, with the Hessian 5.8-6.7 s (500 kernels, 442 now). Split by
term: the Hessian of ``j(u_hat(theta), theta)`` alone compiles 284 kernels (4.3 s), that of
``-1/2 log det`` alone 383 (5.9 s), both 419 (6.2 s): the cost is the exact second derivative
of ``u_hat`` and of ``log det(-H_uu(u_hat, theta))`` through the crossed elimination (its
Hessian at a fixed map from the parameters to ``-H_uu``: 123 kernels, 1.6 s; ``-H_uu``'s own
second derivatives in the parameters: 64, 0.8 s; both with ``u`` fixed: 185, 2.1 s; ``u``
moving adds ~200). Tried and dropped (no fewer kernels): an adjoint (Lagrangian) form that
needs only ``du/dtheta`` (``j + lambda' g_u - 1/2 log det`` with ``u`` linear in theta: 503
kernels, equal to 2e-16), the mode and ``log det`` as one ``custom_jvp`` (413 vs 420),
fwd-fwd / rev-rev outer Hessians (462-519), the u-gradient of the implicit rule from the
crossed forward derivatives (493), the first partials from the nested second-order pass (496);
``xla_llvm_disable_expensive_passes`` and ``xla_cpu_parallel_codegen_split_count`` (CPU within
noise); LLVM level 0 (first call 19.2 -> 10.5 s CPU but a warm fit + SEs 2-4x slower). 5 s needs
the marginal's Hessian assembled by hand from per-observation derivative tensors (third and
fourth derivatives of each ``loglik_i`` in its ``m`` coefficients and the parameters,
contracted with the elimination's selected inverse), not nested AD through the elimination.

Latest, this session's main after its merges (2a51bf8), idle VM (2% busy before, load 3.1
decaying to 1.8), full run (results/laplace.json). The VM ran slower than in the previous idle
run: statsmodels' MixedLM took 48.97 ms against 40.42 then.

* warm fit + all SEs, median (min): cbpp 2.11 (1.27) ms PASS, sleepstudy 3.34 (1.81) ms PASS,
  NB2 10.30 (7.23) ms FAIL by 0.3 ms of its median (0.21x MixedLM's time, 0.26x before),
  grouseticks 39.01 (29.73) ms FAIL (0.80x MixedLM, 0.68x before; its single-threaded CPU
  medians before and after this session, 39.5 and 42.4 ms, are within this VM's noise).
* first call, cold, wall (CPU): cbpp 4.5 (4.9) s PASS, sleepstudy 4.9 (6.0) s PASS, NB2 5.9
  (7.1) s FAIL, grouseticks 11.0 (14.1) s FAIL (target 5 s; previous idle run 4.6 / 7.3 / 7.9 /
  11.5 s). With the cache filled by a previous process: cbpp 1.4 s, sleepstudy 2.0 s.
* 1,000 parametric-bootstrap refits of cbpp: 1.34 s warm PASS (one UNBOUNDED member), first
  call 13.4 s.

What changed the first calls (issue #15):

* One grouping factor: the solver's value, gradient and Hessian of the marginal written out per
  group (``_laplace_derivatives``: the implicit function theorem's formulas from directional
  derivatives of the joint density) instead of JAX's derivatives through the mode's
  ``custom_jvp`` and the Cholesky factor. That program alone compiled in (CPU s, loaded VM,
  one process each) NB2 3.65 -> 2.3, sleepstudy 2.58 -> 1.99, cbpp 1.38 -> 1.01, results
  equal to 1e-14; first call + SEs in fresh processes, CPU, interleaved: NB2 12.2 / 12.6 ->
  8.4 / 6.6 s, sleepstudy 9.25 -> 5.66 s, cbpp 5.74 -> 5.44 s.
* The objective's scale no longer runs an inner solve (the conditional log-likelihood at
  u = 0, per group; 1 for a scalar marginal): one inner Newton loop per solve program.
* The crossed path's static positions by slices instead of gathers (grouseticks' derivative
  program 500 -> 442 kernels, its compile ~10% less).
* Batches of one-factor models (bootstrap, simulation study) solve and run their escape test
  on the written-out Hessian and compile with the solve's options: a cbpp bootstrap member
  program 10,400 -> 6,900 operations; the first 1,000-refit bootstrap call 36-40 s CPU -> ~20 s
  on the loaded VM (13.4 s wall idle here, including ``simulate``'s key probe now compiled at
  LLVM level 0: the user's ``jax.random.binomial`` 6.9 -> 0.9 s).

What remains for 5 s: grouseticks' compile is the exact second derivative through the crossed
elimination (the j(u_hat) term's Hessian alone 284 kernels, the log det's 383); the written-out
formulas carried over to the crossed path (per-observation third and fourth derivatives
contracted with the selected inverse of H_uu) would be the next step. NB2: ~1 s over.

Previous idle run, on main after the merges (a7abcb5), idle VM (3% busy before, load 2.3 -> 1.2):
``--skip-first-call`` (results/laplace_warm_quiet_1.json): warm fit + SEs median (min) cbpp 1.99
(1.19) ms PASS, sleepstudy 1.88 (1.33) ms PASS, NB2 10.40 (7.16) ms FAIL by its median (the
target is 10; 8.65 and 11.42 ms in last session's two idle runs: on the line), grouseticks 27.66
(19.11) ms PASS, MixedLM 40.42 ms; 1,000 cbpp bootstrap refits 1.11 s warm PASS (one UNBOUNDED
member). ``--quick`` right after (results/laplace_quick_quiet.json): first call cold, wall (CPU)
cbpp 4.6 (5.7) s PASS, sleepstudy 7.3 (8.9) s FAIL, NB2 7.9 (10.2) s FAIL, grouseticks 11.5
(14.9) s FAIL (target 5 s; last session's idle run 5.2 / 8.3 / 9.2 / 16.8 s); with a filled
cache cbpp 2.2 s, sleepstudy 3.1 s.

Before that, on branch first15 (issue #15's first-call work: the solve compiled at LLVM level 1, one
copy of the inner Newton step per program, the warm solve and its cold fallback one loop).
``--quick`` at fd1b075, 22:23-22:25 UTC, 1% busy in the second before but others started during
it (load average 1.3 before, 3.1 after): first call wall (CPU) cbpp 3.7 (4.7) s PASS,
sleepstudy 6.9 (8.6) s FAIL, NB2 8.6 (10.6) s FAIL, grouseticks 15.7 (15.7) s FAIL (target 5 s);
warm fit + SEs median (min) cbpp 5.20 (3.05) ms PASS, sleepstudy 3.44 (2.09) ms PASS, NB2 15.90
(11.32) ms FAIL, grouseticks 85.8 (59.7) ms FAIL (targets 10/10/10/30; under load NB2 and
grouseticks are far from the idle VM's 8.65 and 21.3 ms, see run B below). The base commit
d91e5d1 right after (98% busy, load 1.9 -> 5.8): first calls 6.7 / 10.0 / 13.5 / 21.4 s, warm
4.21 / 4.29 / 12.64 / 377.9 ms: not comparable runs. Comparable: first call + SEs in fresh
processes, one XLA thread, process CPU time, base and branch interleaved (two pairs, load 10-13
and 5): cbpp 6.6 -> 5.5 and 5.8 -> 5.5 s, sleepstudy 10.3 -> 10.0 and 10.0 -> 10.4 s, NB2
12.2 -> 9.8 and 13.0 -> 10.0 s, grouseticks 24.1 -> 19.7 s. Where a first call goes (cbpp,
one thread): ~1 s tracing and 0.3 s lowering, then XLA compiling the solve, of which nearly
all is LLVM compiling its kernels (cbpp: 204 kernels; grouseticks' optimised HLO holds 763
fusions; every HLO pass together takes milliseconds): compile cost follows kernel count and size. Within cbpp's solve
program: the solver's own logic ~0.9 s, the marginal's value + gradient + Hessian ~1.3 s, the
objective's scale at the start (a second inner loop) ~0.45 s. Tried and dropped: masked sums
instead of ``segment_sum`` (XLA's CPU backend turns every scatter-add into a loop, 27 in cbpp's
solve and 104 in grouseticks', but replacing them added kernels, 204 -> 231, and no speed),
``jax.disable_jit`` while tracing (no faster), fusion emitters (slower), LLVM's
``disable_expensive_passes`` and ``max_isa`` (within noise), other Hessian AD modes
(rev-rev, fwd-fwd: no smaller). Warm single-threaded A/B of the branch against the base stayed
within this VM's noise (cbpp, sleepstudy, NB2; +-20% between rounds): no measured gain for
NB2's warm target, and its margin is not settled. What would reach 5 s: a marginal Hessian
assembled from per-group/per-observation derivative tensors instead of nested AD through the
implicit ``custom_jvp`` (fewer, smaller kernels), and the start's scale and inner solve out of
the level-1 program.

Headline numbers: two runs on the 2-core AMD EPYC VM shared with other engineers. Run A at
44e060b (19:21-19:25 UTC; 66% busy in the second before, load average 2.4 before, 2.8 after);
run B, results/laplace.json, at 2e335c6 (single fits unchanged from A; batches of
random-effects models no longer compacted) (19:38-19:41 UTC; 100% busy, load 4.1 before, 7.4
after). Earlier runs are in git history.

* warm fit + all SEs, wall median (min), run A: cbpp 2.59 (1.96) ms, sleepstudy 2.35 (1.78)
  ms, NB2 9.26 (8.04) ms, grouseticks 30.72 (23.47) ms; statsmodels MixedLM (ML, with .bse)
  42.2 (38.1) ms. Targets 10 / 10 / 10 / 30 ms: cbpp, sleepstudy and NB2 PASS, grouseticks
  FAIL by its median (30.7 ms), PASS by its min. Run B, fully loaded: 4.19 / 4.11 / 16.34 /
  476.5 ms (MixedLM 68.7 ms): only cbpp and sleepstudy PASS there; grouseticks collapses
  under oversubscription (CPU time 379 ms too, i.e. XLA's worker threads spinning), as in the
  16:32 run (670 ms). Process CPU time of the same calls in run A (multi-threaded XLA, JAX's
  default): medians 4.6 / 6.0 / 21.2 / 49.4 ms, mins 1.8 / 2.1 / 14.6 / 42.1 ms, i.e. XLA's
  thread pool spends about as much CPU again as the work on these small programs.
  ``--one-thread`` (XLA and BLAS pools off, set before JAX starts) right after run A,
  ``--quick``, 100% busy: grouseticks 43.2 ms wall, 0.61x MixedLM's 70.5 ms in that run (0.73x
  multi-threaded in run A), NB2 18.8 ms, 0.27x (0.22x). Not settled by these loaded runs;
  autohess cannot pin XLA's threads itself (XLA reads its thread flags when JAX starts, before
  autohess is imported; passing ``xla_cpu_multi_thread_eigen=False`` per program changed
  nothing measurable). Single-threaded A/B of this work (CPU time, interleaved): grouseticks'
  SE program 3.0 -> 0.74 ms (the fit's modes kept, its inner solve starts there), fit + SEs
  28.5 -> 25.5 ms; the inner loop's parameter-only terms hoisted (NB2's gammaln): 3-7% less on
  cbpp, NB2 and grouseticks.
* first call, cold (no persistent cache), wall (CPU), run A: cbpp 6.0 (5.9) s, sleepstudy
  11.9 (11.5) s, NB2 8.6 (10.5) s, grouseticks 13.5 (18.1) s (run B: 6.8 (5.9), 8.8 (8.7), 11.0
  (10.2), 24.2 (22.5) s). Target 5 s: FAIL for all four. What remains
  is the solve program (cbpp: ~1.5 s tracing, most of it re-tracing the user's loglik under
  nested jvp/vmap of the Laplace Hessian, 1,115 nested-jit cache misses; ~3.5 s XLA compile
  of a ~600 kB StableHLO program, 900 kB for NB2 whose gammaln's derivatives expand to
  digamma/polygamma series). LLVM level 1 cut its compile by only 10-15% and level 0 halved
  its speed, so it keeps level 2; the random-effect SE program (run once per fit) is now
  compiled at level 0 (grouseticks 3.0 -> 1.2 s CPU); construction no longer traces the
  marginal (0.6 -> 0.4 s CPU, cbpp). With the cache filled by a previous process: cbpp 2.1 s,
  sleepstudy 3.1 s (run B: 2.3, 2.7 s).
* 1,000 parametric-bootstrap refits of cbpp: run B 2.89 s warm (first 29.4 s) on the fully
  loaded VM; target 2 s: FAIL there (1.01 s on the quiet VM at 5977df6). Run A, before random-
  effects batches stopped compacting: 34.7 s (first 48.2 s): since cf1d17f every new bucket size
  of stragglers compiled a Laplace program of its own, in warm calls too (200 refits warm:
  0.63 s at 1d81011, 22.8 s at cf1d17f, 0.52 s with compaction off).
* agreement: sleepstudy llf autohess -875.9697 = statsmodels -875.9697 (lme4 prints -875.97);
  cbpp llf -92.0263 (lme4 -92.0267).

See benchmarks/README.md for how to run and read these numbers; results in the module's
history are in the git log of benchmarks/results/laplace.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT / "tests"), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

from _harness import Interleaved, busy_fraction, machine_info, print_markdown_table, print_run_header, write_json  # noqa: E402

RESULTS_FILE = HERE / "results" / "laplace.json"
MODELS = ("cbpp", "sleepstudy", "nb2", "grouseticks")
#: ``--one-thread``: XLA's and Eigen's thread pools off (what the docstring's CPU times used)
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
TARGETS = {"warm_ms_max": {"cbpp": 10.0, "sleepstudy": 10.0, "nb2": 10.0, "grouseticks": 30.0},
           "first_call_s_max": 5.0, "bootstrap_1000_s_max": 2.0}


def build(name: str):
    """``(model, random names)`` for one workload, written with the public API only."""
    import jax
    import jax.numpy as jnp
    from jax.scipy.special import gammaln

    import autohess as ah
    import laplace_reference as R

    if name == "cbpp":
        d = R.cbpp()
        data = {"X": d["X"], "y": d["y"], "n": d["n"], "logbinom": d["logbinom"], "herd": d["herd"]}

        def loglik(p, data):
            eta = data["X"] @ p["beta"] + p["b"][data["herd"]]
            return data["logbinom"] + data["y"] * eta - data["n"] * jnp.logaddexp(0.0, eta)

        def simulate(key, p, data):
            eta = data["X"] @ p["beta"] + p["b"][data["herd"]]
            y = jax.random.binomial(key, data["n"], jax.nn.sigmoid(eta))
            return {**data, "y": y.astype(data["y"].dtype)}

        model = ah.Model(loglik, data, params={"beta": jnp.zeros(4), "sd": ah.Positive(1.0)},
                         random={"b": ah.Normal(sd="sd", groups="herd")}, simulate=simulate)
        return model
    if name == "sleepstudy":
        d = R.sleepstudy()
        data = {"X": d["X"], "y": d["y"], "days": d["days"], "subject": d["subject"]}

        def loglik(p, data):
            b = p["b"][data["subject"]]
            mu = data["X"] @ p["beta"] + b[:, 0] + b[:, 1] * data["days"]
            return -0.5 * ((data["y"] - mu) / p["sigma"]) ** 2 - jnp.log(p["sigma"]) - 0.5 * jnp.log(2 * jnp.pi)

        return ah.Model(loglik, data,
                        params={"beta": jnp.array([250.0, 10.0]), "sigma": ah.Positive(30.0),
                                "sd": ah.Positive(jnp.array([20.0, 5.0])), "rho": ah.Interval(-1, 1, 0.0)},
                        random={"b": ah.MultivariateNormal(sd="sd", corr="rho", groups="subject")})
    if name == "nb2":
        d = R.nb2_sites()
        data = {"X": d["X"], "y": d["y"], "site": d["site"], "lyf": d["log_y_factorial"]}

        def loglik(p, data):
            eta = data["X"] @ p["beta"] + p["b"][data["site"]]
            r, y = 1.0 / p["alpha"], data["y"]
            mu = jnp.exp(eta)
            return gammaln(y + r) - gammaln(r) - data["lyf"] + r * jnp.log(r / (r + mu)) + y * jnp.log(mu / (r + mu))

        return ah.Model(loglik, data, params={"beta": jnp.zeros(3), "sd": ah.Positive(1.0), "alpha": ah.Positive(1.0)},
                        random={"b": ah.Normal(sd="sd", groups="site")})
    if name == "grouseticks":
        d = R.grouseticks()
        data = {k: d[k] for k in ("X", "y", "index", "brood", "location")}
        data["lyf"] = d["log_y_factorial"]

        def loglik(p, data):
            eta = (data["X"] @ p["beta"] + p["chick"][data["index"]] + p["brood_re"][data["brood"]]
                   + p["loc_re"][data["location"]])
            return data["y"] * eta - jnp.exp(eta) - data["lyf"]

        return ah.Model(loglik, data,
                        params={"beta": jnp.zeros(4), "sd_chick": ah.Positive(1.0), "sd_brood": ah.Positive(1.0),
                                "sd_loc": ah.Positive(1.0)},
                        random={"chick": ah.Normal(sd="sd_chick", groups="index"),
                                "brood_re": ah.Normal(sd="sd_brood", groups="brood"),
                                "loc_re": ah.Normal(sd="sd_loc", groups="location")})
    raise ValueError(name)


def fit_and_ses(ah, model):
    res = ah.fit(model, warn=False)
    out = [np.asarray(res.bse_flat)]
    out += [np.asarray(r.se) for r in res.random.values()]
    return res, out


def first_call(name: str) -> dict:
    """In this (fresh) process: import, construction, then the first fit + SEs."""
    t0 = time.perf_counter()
    import jax

    jax.config.update("jax_enable_x64", True)
    import autohess as ah

    t1 = time.perf_counter()
    model = build(name)
    t2 = time.perf_counter()
    c2 = time.process_time()
    res, _ = fit_and_ses(ah, model)
    t3 = time.perf_counter()
    c3 = time.process_time()
    return {"import_s": t1 - t0, "construct_s": t2 - t1, "first_call_s": t3 - t2, "first_call_cpu_s": c3 - c2,
            "llf": float(res.llf), "status": str(res.status)}


def run_first_calls(names, env) -> dict:
    """Cold first calls (``AUTOHESS_CACHE=0``: no persistent compilation cache), then cbpp and
    sleepstudy twice more with a fresh cache directory: the second process reads the first's
    programs (what the cache saves)."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as cache:
        jobs = [(n, n, {"AUTOHESS_CACHE": "0"}) for n in names]
        for n in ("cbpp", "sleepstudy"):
            jobs += [(n + " (cache filled)", n, {"AUTOHESS_CACHE_DIR": cache}),
                     (n + " (cache read)", n, {"AUTOHESS_CACHE_DIR": cache})]
        for key, name, extra in jobs:
            out[key] = _one_first_call(name, {**env, **extra})
    return out


def _one_first_call(name, env) -> dict:
    if True:
        proc = subprocess.run([sys.executable, __file__, "--first-call", name], capture_output=True, text=True,
                              env=env, cwd=ROOT)
        if proc.returncode != 0:
            return {"error": proc.stderr[-2000:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])


def mixedlm(d):
    """statsmodels MixedLM by ML on sleepstudy: ``(fit + bse callable, result)``."""
    import pandas as pd
    import statsmodels.formula.api as smf

    df = pd.DataFrame({"Reaction": d["y"], "Days": d["days"], "Subject": d["subject"]})

    def go():
        r = smf.mixedlm("Reaction ~ Days", df, groups=df["Subject"], re_formula="~Days").fit(reml=False)
        np.asarray(r.bse)
        return r

    return go, go()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--output", default=str(RESULTS_FILE))
    ap.add_argument("--first-call", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--skip-first-call", action="store_true")
    ap.add_argument("--one-thread", action="store_true",
                    help="XLA and BLAS on one thread (set before JAX starts, here and in the first-call processes)")
    args = ap.parse_args()
    if args.first_call:
        print(json.dumps(first_call(args.first_call)))
        return

    busy = busy_fraction()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    if args.one_thread:
        # jaxlib reads XLA_FLAGS when its CPU client starts: before ``import jax`` below
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + ONE_THREAD).strip()
        os.environ.update(env)
    first = {} if args.skip_first_call else run_first_calls(MODELS, env)

    import jax

    jax.config.update("jax_enable_x64", True)
    import autohess as ah
    import laplace_reference as R

    info = machine_info(jax)
    models = {name: build(name) for name in MODELS}
    fits = {name: fit_and_ses(ah, m)[0] for name, m in models.items()}
    sm_go, sm_res = mixedlm(R.sleepstudy())

    bench = Interleaved(rounds=3 if args.quick else 5)
    for name, m in models.items():
        bench.add(name, lambda m=m: fit_and_ses(ah, m), reps=5 if args.quick else 20, warmup=2)
    bench.add("statsmodels MixedLM", sm_go, reps=5 if args.quick else 20, warmup=2)
    warm = bench.run()
    # the same calls in this process's CPU time: on a shared machine wall time counts the
    # other processes' turns on the cores (and multi-threaded XLA waiting for them)
    bench_cpu = Interleaved(rounds=3 if args.quick else 5, clock=time.process_time)
    for name, m in models.items():
        bench_cpu.add(name, lambda m=m: fit_and_ses(ah, m), reps=5 if args.quick else 20, warmup=1)
    warm_cpu = bench_cpu.run()

    boot = None
    if not args.quick:
        res = fits["cbpp"]
        key = jax.random.key(0)
        t0 = time.perf_counter()
        ah.bootstrap(res, n=1000, key=key, kind="parametric")
        t1 = time.perf_counter()
        b = ah.bootstrap(res, n=1000, key=jax.random.key(1), kind="parametric")
        jax.block_until_ready(jax.tree_util.tree_leaves(b.fits))
        ok = int(np.sum(np.asarray(b.fits.converged))) if hasattr(b.fits, "converged") else None
        t2 = time.perf_counter()
        boot = {"first_s": t1 - t0, "warm_s": t2 - t1, "converged": ok}

    # agreement: autohess sleepstudy vs statsmodels MixedLM (ML) and lme4's printed values
    ss = fits["sleepstudy"]
    agree = {
        "sleepstudy_llf_autohess": float(ss.llf), "sleepstudy_llf_statsmodels": float(sm_res.llf),
        "sleepstudy_llf_lme4": R.LME4_SLEEPSTUDY_ML["llf"],
        "sleepstudy_beta_autohess": np.asarray(ss.params["beta"]).tolist(),
        "sleepstudy_beta_statsmodels": np.asarray(sm_res.fe_params).tolist(),
        "sleepstudy_beta_bse_autohess": np.asarray(ss.bse["beta"]).tolist(),
        "sleepstudy_beta_bse_statsmodels": np.asarray(sm_res.bse_fe).tolist(),
        "cbpp_llf_autohess": float(fits["cbpp"].llf), "cbpp_llf_lme4": R.LME4_CBPP_LAPLACE["llf"],
    }
    out = {"machine": info, "busy_before": busy, "warm": warm, "warm_cpu": warm_cpu, "one_thread": args.one_thread,
           "first_call": first, "bootstrap": boot,
           "agreement": agree, "targets": TARGETS,
           "iterations": {n: int(r.iterations) for n, r in fits.items()}}

    print_run_header("Laplace benchmark (issue #15)", info, busy)
    rows = []
    for name in MODELS + ("statsmodels MixedLM",):
        w = warm[name]
        fc = first.get(name, {})
        tgt = TARGETS["warm_ms_max"].get(name)
        wc = warm_cpu.get(name)
        rows.append([name, f"{w['median_us'] / 1e3:.2f}", f"{w['min_us'] / 1e3:.2f}",
                     f"{wc['median_us'] / 1e3:.2f}" if wc else "", f"<= {tgt:g}" if tgt else "",
                     f"{fc['first_call_s']:.1f} ({fc['first_call_cpu_s']:.1f} CPU)" if "first_call_s" in fc else "",
                     f"{fc['construct_s']:.1f}" if "construct_s" in fc else "",
                     str(out["iterations"].get(name, ""))])
    print_markdown_table(["workload", "warm median ms", "warm min ms", "warm CPU median ms", "target ms", "first call s",
                          "construct s",
                          "iterations"], rows)
    for key, fc in first.items():
        if "(cache" in key and "first_call_s" in fc:
            print(f"first call, {key}: {fc['first_call_s']:.1f} s ({fc['first_call_cpu_s']:.1f} s CPU), "
                  f"construction {fc['construct_s']:.1f} s")
    if boot:
        print(f"\n1,000 parametric-bootstrap refits of cbpp: {boot['warm_s']:.2f} s warm "
              f"(first {boot['first_s']:.1f} s; target <= {TARGETS['bootstrap_1000_s_max']} s)")
    print(f"\nsleepstudy llf: autohess {agree['sleepstudy_llf_autohess']:.4f}, statsmodels "
          f"{agree['sleepstudy_llf_statsmodels']:.4f}, lme4 {agree['sleepstudy_llf_lme4']}; cbpp llf "
          f"{agree['cbpp_llf_autohess']:.4f} (lme4 {agree['cbpp_llf_lme4']})")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, out, indent=1, default=str, newline=False)


if __name__ == "__main__":
    main()
