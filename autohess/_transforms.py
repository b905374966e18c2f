"""Parameter transforms: map an unconstrained real line onto a parameter's natural domain.

A transform is a declaration placed in a model's parameter pytree in place of an initial
value, e.g. ``{"beta": jnp.zeros(3), "sigma": ah.Positive(1.0)}``. Optimisers work on the
unconstrained scale ``u``; users, Hessians and standard errors see the natural scale
``x = forward(u)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.nn import log_sigmoid, sigmoid

from ._pandas import host_array

__all__ = ["Transform", "Real", "Positive", "Interval"]


def _as_init(init: Any) -> np.ndarray:
    arr = np.asarray(host_array(init, "initial value")[0])
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(f"initial value must be numeric, got {init!r} (dtype {arr.dtype})")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"initial value must be real, got complex dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class Transform:
    """Base class: a bijection from the real line onto a parameter's domain.

    Subclasses implement ``forward`` (unconstrained -> natural), ``inverse`` and
    ``log_abs_det_jacobian`` (of ``forward``, elementwise), plus ``in_domain``.
    """

    init: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "init", _as_init(self.init))

    domain: str = dataclasses.field(default="", init=False, repr=False)
    #: name of the inverse map, used to label the unconstrained scale ("log(sigma)").
    link: str = dataclasses.field(default="", init=False, repr=False)

    @property
    def bounds(self) -> tuple[float, float]:
        """``(lower, upper)`` of the natural domain (``-inf``/``inf`` where open)."""
        return (-np.inf, np.inf)

    def forward(self, u):
        raise NotImplementedError

    def inverse(self, x):
        raise NotImplementedError

    def log_abs_det_jacobian(self, u):
        raise NotImplementedError

    def in_domain(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, eq=False)
class Real(Transform):
    """An unconstrained parameter (the default for plain arrays).

    Example:
        >>> params = {"beta": ah.Real(jnp.zeros(3))}
    """

    domain: str = dataclasses.field(default="(-inf, inf)", init=False, repr=False)

    def forward(self, u):
        return u

    def inverse(self, x):
        return x

    def log_abs_det_jacobian(self, u):
        return jnp.zeros_like(u)

    def in_domain(self, x):
        return np.isfinite(x)


@dataclasses.dataclass(frozen=True, eq=False)
class Positive(Transform):
    """A strictly positive parameter, ``x = exp(u)``.

    The log scale is the one TMB and most MLE software use for variances and rates: it makes
    the likelihood closer to quadratic and keeps the optimiser off the boundary at 0.

    Example:
        >>> params = {"sigma": ah.Positive(1.0)}
    """

    domain: str = dataclasses.field(default="(0, inf)", init=False, repr=False)
    link: str = dataclasses.field(default="log", init=False, repr=False)

    @property
    def bounds(self) -> tuple[float, float]:
        return (0.0, np.inf)

    def forward(self, u):
        return jnp.exp(u)

    def inverse(self, x):
        return jnp.log(x)

    def log_abs_det_jacobian(self, u):
        return u

    def in_domain(self, x):
        return np.isfinite(x) & (x > 0)


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Interval(Transform):
    """A parameter in the open interval ``(lo, hi)``, ``x = lo + (hi - lo) * sigmoid(u)``.

    Example:
        >>> params = {"rho": ah.Interval(-1.0, 1.0, 0.0)}
    """

    lo: float = 0.0
    hi: float = 1.0

    def __init__(self, lo: float, hi: float, init: Any):
        for which, bound in (("lo", lo), ("hi", hi)):
            if np.ndim(bound) != 0 or isinstance(bound, (str, bytes)):
                raise TypeError(
                    f"Interval bounds must be scalars; {which} is {_describe_bound(bound)}. One pair "
                    "(lo, hi) serves every element of an array parameter; for different bounds per "
                    "element declare separate parameters, or Interval(0, 1, ...) and rescale inside "
                    "the log-likelihood"
                )
        lo_, hi_ = float(lo), float(hi)
        if not (np.isfinite(lo_) and np.isfinite(hi_) and lo_ < hi_):
            raise ValueError(
                f"Interval needs finite lo < hi, got lo={lo!r}, hi={hi!r}"
                " (use ah.Positive for a half-line)"
            )
        if not np.isfinite(hi_ - lo_):
            # forward() scales by hi - lo: an infinite width turns every value into inf or NaN,
            # and the fit would then blame the data
            raise ValueError(
                f"Interval({lo!r}, {hi!r}): the width hi - lo overflows float64. Bounds that wide "
                "do not constrain the parameter: declare it unconstrained (a plain number) or "
                "use bounds that describe its real range"
            )
        object.__setattr__(self, "lo", lo_)
        object.__setattr__(self, "hi", hi_)
        object.__setattr__(self, "init", _as_init(init))
        object.__setattr__(self, "domain", f"({lo_:g}, {hi_:g})")
        object.__setattr__(self, "link", "logit" if (lo_, hi_) == (0.0, 1.0) else f"logit[{lo_:g},{hi_:g}]")

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.lo, self.hi)

    def forward(self, u):
        return self.lo + (self.hi - self.lo) * sigmoid(u)

    def inverse(self, x):
        # log(x - lo) - log(hi - x) is the logit of the rescaled value without forming the
        # ratio, which loses digits near either end.
        return jnp.log(x - self.lo) - jnp.log(self.hi - x)

    def log_abs_det_jacobian(self, u):
        return np.log(self.hi - self.lo) + log_sigmoid(u) + log_sigmoid(-u)

    def in_domain(self, x):
        return np.isfinite(x) & (x > self.lo) & (x < self.hi)


def _describe_bound(bound: Any) -> str:
    shape = np.shape(bound) if not isinstance(bound, (str, bytes)) else None
    return f"a {type(bound).__name__}" + (f" of shape {shape}" if shape else f" {bound!r}")
