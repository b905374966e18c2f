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
  >= 0.5 s to compile, so a second process reuses them: lme4's cbpp GLMM first fit + SEs in a
  fresh process 10.4 s (6.8 s CPU) without, 2.5 s (1.7 s CPU) with a warm cache, on the loaded
  2-core VM. JAX's cache is per process, so this applies to every JAX program in it.
  ``AUTOHESS_CACHE=0`` turns it off; a cache directory you set yourself
  (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is left alone.

Not changed, but worth knowing for batched work on CPUs: jaxlib's LAPACK kernels split a
batched factorisation over XLA's intra-op thread pool and block until it is done, so two
independent batched factorisations running at once can starve a small pool (2 cores) and
deadlock, whatever the dispatch mode. autohess orders its own factorisations one after the
other (``_solver.after``); a likelihood that itself calls ``cholesky``/``eigh``/``solve`` and is
fitted in batches can meet this. ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false``
(set before JAX starts) avoided it in our tests at no measurable cost.
"""

from __future__ import annotations

import os

import jax


def apply() -> None:
    jax.config.update("jax_enable_x64", True)
    if os.environ.get("AUTOHESS_KEEP_ASYNC_DISPATCH", "") in ("", "0"):
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    _persistent_cache()


def _persistent_cache() -> None:
    if os.environ.get("AUTOHESS_CACHE", "1") == "0" or jax.config.values.get("jax_compilation_cache_dir"):
        return
    path = os.environ.get("AUTOHESS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "autohess", "jax"
    )
    jax.config.update("jax_compilation_cache_dir", path)
    # programs under 0.5 s are cheaper to compile again than to read back and check
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
