"""What the benchmark scripts share: machine and version information, the CPU load before a
run, interleaved timing, first calls in fresh processes, the header and tables they print and
the JSON they write. Imported by ``bench_*.py`` and ``nist_table.py`` (run from anywhere: each
puts ``benchmarks/`` on ``sys.path``); nothing here imports JAX or autohess at import time, so a
script can read its data and set environment variables first.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: the repository this copy of the benchmarks sits in. ``python benchmarks/x.py`` puts
#: ``benchmarks/`` first on ``sys.path``, not the repository, so ``import autohess`` found an
#: installed (editable) autohess elsewhere, not this checkout's: put the checkout right after it
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))

import numpy as np

HERE = Path(__file__).resolve().parent


class Interleaved:
    """Per-call wall times of several callables, measured in interleaved rounds.

    Each callable is warmed up, then every round runs ``reps / rounds`` timed calls of each in
    turn, so a burst of outside load lands on all methods alike instead of on one; the
    garbage collector is off while timing. Results: median and min over all calls, in µs.
    """

    def __init__(self, rounds: int, clock=time.perf_counter):
        # ``clock=time.process_time``: CPU time of this process, steadier than wall time on a
        # shared machine (with one BLAS/XLA thread it is the work of the call itself)
        self.rounds = rounds
        self.clock = clock
        self.jobs: dict = {}

    def add(self, key, fn, reps: int, warmup: int = 20) -> None:
        self.jobs[key] = (fn, max(1, -(-reps // self.rounds)), warmup)

    def run(self) -> dict:
        for fn, _, warmup in self.jobs.values():
            for _ in range(warmup):
                fn()
        times = {key: [] for key in self.jobs}
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            for _ in range(self.rounds):
                for key, (fn, per_round, _) in self.jobs.items():
                    out = times[key]
                    for _ in range(per_round):
                        t0 = self.clock()
                        fn()
                        out.append(self.clock() - t0)
        finally:
            if gc_was_on:
                gc.enable()
        return {
            key: {"median_us": float(np.median(t) * 1e6), "min_us": float(np.min(t) * 1e6), "reps": len(t)}
            for key, t in times.items()
        }


def busy_fraction(seconds: float = 1.0):
    """Share of all CPUs busy during ``seconds`` while this process sleeps (Linux; else None)."""
    def snapshot():
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t0, i0 = snapshot()
        time.sleep(seconds)
        t1, i1 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def first_call_runs(script, which: str, repeats: int, env: dict | None = None, cwd=None) -> list:
    """``repeats`` runs of ``python script --first-call which``, each in a fresh process; each
    prints one JSON object on its last line, returned in order. Raises with the child's stderr
    when one fails."""
    runs = []
    for _ in range(repeats):
        proc = subprocess.run(
            [sys.executable, str(Path(script).resolve()), "--first-call", which],
            capture_output=True, text=True, check=False, env=env, cwd=cwd,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"--first-call {which} failed:\n{proc.stderr}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return runs


def median_and_min(runs: list, keys) -> dict:
    """``{key: median, key_min_s: minimum}`` over ``runs`` for each ``key`` (ending in ``_s``)
    that the runs report."""
    out = {}
    for key in keys:
        if key in runs[0]:
            vals = [r[key] for r in runs]
            out[key] = statistics.median(vals)
            out[key[:-2] + "_min_s"] = min(vals)
    return out


def machine_info(jax) -> dict:
    import scipy
    import statsmodels

    import autohess

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    def git(*cmd):
        try:
            proc = subprocess.run(["git", *cmd], cwd=HERE, capture_output=True, text=True, check=False)
        except OSError:
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD") or None
    changes = git("status", "--porcelain", "--", str(HERE.parent / "autohess"))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", None),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_enable_x64": jax.config.values.get("jax_enable_x64"),
        "jax_cpu_enable_async_dispatch": jax.config.values.get("jax_cpu_enable_async_dispatch"),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "statsmodels": statsmodels.__version__,
        "autohess": autohess.__version__,
        "git_commit": commit,
        "autohess_uncommitted_changes": None if changes is None else bool(changes),
        "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
    }


def print_run_header(title: str, info: dict, busy_start, *, versions: str = "", flags: str = "") -> None:
    """The first lines every benchmark prints: title, machine, versions, commit, CPU load."""
    print(f"# {title} ({info['date']})")
    print(f"{info['platform']}, {info['cpu']}, {info['cpu_count']} CPUs, Python {info['python']}, "
          f"jax {info['jax']}, numpy {info['numpy']}, scipy {info['scipy']}, "
          f"statsmodels {info['statsmodels']}{versions}, autohess at {(info['git_commit'] or '?')[:10]}"
          f"{' (+ uncommitted changes)' if info['autohess_uncommitted_changes'] else ''}{flags}")
    if busy_start is not None:
        note = " (other work was running: times are noisier)" if busy_start > 0.1 else ""
        print(f"CPUs busy with other work in the 1 s before the run: {100 * busy_start:.0f}%{note}")


def print_markdown_table(header: list, lines: list) -> None:
    """Print rows of strings as a padded markdown table (shared by the benchmark scripts)."""
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for ln in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(ln, widths)) + " |")


def write_json(path, result, *, indent: int = 2, default=None, newline: bool = True) -> None:
    """Write a benchmark's results (``path``: its ``--output``)."""
    Path(path).write_text(json.dumps(result, indent=indent, default=default) + ("\n" if newline else ""))
