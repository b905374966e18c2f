"""Make the figures the README shows (``docs/figures/*.png``), from public API only.

Run from the repository root: ``python docs/make_figures.py`` (needs matplotlib: the ``plot``
extra). About 10 s on a 2-core CPU. The data are simulated with a fixed seed, so the figures
change only when the library's numbers or pictures do.

* ``profile_vs_wald.png``: the profile likelihood of a normal standard deviation (N = 25)
  against the Wald quadratic its standard error implies: the likelihood is skewed, the Wald
  interval symmetric, and the profile interval lies to the right of it.
* ``saddle_eigenvalues.png``: the scaled eigenvalues of the Hessian at a saddle of a
  two-component normal mixture (equal component means), with the directions named.
"""

from __future__ import annotations

import pathlib
import sys
import warnings

import matplotlib

# this checkout's autohess, installed or not: the figures document this version
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

matplotlib.use("Agg")
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import autohess as ah  # noqa: E402

OUT = pathlib.Path(__file__).parent / "figures"


def profile_figure() -> None:
    rng = np.random.default_rng(3)
    y = 10.0 + 2.0 * rng.standard_normal(25)
    res = ah.fit(ah.models.linear(np.ones((y.size, 1)), y, sigma=1.0))
    prof = ah.profile(res, "sigma")
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    ah.plot.profile(prof, ax=ax)
    ax.set_title("profile likelihood of sigma (normal, N = 25) vs Wald", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "profile_vs_wald.png", dpi=90)
    print(prof)


def saddle_figure() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[rng.normal(-1.5, 1.0, 60), rng.normal(1.5, 1.0, 60)]

    def loglik(p, d):
        # 50:50 mixture of N(m1, 1) and N(m2, 1), the components' SD known
        return jnp.logaddexp(-0.5 * (d["y"] - p["m1"]) ** 2, -0.5 * (d["y"] - p["m2"]) ** 2) - 0.5 * jnp.log(2 * jnp.pi) - jnp.log(2.0)

    model = ah.Model(loglik, {"y": y}, params={"m1": 0.0, "m2": 0.0})
    # equal means at the sample mean: stationary by symmetry, and the log-likelihood curves
    # upward along m1 - m2 (the data spread more than one component's SD): a saddle
    mean = float(y.mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ah.InferenceWarning)
        res = ah.evaluate(model, {"m1": mean, "m2": mean})
    print(res.diagnostics)
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    res.plot(ax=ax, label="all")
    ax.set_title("normal mixture at equal means: a saddle", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT / "saddle_eigenvalues.png", dpi=90)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    profile_figure()
    saddle_figure()
    for f in sorted(OUT.glob("*.png")):
        print(f, f.stat().st_size // 1024, "KB")
