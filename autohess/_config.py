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
