"""The first fit in a fresh process (issue #16 part 2): which programs it compiles, the XLA
options they are compiled with, and what a second process reads from the persistent cache."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autohess import _config, _fit, _inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One logistic fit + standard errors in a fresh interpreter; every program JAX compiles (or
# reads from the persistent cache) on the way, from jax.monitoring, printed as JSON.
_FIRST_FIT = """
import json
import sys
import threading
import autohess as ah
optax_at_import = "optax" in sys.modules
import numpy as np
from jax import monitoring

# per thread (a cache hit is reported on the thread whose compile duration follows)
programs, hit = [], {}
def event(name, **_):
    if name == "/jax/compilation_cache/cache_hits":
        hit[threading.get_ident()] = True
stored = []
def duration(name, seconds, fun_name=None, **_):
    if name.startswith("/autohess/program_store/"):
        stored.append([name.rsplit("/", 1)[-1], fun_name])
    elif name.endswith("backend_compile_duration"):
        programs.append({"name": fun_name, "seconds": seconds, "hit": hit.pop(threading.get_ident(), False),
                         "thread": threading.current_thread().name})
monitoring.register_event_listener(event)
monitoring.register_event_duration_secs_listener(duration)

rng = np.random.default_rng(3)
X = np.column_stack([np.ones(300), rng.standard_normal((300, 3))])
y = (rng.random(300) < 1 / (1 + np.exp(-X @ np.array([-0.3, 0.5, 0.0, -0.4])))).astype(float)
res = ah.fit(ah.models.logistic(X, y))
bse = np.asarray(res.bse_flat)
scipy_linalg_after_fit = "scipy.linalg" in sys.modules
second = len(programs)
ah.fit(res.model)
import scipy.linalg  # as a user's script may, after the fit: the usual module, complete
print(json.dumps({"programs": programs, "after_second_fit": len(programs) - second, "stored": stored,
                  "bse_finite": bool(np.all(np.isfinite(bse))), "optax_at_import": optax_at_import,
                  "optax_after_fit": "optax" in sys.modules, "scipy_linalg_after_fit": scipy_linalg_after_fit,
                  "cython_lapack": len(scipy.linalg.cython_lapack.__pyx_capi__),
                  "solve": scipy.linalg.solve(np.eye(2), np.ones(2)).tolist(),
                  "params": np.asarray(res.params_flat).tolist(), "cov": np.asarray(res.cov).tolist(),
                  "llf": float(res.llf)}))
"""


def _first_fit(cache_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("AUTOHESS_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env.update(AUTOHESS_CACHE_DIR=str(cache_dir), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _FIRST_FIT], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_first_fit_compiles_three_programs_and_a_second_process_reads_them(tmp_path):
    """A first logistic fit + ``bse`` in a fresh process compiles at most three programs: the
    log-likelihood check at construction, the solve, covariance + diagnostics (before: six, with
    two data copies staged through ``jnp.asarray`` and a program for ``sqrt(diag(cov))``), none
    of them twice; a second fit compiles nothing; the solve and the covariance program are
    written to autohess's program store. A second process with the same cache directory loads
    both from the store (no trace, lowering or compilation: no compile event for them), reads
    the construction check from JAX's cache where it took at least the cache threshold, and
    gives the first process's fit bit for bit (the same executables). Neither process imports
    ``scipy.linalg`` for jaxlib's LAPACK kernels (``_config.lapack_ready``), and a later
    ``import scipy.linalg`` gives the complete module."""
    cold = _first_fit(tmp_path)
    names = [p["name"] for p in cold["programs"]]
    assert len(names) <= 3, names
    assert len(set(names)) == len(names), names
    assert not any(p["hit"] for p in cold["programs"])
    assert cold["after_second_fit"] == 0 and cold["bse_finite"]
    # optax (L-BFGS only) is imported by the first L-BFGS fit, not by ``import autohess``
    # (~0.1 s CPU of every fresh process) nor by a trust-region fit
    assert not cold["optax_at_import"] and not cold["optax_after_fit"]
    assert "jit(solve)" in names
    assert sum(p["name"] == "jit(_covariance_diagnostics_and_se_fn)" for p in cold["programs"]) == 1
    # the covariance program compiled ahead, on a thread of its own, while the solve was traced
    # and compiled (``_fit._covariance_ahead``), and that compile is the one the fit used
    assert [p["thread"] for p in cold["programs"] if p["name"] == "jit(_covariance_diagnostics_and_se_fn)"] == [
        "autohess-compile"]

    assert sorted(map(tuple, cold["stored"])) == [("write_sec", "covariance"), ("write_sec", "solve")]
    assert not cold["scipy_linalg_after_fit"] and cold["cython_lapack"] > 1000 and cold["solve"] == [1.0, 1.0]

    warm = _first_fit(tmp_path)
    assert sorted(map(tuple, warm["stored"])) == [("load_sec", "covariance"), ("load_sec", "solve")]
    loaded = {"jit(solve)", "jit(_covariance_diagnostics_and_se_fn)"}
    assert sorted(p["name"] for p in warm["programs"]) == sorted(set(names) - loaded)
    read = {p["name"]: p["hit"] for p in warm["programs"]}
    for before in cold["programs"]:
        if before["seconds"] >= _config.CACHE_MIN_COMPILE_S and before["name"] not in loaded:
            assert read[before["name"]], (before, warm["programs"])
    assert (warm["params"], warm["cov"], warm["llf"]) == (cold["params"], cold["cov"], cold["llf"])
    assert not warm["scipy_linalg_after_fit"]


@pytest.fixture
def fresh_options(monkeypatch):
    """``compiler_options`` recomputed under the environment a test sets (they are cached)."""
    for var in ("AUTOHESS_XLA_DEFAULT", "XLA_FLAGS"):
        monkeypatch.delenv(var, raising=False)
    _config._options.cache_clear()
    _config._accepted.cache_clear()
    yield monkeypatch
    _config._options.cache_clear()
    _config._accepted.cache_clear()


def test_compiler_options_follow_the_environment(fresh_options):
    """On CPU: the older emitters for every program, LLVM level 0 for programs run once; an
    option the user set in XLA_FLAGS is left to them; AUTOHESS_XLA_DEFAULT=1 passes nothing."""
    assert jax.default_backend() == "cpu"
    assert _config.compiler_options() == {"xla_cpu_use_fusion_emitters": False}
    assert _config.compiler_options(once=True) == {"xla_cpu_use_fusion_emitters": False,
                                                   "xla_backend_optimization_level": 0}
    assert _config.compiler_options(large=True) == {"xla_cpu_use_fusion_emitters": False,
                                                    "xla_backend_optimization_level": 1}
    _config._options.cache_clear()
    fresh_options.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=true")
    assert _config.compiler_options() is None
    assert _config.compiler_options(once=True) == {"xla_backend_optimization_level": 0}
    assert _config.compiler_options(large=True) == {"xla_backend_optimization_level": 1}
    _config._options.cache_clear()
    fresh_options.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    assert _config.compiler_options(large=True) == {"xla_cpu_use_fusion_emitters": False}
    _config._options.cache_clear()
    fresh_options.setenv("AUTOHESS_XLA_DEFAULT", "1")
    assert _config.compiler_options() is None and _config.compiler_options(once=True) is None
    assert _config.compiler_options(large=True) is None


def test_random_effects_solve_is_compiled_at_llvm_level_1(fresh_options):
    """The random-effects solve (most of a first fit's compile is LLVM on its kernels) asks for
    ``large=True``; a model without random effects keeps the default level. Built only: the
    options are recorded where ``_solve_program`` asks for them, nothing is compiled."""
    import autohess as ah

    asked = []
    fresh_options.setattr(_fit, "compiler_options", lambda **kw: asked.append(kw) or None)
    data = {"y": np.array([1.0, 2.0, 0.0, 3.0]), "g": np.array([0, 0, 1, 1])}

    def loglik(p, d):
        eta = p["a"] + p["b"][d["g"]]
        return d["y"] * eta - jnp.exp(eta)

    mixed = ah.Model(loglik, data, params={"a": 0.0, "sd": ah.Positive(1.0)},
                     random={"b": ah.Normal(sd="sd", groups="g")})
    plain = ah.Model(lambda p, d: d["y"] * p["a"] - jnp.exp(p["a"]), data, params={"a": 0.0})
    _fit._solve_program(mixed, "trust-region", 10, None)
    _fit._solve_program(plain, "trust-region", 10, None)
    assert asked == [{"large": True}, {"large": False}]


def test_untested_jaxlib_probes_the_options_first(fresh_options):
    """Outside the tested jaxlib versions an option XLA does not know is found on a trivial
    program and dropped (it would fail every fit); a known one is kept."""
    fresh_options.setattr(_config, "_TESTED_JAXLIB", ())
    assert _config._accepted((("xla_cpu_use_fusion_emitters", False),))
    assert not _config._accepted((("xla_autohess_no_such_option", False),))


def test_bse_on_the_host_equals_the_compiled_square_root():
    """``bse`` is computed on the host now: the same numbers as ``jnp.sqrt(jnp.diagonal(cov))``
    (reference: the compiled expression; equal to the last bit, both are one IEEE square root),
    NaN for a negative or NaN variance, batched covariances included, and the traced path under
    ``jit`` unchanged."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((3, 4, 4))
    cov = A @ np.swapaxes(A, -1, -2)
    cov[1, 2, 2] = -1.0
    cov[2, 0, 0] = np.nan
    expected = np.asarray(jnp.sqrt(jnp.diagonal(jnp.asarray(cov), axis1=-2, axis2=-1)))
    for c, e in ((cov, expected), (cov[0], expected[0])):
        got = _fit._sqrt_diag(jnp.asarray(c))
        assert isinstance(got, jax.Array) and got.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(got), e)
    assert np.isnan(expected[1, 2]) and np.isnan(expected[2, 0])
    np.testing.assert_array_equal(np.asarray(jax.jit(_fit._sqrt_diag)(jnp.asarray(cov))), expected)


def _inverse_before(matrix, keep):
    """``restricted_inverse`` as it was, with ``jnp.linalg.inv`` (the reference below)."""
    p = matrix.shape[0]
    both = keep[:, None] & keep[None, :]
    inv = jnp.linalg.inv(jnp.where(both, matrix, jnp.eye(p, dtype=matrix.dtype)))
    inv = 0.5 * (inv + inv.T)
    good = keep & (jnp.diag(inv) > 0) & jnp.isfinite(jnp.diag(inv))
    return jnp.where(good[:, None] & good[None, :], inv, jnp.nan)


def test_restricted_inverse_equals_jnp_linalg_inv_and_traces_no_linear_solve():
    """``restricted_inverse`` by LU and two triangular solves (no ``custom_linear_solve``,
    whose tracing and lowering every fresh process's covariance program paid) gives what
    ``jnp.linalg.inv`` gave, bit for bit (reference: the previous code; the same LAPACK
    factorisation and solves, so no tolerance): positive definite, indefinite, singular, NaN
    and all-zero matrices, masks with removed parameters, alone and under ``vmap``."""
    from jax.extend import core

    from autohess._covariance import restricted_inverse

    rng = np.random.default_rng(16)
    mats, keeps = [], []
    for p in (1, 3, 12):
        for kind in range(6):
            A = rng.standard_normal((p, p))
            m = A @ A.T if kind % 2 == 0 else A + A.T
            if kind == 2 and p > 1:
                m[0] = m[-1]
                m[:, 0] = m[:, -1]  # singular
            if kind == 3:
                m[0, 0] = np.nan
            if kind == 5:
                m[:] = 0.0
            keep = rng.random(p) < 0.8 if kind in (1, 4) else np.ones(p, bool)
            got = jax.jit(restricted_inverse)(jnp.asarray(m), jnp.asarray(keep))
            np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.jit(_inverse_before)(m, keep)))
            if p == 12:
                mats.append(m)
                keeps.append(keep)
    batched = jax.jit(jax.vmap(restricted_inverse))(jnp.asarray(np.stack(mats)), jnp.asarray(np.stack(keeps)))
    np.testing.assert_array_equal(np.asarray(batched),
                                  np.asarray(jax.jit(jax.vmap(_inverse_before))(np.stack(mats), np.stack(keeps))))

    def primitives(jaxpr, out):
        for eqn in jaxpr.eqns:
            out.add(eqn.primitive.name)
            for sub in core.jaxprs_in_params(eqn.params):
                primitives(sub, out)
        return out

    p = 4
    x, h = jnp.zeros(p), jnp.eye(p)
    lo, hi = jnp.full(p, -jnp.inf), jnp.full(p, jnp.inf)
    traced = _inference._covariance_program().trace(x, jnp.zeros(()), x, h, lo, hi, None, None, None, None,
                                              cov_types=("hessian",), n_groups=None, df_correction=None,
                                              scale=jnp.ones(()))
    assert "custom_linear_solve" not in primitives(traced.jaxpr.jaxpr, set())
