"""PRNG keys per member, and the data sets the bootstrap and the simulation study draw from them.

One key per member (``key_data``: a key or an integer seed split into ``n``; the raw ``uint32``
key data are what a batch carries, and ``wrap`` makes a key of one row inside the compiled
program). From a member's key: multinomial frequency weights (the nonparametric bootstrap, also
of a weighted fit), a circular moving-block resample (``_block_resample``) or a simulated data
set (``simulated``: the model's ``simulate``, checked once on the host by ``check_simulate``,
including that it uses its key).

``resampling_problem`` answers whether resampling observations respects a model: replacing
the other observations' data must leave an observation's contribution unchanged, at the
estimate and at a perturbed point; a recursion over time or a pooled statistic does not, and
is named.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ._config import compiler_options
from ._model import Model
from ._validation import _display_name

__all__ = ["check_simulate", "key_data", "no_spread_message", "resampling_problem", "simulated", "wrap"]

def key_data(key: Any, n: int, minimum: int = 1, why: str = "") -> jax.Array:
    """``n`` independent keys as raw ``uint32`` data (rows pad and slice like any array)."""
    if key is None:
        raise ValueError("a PRNG key is needed: pass key=jax.random.key(seed) (or an int seed)")
    if isinstance(key, (bool, np.bool_, str, bytes)):
        raise TypeError(f"key must be a PRNG key (jax.random.key(seed)) or an integer seed, got {key!r}")
    if isinstance(key, (int, np.integer)):
        try:
            key = jax.random.key(int(key))
        except OverflowError:
            raise ValueError(f"key: the integer seed {key} does not fit in 64 bits; use a smaller seed") from None
    elif not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        raw = jnp.asarray(key)
        # raw key data are unsigned 32-bit words (jax.random.PRNGKey's old style); a float such
        # as 0.5 would be cast to the word 0 silently, a seed the user never chose
        if not (jnp.issubdtype(raw.dtype, jnp.unsignedinteger) and raw.ndim >= 1):
            raise TypeError(
                f"key must be a PRNG key (jax.random.key(seed)), raw key data (uint32) or an integer "
                f"seed, got {type(key).__name__} with dtype {raw.dtype} and shape {raw.shape}"
            )
        try:
            key = jax.random.wrap_key_data(raw.astype(jnp.uint32))
        except (TypeError, ValueError) as e:
            raise TypeError(f"key: {raw.shape} uint32 words are not the data of one PRNG key ({e})") from None
    if key.shape != ():
        raise ValueError(f"key must be a single PRNG key, got an array of keys with shape {key.shape}")
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"n must be a positive integer number of replicates >= {minimum}{why}, got {n!r}")
    return jax.random.key_data(jax.random.split(key, int(n)))


def wrap(raw: jax.Array) -> jax.Array:
    return jax.random.wrap_key_data(raw)


def check_simulate(model: Model, params: Any) -> None:
    """The model's ``simulate`` must return data shaped exactly like the model's data."""
    if model.simulate_fn is None:
        raise ValueError(
            f"model {model.name!r} has no simulate function: pass simulate=... to ah.Model "
            "(parametric bootstrap and simulation studies draw data from it)"
        )
    out = jax.eval_shape(model.simulate_fn, jax.random.key(0), params, model.data)
    want = jax.eval_shape(lambda d: d, model.data)
    if jax.tree_util.tree_structure(out) != jax.tree_util.tree_structure(want):
        raise ValueError(
            f"simulate returned data with structure {jax.tree_util.tree_structure(out)}; the "
            f"model's data has {jax.tree_util.tree_structure(want)}"
        )
    narrowed = []
    for (path, got), ref in zip(jax.tree_util.tree_flatten_with_path(out)[0], jax.tree_util.tree_leaves(want)):
        if got.shape != ref.shape:
            raise ValueError(f"simulate returned an array of shape {got.shape} where the model's data has {ref.shape}")
        if not jnp.issubdtype(ref.dtype, jnp.floating) and jnp.issubdtype(got.dtype, jnp.floating):
            narrowed.append(path)
    if narrowed:
        # integer data (codes, counts) stay integer, so simulated floats are cast back to them:
        # one draw, on the host, shows whether that cast would truncate
        draw = dict(jax.tree_util.tree_flatten_with_path(model.simulate_fn(jax.random.key(0), params, model.data))[0])
        for path in narrowed:
            v = np.asarray(draw[path])
            if not np.all(np.isfinite(v) & (v == np.round(v))):
                raise ValueError(
                    f"simulate returns non-integer values for {_display_name('data', path)}, which the "
                    "model holds as integers (integer data keep their dtype): return whole numbers "
                    "there, or give that data array as floats"
                )
    _check_simulate_uses_key(model, params)


#: keys drawn from before a run to see that ``simulate`` depends on its key: with 8, even a
#: single fair coin flip as the whole data set is refused wrongly with probability 2^-7
KEY_PROBES = 8


def _check_simulate_uses_key(model: Model, params: Any) -> None:
    """Refuse a ``simulate`` whose output does not depend on the key it is given.

    The draws are made as the run makes them, compiled and vmapped over keys: numpy's or
    Python's RNG inside ``simulate`` then runs once, when JAX traces it, and every replicate
    would be the same data set (a bootstrap SE of 1e-15, a coverage of 1.0). Called outside a
    trace such a ``simulate`` would vary, which is why the check must compile it."""
    raw = jax.random.key_data(jax.random.split(jax.random.key(20261201), KEY_PROBES))
    # run once: compiled without LLVM's optimiser (``compiler_options(once=True)``; a user's
    # ``jax.random.binomial`` alone took 2-7 s to compile with jaxlib's defaults)
    draws = jax.jit(jax.vmap(lambda k: simulated(model, k, params, model.data)),
                    compiler_options=compiler_options(once=True))(raw)
    if all(np.all(np.asarray(a) == np.asarray(a)[:1]) for a in jax.tree_util.tree_leaves(draws)):
        raise ValueError(
            f"model {model.name!r}: simulate returned identical data for {KEY_PROBES} different keys, "
            "so every replicate would be the same data set and the spread of the refits (a bootstrap "
            "SE, a coverage) would be meaningless. The likely cause is numpy's or Python's random "
            "number generator inside simulate (np.random..., random...): it runs once, when JAX "
            "traces simulate, and its draws become constants; a fixed jax.random.key(...) inside "
            "simulate does the same. Draw with jax.random from the key simulate receives (split it "
            "for several draws)."
        )


def no_spread_message(replicates: np.ndarray, what: str) -> Optional[str]:
    """A message when all usable replicates are the same numbers (``None`` otherwise)."""
    if replicates.shape[0] < 2 or not np.all(replicates == replicates[:1]):
        return None
    head = (
        f"all {replicates.shape[0]} usable {what} refits returned exactly the same estimates, so "
        "their spread (a standard error of 0) says nothing about uncertainty: "
    )
    if what.startswith(("parametric", "simulation")):
        return head + (
            "the simulated data sets did not move the estimates. Check that simulate draws with "
            "jax.random from the key it receives (numpy's or Python's random number generator, or "
            "a fixed key, inside simulate gives the same data every time) and that it redraws the "
            "data the log-likelihood reads"
        )
    return head + (
        "the resampled data sets did not move the estimates (the estimates do not depend on which "
        "observations are drawn). Use the fit's Wald standard errors, or a bootstrap kind that "
        "resamples what the estimates depend on"
    )


def simulated(model: Model, raw_key: jax.Array, params: Any, data: Any) -> Any:
    out = model.simulate_fn(wrap(raw_key), params, data)
    return jax.tree_util.tree_map(lambda a, r: jnp.asarray(a, r.dtype), out, data)


def _multinomial_weights(raw_key: jax.Array, n: int, dtype) -> jax.Array:
    draws = jax.random.randint(wrap(raw_key), (n,), 0, n)
    return jnp.zeros((n,), dtype).at[draws].add(1.0)


def _weighted_multinomial_weights(raw_key: jax.Array, w: jax.Array, total: int) -> jax.Array:
    """Counts of ``total`` draws from the rows with probabilities ``w / sum(w)``: resampling
    the data a frequency-weighted fit stands for (row ``i`` repeated ``w_i`` times)."""
    # conditional binomials over the N rows (row i gets Binomial(left, p_i / sum_{j>=i} p_j)),
    # exactly multinomial: time and memory follow N, never the number of draws sum(w) (drawing
    # each of the sum(w) units took 23 GiB for weights of 1e4 on 300 rows)
    return jax.random.multinomial(wrap(raw_key), jnp.asarray(total, w.dtype), w / jnp.sum(w), dtype=w.dtype)


def _block_resample(raw_key: jax.Array, data: Any, n: int, block_length: Any) -> Any:
    # position t lies in block t // L at offset t % L; n starts (enough for L = 1) are drawn so
    # that L may be a traced value: one compiled program serves every block length a user tries
    starts = jax.random.randint(wrap(raw_key), (n,), 0, n)
    t = jnp.arange(n)
    idx = (starts[t // block_length] + t % block_length) % n
    return jax.tree_util.tree_map(lambda a: a[idx] if a.ndim and a.shape[0] == n else a, data)


# ------------------------------------------------------------------------------------------
# Does resampling observations respect the model? (nonparametric bootstrap)
# ------------------------------------------------------------------------------------------
def _resample_data(data: Any, idx: np.ndarray, n: int) -> Any:
    return jax.tree_util.tree_map(lambda a: a[idx] if a.ndim and a.shape[0] == n else a, data)


def _check_points(model: Model, params: Any) -> list[tuple[str, Any]]:
    """The estimate, and a point a step away from it on the unconstrained scale.

    The estimate is where the bootstrap's refits live; the second point is there because a
    model's dependence can vanish at particular values (an AR coefficient of 0 makes a
    recursion look separable), and an estimate may sit on one."""
    spec = model.spec
    flat = spec.flatten(params, model.dtype)
    u = np.asarray(spec.to_unconstrained(flat), dtype=np.float64)
    sign = np.where(np.arange(u.size) % 2 == 0, 1.0, -1.0)
    # 0.1 (1 + |u|): a tenth of a unit on the scale the optimiser works on, far beyond rounding
    # yet close enough that the log-likelihood stays finite for ordinary models
    moved = np.where(np.isfinite(u), u + 0.1 * (1.0 + np.abs(u)) * sign, u)
    other = spec.unflatten(spec.to_natural(jnp.asarray(moved, model.dtype)))
    return [("the estimate", params), ("a perturbed point", other)]


def resampling_problem(model: Model, params: Any) -> Optional[str]:
    """``None`` if contribution ``i`` depends on observation ``i`` alone, else what was found.

    The nonparametric bootstrap reweights the contributions of the original data, which stands
    for refitting a resampled data set only when each contribution is a function of its own
    observation (and the parameters). This is tested directly: a fixed random half of the
    observations keeps its data while every other observation's data are replaced by those of
    an observation from the kept half; the kept half's contributions must not change. A
    recursion over time (a filter in ``lax.scan``, a lag made by shifting arrays: some kept
    observation's predecessor is replaced, whatever the lag) or a statistic pooled over
    observations (a mean of ``y``) changes them. Positions themselves may matter (a trend
    ``jnp.arange(N)`` inside the likelihood stays with its row, as under weights). Checked at
    the estimate and at a perturbed point (``_check_points``); one compiled program, reused.
    """
    n = model.nobs
    if n is None or n < 2:
        return None
    # fixed draws, so the check is reproducible; observation 0 is replaced and 1 kept, so that
    # some kept observation follows a replaced one whatever N
    rng = np.random.default_rng(0)
    kept = rng.random(n) < 0.5
    kept[:2] = [False, True]
    idx = np.arange(n)
    idx[~kept] = rng.choice(np.flatnonzero(kept), size=int((~kept).sum()))
    moved = _resample_data(model.data, idx, n)
    program = model.contributions_program()
    # a separable model repeats the same arithmetic on the same numbers for a kept
    # observation (equal up to a different blocking of reductions inside one contribution):
    # sqrt(eps) relative leaves room for that rounding, and a real dependence (a lag
    # coefficient above ~1e-8 times the data) is far larger
    tol = float(np.sqrt(np.finfo(model.dtype).eps))
    for where, point in _check_points(model, params):
        full = np.asarray(program(point, model.data), dtype=np.float64)
        if not np.all(np.isfinite(full)):
            continue  # outside the likelihood's domain (only the perturbed point can be): no test
        again = np.asarray(program(point, moved), dtype=np.float64)
        bad = kept & ~(np.abs(again - full) <= tol * (np.abs(full) + np.max(np.abs(full))))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            flat = np.asarray(model.spec.flatten(point, model.dtype))
            return (
                f"at {where} ({model.spec.describe(flat)}), replacing the data of {int((~kept).sum())} "
                f"of {n} observations by copies of others changed the contributions of "
                f"{int(bad.sum())} of the {int(kept.sum())} observations left as they were (the "
                f"first, observation {first}: {again[first]:.6g} instead of {full[first]:.6g})"
            )
    return None
