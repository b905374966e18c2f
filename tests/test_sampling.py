"""``_sampling.gamma``: the vectorised Marsaglia-Tsang gamma draws the GARCH-t simulation uses
(``jax.random.gamma`` draws element after element: 1.4 us a draw, more than a replicate's fit).

Reference: the Gamma(a, 1) distribution function (scipy.stats.gamma), by a Kolmogorov-Smirnov
test on 20,000 draws; seeds are fixed, so the p-values are fixed numbers, and a sampler with a
wrong shape (e.g. the a < 1 step left out: Gamma(a + 1) draws) gives p < 1e-100.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autohess._sampling import gamma


@pytest.mark.parametrize("a", [0.3, 1.0, 2.5, 40.0])
def test_gamma_draws_follow_the_gamma_distribution(a):
    stats = pytest.importorskip("scipy.stats")
    x = np.asarray(gamma(jax.random.key(1), a, (20000,), jnp.float64))
    assert x.dtype == np.float64 and np.all(x > 0)
    # KS p-value above 1e-3: a correct sampler fails that for 1 seed in 1000; a wrong shape
    # parameter by 5% (a = 2.5 vs 2.625) already gives p ~ 1e-20 at this n
    assert stats.kstest(x, stats.gamma(a).cdf).pvalue > 1e-3


def test_gamma_under_vmap_equals_one_key_at_a_time_and_refuses_a_below_one_when_told():
    keys = jax.random.split(jax.random.key(7), 3)
    a = jnp.asarray([0.7, 2.0, 9.0])
    batched = jax.jit(jax.vmap(lambda k, s: gamma(k, s, (50, 2), jnp.float64)))(keys, a)
    assert batched.shape == (3, 50, 2)
    for i in range(3):
        # the rejection rounds of a batch run until every member's draws are accepted: a
        # member's draws must not depend on its neighbours (bootstrap replicates redrawn alone);
        # equal to rounding (1e-14: the jitted batch fuses (1 + c x)^3 and the log test, the
        # eager call does not, ~1 ulp; a neighbour's influence would change whole draws)
        single = np.asarray(gamma(keys[i], a[i], (50, 2), jnp.float64))
        np.testing.assert_allclose(np.asarray(batched[i]), single, rtol=1e-14)
    # ``at_least_one`` leaves out the a < 1 step: an a below 1 is NaN, not Gamma(a + 1) draws
    assert np.all(np.isnan(np.asarray(gamma(keys[0], 0.5, (10,), jnp.float64, at_least_one=True))))
    assert np.all(np.isfinite(np.asarray(gamma(keys[0], 1.5, (10,), jnp.float64, at_least_one=True))))
