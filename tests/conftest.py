"""Test configuration: autohess is imported first, so JAX runs in float64 everywhere."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

# Compilation is most of the suite's CPU time: nearly every test compiles programs no other test
# shares (its own data shapes), and a trust-region solve compiles in ~1.5-2 s however small the
# model. XLA's CPU "fusion emitters" (jaxlib's default) spend most of that; the older emitters
# compile the same programs 2.5-4x faster (solve of a logistic model: 1.9 -> 0.8 s) and run them
# as fast (a 200,000-row logistic fit: 0.14 vs 0.13 s warm), with the same results to rounding.
# LLVM's optimiser is off too (``xla_backend_optimization_level=0``): tests run each program a
# few times, so its compile time is not won back (test_bootstrap.py 137 -> 86 s of CPU, the
# crossed-vs-dense Laplace test 48 -> 32 s); it changes no floating-point semantics (XLA's CPU
# backend keeps IEEE arithmetic at every level), and test_fit.py checks a fit on jaxlib's
# defaults (fusion emitters, level 2) in a fresh process against the suite's (1e-10).
# Set before any backend exists (importing autohess creates none); checked once, in a
# subprocess, because XLA aborts on a flag it does not know (a later jaxlib may drop it); xdist
# workers and the subprocesses tests start inherit the variable. AUTOHESS_TEST_XLA_DEFAULT=1
# runs the suite on jaxlib's defaults.
_FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"


def _use_fast_compile() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get("AUTOHESS_TEST_XLA_DEFAULT", "0") != "0" or any(f.split("=")[0] in flags for f in _FAST_COMPILE.split()):
        return
    env = {**os.environ, "XLA_FLAGS": f"{flags} {_FAST_COMPILE}".strip(), "JAX_PLATFORMS": "cpu"}
    probe = "import jax; jax.devices()"
    if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0:
        os.environ["XLA_FLAGS"] = env["XLA_FLAGS"]


_use_fast_compile()

import autohess  # noqa: F401  (turns on x64 before any array exists)
import jax
import numpy as np
import pytest

# XLA compilations shared between identical programs: every test builds its own models (and
# ``with_data`` / bootstrap members build more), and each model compiles its programs again,
# though most share their shapes and therefore their HLO with a model compiled before. JAX's
# persistent compilation cache, keyed on the HLO, turns those into loads: a new logistic
# model's first fit 1.6 s -> 0.12 s on the 2-core CI machine. One fresh directory per run,
# made by the first process (pytest itself; its xdist workers inherit the environment variable
# and share the directory, so a program one worker compiled is a load for the other) and
# removed by it at exit, so no run depends on an earlier one. Without file locks (JAX takes
# them only with a size limit, which needs the ``filelock`` package) a worker may read an entry
# the other is still writing: JAX then warns and compiles, nothing wrong is loaded (entries are
# compressed with a checksum). AUTOHESS_TEST_COMPILATION_CACHE=0 turns it off (to time
# compilations, say).
if os.environ.get("AUTOHESS_TEST_COMPILATION_CACHE", "1") != "0":
    _CACHE = os.environ.get("AUTOHESS_TEST_CACHE_RUN_DIR")
    if not _CACHE or not os.path.isdir(_CACHE):
        _CACHE = os.environ["AUTOHESS_TEST_CACHE_RUN_DIR"] = tempfile.mkdtemp(prefix="autohess-tests-xla-")
        atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    # programs compiling faster than this are not worth a disk write (eager ops: thousands)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Batched calls stage their chunks of 64 members or more (``_batch.COMPACT_MIN_BATCH``): the
# first stage, then buckets of the members still running, each its own compiled program. Those
# programs are most of what a bootstrap or simulation test of a few hundred members compiles
# (two such tests: 93 -> 38 s of CPU without staging), yet staging changes no member's result
# (tests/test_batch_compaction.py: stragglers, keys and order, random effects, sharding, the
# iteration limit, all equal to single fits and to the unstaged batch). So tests run their
# batches unstaged unless marked ``compaction`` (test_batch_compaction.py, test_distributed.py).
@pytest.fixture(autouse=True)
def _staging_only_where_tested(request, monkeypatch):
    if request.node.get_closest_marker("compaction") is None:
        from autohess import _batch

        monkeypatch.setattr(_batch, "COMPACT_MIN_BATCH", 1 << 30)


@pytest.fixture
def getkey():
    """A fresh JAX PRNG key per call, deterministic per test."""
    keys = iter(jax.random.split(jax.random.key(20261124), 1000))
    return lambda: next(keys)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
