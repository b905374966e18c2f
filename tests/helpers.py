"""Shared test helpers: tolerances with their reasons, data loaders, tree comparison."""

from __future__ import annotations

import gzip
import pathlib

import jax
import numpy as np

DATA = pathlib.Path(__file__).parent / "data"

# Relative tolerances, by what limits the agreement:
# - EXACT: two exact derivative computations of the same float64 quantity differ only by
#   rounding in sums of ~1e3-1e6 terms, i.e. a few hundred ulps: 1e-12 relative (issue #2).
# - CLOSED_FORM: exact Hessian vs a closed form evaluated in a different operation order;
#   both carry ~N*eps relative rounding at worst, far below 1e-10.
# - RICHARDSON: a Richardson-extrapolated finite difference is accurate to ~1e-7..1e-9 relative
#   on smooth float64 functions; 1e-5 leaves room for the ill-scaled GARCH parameters.
EXACT = 1e-12
CLOSED_FORM = 1e-10
RICHARDSON = 1e-5


def rel_err(a, b) -> float:
    """Max abs difference relative to the largest entry of the reference ``b``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def tree_allclose(a, b, rtol=EXACT, atol=0.0) -> bool:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
        np.allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol) for x, y in zip(la, lb)
    )


def dem2gbp() -> np.ndarray:
    """The FCP GARCH benchmark series (1974 daily % returns), see data/README.md."""
    with gzip.open(DATA / "dem2gbp.csv.gz", "rt") as fh:
        return np.loadtxt(fh, skiprows=1)


def logistic_data(rng, n=1500, p=12):
    X = rng.normal(size=(n, p))
    beta = 0.3 * rng.normal(size=p)
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-X @ beta))).astype(float)
    return X, y, beta
