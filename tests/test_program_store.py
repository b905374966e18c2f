"""autohess's program store (issue #16 part 2, ``autohess/_programs.py``): a fit's solve and
covariance programs written to disk after compiling and loaded by a later model without tracing.

Reusing a stale program would be a silent wrong answer, so most of these tests change one thing
a program depends on (a constant the log-likelihood closes over, a custom derivative rule, the
data's shape, a fit option, the weights, a bound) and check that nothing is loaded and the fit
equals one compiled from scratch. The store is pointed at a temporary directory (in the test
process JAX's cache directory is the suite's own, where the store is off); the fresh-process
path is in test_first_call.py. Each test fits data of its own length: a program JAX has in its
own cache from another test is read from there, and such an executable is never written to the
store (it serialises without its kernels), so the "written" counts assume a first compile.

Results are compared bit for bit (``assert_array_equal``) where the same program runs on the
same inputs: a loaded executable is the compiled one, byte for byte, so there is no rounding to
allow for.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autohess as ah
from autohess import _inference, _programs

EVENTS: list = []


def _duration(name, seconds, fun_name=None, **_):
    if name in (_programs.LOAD_EVENT, _programs.WRITE_EVENT):
        EVENTS.append(("load" if name == _programs.LOAD_EVENT else "write", fun_name))


def _event(name, fun_name=None, **_):
    if name == _programs.NOT_STORABLE_EVENT:
        EVENTS.append(("not storable", fun_name))


jax.monitoring.register_event_duration_secs_listener(_duration)
jax.monitoring.register_event_listener(_event)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The store on, in ``tmp_path``; the covariance program (one per process) forgets what it
    resolved in other tests."""
    folder = str(tmp_path / "programs")
    monkeypatch.setattr(_programs, "program_dir", lambda: folder)
    _inference._covariance_program.cache_clear()
    _clear()
    yield folder
    _programs.wait_for_writes()
    _inference._covariance_program.cache_clear()
    _clear()


def _logistic_data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = np.column_stack([np.ones(n), rng.standard_normal((n, 2))])
    y = (rng.random(n) < 1 / (1 + np.exp(-X @ np.array([-0.3, 0.6, -0.4])))).astype(float)
    return X, y


def _clear():
    _programs.wait_for_writes()  # a write still under way would report after the clear
    EVENTS.clear()


def _events(kind, name="solve"):
    _programs.wait_for_writes()  # entries are written on a thread of their own
    return sum(1 for k, n in EVENTS if k == kind and n == name)


def _same_fit(a, b):
    for field in ("params_flat", "cov", "llf", "gradient", "hessian_matrix", "status_code", "iterations"):
        np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)), err_msg=field)


def _fresh(model_fn, **fit_kw):
    """A fit of a new model compiled without the store (the reference a loaded program must equal)."""
    _programs_dir = _programs.program_dir
    try:
        _programs.program_dir = lambda: None
        return ah.fit(model_fn(), **fit_kw)
    finally:
        _programs.program_dir = _programs_dir


def test_a_new_model_loads_the_programs_and_fits_bit_for_bit(store):
    """A fit writes its solve and covariance programs; a new model of the same log-likelihood,
    data shapes and options loads both (no trace: ``trace_counts``) and gives the same fit as
    the first and as one compiled without the store, bit for bit."""
    X, y = _logistic_data(n=120)
    first = ah.fit(ah.models.logistic(X, y))
    assert _events("write") == 1 and _events("write", "covariance") == 1
    assert sorted(f.split("-")[0] for f in os.listdir(store)) == ["covariance", "solve"]
    _clear()
    _inference._covariance_program.cache_clear()  # as in a new process (in this one it is kept)
    model = ah.models.logistic(X, y)
    second = ah.fit(model)
    assert _events("load") == 1 and _events("load", "covariance") == 1 and _events("write") == 0
    assert model.trace_counts["fit"] == 0  # the solve was not traced
    _same_fit(first, second)
    _same_fit(second, _fresh(lambda: ah.models.logistic(X, y)))
    # other data of the same shapes: the same program, run on them
    X2, y2 = _logistic_data(n=120, seed=1)
    _clear()
    other = ah.fit(ah.models.logistic(X2, y2))
    assert _events("load") == 1
    _same_fit(other, _fresh(lambda: ah.models.logistic(X2, y2)))


def _user_model(X, y, scale=1.0, offset=None):
    """A user-written logistic log-likelihood closing over a Python number and a numpy array."""
    offset = np.zeros(len(y)) if offset is None else offset

    def loglik(p, d):
        eta = d["X"] @ p["beta"] + offset
        return scale * (d["y"] * eta - jnp.logaddexp(0.0, eta))

    return ah.Model(loglik, {"X": X, "y": y}, {"beta": np.zeros(X.shape[1])})


@pytest.mark.parametrize("change", ["python constant", "numpy constant", "data shape"])
def test_a_changed_log_likelihood_or_shape_never_reuses_a_program(store, change):
    """The same function with another closed-over number or array (baked into the program as a
    constant), or data of another length: a new key, nothing loaded, the fit equals one compiled
    from scratch."""
    X, y = _logistic_data(n=123 + 2 * ["python constant", "numpy constant", "data shape"].index(change))
    ah.fit(_user_model(X, y))
    assert _events("write") == 1
    if change == "python constant":
        make = lambda: _user_model(X, y, scale=2.0)  # noqa: E731
    elif change == "numpy constant":
        off = np.full(len(y), 0.25)
        make = lambda: _user_model(X, y, offset=off)  # noqa: E731
    else:
        X3, y3 = _logistic_data(n=len(y) + 1)
        make = lambda: _user_model(X3, y3)  # noqa: E731
    _clear()
    res = ah.fit(make())
    assert _events("load") == 0 and _events("write") == 1
    _same_fit(res, _fresh(make))
    assert len([f for f in os.listdir(store) if f.startswith("solve")]) == 2


def _rule_model(X, y, slope):
    """softplus with a custom_jvp rule whose derivative is ``slope * sigmoid``: the primal
    jaxpr names the rule (``jvp=rule``) and is the same for every ``slope``."""

    @jax.custom_jvp
    def softplus(x):
        return jnp.logaddexp(0.0, x)

    @softplus.defjvp
    def rule(primals, tangents):
        (x,), (dx,) = primals, tangents
        return softplus(x), slope * jax.nn.sigmoid(x) * dx

    def loglik(p, d):
        eta = d["X"] @ p["beta"]
        return d["y"] * eta - softplus(eta)

    return ah.Model(loglik, {"X": X, "y": y}, {"beta": np.zeros(X.shape[1])})


def test_a_changed_custom_derivative_rule_never_reuses_a_program(store):
    """Two log-likelihoods whose jaxprs print alike and differ only in their custom_jvp rule
    (the trap that kept JAX-level keys from being safe): the rule is traced into the key, so
    the second is compiled, and its fit follows its own rule (a rule with half the slope gives
    another gradient, so another optimum: the fits differ)."""
    X, y = _logistic_data(n=131)
    one = ah.fit(_rule_model(X, y, 1.0), warn=False)
    _clear()
    half = ah.fit(_rule_model(X, y, 0.5), warn=False)
    assert _events("load") == 0 and _events("write") == 1
    _same_fit(half, _fresh(lambda: _rule_model(X, y, 0.5), warn=False))
    assert not np.allclose(np.asarray(one.params_flat), np.asarray(half.params_flat))
    # the same rule again: loaded
    _clear()
    again = ah.fit(_rule_model(X, y, 0.5), warn=False)
    assert _events("load") == 1
    _same_fit(again, half)


@pytest.mark.parametrize("option", ["maxiter", "rtol", "lbfgs", "weights", "start", "bound"])
def test_a_changed_option_never_reuses_a_program(store, option):
    """Fit options (iteration limit, early stop, method), weights present or not, the data start
    (off with an explicit start) and a parameter's bounds are in the key: each its own program."""
    options = ["maxiter", "rtol", "lbfgs", "weights", "start", "bound"]
    X, y = _logistic_data(n=133 + options.index(option))
    n = len(y)

    def normal(lo=0.0, hi=10.0):
        return ah.Model(lambda p, d: -0.5 * ((d["y"] - p["mu"]) / p["s"]) ** 2 - jnp.log(p["s"]),
                        {"y": np.linspace(-1.0, 2.0, n)},
                        {"mu": 0.0, "s": ah.Interval(lo, hi, 1.0)})

    make, kw = (lambda: ah.models.logistic(X, y)), {}
    if option == "bound":
        make = normal
    ah.fit(make())
    _clear()
    if option == "maxiter":
        kw = {"maxiter": 50}
    elif option == "rtol":
        kw = {"rtol": 1e-3}
    elif option == "lbfgs":
        kw = {"method": "lbfgs"}
    elif option == "weights":
        kw = {"weights": np.linspace(0.5, 1.5, n)}
    elif option == "start":
        kw = {"start": {"beta": np.zeros(3)}}
    else:
        make = lambda: normal(0.0, 20.0)  # noqa: E731
    res = ah.fit(make(), **kw)
    assert _events("load") == 0 and _events("write") == 1
    _same_fit(res, _fresh(make, **kw))


def test_a_damaged_or_foreign_entry_is_compiled_again_without_error(store):
    """An entry cut short, overwritten, or holding another key's program (a file renamed): read
    as a miss, removed, and the fit compiled as usual, equal to one compiled from scratch."""
    X, y = _logistic_data(n=141)
    ah.fit(ah.models.logistic(X, y))
    _programs.wait_for_writes()
    solve = [os.path.join(store, f) for f in os.listdir(store) if f.startswith("solve")][0]
    blob = open(solve, "rb").read()
    for damage in (blob[: len(blob) // 2], b"garbage", blob[:-1] + bytes([blob[-1] ^ 1])):
        with open(solve, "wb") as fh:
            fh.write(damage)
        _clear()
        res = ah.fit(ah.models.logistic(X, y))
        assert _events("load") == 0
        _same_fit(res, _fresh(lambda: ah.models.logistic(X, y)))
        _programs.wait_for_writes()
        assert not os.path.exists(solve) or open(solve, "rb").read() != damage
    # another key's entry under this key's name: its key inside does not match
    X4, y4 = _logistic_data(n=142)
    ah.fit(ah.models.logistic(X4, y4))
    _programs.wait_for_writes()
    other = [os.path.join(store, f) for f in os.listdir(store) if f.startswith("solve") and f != os.path.basename(solve)]
    assert other
    os.replace(other[0], solve)
    _clear()
    res = ah.fit(ah.models.logistic(X, y))
    assert _events("load") == 0
    _same_fit(res, _fresh(lambda: ah.models.logistic(X, y)))


def test_what_cannot_be_keyed_is_compiled_as_before(store):
    """A log-likelihood with a custom_vjp function (its reverse rule is a Python function the
    jaxpr only names) or a host callback: not stored, fitted as usual."""
    X, y = _logistic_data(n=143)

    @jax.custom_vjp
    def softplus(x):
        return jnp.logaddexp(0.0, x)

    softplus.defvjp(lambda x: (softplus(x), x), lambda x, g: (jax.nn.sigmoid(x) * g,))

    def vjp_loglik(p, d):
        eta = d["X"] @ p["beta"]
        return d["y"] * eta - softplus(eta)

    def callback_loglik(p, d):
        eta = d["X"] @ p["beta"]
        y = jax.pure_callback(np.asarray, jax.ShapeDtypeStruct(d["y"].shape, d["y"].dtype), d["y"])  # data only
        return y * eta - jnp.logaddexp(0.0, eta)

    for loglik in (vjp_loglik, callback_loglik):
        _clear()
        model = ah.Model(loglik, {"X": X, "y": y}, {"beta": np.zeros(3)}, hessian_mode="rev-rev")
        res = ah.fit(model)
        assert _events("not storable") == 1 and _events("write") == 0 and res.converged
    assert not any(f.startswith("solve") for f in os.listdir(store))


def test_the_store_is_off_unless_autohess_chose_the_cache_directory(monkeypatch):
    """``program_dir`` is inside the cache directory autohess set; when JAX's cache directory is
    another (set by the user, or this suite's conftest) or autohess set none, there is no store."""
    jax_dir = jax.config.values.get("jax_compilation_cache_dir")
    monkeypatch.setattr(ah._config, "_CACHE_DIR", jax_dir)
    assert _programs.program_dir() == os.path.join(jax_dir, _programs.SUBDIR)
    monkeypatch.setattr(ah._config, "_CACHE_DIR", "/somewhere/else")
    assert _programs.program_dir() is None
    monkeypatch.setattr(ah._config, "_CACHE_DIR", None)
    assert _programs.program_dir() is None


def test_jaxpr_digest_sees_constants_literals_and_rules():
    """The digest differs for a changed closed-over array, a changed literal, and a changed
    custom_jvp rule, and is the same for the same function traced twice."""
    a, b = np.arange(3.0), np.arange(3.0) + 1e-12

    def digest(f):
        return _programs.jaxpr_digest(jax.make_jaxpr(f)(jnp.ones(3)))

    assert digest(lambda x: x * a) == digest(lambda x: x * a)
    assert digest(lambda x: x * a) != digest(lambda x: x * b)
    assert digest(lambda x: x * 2.0) != digest(lambda x: x * 2.0000000000000004)
    big = np.zeros(5000)
    big2 = big.copy()
    big2[2500] = 1.0  # numpy would print both as [0., 0., ..., 0.] when summarising
    assert digest(lambda x: x.sum() + big) != digest(lambda x: x.sum() + big2)

    def with_rule(k):
        @jax.custom_jvp
        def f(x):
            return jnp.sin(x)

        f.defjvp(lambda p, t: (f(p[0]), k * jnp.cos(p[0]) * t[0]))
        return f

    assert digest(with_rule(1.0)) == digest(with_rule(1.0))
    assert digest(with_rule(1.0)) != digest(with_rule(2.0))
    # JAX's own jitted functions (jax.nn.softplus: a jit equation whose mesh is a callable
    # object) are keyed, not refused
    assert digest(lambda x: jax.nn.softplus(x) * a) == digest(lambda x: jax.nn.softplus(x) * a)


def test_a_program_jax_already_cached_is_compiled_once_for_the_store(store):
    """A program JAX's own cache already holds (a fit without the store, or by an earlier
    autohess: the upgrade case) is compiled once more outside JAX's cache, since an executable
    read back from there serialises without its kernels and could never be stored (every later
    process would trace it again); it is then written, and the next model loads it."""
    X, y = _logistic_data(n=151)
    reference = _fresh(lambda: ah.models.logistic(X, y))  # JAX's cache now has this solve
    _clear()
    first = ah.fit(ah.models.logistic(X, y))
    assert _events("write") == 1 and _events("load") == 0
    _clear()
    _inference._covariance_program.cache_clear()
    second = ah.fit(ah.models.logistic(X, y))
    assert _events("load") == 1 and _events("load", "covariance") == 1
    _same_fit(first, reference)
    _same_fit(second, reference)


def test_jaxpr_digest_sees_constants_of_jaxprs_inside_tuples():
    """``custom_linear_solve`` keeps its jaxprs in a named tuple with ``None`` entries: their
    constants are digested too (a printed jaxpr shows a constant only by name)."""

    def solve_with(m):
        def f(b):
            return jax.lax.custom_linear_solve(lambda x: m @ x, b, solve=lambda _, y: jnp.linalg.solve(m, y))

        return _programs.jaxpr_digest(jax.make_jaxpr(f)(jnp.ones(2)))

    a = np.array([[2.0, 0.0], [0.0, 3.0]])
    assert solve_with(a) == solve_with(a.copy())
    assert solve_with(a) != solve_with(a + np.array([[0.0, 1e-9], [0.0, 0.0]]))


def test_alternating_signatures_each_run_their_own_program(store):
    """The covariance program is one per process: fits of models with 3 and 4 parameters in
    turn each reach their own executable (a repeated call goes straight to the latest one, whose
    own argument check sends the other shape on), equal bit for bit to their first fits."""
    X, y = _logistic_data(n=161)
    X4 = np.column_stack([X, np.linspace(-1.0, 1.0, len(y))])
    a, b = ah.models.logistic(X, y), ah.models.logistic(X4, y)
    first_a, first_b = ah.fit(a), ah.fit(b)
    for _ in range(2):
        _same_fit(ah.fit(a), first_a)
        _same_fit(ah.fit(b), first_b)
    _same_fit(first_b, _fresh(lambda: ah.models.logistic(X4, y)))


def test_a_stored_program_that_loads_but_fails_to_run_is_removed_and_compiled(store, monkeypatch):
    """An entry whose executable loads but fails in XLA's runtime (seen once in CI: serialised
    without its kernels, "Function ... not found") never fails the fit: the entry is removed and
    the program compiled as without the store; the fit equals one compiled from scratch."""
    from jax.experimental import serialize_executable

    X, y = _logistic_data(n=131)
    ah.fit(ah.models.logistic(X, y))
    _programs.wait_for_writes()
    assert sorted(f.split("-")[0] for f in os.listdir(store)) == ["covariance", "solve"]
    _inference._covariance_program.cache_clear()
    real = serialize_executable.deserialize_and_load

    def broken(*a, **k):
        real(*a, **k)  # loads fine

        def run(*args, **kwargs):
            raise jax.errors.JaxRuntimeError("NOT_FOUND: Function iota.1_kernel not found (type id: 1)")

        return run

    monkeypatch.setattr(serialize_executable, "deserialize_and_load", broken)
    again = ah.fit(ah.models.logistic(X, y))
    _same_fit(again, _fresh(lambda: ah.models.logistic(X, y)))
    assert "solve" not in [f.split("-")[0] for f in os.listdir(store)]
