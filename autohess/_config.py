"""JAX settings autohess applies on import, and why.

* ``jax_enable_x64``: statisticians need float64. A float32 Hessian of a log-likelihood with
  N = 1500 observations keeps about 4 correct digits after inversion, which silently ruins
  standard errors. With x64 on, ``jnp.zeros(3)`` and friends are float64 by default.
* CPU dispatch is left as JAX sets it (asynchronous). ``AUTOHESS_SYNC_DISPATCH=1`` switches it
  to synchronous (``jax_cpu_enable_async_dispatch = False``, read when the CPU backend starts,
  so only if autohess is imported before any JAX array exists). That saves 10-25 us per call
  on small programs (a 12x12 Hessian of 1500 observations is ~40 us of arithmetic; waking a
  dispatch thread costs the rest on a 2-core machine) and was the default until batched fits
  showed that, with it, XLA's CPU runtime intermittently deadlocks on large ``vmap``-ed
  programs (a logistic bootstrap with p = 12 and 500 members hung in 2 of 3 runs, every thread
  idle; with asynchronous dispatch 0 of 16 hung). Use it only for many small single fits.
  ``AUTOHESS_KEEP_ASYNC_DISPATCH`` (the old opt-out) is accepted and changes nothing.
"""

from __future__ import annotations

import os

import jax


def apply() -> None:
    jax.config.update("jax_enable_x64", True)
    if os.environ.get("AUTOHESS_SYNC_DISPATCH", "") not in ("", "0"):
        jax.config.update("jax_cpu_enable_async_dispatch", False)
