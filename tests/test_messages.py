"""Messages that point at the cause (issue #13 part 4) and a preconditioned L-BFGS (part 5).

* A Hessian that is not finite where the log-likelihood is: ``fit`` (both methods),
  ``evaluate`` and ``hessian`` give one message naming the parameters and the common cause
  (``jnp.inf`` as a constant inside the likelihood).
* "At the optimum" is one rule in ``evaluate`` and ``audit``: the Newton step's length in
  standard errors; ``evaluate``'s advice fits a function without ``maxiter``.
* ``simulate``'s signature is checked when the model is built.
* L-BFGS reaches statsmodels' MNLogit optimum on a 36-parameter multinomial logit.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

import autohess as ah


# ------------------------------------------------------------------------------------------
# A finite log-likelihood with a non-finite Hessian
# ------------------------------------------------------------------------------------------
def _ordered_probit(outer):
    """Ordered probit with 3 categories and outer cut points -outer, +outer."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = np.digitize(0.8 * x + rng.normal(size=300), [-0.5, 0.7])

    def loglik(p, d):
        cuts = jnp.concatenate([jnp.array([-outer]), p["c"], jnp.array([outer])])
        eta = d["x"] * p["b"]
        yi = d["y"].astype(jnp.int32)
        return jnp.log(norm.cdf(cuts[yi + 1] - eta) - norm.cdf(cuts[yi] - eta))

    return ah.Model(loglik, {"x": x, "y": y}, {"b": 0.0, "c": jnp.array([-0.3, 0.4])})


def _truncated_normal(upper):
    """Normal truncated to (0, upper): the truncation's normalising constant holds ``upper``."""
    y = np.abs(np.random.default_rng(1).normal(0.5, 1.0, 200))

    def loglik(p, d):
        mu, s = p["mu"], p["sigma"]
        mass = norm.cdf((upper - mu) / s) - norm.cdf((0.0 - mu) / s)
        return norm.logpdf(d["y"], mu, s) - jnp.log(mass)

    return ah.Model(loglik, {"y": y}, {"mu": 0.5, "sigma": ah.Positive(1.0)})


CAUSE = r"jnp\.inf or -jnp\.inf used as a constant.*inf \* 0 = nan.*large finite value"


@pytest.mark.parametrize("build, named", [(_ordered_probit, r"\['b'\]"), (_truncated_normal, r"\['mu', 'sigma'\]")])
def test_nonfinite_hessian_message_is_the_same_from_fit_evaluate_and_hessian(build, named):
    """Two likelihoods with jnp.inf inside (ordered-probit outer cut points; a truncation at
    +inf) are finite, but their Hessians contain inf * 0. fit used to say "not finite ...
    raise maxiter" (trust region) or "no step reduces ... (a saddle point ...)" (L-BFGS);
    every entry point now names the parameters and the cause, and the fix the message
    suggests (a large finite constant) works."""
    model = build(jnp.inf)
    start = model.init_params
    for call, where in [
        (lambda: ah.hessian(model, start), "given parameters"),
        (lambda: ah.evaluate(model, start), "given parameters"),
        (lambda: ah.fit(model), "starting values"),
    ]:
        with pytest.raises(FloatingPointError, match=f"non-finite entries for {named}.*finite at the {where}.*{CAUSE}"):
            call()
    if build is _ordered_probit:  # its gradient is finite: L-BFGS reaches an estimate first
        with pytest.raises(FloatingPointError, match=f"non-finite entries for {named}.*L-BFGS estimate.*{CAUSE}"):
            ah.fit(model, method="lbfgs")
    # the advice: +-1e10 gives the same log-likelihood (cdf(1e10) = 1 exactly in float64) and
    # finite derivatives (1e10 * pdf(1e10) = 0)
    fixed = build(1e10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ah.InferenceWarning)
        res = ah.fit(fixed)
    assert res.converged and np.isfinite(np.asarray(res.bse_flat)).all()
    assert model.loglik(res.params) == fixed.loglik(res.params)
