"""JAX settings autohess applies on import, and why.

* ``jax_enable_x64``: statisticians need float64. A float32 Hessian of a log-likelihood with
  N = 1500 observations keeps about 4 correct digits after inversion, which silently ruins
  standard errors. With x64 on, ``jnp.zeros(3)`` and friends are float64 by default.
* ``jax_cpu_enable_async_dispatch = False``: autohess's compiled programs are small (a 12x12
  Hessian of 1500 observations takes ~40 us of arithmetic); asynchronous CPU dispatch hands each
  one to a worker thread and waking that thread costs 10-25 us on a 2-core machine. Synchronous
  dispatch runs the program on the calling thread. JAX reads this flag when its CPU backend
  starts, so it only takes effect if autohess is imported before any JAX array is created.
  Set ``AUTOHESS_KEEP_ASYNC_DISPATCH=1`` to leave JAX's default alone.

* Persistent compilation cache: a random-effects model's first fit compiles for seconds (the
  Laplace marginal's exact Hessian differentiates through the inner solve). autohess points
  ``jax_compilation_cache_dir`` at ``$AUTOHESS_CACHE_DIR`` (default
  ``$XDG_CACHE_HOME/autohess/jax`` or ``~/.cache/autohess/jax``) and caches programs that took
  >= 0.05 s to compile, so a second process reuses them: lme4's cbpp GLMM first fit + SEs in a
  fresh process 10.4 s (6.8 s CPU) without, 2.5 s (1.7 s CPU) with a warm cache, on the loaded
  2-core VM. JAX's cache is per process, so this applies to every JAX program in it.
  ``AUTOHESS_CACHE=0`` turns it off; a cache directory you set yourself
  (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left alone. The threshold is 0.05 s
  (``jax_persistent_cache_min_compile_time_secs``; JAX's default is 1 s), not higher: with the
  compiler options below a logistic fit's programs compile in 0.02-0.9 s, and a program under
  the threshold is compiled again in every process (a cache read costs a few ms).

* XLA options for autohess's own programs on CPU (``compiler_options``, passed to the
  ``jax.jit`` of the fit's programs, so nothing else in the process changes and no
  environment variable is set): ``xla_cpu_use_fusion_emitters=False`` selects XLA's older CPU
  emitters, which compile the trust-region solve 2.5x faster (logistic N = 1500, p = 12: 2.2 ->
  0.9 s CPU) and run it as fast (bench_fit.py, interleaved warm fits), results equal to
  rounding (tests/test_fit.py compares a fit on jaxlib's defaults); programs run once per fit
  (covariance and diagnostics, the construction-time log-likelihood check) are also compiled
  at LLVM level 0 (``xla_backend_optimization_level=0``): the covariance program 0.94 -> 0.19 s,
  its run time unchanged (LAPACK calls and p x p arithmetic; 0.08 ms at p = 12); a random-effects
  model's solve is compiled at LLVM level 1 (``large=True``: 9-27% less compile, the same speed).
  Options you
  set in ``XLA_FLAGS`` win; ``AUTOHESS_XLA_DEFAULT=1`` compiles with jaxlib's defaults. Off the
  CPU nothing is passed. On a jaxlib outside the tested versions the options are tried once on
  a trivial program (XLA refuses an option it does not know) and dropped if refused. Not set
  through ``XLA_FLAGS``: that would change the user's own programs too, child processes would
  inherit it, and XLA aborts the process on a flag its version does not know. Passed so far by
  the fit's programs (solve, escape test, inference, covariance) and the model's
  ``contributions_program``, a random-effects model's batch programs (``large=True``: a cbpp
  parametric bootstrap's member program compiled in about half the time) and ``simulate``'s
  key probe (``once=True``); other batch, bootstrap and audit programs still compile with
  jaxlib's defaults (``jax.jit(..., compiler_options=compiler_options())`` adopts them).

Not changed, but worth knowing for batched work on CPUs: jaxlib's LAPACK kernels split a
batched factorisation over XLA's intra-op thread pool and block until it is done, so two
independent batched factorisations running at once can starve a small pool (2 cores) and
deadlock, whatever the dispatch mode. autohess orders its own factorisations one after the
other (``_solver.after``); a likelihood that itself calls ``cholesky``/``eigh``/``solve`` and is
fitted in batches can meet this. ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false``
(set before JAX starts) avoided it in our tests at no measurable cost.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import sys
import threading
from typing import Optional

import jax


def apply() -> None:
    jax.config.update("jax_enable_x64", True)
    if os.environ.get("AUTOHESS_KEEP_ASYNC_DISPATCH", "") in ("", "0"):
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    _persistent_cache()


#: the cache directory autohess chose (None: caching off, or a directory the user set)
_CACHE_DIR: Optional[str] = None


def cache_dir() -> Optional[str]:
    """The persistent-cache directory autohess set at import, or ``None`` (``AUTOHESS_CACHE=0``,
    or a cache directory the user set, which autohess leaves alone)."""
    return _CACHE_DIR


def _persistent_cache() -> None:
    global _CACHE_DIR
    if os.environ.get("AUTOHESS_CACHE", "1") == "0" or jax.config.values.get("jax_compilation_cache_dir"):
        return
    path = os.environ.get("AUTOHESS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "autohess", "jax"
    )
    jax.config.update("jax_compilation_cache_dir", path)
    _CACHE_DIR = path
    # a read costs a few ms; below this a program is as cheap to compile as to find (the
    # eager ops JAX compiles one by one take 5-30 ms and stay out of the cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)


#: compile time from which a program is written to the persistent cache (see the docstring)
CACHE_MIN_COMPILE_S = 0.05

#: XLA's older CPU emitters: 2.5-4x faster compilation, same run time (see the docstring)
_FAST_EMITTERS = {"xla_cpu_use_fusion_emitters": False}
#: for programs that run once per fit or model: LLVM's optimiser is most of their compile time
_RUN_ONCE = {"xla_backend_optimization_level": 0}
#: for the random-effects solve (``compiler_options(large=True)``): nearly all of its XLA
#: compile is LLVM compiling its kernels (cbpp 204; HLO passes: milliseconds), and LLVM level 1
#: compiles it in 9-27% less CPU time than level 2 (cbpp 3.67 -> 2.67 s, sleepstudy 8.4 -> 6.7,
#: NB2 8.5 -> 7.4, grouseticks 15.9 -> 14.5; loaded VM, one thread) and runs it as fast
#: (interleaved, 7 rounds: medians within 10% either way, results equal to 1e-14); level 0
#: halves its speed
_LARGE_LOOP = {"xla_backend_optimization_level": 1}
#: jaxlib (major, minor) versions these options were measured on; others are probed first
_TESTED_JAXLIB = ((0, 10),)


def compiler_options(once: bool = False, large: bool = False) -> Optional[dict]:
    """``compiler_options`` for the ``jax.jit`` of one of autohess's programs (``None``: jaxlib's
    defaults). ``once``: the program runs once per fit or per model, not in a loop (covariance
    and diagnostics, the log-likelihood check at construction), so LLVM's optimiser is skipped.
    ``large``: a solve whose compilation is most of a first call (the Laplace marginal's exact
    Hessian inside the solver's loop): LLVM level 1 (``_LARGE_LOOP``). Call it when the program
    is built, not at import: it asks JAX for its backend. Also readies jaxlib's LAPACK kernels
    without importing ``scipy.linalg`` (``lapack_ready``: ~0.15 s of a first fit)."""
    lapack_ready()
    opts = _options(bool(once), bool(large) and not once)
    return None if opts is None else dict(opts)


@functools.cache
def _options(once: bool, large: bool = False) -> Optional[tuple]:
    if os.environ.get("AUTOHESS_XLA_DEFAULT", "0") != "0" or jax.default_backend() != "cpu":
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    opts = {} if "xla_cpu_use_fusion_emitters" in flags else dict(_FAST_EMITTERS)
    if once and "xla_backend_optimization_level" not in flags:
        opts.update(_RUN_ONCE)
    if large and "xla_backend_optimization_level" not in flags:
        opts.update(_LARGE_LOOP)
    if not opts or not _accepted(tuple(sorted(opts.items()))):
        return None
    return tuple(sorted(opts.items()))


@functools.cache
def _accepted(opts: tuple) -> bool:
    import jaxlib

    version = tuple(int(v) for v in jaxlib.__version__.split(".")[:2] if v.isdigit())
    if version in _TESTED_JAXLIB:
        return True
    # a jaxlib that does not know an option refuses it with an error at compile time (in every
    # fit): find out once, on a program that compiles in milliseconds
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(opts)).lower(0.0).compile()
    except RuntimeError:  # jax's JaxRuntimeError: "No such compile option"
        return False
    return True


_lapack_lock = threading.Lock()
_lapack_done = False


def lapack_ready() -> None:
    """Give jaxlib's CPU LAPACK kernels their routines without importing ``scipy.linalg``.

    jaxlib takes its LAPACK and BLAS routines from scipy's Cython modules
    ``scipy.linalg.cython_lapack`` and ``cython_blas`` the first time a program with a
    factorisation is lowered; importing them the usual way runs ``scipy/linalg/__init__.py``
    first, which imports most of ``scipy.linalg`` and scipy's array-API layer: 0.15-0.24 s of
    CPU in every fresh process, a third of a warm first fit, for two modules that take 7 ms to
    load on their own. They are loaded here from scipy's own files under their own names, the
    routines handed to jaxlib, and the two names taken out of ``sys.modules`` again, so a later
    ``import scipy.linalg`` runs as it would have (Cython returns the same module objects). A
    program read from disk needs this before it runs (its kernels call the routines; without
    them the process dies). Anything unexpected falls back to jaxlib's own import."""
    global _lapack_done
    if _lapack_done:
        return
    with _lapack_lock:
        if _lapack_done:
            return
        try:
            from jaxlib.cpu import _lapack
        except ImportError:  # a jaxlib without CPU LAPACK kernels: nothing to prepare
            _lapack_done = True
            return
        added: list = []
        if "scipy.linalg" not in sys.modules:
            try:
                _load_cython_linalg(added)
            except Exception:  # noqa: BLE001 - jaxlib imports them itself below (``added`` goes)
                pass
        try:
            _lapack.initialize()
        except Exception:  # noqa: BLE001 - jaxlib tries again at its first LAPACK lowering and says why
            pass
        finally:
            for name in added:
                sys.modules.pop(name, None)
        _lapack_done = True


def _load_cython_linalg(added: list) -> None:
    """Load ``scipy.linalg.cython_blas`` and ``cython_lapack`` without their package, appending
    to ``added`` each name put in ``sys.modules`` (the caller removes them, also after an
    error half-way)."""
    import scipy  # its __init__ alone: ~5 ms

    folders = [os.path.join(p, "linalg") for p in scipy.__path__]
    for name in ("scipy.linalg.cython_blas", "scipy.linalg.cython_lapack"):
        if name in sys.modules:
            continue
        spec = importlib.machinery.PathFinder.find_spec(name, folders)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            return  # not scipy's usual layout: leave it to jaxlib
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # what a normal import does before running the module
        added.append(name)
        spec.loader.exec_module(module)
