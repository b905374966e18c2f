"""Degenerate optima (a latent class never visited) and unbounded likelihoods (a variance
collapsing onto one observation): named, no standard errors for what the data do not
determine, never CONVERGED; summary columns of bounded width for any float (issue #13).

References: the Hamilton (1989) real GNP growth series (tests/data/hamilton_rgnp.csv), for
which a two-regime switching-mean AR(4) has a documented interior optimum (E-views /
statsmodels llf -181.263); closed forms for the degenerate cases (a likelihood that does not
depend on a parameter has zero curvature in it; the density of a normal component with sd
``s`` at its own mean is ``1/(s sqrt(2 pi))``, unbounded as ``s -> 0``); the Poisson MLE
``lambda = mean(y)``, ``SE = sqrt(lambda / N)``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess._format import fmt as _fmt
from autohess._solver import MAX_TRANSFORMED_STEP, Status, trust_region_newton

from helpers import DATA


# ------------------------------------------------------------------------------------------
# Markov-switching AR(4), switching mean (Hamilton filter in lax.scan), as a user writes it
# ------------------------------------------------------------------------------------------
ORDER = 4
# bit j of state k is the regime at lag j: (s_t, s_{t-1}, ..., s_{t-4}), 32 states
BITS = np.array([[(k >> j) & 1 for j in range(ORDER + 1)] for k in range(2 ** (ORDER + 1))])


def msar_loglik(p, d):
    y = d["y"]
    P = jnp.array([[p["p00"], 1 - p["p00"]], [p["p10"], 1 - p["p10"]]])  # P[i, j] = Pr(j | i)
    lags = jnp.stack([y[ORDER - k: y.shape[0] - k] for k in range(ORDER + 1)], axis=1)
    dev = lags[:, None, :] - p["mu"][BITS][None, :, :]
    e = dev[:, :, 0] - dev[:, :, 1:] @ p["phi"]
    dens = jnp.exp(-0.5 * (e / p["sigma"]) ** 2) / (jnp.sqrt(2 * jnp.pi) * p["sigma"])
    pi1 = (1 - p["p00"]) / (2 - p["p00"] - p["p10"])  # ergodic probabilities start the filter
    erg = jnp.array([1 - pi1, pi1])
    b = BITS[:16, :ORDER]  # (s_{t-1}, ..., s_{t-4})
    init = erg[b[:, 3]] * P[b[:, 3], b[:, 2]] * P[b[:, 2], b[:, 1]] * P[b[:, 1], b[:, 0]]
    new, old, prev = BITS[:, 0], BITS[:, 1], np.arange(32) >> 1

    def step(f, dt):
        joint = f[prev] * P[old, new] * dt
        lik = jnp.sum(joint)
        return jnp.zeros(16).at[np.arange(32) & 15].add(joint / lik), jnp.log(lik)

    return jax.lax.scan(step, init, dens)[1]


def test_markov_switching_empty_regime_is_degenerate():
    """Started with regime 1 all but absorbing-free (p00 = 1 - 1e-9), the fit climbs to p00 = 1:
    regime 1 is never visited, and the likelihood depends neither on mu[1] (it runs off to
    ~1e7, curvature at rounding level) nor on p10. Before (the issue's report): status CONVERGED,
    mu[1] with an SE of 3e7 and no finding, p10 "at the boundary 1" at 0.95, or every SE NaN
    (the flat direction's rounding-level terms loaded on all parameters after the unit-diagonal
    scaling)."""
    y = np.loadtxt(DATA / "hamilton_rgnp.csv", skiprows=1)
    params = {"p00": ah.Interval(0, 1, 0.9), "p10": ah.Interval(0, 1, 0.1), "mu": jnp.zeros(2),
              "phi": jnp.zeros(4), "sigma": ah.Positive(1.0)}
    model = ah.Model(msar_loglik, {"y": jnp.asarray(y)}, params=params)
    start = {"p00": 1 - 1e-9, "p10": 0.9, "mu": jnp.array([0.7, 3.0]), "phi": jnp.zeros(4), "sigma": 1.0}
    with pytest.warns(ah.InferenceWarning, match=r"\[degenerate\]"):
        res = ah.fit(model, start=start)
    assert not res.converged
    (problem,) = res.diagnostics.problems
    assert problem.kind == "degenerate" and set(problem.parameters) == {"p00", "p10", "mu[1]"}
    assert "refit from other starting values" in problem.suggestion.lower()
    se = dict(zip(res.labels, np.asarray(res.bse_flat)))
    assert all(np.isnan(se[k]) for k in ("p00", "p10", "mu[1]"))
    # the identified parameters keep their standard errors (regime 0 is an AR(4) with mean
    # mu[0]: its SEs are those of that model, finite and of the order of sigma/sqrt(N))
    assert all(0.01 < se[k] < 1.0 for k in ("mu[0]", "phi[0]", "phi[1]", "phi[2]", "phi[3]", "sigma"))
    # the footer does not say "NOT positive definite" beside positive eigenvalues
    text = str(res.diagnostics)
    lam = res.diagnostics.eigenvalues
    assert ("NOT positive definite" in text) == (lam.min() <= lam.max() / 1e12)

    # with equal regime means the likelihood does not depend on the transition probabilities:
    # they are named as such, not "at the boundary 1" (p00 = 0.7 is not), and no
    # rounding-level curvature is blown up into a huge scaled eigenvalue (was -7.46e6)
    equal = {"p00": 0.7, "p10": 0.3, "mu": jnp.ones(2), "phi": jnp.zeros(4), "sigma": 1.0}
    with pytest.warns(ah.InferenceWarning):
        at_start = ah.evaluate(model, equal)
    kinds = {p.kind: p for p in at_start.diagnostics.problems}
    assert "boundary" not in kinds
    flat = [p for p in at_start.diagnostics.problems if p.kind == "flat"]
    assert flat and set(flat[0].parameters) == {"p00", "p10"}
    assert np.max(np.abs(at_start.diagnostics.eigenvalues)) < 100.0


def _mixture_loglik(p, d):
    y = d["y"]
    l1 = jnp.log(p["w"]) - 0.5 * ((y - p["mu1"]) / p["s1"]) ** 2 - jnp.log(p["s1"])
    l2 = jnp.log1p(-p["w"]) - 0.5 * ((y - p["mu2"]) / p["s2"]) ** 2 - jnp.log(p["s2"])
    return jnp.logaddexp(l1, l2) - 0.5 * jnp.log(2 * jnp.pi)


def _mixture(y):
    return ah.Model(_mixture_loglik, {"y": jnp.asarray(y)}, {
        "w": ah.Interval(0, 1, 0.5), "mu1": 0.0, "mu2": 0.0, "s1": ah.Positive(1.0), "s2": ah.Positive(1.0)})


def test_mixture_weight_to_zero_is_degenerate():
    """One-component data, the second component started far beyond the data: its weight goes
    to 0 and its mean and sd leave the likelihood (curvature 0)."""
    y = np.random.default_rng(0).normal(1.0, 2.0, 200)
    with pytest.warns(ah.InferenceWarning, match=r"\[degenerate\]"):
        res = ah.fit(_mixture(y), start={"w": 0.3, "mu1": 40.0, "mu2": 1.0, "s1": 1.0, "s2": 2.0})
    assert not res.converged
    (problem,) = res.diagnostics.problems
    assert problem.kind == "degenerate" and set(problem.parameters) == {"w", "mu1", "s1"}
    se = dict(zip(res.labels, np.asarray(res.bse_flat)))
    assert np.isnan([se["w"], se["mu1"], se["s1"]]).all()
    # the remaining component is the normal MLE: mean(y), sd = sqrt(mean((y - ybar)^2)),
    # SE(mu2) = sd / sqrt(N) (closed form; to the solver's precision)
    x = dict(zip(res.labels, np.asarray(res.params_flat)))
    sd = np.sqrt(np.mean((y - y.mean()) ** 2))
    assert abs(x["mu2"] - y.mean()) < 1e-8 and abs(x["s2"] - sd) < 1e-8
    assert abs(se["mu2"] - sd / np.sqrt(y.size)) < 1e-8


def test_zero_inflation_to_zero_is_a_boundary_with_poisson_ses():
    """A zero-inflated Poisson on Poisson data without excess zeros: the inflation probability
    goes to its bound 0 (a boundary, not an empty class: nothing else loses its information),
    and lambda gets the Poisson closed form SE sqrt(lambda/N) conditional on it."""
    rng = np.random.default_rng(1)
    y = rng.poisson(3.0, 400).astype(float)
    lgam = jax.scipy.special.gammaln(y + 1.0)

    def zip_loglik(p, d):
        pois = d["y"] * jnp.log(p["lam"]) - p["lam"] - d["lgam"]
        zero = jnp.logaddexp(jnp.log(p["psi"]), jnp.log1p(-p["psi"]) - p["lam"])
        return jnp.where(d["y"] == 0, zero, jnp.log1p(-p["psi"]) + pois)

    model = ah.Model(zip_loglik, {"y": y, "lgam": lgam}, {"psi": ah.Interval(0, 1, 0.2), "lam": ah.Positive(2.0)})
    # the sample's share of zeros is below exp(-mean): no inflation at the optimum
    assert np.mean(y == 0) < np.exp(-y.mean())
    with pytest.warns(ah.InferenceWarning, match=r"\[boundary\] psi"):
        res = ah.fit(model)
    kinds = [p.kind for p in res.diagnostics.problems]
    assert kinds == ["boundary"]
    x = dict(zip(res.labels, np.asarray(res.params_flat)))
    se = dict(zip(res.labels, np.asarray(res.bse_flat)))
    assert np.isnan(se["psi"])
    assert abs(x["lam"] - y.mean()) < 1e-6 * y.mean()  # psi ~ 1e-9 still shifts lambda a little
    assert abs(se["lam"] - np.sqrt(y.mean() / y.size)) < 1e-6


# ------------------------------------------------------------------------------------------
# Unbounded likelihood: a component's sd collapsing onto one observation
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("component, index", [("1", 7)])
def test_variance_collapsing_on_an_observation_is_unbounded(component, index):
    """Started with one sd at 1e-3 on an observation. Before: one trust-region step took log s
    from -6.9 to -97, the fit ended 'not converged ... raise maxiter', the mean got SE 6.8e-41
    and the summary row broke its columns."""
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(-2, 1, 150), rng.normal(2, 1, 150)]
    other = "2" if component == "1" else "1"
    start = {"w": 0.5, f"mu{component}": float(z[index]), f"s{component}": 1e-3,
             f"mu{other}": 0.0, f"s{other}": 2.0}
    with pytest.warns(ah.InferenceWarning, match=rf"\[unbounded\] s{component} -> 0"):
        res = ah.fit(_mixture(z), start=start)
    assert res.status_code == Status.UNBOUNDED and not res.converged
    problem = res.diagnostics.problems[0]
    assert problem.kind == "unbounded"
    assert {f"s{component}", f"mu{component}"} <= set(problem.parameters)
    assert "does not exist" in problem.suggestion and "separation" not in problem.suggestion
    se = dict(zip(res.labels, np.asarray(res.bse_flat)))
    assert np.isnan(se[f"s{component}"]) and np.isnan(se[f"mu{component}"])
    x = dict(zip(res.labels, np.asarray(res.params_flat)))
    assert x[f"s{component}"] < 1e-9 and x[f"mu{component}"] == pytest.approx(z[index], abs=1e-9)
    # every row of the table as wide as the rule
    lines = res.summary().splitlines()
    width = len(lines[0])
    table = lines[lines.index("-" * width) + 1: lines.index("-" * width) + 1 + len(res.labels)]
    assert all(len(row) == width for row in table)


def test_group_with_one_observation_and_its_own_variance_is_unbounded():
    """Normal model with a mean and an sd per group; group 2 has a single observation, so its
    mean fits it exactly and its sd -> 0 with the log-likelihood rising like -log(sd), without
    bound (closed form). Started at sd = 1, far from the edge. The other groups keep the
    closed-form SEs of their own normal MLE: sd/sqrt(n) for the mean, sd/sqrt(2n) for the sd."""
    rng = np.random.default_rng(4)
    g = np.r_[np.zeros(30, int), np.ones(30, int), [2]]
    y = rng.normal(0.0, 1.0, g.size) + g

    def loglik(p, d):
        s = d["G"] @ p["sd"]
        return -0.5 * ((d["y"] - d["G"] @ p["mu"]) / s) ** 2 - jnp.log(s) - 0.5 * jnp.log(2 * jnp.pi)

    model = ah.Model(loglik, {"y": y, "G": np.eye(3)[g]}, {"mu": jnp.zeros(3), "sd": ah.Positive(jnp.ones(3))})
    with pytest.warns(ah.InferenceWarning, match=r"\[unbounded\] sd\[2\] -> 0"):
        res = ah.fit(model)
    assert res.status_code == Status.UNBOUNDED
    (problem,) = res.diagnostics.problems
    assert set(problem.parameters) == {"mu[2]", "sd[2]"}
    se = np.asarray(res.bse_flat)
    assert np.isnan(se[[2, 5]]).all()
    x = np.asarray(res.params_flat)
    for k in (0, 1):
        n = 30
        sd = np.std(y[g == k])  # the MLE (divisor n); closed-form SEs to the solver's precision
        assert abs(x[3 + k] - sd) < 1e-8
        assert abs(se[k] - sd / np.sqrt(n)) < 1e-8 and abs(se[3 + k] - sd / np.sqrt(2 * n)) < 1e-8
    # the footer does not contradict itself: the eigenvalues are of the held face
    assert "held fixed" in str(res.diagnostics)


def test_batch_members_share_the_edge_and_no_curvature_rules():
    """fit_batch member = single fit: the one-observation group (UNBOUNDED, sd[2] -> 0), and the
    same data with that observation moved to group 1, so group 2 is empty: mu[2] and sd[2]
    have no curvature at all (closed form: the likelihood does not contain them), flat with NaN
    SEs, status SINGULAR in both."""
    rng = np.random.default_rng(4)
    g1 = np.r_[np.zeros(30, int), np.ones(30, int), [2]]
    g2 = np.r_[np.zeros(30, int), np.ones(31, int)]
    y = rng.normal(0.0, 1.0, g1.size) + g1

    def loglik(p, d):
        s = d["G"] @ p["sd"]
        return -0.5 * ((d["y"] - d["G"] @ p["mu"]) / s) ** 2 - jnp.log(s) - 0.5 * jnp.log(2 * jnp.pi)

    Gs = np.stack([np.eye(3)[g1], np.eye(3)[g2]])
    model = ah.Model(loglik, {"y": y, "G": Gs[0]}, {"mu": jnp.zeros(3), "sd": ah.Positive(jnp.ones(3))})
    bres = ah.fit_batch(model, {"y": np.stack([y, y]), "G": Gs})
    for i in range(2):
        single = ah.fit(ah.Model(loglik, {"y": y, "G": Gs[i]}, {"mu": jnp.zeros(3), "sd": ah.Positive(jnp.ones(3))}), warn=False)
        assert int(bres.status_code[i]) == int(single.status_code)
        assert np.array_equal(np.isnan(np.asarray(bres.bse_flat[i])), np.isnan(np.asarray(single.bse_flat)))
    assert int(bres.status_code[0]) == Status.UNBOUNDED and int(bres.status_code[1]) == Status.SINGULAR
    kinds = [p.kind for p in bres.member(1).diagnostics.problems]
    assert kinds == ["flat"] and set(bres.member(1).diagnostics.problems[0].parameters) == {"mu[2]", "sd[2]"}
    assert np.isnan(np.asarray(bres.bse_flat[1])[[2, 5]]).all() and np.isfinite(np.asarray(bres.bse_flat[1])[[0, 1, 3, 4]]).all()


def test_transformed_steps_are_capped():
    """A log-scale coordinate whose curvature is tiny (1e-6) next to a linear pull: the trust
    region scaled by sqrt(H_ii) would allow a step of ~2000 units; with ``max_step`` each step
    moves it at most MAX_TRANSFORMED_STEP (closed form: the quadratic model's minimiser is
    1e6 units away)."""
    def fun(u):
        f = 0.5e-6 * u[0] ** 2 - u[0] + 0.5 * u[1] ** 2
        return f, jax.grad(lambda t: 0.5e-6 * t[0] ** 2 - t[0] + 0.5 * t[1] ** 2)(u), jnp.diag(jnp.array([1e-6, 1.0]))

    u0 = jnp.array([0.0, 1.0])
    cap = jnp.array([MAX_TRANSFORMED_STEP, jnp.inf])
    free = trust_region_newton(fun, u0, maxiter=2)
    capped = trust_region_newton(fun, u0, maxiter=2, max_step=cap)
    steps = int(capped.iterations)  # accepted steps after the start's evaluation (all accepted here)
    # (the free solve takes the whole Newton step at once since issue #16: fewer iterations)
    assert steps >= 1 and int(free.iterations) <= steps
    assert float(free.x[0]) > 10 * steps * MAX_TRANSFORMED_STEP  # what the region alone allows
    assert 0.0 < float(capped.x[0]) <= steps * MAX_TRANSFORMED_STEP * (1 + 1e-12)


# ------------------------------------------------------------------------------------------
# Summary columns of bounded width
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan, 1e300, -1e300, 1e-300, -1e-300, -0.0, 0.0,
                                   123456.789, -99999.99999, 6.779e-41, 1.0, -12345678901234.0])
@pytest.mark.parametrize("width, decimals, small_sci", [(10, 4, True), (11, 4, True), (9, 3, False), (12, 4, True)])
def test_fmt_has_bounded_width(value, width, decimals, small_sci):
    text = _fmt(value, width, decimals, small_sci)
    assert len(text) == width and text[0] == " "  # a separator before every column
    if np.isfinite(value):  # and it still says the number: 1 significant digit at least, or
        # (z and p columns, small_sci=False) fixed-point to its last decimal
        assert abs(float(text) - value) <= max(0.5 * abs(value) if small_sci else 0.0, 10.0**-decimals) or (
            abs(float(text) - value) <= 0.5 * abs(value))


def test_summary_rows_have_the_rules_width_for_extreme_numbers():
    """A normal model of data with mean 1 and sd 1e-12: z = mean / SE ~ 1e13 (was printed as
    a 20-digit fixed-point number); the data scaled by 1e150: estimates ~1e150 (their squares, ~1e300, near overflow)."""
    rng = np.random.default_rng(5)
    for scale, spread in ((1.0, 1e-12), (1e150, 1e149)):
        y = scale + spread * rng.normal(size=50)

        def loglik(p, d):
            return -0.5 * ((d["y"] - p["mu"]) / p["sigma"]) ** 2 - jnp.log(p["sigma"]) - 0.5 * jnp.log(2 * jnp.pi)

        model = ah.Model(loglik, {"y": y}, {"mu": float(np.mean(y)), "sigma": ah.Positive(float(np.std(y)))})
        res = ah.evaluate(model, {"mu": float(np.mean(y)), "sigma": float(np.std(y))}, warn=False)
        lines = res.summary().splitlines()
        width = len(lines[0])
        start = lines.index("-" * width)
        assert len(lines[start - 1]) == width  # the column header
        assert all(len(row) == width for row in lines[start + 1: start + 3])
