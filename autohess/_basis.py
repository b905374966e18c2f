"""Hessians without products by the identity: the tangent basis of ``jacfwd``/``jacrev`` folded.

``jax.jacfwd(grad f)`` pushes the ``p`` basis vectors (an identity matrix) through ``grad f``;
``jacrev`` pulls them back. Where the parameters first meet the data in a product
(``X @ beta``: every regression), the tangents' first operation is ``X @ I``, an ``N x p x p``
matrix product that XLA does not recognise as a copy (measured: it keeps the ``dot`` against
the constant identity). A regression's Hessian then costs two ``N x p x p`` products where the
closed form ``X' W X`` has one: ~2x the closed form in arithmetic, which is what separated the
exact Hessian from numpy's (issue #16: N = 10^6, p = 50).

``fold_basis(fn)`` traces ``fn`` to a jaxpr and evaluates it again with the structural
constants (the basis built from ``iota``, its slices and reshapes for each parameter leaf)
computed at trace time; a ``dot_general`` of a value with such a constant whose every column
holds at most one 1 (the identity, a parameter's block of it) becomes a gather of that value's
columns, zero where the column is empty. The gather is exact (a product by 1 plus zeros); the
Hessian agrees with the unfolded program to rounding (XLA may order the remaining sums
differently, e.g. 5e-16 relative). Everything else is bound as traced. Nested ``jit`` calls are inlined so a basis passed into one is seen there too.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore

__all__ = ["fold_basis"]

#: primitives whose outputs are computed at trace time when all their inputs are known
#: constants: what building and slicing the basis uses (cheap, shape-only or elementwise)
_FOLDABLE = frozenset({
    "iota", "eq", "ne", "convert_element_type", "split", "slice", "reshape", "squeeze",
    "expand_dims", "broadcast_in_dim", "transpose", "concatenate", "select_n", "add", "sub",
    "mul", "neg", "pad", "rev", "copy", "copy_p", "add_any", "and", "or", "not", "lt", "gt",
    "le", "ge",
})

#: largest constant (elements) folded at trace time: the basis of 1,000 parameters is 10^6;
#: beyond that a constant is left to XLA
_MAX_FOLD = 1 << 21

_INLINE = frozenset({"pjit", "jit", "closed_call", "core_call"})


def fold_basis(fn: Callable) -> Callable:
    """``fn`` with products by 0/1 selection constants (the tangent basis) replaced by gathers.

    ``fn`` takes and returns arrays (pytrees); the result equals ``fn``'s to rounding for
    finite values. Used inside ``jax.jit`` around Hessian computations.
    """

    def run(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        flat_args = jax.tree_util.tree_leaves(args)
        out = _eval(closed.jaxpr, [_Known.wrap(c) for c in closed.consts], [_Unknown(a) for a in flat_args])
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), [_value(o) for o in out])

    return run


class _Known:
    """A constant known at trace time (a numpy array)."""

    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val

    @staticmethod
    def wrap(c):
        # (the size from the shape: a large closed-over jax array is not copied to the host)
        if isinstance(c, jax.core.Tracer) or np.prod(np.shape(c), dtype=np.int64) > _MAX_FOLD:
            return _Unknown(c)
        return _Known(np.asarray(c))


class _Unknown:
    __slots__ = ("val",)

    def __init__(self, val):
        self.val = val


class _Concat:
    """A ``concatenate`` of known and traced parts, kept apart until something other than a
    slice within one part reads it. The natural-scale parameters are the per-leaf transforms
    of the unconstrained vector concatenated (``ParamSpec.to_natural``) and sliced again into
    leaves (``unflatten``): a ``Real`` leaf's block of the basis passes through unchanged, and
    is still recognised when a ``Positive`` leaf beside it made the concatenation traced."""

    __slots__ = ("parts", "axis", "_val")

    def __init__(self, parts, axis):
        self.parts, self.axis, self._val = parts, axis, None

    @property
    def val(self):
        if self._val is None:
            self._val = lax.concatenate([jnp.asarray(p.val) for p in self.parts], self.axis)
        return self._val

    def slice(self, start, limit):
        """The part that holds ``[start, limit)`` along every axis, sliced; None if the slice
        spans parts."""
        a = self.axis
        offset = 0
        for part in self.parts:
            size = np.shape(part.val)[a]
            if offset <= start[a] and limit[a] <= offset + size:
                lo, hi = list(start), list(limit)
                lo[a] -= offset
                hi[a] -= offset
                if isinstance(part, _Known):
                    return _Known(part.val[tuple(slice(i, j) for i, j in zip(lo, hi))])
                return _Unknown(lax.slice(part.val, lo, hi))
            offset += size
        return None


def _value(x):
    return x.val


def _read(env, v):
    if isinstance(v, jcore.Literal):
        return _Known(np.asarray(v.val, dtype=v.aval.dtype))  # (a float32 program's literals stay float32)
    return env[v]


def _eval(jaxpr, consts, args):
    env: dict = {}
    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        ins = [_read(env, v) for v in eqn.invars]
        name = eqn.primitive.name
        outs = None
        if name in _INLINE:
            sub = eqn.params["jaxpr"]
            outs = _eval(sub.jaxpr, [_Known.wrap(c) for c in sub.consts], ins)
        elif name == "dot_general":
            outs = _dot(eqn, ins)
        elif name == "concatenate" and any(isinstance(i, _Known) for i in ins) and not all(
            isinstance(i, _Known) for i in ins
        ):
            outs = [_Concat(ins, eqn.params["dimension"])]
        elif name == "slice" and isinstance(ins[0], _Concat) and eqn.params["strides"] in (None, (1,) * len(eqn.params["start_indices"])):
            piece = ins[0].slice(eqn.params["start_indices"], eqn.params["limit_indices"])
            outs = None if piece is None else [piece]
        if outs is None and name in _FOLDABLE and all(isinstance(i, _Known) for i in ins) and all(
            np.prod(o.aval.shape, dtype=np.int64) <= _MAX_FOLD for o in eqn.outvars
        ):
            with jax.ensure_compile_time_eval():
                res = eqn.primitive.bind(*[i.val for i in ins], **eqn.params)
            res = res if eqn.primitive.multiple_results else [res]
            outs = [_Known(np.asarray(r)) for r in res]
        if outs is None:
            bind_params = eqn.primitive.get_bind_params(eqn.params)
            with eqn.ctx.manager:
                res = eqn.primitive.bind(*[i.val for i in ins], **bind_params)
            res = res if eqn.primitive.multiple_results else [res]
            outs = [_Unknown(r) for r in res]
        for v, o in zip(eqn.outvars, outs):
            env[v] = o
    return [_read(env, v) for v in jaxpr.outvars]


def _selection(c: np.ndarray, contract: int):
    """For a 2-D constant whose ``contract`` axis is summed: ``(index, present)`` with column
    ``j`` of the other axis equal to the unit vector ``index[j]`` (``present``) or zero; None if
    ``c`` is not such a 0/1 selection."""
    if c.ndim != 2:
        return None
    m = np.moveaxis(c, contract, 0)  # (k, j)
    if not np.all((m == 0) | (m == 1)):
        return None
    counts = m.sum(axis=0)
    if np.any(counts > 1):
        return None
    return np.argmax(m, axis=0), counts == 1


def _dot(eqn, ins):
    """A ``dot_general`` by a selection constant as a gather, else None (bind as usual)."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if lb or rb or len(lc) != 1:
        return None
    lhs, rhs = ins
    out_dtype = eqn.outvars[0].aval.dtype
    for const, other, c_con, o_con, const_is_rhs in ((rhs, lhs, rc[0], lc[0], True), (lhs, rhs, lc[0], rc[0], False)):
        if not isinstance(const, _Known):
            continue
        sel = _selection(const.val, c_con)
        if sel is None:
            continue  # (data closed over as a constant: the other operand may be the basis)
        index, present = sel
        x = jnp.asarray(other.val)
        if x.dtype != out_dtype:
            return None
        # dot_general's output: lhs free axes (in order), then rhs free axes
        taken = jnp.take(x, jnp.asarray(index), axis=o_con)  # the selected axis stays at o_con
        if not present.all():
            shape = [1] * x.ndim
            shape[o_con] = len(present)
            taken = jnp.where(jnp.asarray(present).reshape(shape), taken, jnp.zeros((), out_dtype))
        if index.shape[0] == x.shape[o_con] and np.array_equal(index, np.arange(len(index))) and present.all():
            taken = x
        taken = jnp.moveaxis(taken, o_con, -1 if const_is_rhs else 0)
        return [_Unknown(taken)]
    return None
