"""``python -m autohess demo``: the exact Hessian of a logistic regression, in one screen.

(The audit story of the seed question, scipy BFGS versus finite differences versus the exact
Hessian, is added by the audit work; this demo shows the core it builds on.)
"""

from __future__ import annotations

import time

import jax
import numpy as np

from . import models
from ._derivatives import hessian
from ._fit import fit


def run(n: int = 1500, p: int = 12, seed: int = 0) -> dict:
    """Simulate a logistic regression, print its exact Hessian, eigenvalues and a check."""
    rng = np.random.default_rng(seed)
    X = np.c_[np.ones(n), rng.normal(size=(n, p - 1))]
    beta = np.r_[-0.5, 0.4 * rng.normal(size=p - 1)]
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-X @ beta))).astype(float)
    model = models.logistic(X, y)
    params = {"beta": jax.numpy.asarray(beta)}

    start = time.perf_counter()
    H = hessian(model, params)
    H.matrix.block_until_ready()
    first = time.perf_counter() - start
    reps = 200
    start = time.perf_counter()
    for _ in range(reps):
        hessian(model, params).matrix.block_until_ready()
    warm = (time.perf_counter() - start) / reps

    prob = 1.0 / (1.0 + np.exp(-X @ beta))
    closed = (X * (prob * (1.0 - prob))[:, None]).T @ X
    err = float(np.max(np.abs(np.asarray(H.matrix) - closed)) / np.max(np.abs(closed)))
    eig = H.eigenvalues()

    print(f"autohess demo: logistic regression, N={n} observations, p={p} parameters\n")
    print(f"Exact Hessian of the negative log-likelihood at the true beta ({H.matrix.dtype}):")
    width = max(len(lab) for lab in H.labels)
    print(" " * (width + 2) + "".join(f"{lab:>10}" for lab in H.labels))
    for lab, row in zip(H.labels, np.asarray(H.matrix)):
        print(f"  {lab:>{width}}" + "".join(f"{v:10.2f}" for v in row))
    print("\nEigenvalues:", np.array2string(eig, precision=2, max_line_width=100))
    print(f"Positive definite: {bool(eig[0] > 0)}; condition number {eig[-1] / eig[0]:.3g}")
    print(f"Max relative difference from the closed form X'diag(p(1-p))X: {err:.1e}")
    print(f"Standard errors at the true beta, sqrt(diag(H^-1)):")
    se = np.sqrt(np.diag(np.linalg.inv(np.asarray(H.matrix))))
    print("  " + ", ".join(f"{lab}={s:.4f}" for lab, s in zip(H.labels, se)))
    print(f"\nFirst call (trace + compile): {first * 1e3:.0f} ms; warm call: {warm * 1e6:.0f} us")
    print("\nThe maximum-likelihood fit, with standard errors from the exact Hessian at the optimum:")
    res = fit(model)
    print(res.summary())
    return {"hessian": np.asarray(H.matrix), "eigenvalues": eig, "rel_err_closed_form": err, "fit": res}
