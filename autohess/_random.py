"""Distributions of random effects: what ``Model(..., random={...})`` integrates out.

A declaration (``Normal``, ``MultivariateNormal``, ``Latent``) names the parameters and the data
entry it uses; ``resolve`` checks those against the model's parameters and data once, on the
host, and returns a ``Block``: the random effect's shape, its log density (per group), a sampler
and the grouping codes that make the inner Hessian block-diagonal (see ``_laplace``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RandomEffect", "Normal", "MultivariateNormal", "Latent", "Block", "resolve_random", "corr_cholesky"]

_LOG_2PI = math.log(2.0 * math.pi)
#: largest q whose triangular solve is written out as arithmetic (q(q+1)/2 operations)
_UNROLLED_Q = 6


class RandomEffect:
    """Base class of random-effect declarations (``random={"b": ah.Normal(...)}``)."""

    def resolve(self, name: str, params: dict, data: Any) -> "Block":  # pragma: no cover - abstract
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Block:
    """One resolved random effect.

    ``shape``: the shape ``params[name]`` has inside ``loglik`` (``(G,)``, ``(G, q)`` or a
    ``Latent``'s own); ``groups``: the data entry whose integer codes assign observations to
    the ``G`` levels (``None`` for a ``Latent``); ``q``: coefficients per level;
    ``logdensity(u, params) -> (G,)``: the log density of each level's coefficients ``u`` of shape
    ``(G, q)`` (a ``Latent``: ``G = 1``, ``q`` its size); ``sample(key, params) -> (G, q)``
    (``None`` where the declaration cannot draw); ``parameters``: the parameter names it uses.
    """

    name: str
    shape: tuple
    n_levels: int
    q: int
    groups: Optional[str]
    logdensity: Callable[[jax.Array, Any], jax.Array]
    sample: Optional[Callable[[jax.Array, Any], jax.Array]]
    parameters: tuple
    kind: str

    @property
    def size(self) -> int:
        return self.n_levels * self.q

    def to_user(self, u: jax.Array) -> jax.Array:
        """``(G, q)`` coefficients -> the shape ``loglik`` sees."""
        return u.reshape(self.shape)

    def from_user(self, b: jax.Array) -> jax.Array:
        return jnp.reshape(b, (self.n_levels, self.q))


def _param_leaf(params: dict, key: str, owner: str, what: str) -> Any:
    if not isinstance(key, str):
        raise TypeError(f"{owner}: {what} must name a parameter (a string key of params), got {key!r}")
    if key not in params:
        raise ValueError(
            f"{owner}: {what}={key!r} is not a parameter; params has {sorted(map(str, params))}. "
            f"Declare it, e.g. params={{..., {key!r}: ah.Positive(1.0)}}"
        )
    return params[key]


def _group_codes(data: Any, groups: str, owner: str) -> tuple[int, np.ndarray]:
    """``G`` and the codes of data entry ``groups`` (integers ``0..G-1``)."""
    if not isinstance(groups, str):
        raise TypeError(f"{owner}: groups must name an integer data entry (a string key of data), got {groups!r}")
    if not isinstance(data, dict) or groups not in data:
        have = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{owner}: groups={groups!r} is not an entry of data (data has {have}). Put the group "
            f"codes in data, e.g. data[{groups!r}] = integer codes 0..G-1 per observation"
        )
    codes = np.asarray(data[groups])
    if codes.ndim != 1:
        raise ValueError(f"{owner}: data[{groups!r}] must be one integer code per observation, shape (N,); got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        hint = ""
        if np.issubdtype(codes.dtype, np.floating) and codes.size and np.all(codes == np.round(codes)):
            hint = f" (whole numbers stored as floats: pass data[{groups!r}].astype(int))"
        elif codes.dtype.kind in "OUS":
            hint = f" (labels: turn them into codes, e.g. codes, levels = pandas.factorize(data[{groups!r}]))"
        raise TypeError(f"{owner}: data[{groups!r}] must hold integer group codes 0..G-1, got dtype {codes.dtype}{hint}")
    if codes.size == 0:
        raise ValueError(f"{owner}: data[{groups!r}] is empty")
    if codes.min() < 0:
        raise ValueError(
            f"{owner}: data[{groups!r}] has negative codes (first {int(codes[np.argmax(codes < 0)])} at "
            f"observation {int(np.argmax(codes < 0))}); group codes must be 0..G-1"
        )
    return int(codes.max()) + 1, codes


def _scalar_or_vector(leaf: Any, q: int) -> tuple:
    from ._transforms import Transform

    value = leaf.init if isinstance(leaf, Transform) else leaf
    return np.shape(value)


def corr_cholesky(z: jax.Array, q: int) -> jax.Array:
    """Cholesky factor ``L`` (``q x q``, unit row norms) of the correlation matrix whose canonical
    partial correlations are ``z`` (length ``q(q-1)/2``, each in ``(-1, 1)``, row-major order of
    the strict lower triangle: ``(1,0), (2,0), (2,1), ...``). Any ``z`` in the open cube gives a
    valid correlation matrix; for ``q = 2``, ``z`` is the correlation itself."""
    z = jnp.reshape(z, (-1,))
    rows = []
    k = 0
    for i in range(q):
        row = []
        remaining = jnp.ones((), z.dtype)  # 1 - sum of squares so far in this row
        for j in range(i):
            entry = z[k] * jnp.sqrt(remaining)
            row.append(entry)
            remaining = remaining - entry**2
            k += 1
        row.append(jnp.sqrt(remaining))
        row.extend([jnp.zeros((), z.dtype)] * (q - i - 1))
        rows.append(jnp.stack(row))
    return jnp.stack(rows)


@dataclasses.dataclass(frozen=True)
class Normal(RandomEffect):
    """``b[g] ~ N(0, sd^2)`` independently for each level ``g = 0..G-1`` of ``data[groups]``.

    Args:
        sd: name of a scalar parameter (declare it ``ah.Positive(...)``): the standard deviation.
        groups: name of an integer data entry, one code ``0..G-1`` per observation. ``G`` is the
            largest code + 1; a level without observations is allowed (its mode is 0 and it adds
            nothing to the marginal likelihood).

    Inside ``loglik``, ``params[name]`` has shape ``(G,)``; index it with the codes:
    ``params["b"][data["herd"]]``.
    """

    sd: str
    groups: str

    def resolve(self, name: str, params: dict, data: Any) -> Block:
        owner = f"random[{name!r}] = ah.Normal(sd={self.sd!r}, groups={self.groups!r})"
        shape = _scalar_or_vector(_param_leaf(params, self.sd, owner, "sd"), 1)
        if shape != ():
            raise ValueError(f"{owner}: parameter {self.sd!r} must be a scalar standard deviation, got shape {shape}")
        G, _ = _group_codes(data, self.groups, owner)
        sd_name = self.sd

        def logdensity(u, params):
            sd = params[sd_name]
            return jnp.sum(-0.5 * (u / sd) ** 2 - jnp.log(sd) - 0.5 * _LOG_2PI, axis=-1)

        def sample(key, params):
            return params[sd_name] * jax.random.normal(key, (G, 1), dtype=jnp.result_type(params[sd_name], float))

        return Block(name, (G,), G, 1, self.groups, logdensity, sample, (sd_name,), "normal")


@dataclasses.dataclass(frozen=True)
class MultivariateNormal(RandomEffect):
    """``b[g] ~ N(0, D R D)`` (``q``-vectors), independently per level of ``data[groups]``.

    Args:
        sd: name of a ``(q,)`` parameter (``ah.Positive`` array): the standard deviations ``D``.
        corr: name of the correlation parameter: for ``q = 2`` a scalar (declare it
            ``ah.Interval(-1, 1, 0.0)``), the correlation; for ``q > 2`` a vector of
            ``q(q-1)/2`` canonical partial correlations, each ``ah.Interval(-1, 1, ...)``, in the
            row-major order of the strict lower triangle ``(1,0), (2,0), (2,1), (3,0), ...``
            (every value in ``(-1, 1)`` gives a valid correlation matrix; the first column's
            entries are plain correlations with coefficient 0; ``ah.corr_cholesky`` maps them).
            ``None``: independent coefficients (``R = I``).
        groups: name of an integer data entry, codes ``0..G-1``.

    Inside ``loglik``, ``params[name]`` has shape ``(G, q)``.
    """

    sd: str
    corr: Optional[str]
    groups: str

    def resolve(self, name: str, params: dict, data: Any) -> Block:
        owner = f"random[{name!r}] = ah.MultivariateNormal(sd={self.sd!r}, corr={self.corr!r}, groups={self.groups!r})"
        shape = _scalar_or_vector(_param_leaf(params, self.sd, owner, "sd"), 0)
        if len(shape) != 1 or shape[0] < 1:
            raise ValueError(f"{owner}: parameter {self.sd!r} must be a vector of q standard deviations, got shape {shape}")
        q = shape[0]
        if self.corr is not None:
            cshape = _scalar_or_vector(_param_leaf(params, self.corr, owner, "corr"), 0)
            want = q * (q - 1) // 2
            if q < 2:
                raise ValueError(f"{owner}: with q = 1 coefficient there is no correlation; pass corr=None or use ah.Normal")
            if int(np.prod(cshape)) != want or (q == 2 and cshape not in ((), (1,))) or (q > 2 and cshape != (want,)):
                raise ValueError(
                    f"{owner}: parameter {self.corr!r} has shape {cshape}; with q = {q} it must be "
                    + ("a scalar correlation" if q == 2 else f"a vector of q(q-1)/2 = {want} canonical partial correlations")
                )
        G, _ = _group_codes(data, self.groups, owner)
        sd_name, corr_name = self.sd, self.corr

        def chol(params):
            sd = params[sd_name]
            if corr_name is None:
                return jnp.diag(sd)
            return sd[:, None] * corr_cholesky(params[corr_name], q)

        def logdensity(u, params):
            L = chol(params)
            if q <= _UNROLLED_Q:
                # forward substitution in plain arithmetic: the outer Hessian of the Laplace
                # marginal differentiates this four times, and nested derivative rules of a
                # triangular solve compile to several times larger programs (sleepstudy slope
                # LMM: the joint density's Hessian compiled in 0.8 s with the solve)
                rows = []
                for i in range(q):
                    acc = u[:, i]
                    for k in range(i):
                        acc = acc - L[i, k] * rows[k]
                    rows.append(acc / L[i, i])
                z = jnp.stack(rows, axis=-1)
            else:
                z = jax.scipy.linalg.solve_triangular(L, u.T, lower=True).T  # (G, q)
            return -0.5 * jnp.sum(z**2, axis=-1) - jnp.sum(jnp.log(jnp.diagonal(L))) - 0.5 * q * _LOG_2PI

        def sample(key, params):
            L = chol(params)
            return jax.random.normal(key, (G, q), dtype=L.dtype) @ L.T

        used = (sd_name,) if corr_name is None else (sd_name, corr_name)
        return Block(name, (G, q), G, q, self.groups, logdensity, sample, used, "mvnormal")


@dataclasses.dataclass(frozen=True)
class Latent(RandomEffect):
    """A general latent block ``u`` of any shape with a log density you write.

    Args:
        shape: the shape of ``params[name]`` inside ``loglik``.
        logprior: ``logprior(u, params) -> scalar``, the joint log density of ``u`` given the
            parameters (written in ``jax.numpy``; include its normalising constants so
            ``res.llf`` is the full marginal log-likelihood), e.g. a random walk or AR(1) state.
        sample: optional ``sample(key, params) -> u`` drawing from that density (for a
            parametric bootstrap or a simulation study).

    The inner Hessian of a ``Latent`` block is dense (``size x size``): a few thousand entries
    at most.
    """

    shape: tuple
    logprior: Callable[[jax.Array, Any], jax.Array]
    sample: Optional[Callable[[jax.Array, Any], jax.Array]] = None

    def resolve(self, name: str, params: dict, data: Any) -> Block:
        owner = f"random[{name!r}] = ah.Latent(shape={self.shape!r}, ...)"
        try:
            shape = tuple(int(s) for s in (self.shape if isinstance(self.shape, (tuple, list)) else (self.shape,)))
        except (TypeError, ValueError):
            raise TypeError(f"{owner}: shape must be a tuple of integers, got {self.shape!r}") from None
        if any(s < 1 for s in shape):
            raise ValueError(f"{owner}: shape must have positive sizes, got {shape}")
        if not callable(self.logprior):
            raise TypeError(f"{owner}: logprior must be a function logprior(u, params) -> scalar")
        if self.sample is not None and not callable(self.sample):
            raise TypeError(f"{owner}: sample must be a function sample(key, params) -> u")
        size = int(np.prod(shape))
        user_logprior, user_sample = self.logprior, self.sample

        def logdensity(u, params):
            return jnp.reshape(user_logprior(u.reshape(shape), params), (1,))

        sample = None
        if user_sample is not None:
            def sample(key, params):
                return jnp.reshape(user_sample(key, params), (1, size))

        return Block(name, shape, 1, size, None, logdensity, sample, (), "latent")


def resolve_random(random: Any, params: Any, data: Any) -> tuple[Block, ...]:
    """Check ``random=`` against the declared parameters and the data; one ``Block`` each."""
    if not isinstance(random, dict) or not random:
        raise TypeError(
            "random must be a non-empty dict {name: distribution}, e.g. "
            "random={'b': ah.Normal(sd='sd', groups='herd')}; got " + type(random).__name__
        )
    if not isinstance(params, dict):
        raise TypeError(
            "with random=, params must be a dict (the random effects are added to it by name "
            f"inside loglik), got {type(params).__name__}"
        )
    blocks = []
    for name, dist in random.items():
        if not isinstance(name, str):
            raise TypeError(f"random effect names must be strings, got {name!r}")
        if name in params:
            raise ValueError(
                f"random effect {name!r} is also a key of params: a random effect is integrated out, "
                "not estimated; rename one of them"
            )
        if not isinstance(dist, RandomEffect):
            raise TypeError(
                f"random[{name!r}] must be a distribution (ah.Normal, ah.MultivariateNormal or "
                f"ah.Latent), got {type(dist).__name__}"
            )
        blocks.append(dist.resolve(name, params, data))
    return tuple(blocks)
