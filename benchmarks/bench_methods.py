"""Trust-region Newton vs L-BFGS (``ah.fit(method=...)``): iterations, time, log-likelihood.

Headline numbers (a 2-core VM shared with other jobs, load average ~6, so warm times vary
by 2-4x between runs; the range over three runs is given; float64, CPU; warm = compiled,
median of 31 calls (5 at p = 200); "first" includes compilation; "plain" = L-BFGS without the
start-Hessian preconditioner, as before issue #13):

| model | p | trust-region | L-BFGS | plain L-BFGS |
|---|---|---|---|---|
| multinomial logit, N = 944, 7 classes, covariates in their own units | 36 | 7 it, 16-92 ms (first 7-17 s) | 12 it, 20-83 ms (first 9-22 s) | 1000 it (maxiter), llf 0.515 short |
| logistic, N = 1500, standard-normal covariates | 12 | 6 it, 0.7-3.3 ms (first 3-12 s) | 7 it, 1.7-3.5 ms (first 6-16 s) | 8 it |
| logistic, N = 20000, standard-normal covariates | 200 | 6 it, 2.1-4.4 s | 7 it, 1.1-1.7 s | 8 it |

Where both converge they agree to 1e-12 relative in the log-likelihood. L-BFGS forms two
exact Hessians (the start's, as its preconditioner, and the end's, for inference); the trust
region one per iteration plus the end's: L-BFGS pays off once a Hessian costs far more than a
gradient (p in the hundreds); below that the trust region is as fast or faster, compiles
sooner, and stops with the gradient at rounding level. The last full run's numbers are in
``benchmarks/results/methods.json``.

Run: ``python benchmarks/bench_methods.py`` (about 2 minutes on 2 cores; ``--quick``: the two
small models only).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import autohess as ah
from autohess._problem import _unconstrained
from autohess._solver import lbfgs


def mnl_data(seed: int = 0, n: int = 944, J: int = 7):
    """Covariates as applied data come (age in years, schooling, income in thousands, a
    binary, a count), unstandardised; 6 columns with the constant, J - 1 = 6 free classes."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.normal(40, 12, n), rng.normal(12, 3, n), rng.gamma(4, 12, n),
                         rng.uniform(size=n) < 0.4, rng.poisson(2, n)]).astype(float)
    k = X.shape[1]
    sd = X[:, 1:].std(0)
    B = np.vstack([np.zeros((1, J - 1)), 0.4 * rng.normal(size=(k - 1, J - 1)) / sd[:, None]])
    B[0] = -(X[:, 1:].mean(0) @ B[1:])
    eta = np.column_stack([np.zeros(n), X @ B])
    P = np.exp(eta - eta.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    y = np.array([rng.choice(J, p=row) for row in P])
    return X, y, J


def mnl_model(X, y, J):
    Y = np.eye(J)[y]

    def loglik(p, d):
        eta = jnp.concatenate([jnp.zeros((d["X"].shape[0], 1)), d["X"] @ p["B"]], axis=1)
        return jnp.sum(d["Y"] * eta, axis=1) - jax.nn.logsumexp(eta, axis=1)

    return ah.Model(loglik, {"X": X, "Y": Y}, {"B": jnp.zeros((X.shape[1], J - 1))}, name="mnl")


def logistic_model(n: int, p: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    beta = 0.3 * rng.normal(size=p) / np.sqrt(p / 12)
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-X @ beta))).astype(float)
    return ah.models.logistic(X, y)


def timed(call, repeats: int):
    first = time.perf_counter()
    out = call()
    first = time.perf_counter() - first
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        warm.append(time.perf_counter() - t)
    return out, first, float(np.median(warm))


def plain_lbfgs_iterations(model) -> tuple[int, float]:
    """The solver without the preconditioner (what ``method="lbfgs"`` ran before)."""
    f = _unconstrained(model, model.data, None)
    u0 = model.spec.to_unconstrained(model.spec.flatten(model.init_params, model.dtype))
    _, v, k, _ = jax.jit(lambda u: lbfgs(jax.value_and_grad(f), u, maxiter=1000))(u0)
    return int(k), -float(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--output", default=str(pathlib.Path(__file__).parent / "results" / "methods.json"))
    args = ap.parse_args()
    cases = [("multinomial logit N=944 (unscaled covariates)", lambda: mnl_model(*mnl_data())),
             ("logistic N=1500", lambda: logistic_model(1500, 12))]
    if not args.quick:
        cases.append(("logistic N=20000", lambda: logistic_model(20000, 200)))
    rows = []
    for name, build in cases:
        model = build()
        # small fits take milliseconds: many repeats for a stable median on a shared machine
        repeats = 2 if args.quick else (31 if model.n_params < 100 else 5)
        row = {"model": name, "p": model.n_params}
        for method in ("trust-region", "lbfgs"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ah.InferenceWarning)
                res, first, warm = timed(lambda: ah.fit(model, method=method), repeats)
            row[method] = {"iterations": int(res.iterations), "llf": float(res.llf), "status": res.status.split(":")[0],
                           "first_s": first, "warm_s": warm}
        row["plain lbfgs"] = dict(zip(("iterations", "llf"), plain_lbfgs_iterations(model)))
        rows.append(row)
        tr, lb, pl = row["trust-region"], row["lbfgs"], row["plain lbfgs"]
        print(f"{name:48s} p={row['p']:4d}  trust-region {tr['iterations']:3d} it {tr['warm_s'] * 1e3:8.1f} ms "
              f"(first {tr['first_s']:.1f} s) | lbfgs {lb['iterations']:4d} it {lb['warm_s'] * 1e3:8.1f} ms "
              f"(first {lb['first_s']:.1f} s) llf diff {lb['llf'] - tr['llf']:.2e} | plain lbfgs {pl['iterations']} it, "
              f"llf diff {pl['llf'] - tr['llf']:.2e}")
    if not args.quick or args.output != ap.get_default("output"):
        out = pathlib.Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"jax": jax.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
