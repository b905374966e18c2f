"""Weak and strong scaling of a logistic bootstrap over 1, 2 and 4 local CPU processes.

Each run starts ``P`` processes of this script on localhost (``jax.distributed`` with gloo CPU
collectives, one CPU device each); P = 1 is a plain process without ``jax.distributed`` (the
one-process path). Every process fits the same logistic model (N = 500, p = 6), runs the
bootstrap once to compile, then times ``ah.bootstrap`` (warm, median of ``--reps`` calls, each
ending with the results complete on every process); "in gathers" is process 0's time per call
inside the gathers, waiting for the slowest share included (0 for one process). Strong scaling: B = 2048 replicates in
all, efficiency ``T_1 / (P T_P)``; weak scaling: B = 512 per process, efficiency
``T_1 / T_P``.

Headline numbers: see the docstring's table below, filled from the last run
(``benchmarks/results/multiprocess.json``, with ``uptime`` before each run). The CI machine
has 2 cores shared with other engineers' jobs: 4 processes on 2 cores cannot be faster than 2,
and a loaded machine leaves less than 2; read the efficiencies as what the split and the
gather cost, not as what separate hosts or GPUs would give. Results are identical to the one-
process run (``tests/test_distributed.py``).

Run of 2026-12-01 (2-core AMD EPYC VM, 100% busy with other engineers' jobs before the run,
load average 18-21; warm = median of 3 calls; one CPU device per process):

| scaling | processes | B    | warm s | us / replicate | efficiency | in gathers s | first call s |
|---------|-----------|------|--------|----------------|------------|--------------|--------------|
| strong  | 1         | 2048 | 1.535  | 749            | 1.00       | 0            | 7.2          |
| strong  | 2         | 2048 | 1.170  | 571            | 0.66       | 0.149        | 42.3         |
| strong  | 4         | 2048 | 1.065  | 520            | 0.36       | 0.118        | 86.2         |
| weak    | 1         | 512  | 0.368  | 719            | 1.00       | 0            | 5.4          |
| weak    | 2         | 1024 | 0.668  | 652            | 0.55       | 0.159        | 45.0         |
| weak    | 4         | 2048 | 1.065  | 520            | 0.35       | 0.118        | 86.2         |

Two processes on two (busy) cores: 1.3x faster for the same B (efficiency 0.66); four on two
cores cannot do better than two, and do not (0.36). An earlier run at load 16-25 gave 0.57 and
0.20. Process 0 spends 0.12-0.16 s of a call in its gathers, most of it waiting for the other
process's share on the oversubscribed cores. The first call
in a multi-process job compiles everything again (42-86 s against 5-7 s for one process, whose
programs the persistent compilation cache already held; the multi-process programs were not
found there) and is slowed by the load.

Run: ``python benchmarks/bench_multiprocess.py`` (~5-10 minutes on the loaded 2-core machine;
``--quick``: B halved, 2 reps).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _harness  # noqa: E402

N_OBS, N_PARAMS = 500, 6


def _worker(port: int, n_proc: int, proc_id: int, n_boot: int, reps: int) -> None:
    import jax

    if n_proc > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n_proc,
                                   process_id=proc_id, heartbeat_timeout_seconds=30, shutdown_timeout_seconds=30)
    import numpy as np

    import autohess as ah

    from autohess import _distributed

    waited = [0.0]
    gather = _distributed._gather

    def timed(*a):
        # the gather, including the wait for the slowest process's share
        t = time.perf_counter()
        try:
            return gather(*a)
        finally:
            waited[0] += time.perf_counter() - t

    _distributed._gather = timed
    rng = np.random.default_rng(0)
    X = np.c_[np.ones(N_OBS), rng.normal(size=(N_OBS, N_PARAMS - 1))]
    y = (rng.uniform(size=N_OBS) < 1 / (1 + np.exp(-X @ np.linspace(-0.5, 0.5, N_PARAMS)))).astype(float)
    res = ah.fit(ah.models.logistic(X, y))
    t0 = time.perf_counter()
    boot = ah.bootstrap(res, n=n_boot, key=1)
    first = time.perf_counter() - t0
    times = []
    waited[0] = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        boot = ah.bootstrap(res, n=n_boot, key=1)
        np.asarray(boot.replicates)  # complete on this process
        times.append(time.perf_counter() - t0)
    if proc_id == 0:
        print(json.dumps({"first_s": first, "median_s": float(np.median(times)), "min_s": float(np.min(times)),
                          "gather_s": waited[0] / reps,
                          "se0": float(boot.se_flat[0]), "n_failed": int(boot.n_failed)}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(n_proc: int, n_boot: int, reps: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=1").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    port = _free_port()
    load = os.getloadavg()[0]
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    procs = [
        subprocess.Popen([sys.executable, __file__, "--worker", str(port), str(n_proc), str(i), str(n_boot), str(reps)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n_proc)
    ]
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"a worker failed ({p.returncode}):\n{err[-3000:]}")
    row = json.loads(outs[0][0].strip().splitlines()[-1])
    return {"processes": n_proc, "replicates": n_boot, "load_average_1min_before": load, "uptime_before": uptime, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--output", default=str(HERE / "results" / "multiprocess.json"))
    parser.add_argument("--worker", nargs=5, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(*args.worker)
        return
    import jax

    info = _harness.machine_info(jax)
    busy = _harness.busy_fraction()
    _harness.print_run_header("autohess multi-process bootstrap scaling", info, busy)
    strong_b, weak_b = (1024, 256) if args.quick else (2048, 512)
    reps = 2 if args.quick else args.reps
    strong, weak, done = [], [], {}
    for n_proc in (1, 2, 4):
        for rows, b in ((strong, strong_b), (weak, weak_b * n_proc)):
            if (n_proc, b) not in done:  # weak at P = 4 is strong at P = 4: measured once
                done[n_proc, b] = _run(n_proc, b, reps)
            rows.append(dict(done[n_proc, b]))
    for rows, kind in ((strong, "strong"), (weak, "weak")):
        t1 = rows[0]["median_s"]
        for r in rows:
            r["efficiency"] = t1 / (r["processes"] * r["median_s"]) if kind == "strong" else t1 / r["median_s"]
            # per-process work is the same in weak scaling, the total the same in strong scaling
            r["us_per_replicate"] = 1e6 * r["median_s"] / r["replicates"]
    header = ["scaling", "processes", "B", "warm median s", "us / replicate", "efficiency", "in gathers s",
              "first call s", "load (1 min)"]
    lines = [[kind, str(r["processes"]), str(r["replicates"]), f"{r['median_s']:.3f}", f"{r['us_per_replicate']:.0f}",
              f"{r['efficiency']:.2f}", f"{r['gather_s']:.3f}", f"{r['first_s']:.1f}", f"{r['load_average_1min_before']:.1f}"]
             for kind, rows in (("strong", strong), ("weak", weak)) for r in rows]
    _harness.print_markdown_table(header, lines)
    _harness.write_json(args.output, {"machine": info, "cpu_busy_before": busy, "N": N_OBS, "p": N_PARAMS,
                                      "reps": reps, "strong": strong, "weak": weak})
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
