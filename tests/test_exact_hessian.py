"""Exact Hessians against closed forms (issue #2: 1e-10 relative) and the seed example."""

import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from helpers import CLOSED_FORM, EXACT, logistic_data, rel_err


def test_logistic_equals_xtwx(rng):
    X, y, beta = logistic_data(rng)
    model = ah.models.logistic(X, y)
    H = ah.hessian(model, {"beta": jnp.asarray(beta)})
    prob = 1.0 / (1.0 + np.exp(-X @ beta))
    closed = (X * (prob * (1 - prob))[:, None]).T @ X
    assert H.matrix.dtype == jnp.float64
    assert H.labels == tuple(f"beta[{i}]" for i in range(12))
    assert rel_err(H.matrix, closed) < CLOSED_FORM


def test_issue_example_user_loglik(rng):
    """The README/issue example: a hand-written loglik gives the same Hessian as the zoo."""
    X, y, beta = logistic_data(rng)

    def loglik(params, data):
        eta = data["X"] @ params["beta"]
        return data["y"] * eta - jnp.logaddexp(0.0, eta)

    model = ah.Model(loglik, {"X": X, "y": y}, params={"beta": jnp.zeros(12)})
    params = {"beta": jnp.asarray(beta)}
    zoo = ah.hessian(ah.models.logistic(X, y), params)
    assert rel_err(ah.hessian(model, params).matrix, zoo.matrix) < EXACT


def test_poisson_equals_xtmux(rng):
    n, p = 800, 4
    X = np.c_[np.ones(n), rng.normal(size=(n, p - 1))]
    beta = np.array([0.5, 0.2, -0.3, 0.1])
    y = rng.poisson(np.exp(X @ beta))
    H = ah.hessian(ah.models.poisson(X, y), {"beta": jnp.asarray(beta)})
    mu = np.exp(X @ beta)
    assert rel_err(H.matrix, (X * mu[:, None]).T @ X) < CLOSED_FORM


def test_normal_linear_closed_form(rng):
    n, p = 500, 3
    X = np.c_[np.ones(n), rng.normal(size=(n, p - 1))]
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.7 * rng.normal(size=n)
    beta, sigma = np.array([0.9, -1.9, 0.6]), 0.8
    model = ah.models.linear(X, y)
    H = ah.hessian(model, {"beta": jnp.asarray(beta), "sigma": jnp.asarray(sigma)})
    r = y - X @ beta
    # negloglik = N log(sigma) + sum(r^2) / (2 sigma^2) + const
    closed = np.zeros((p + 1, p + 1))
    closed[:p, :p] = X.T @ X / sigma**2
    closed[:p, p] = closed[p, :p] = 2 * X.T @ r / sigma**3
    closed[p, p] = -n / sigma**2 + 3 * np.sum(r**2) / sigma**4
    assert H.labels == ("beta[0]", "beta[1]", "beta[2]", "sigma")
    assert rel_err(H.matrix, closed) < CLOSED_FORM


def test_seed_function_analytic_hessian():
    """The seed question's test function 2yx^4 + 2y^3 + 2xz^3 at (1, 2, 3), to 1e-12."""

    def fn(params):
        x, y, z = params
        return 2 * y * x**4 + 2 * y**3 + 2 * x * z**3

    x, y, z = 1.0, 2.0, 3.0
    expected = np.array(
        [[24 * x**2 * y, 8 * x**3, 6 * z**2], [8 * x**3, 12 * y, 0], [6 * z**2, 0, 12 * x * z]]
    )
    H = ah.hessian(fn, jnp.array([x, y, z]))
    assert H.labels == ("x[0]", "x[1]", "x[2]")
    np.testing.assert_allclose(np.asarray(H.matrix), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev", "fwd-fwd"])
def test_modes_agree(rng, mode):
    X, y, beta = logistic_data(rng, n=300, p=5)
    model = ah.models.logistic(X, y)
    params = {"beta": jnp.asarray(beta)}
    ref = ah.hessian(model, params).matrix
    H = ah.hessian(model, params, mode=mode).matrix
    assert rel_err(H, ref) < EXACT
    np.testing.assert_array_equal(np.asarray(H), np.asarray(H).T)  # symmetrised


def test_pytree_function_labels():
    f = lambda d: d["a"] ** 2 * d["b"][0] + jnp.sum(d["L"] ** 3)  # noqa: E731
    x = {"a": 1.5, "b": jnp.array([2.0]), "L": jnp.ones((2, 2))}
    H = ah.hessian(f, x)
    assert H.labels == ("L[0,0]", "L[0,1]", "L[1,0]", "L[1,1]", "a", "b[0]")
    assert H.matrix.dtype == jnp.float64
    np.testing.assert_allclose(np.diag(np.asarray(H.matrix)), [6, 6, 6, 6, 4, 0], rtol=EXACT)
    assert float(H.matrix[4, 5]) == pytest.approx(3.0, rel=EXACT)


def test_hvp_and_gradient_match_hessian(rng):
    X, y, beta = logistic_data(rng, n=400, p=6)
    model = ah.models.logistic(X, y)
    params = {"beta": jnp.asarray(beta)}
    v = jnp.asarray(rng.normal(size=6))
    H = ah.hessian(model, params).matrix
    assert rel_err(ah.hvp(model, params, v), H @ v) < EXACT
    # gradient is of the NEGATIVE log-likelihood: -X'(y - p)
    prob = 1.0 / (1.0 + np.exp(-X @ beta))
    assert rel_err(ah.gradient(model, params), -X.T @ (y - prob)) < CLOSED_FORM
    # Same sign convention: H is the Jacobian of the gradient. Central differences of the
    # exact gradient have O(h^2) truncation ~1e-10 and rounding ~eps*|g|/h ~1e-11 at h=1e-5.
    h = 1e-5
    for i in range(6):
        e = jnp.zeros(6).at[i].set(h)
        col = (ah.gradient(model, {"beta": params["beta"] + e}) - ah.gradient(model, {"beta": params["beta"] - e})) / (2 * h)
        assert rel_err(col, H[:, i]) < 1e-7


def test_unconstrained_scale_chain_rule(rng):
    """On the log scale, d2/du2 = sigma^2 H_ss + sigma g_s (chain rule with sigma = exp(u))."""
    X = np.c_[np.ones(200), rng.normal(size=200)]
    y = X @ np.array([1.0, 2.0]) + rng.normal(size=200)
    model = ah.models.linear(X, y)
    params = {"beta": jnp.array([1.1, 1.9]), "sigma": jnp.array(1.3)}
    Hn = ah.hessian(model, params).matrix
    Hu = ah.hessian(model, params, scale="unconstrained")
    g = ah.gradient(model, params)
    s = 1.3
    assert Hu.labels == ("beta[0]", "beta[1]", "log(sigma)")
    assert float(Hu.matrix[2, 2]) == pytest.approx(float(s**2 * Hn[2, 2] + s * g[2]), rel=EXACT)
    np.testing.assert_allclose(np.asarray(Hu.matrix[:2, 2]), s * np.asarray(Hn[:2, 2]), rtol=EXACT)


def _products_with_n_rows(closed_jaxpr, n):
    """``dot_general`` equations (nested jaxprs included) whose output has ``n`` rows and more
    than one column: the ``N x p`` products of a regression's Hessian program."""
    import jax.extend.core as jcore

    count = 0
    for eqn in closed_jaxpr.jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shape = eqn.outvars[0].aval.shape
            count += int(n in shape and len(shape) == 2 and min(shape) > 1)
        for param in eqn.params.values():
            if isinstance(param, jcore.ClosedJaxpr):
                count += _products_with_n_rows(param, n)
    return count


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev", "fwd-fwd"])
def test_basis_products_folded(mode, rng):
    """Issue #16: jacfwd/jacrev push the identity basis through ``X @ beta``, an N x p x p
    product XLA keeps (it does not see the constant is the identity), so a regression's Hessian
    cost two such products where the closed form X'WX has one. ``fold_basis`` turns products by
    a 0/1 selection constant into gathers: the program keeps only the X'(W X) product, and the
    matrix is unchanged to rounding (EXACT: XLA may order the remaining sums differently). Several parameter
    leaves (a zero column in each block of the basis), a nested jit and a Positive transform on
    the unconstrained scale are covered."""
    import jax

    from autohess._derivatives import _hessian_of, _hessian_with_basis

    n = 400
    X = np.c_[np.ones(n), rng.normal(size=(n, 3))]
    y = X @ np.array([0.5, -1.0, 0.3, 0.0]) + rng.normal(size=n)

    @jax.jit  # a user's own jit: its jaxpr is nested, and the basis is passed into it
    def mean(beta, X):
        return X[:, :2] @ beta[:2] + X[:, 2:] @ beta[2:]

    def loglik(params, data):
        z = (data["y"] - mean(params["beta"], data["X"]) - params["shift"]) / params["sigma"]
        return -jnp.log(params["sigma"]) - 0.5 * z * z

    model = ah.Model(loglik, {"X": X, "y": y},
                     {"beta": jnp.zeros(4), "shift": jnp.zeros(()), "sigma": ah.Positive(1.3)}, hessian_mode=mode)
    point = {"beta": jnp.array([0.4, -0.9, 0.2, 0.1]), "shift": jnp.asarray(0.05), "sigma": jnp.asarray(1.1)}
    for scale in ("natural", "unconstrained"):
        H = ah.hessian(model, point, scale=scale, mode=mode).matrix
        from autohess._derivatives import _objective, _start

        f = lambda t: _objective(model, scale)(t, model.data, None)  # noqa: E731
        theta = _start(model, point, scale)
        plain = jax.jit(lambda t: _hessian_with_basis(f, mode, True)(t)[0])(theta)
        plain = 0.5 * (plain + plain.T)
        assert rel_err(H, plain) < EXACT
        folded = jax.make_jaxpr(lambda t: _hessian_of(f, mode)(t))(theta)
        unfolded = jax.make_jaxpr(lambda t: _hessian_with_basis(f, mode, True)(t))(theta)
        if scale == "natural" or mode == "fwd-rev":
            # (reverse modes on the unconstrained scale see the basis through pads and sums
            # of the transforms' adjoints and keep it: fit maps natural-scale derivatives
            # instead, see test_fit_derivatives_fold_with_transformed_parameters)
            assert _products_with_n_rows(unfolded, n) > _products_with_n_rows(folded, n)
            assert _products_with_n_rows(folded, n) == 0  # left: X' (W X), p x p, not N x p
    # the closed form at the natural scale (as test_normal_linear_closed_form, the shift a
    # fifth column of ones)
    Xs = np.c_[X, np.ones(n)]
    b = np.r_[np.asarray(point["beta"]), 0.05]
    s = 1.1
    r = y - Xs @ b
    closed = np.zeros((6, 6))
    closed[:5, :5] = Xs.T @ Xs / s**2
    closed[:5, 5] = closed[5, :5] = 2 * Xs.T @ r / s**3
    closed[5, 5] = -n / s**2 + 3 * np.sum(r**2) / s**4
    assert rel_err(ah.hessian(model, point).matrix, closed) < CLOSED_FORM


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
def test_fit_derivatives_fold_with_transformed_parameters(mode, rng):
    """The solver's derivatives on the unconstrained scale are the natural-scale ones mapped by
    the chain rule (``_problem._unconstrained_value_grad_hess``), so a regression with a
    ``Positive`` scale has no N x p product by the basis either (issue #16; the direct
    unconstrained program kept one), and the value, gradient and Hessian equal the direct
    ones to rounding (EXACT)."""
    import jax

    from autohess._problem import _unconstrained, _unconstrained_value_grad_hess, _value_grad_hess_with_basis

    n = 300
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    y = X @ np.array([1.0, -0.5, 0.25]) + 0.8 * rng.normal(size=n)
    model = ah.models.linear(X, y)
    model = ah.Model(model._loglik, model.data, {"beta": jnp.zeros(3), "sigma": ah.Positive(1.0)}, hessian_mode=mode)
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=n))
    u = jnp.array([0.9, -0.4, 0.3, np.log(0.7)])
    for weights, scale in ((None, None), (w, jnp.asarray(3.0))):
        mapped = _unconstrained_value_grad_hess(model, model.data, weights, scale, mode)
        direct = _value_grad_hess_with_basis(_unconstrained(model, model.data, weights, scale), mode)
        got, want = jax.jit(mapped)(u), jax.jit(direct)(u)
        for a, b in zip(got, want):
            assert rel_err(a, b) < EXACT
        assert _products_with_n_rows(jax.make_jaxpr(mapped)(u), n) == 0
        assert _products_with_n_rows(jax.make_jaxpr(direct)(u), n) > 0


def test_logaddexp_cheap_rule_and_finiteness_proxy(rng):
    """Issue #16 part 1: ``jnp.logaddexp``'s own derivative rule costs two ``exp`` per row and
    needs the primal ``log1p`` at every order; ``_rules`` binds ``sigmoid(x1 - x2)`` instead
    and checks finiteness on a proxy without ``exp``/``log1p``. The compiled Hessian programs
    (check on and off) then hold one ``exp`` and no ``log1p`` (before: three and one). The README's logistic equals the closed form X' diag(p(1-p)) X (CLOSED_FORM:
    a different operation order) and JAX's own rule (EXACT: same derivatives, rounding)."""
    import jax

    from autohess._derivatives import _build_model_hessian

    X, y, beta = logistic_data(rng, n=300, p=5)

    def loglik(params, data):
        eta = data["X"] @ params["beta"]
        return data["y"] * eta - jnp.logaddexp(0.0, eta)

    model = ah.Model(loglik, {"X": X, "y": y}, params={"beta": jnp.zeros(5)})
    point = {"beta": jnp.asarray(beta)}
    prob = 1.0 / (1.0 + np.exp(-X @ beta))
    closed = (X * (prob * (1 - prob))[:, None]).T @ X
    jax_rule = jax.hessian(lambda b: -jnp.sum(loglik({"beta": b}, model.data)))(point["beta"])
    for check in (True, False):
        H = ah.hessian(model, point, check=check).matrix
        assert rel_err(H, closed) < CLOSED_FORM
        assert rel_err(H, jax_rule) < EXACT
        # what XLA runs (dead code removed): one exp per row (the sigmoid), no log1p; with JAX's
        # rule 3 exp and 1 log1p, the check on or off
        hlo = _build_model_hessian(model, "fwd-rev", "natural", check).lower(point, model.data, None).compile().as_text()
        assert hlo.count("log-plus-one(") == 0, check
        assert hlo.count("exponential(") == 1, check


def _logaddexp_hessian(u, gu, Hu, v, gv, Hv):
    """Closed form of the Hessian of ``logaddexp(u(x), v(x))``: ``s_u Hu + s_v Hv + s_u s_v
    (gu - gv)(gu - gv)'``, the weights ``s_u = 1 / (1 + e^(v - u))`` each without cancellation."""
    su, sv = 1.0 / (1.0 + np.exp(v - u)), 1.0 / (1.0 + np.exp(u - v))
    g = np.asarray(gu) - np.asarray(gv)
    return su * np.asarray(Hu) + sv * np.asarray(Hv) + su * sv * np.outer(g, g)


@pytest.mark.parametrize("where", ["both", "first", "softplus"])
def test_logaddexp_rule_both_arguments_and_large_differences(where):
    """Tangents in either or both arguments of ``logaddexp``, differences up to 50 and through
    a nested ``jit`` (``jax.nn.softplus``/``log_sigmoid``), on the plain-function path, against
    the closed form (CLOSED_FORM). At x = (-6, 7, 1) the difference is -50: JAX's own rule
    loses the ``s (1 - s)`` term of the weight near 1 there (H[2, 2] = 0 instead of 1.16e-21,
    H[0, 2] 12% off), which a first version of the cheaper rule also did (6% off)."""
    import jax

    zero, Z = np.zeros(3), np.zeros((3, 3))

    def f(x):
        if where == "both":
            return jnp.logaddexp(x[0] * x[1], 2.0 * x[2] - x[0])
        if where == "first":
            return jnp.logaddexp(x[0] * x[1] + x[2], 0.7)
        return jax.nn.softplus(x[0] * x[1] - x[2]) + jax.nn.log_sigmoid(x[2] * x[0])

    def closed(x):
        x0, x1, x2 = x
        Hprod = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0.0]])
        if where == "both":
            return _logaddexp_hessian(x0 * x1, [x1, x0, 0], Hprod, 2 * x2 - x0, [-1, 0, 2], Z)
        if where == "first":
            return _logaddexp_hessian(x0 * x1 + x2, [x1, x0, 1], Hprod, 0.7, zero, Z)
        Hb = np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0.0]])
        # log_sigmoid(b) = -logaddexp(-b, 0)
        return (_logaddexp_hessian(x0 * x1 - x2, [x1, x0, -1], Hprod, 0.0, zero, Z)
                - _logaddexp_hessian(-x2 * x0, [-x2, 0, -x0], -Hb, 0.0, zero, Z))

    for point in ([0.3, -1.2, 0.8], [6.0, 7.0, -1.0], [-6.0, 7.0, 1.0], [2.0, 1.0, 1.5], [0.0, 0.0, 0.0]):
        H = ah.hessian(f, jnp.asarray(point)).matrix
        ref = closed(np.asarray(point))
        # (relative to each entry's own scale where the matrix spans 20 orders of magnitude)
        np.testing.assert_allclose(np.asarray(H), ref, rtol=CLOSED_FORM, atol=CLOSED_FORM * 1e-30, err_msg=str(point))


def test_finiteness_check_with_logaddexp_still_catches_value_only_failures(rng):
    """The finiteness proxy of ``logaddexp`` (``_rules.finiteness_proxy``) must not hide a
    log-likelihood that is infinite while its Hessian is finite: an infinite constant selected
    by the parameters (a support that moves with them) still raises, and a ``logaddexp`` that
    feeds an operation that does not keep finiteness (``log``) falls back to the value itself.
    """
    X, y, beta = logistic_data(rng, n=200, p=3)

    def moving_support(params, data):
        eta = data["X"] @ params["beta"]
        inside = jnp.where(params["beta"][0] < 2.0, 0.0, -jnp.inf)
        return data["y"] * eta - jnp.logaddexp(0.0, eta) + inside

    model = ah.Model(moving_support, {"X": X, "y": y}, params={"beta": jnp.zeros(3)})
    assert np.isfinite(np.asarray(ah.hessian(model, {"beta": jnp.asarray(beta)}).matrix)).all()
    with pytest.raises(ValueError, match="not finite at the given parameters"):
        ah.hessian(model, {"beta": jnp.array([3.0, 0.0, 0.0])})

    def through_log(params, data):
        eta = data["X"] @ params["beta"]
        return jnp.log(jnp.logaddexp(0.0, eta) - params["c"])

    import jax

    from autohess import _rules

    @jax.jit
    def nested_log(u):  # a user's own jit: the proxy would meet the log inside it
        return jnp.log(u)

    def through_nested_log(params, data):
        eta = data["X"] @ params["beta"]
        return nested_log(jnp.logaddexp(0.0, eta) - params["c"])

    for fn, has_proxy in ((moving_support, True), (through_log, False), (through_nested_log, False)):
        m = ah.Model(fn, {"X": X, "y": y}, params={"beta": jnp.zeros(3), "c": -1.0})
        f = lambda t, m=m: -jnp.sum(m._loglik(m.spec.unflatten(t), m.data))  # noqa: E731
        t = jnp.zeros(4)
        closed, shape = jax.make_jaxpr(f, return_shape=True)(t)
        assert _rules.has_cheap_rule(closed)
        assert (_rules.finiteness_proxy(closed, shape, t) is not None) == has_proxy


def test_finiteness_proxy_is_finite_exactly_where_logaddexp_is():
    """``_rules.finiteness_proxy`` stands in ``max(x1, x2)`` for ``logaddexp(x1, x2)`` (and
    ``max(x, 0)`` for the zoo's ``softplus``): finite exactly where the function is, for every
    pair of NaN, +-inf, +-1.7e308 and ordinary values (the reference: the value itself)."""
    import jax

    from autohess import _rules
    from autohess.models._glm import softplus

    special = [np.nan, np.inf, -np.inf, 1.7e308, -1.7e308, 0.0, 3.0, -40.0]
    for fn in (lambda x: jnp.logaddexp(x[0], x[1]), lambda x: softplus(x[0]) + 0.0 * x[1]):
        for a in special:
            for b in special:
                x = jnp.array([a, b])
                closed, shape = jax.make_jaxpr(fn, return_shape=True)(x)
                proxy = _rules.finiteness_proxy(closed, shape, x)
                assert bool(jnp.isfinite(proxy)) == bool(jnp.isfinite(fn(x))), (a, b)
