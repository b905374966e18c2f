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

def _iota(dtype, shape, dimension, **_):
    axis = [1] * len(shape)
    axis[dimension] = shape[dimension]
    return np.broadcast_to(np.arange(shape[dimension]).reshape(axis), shape).astype(dtype)


def _broadcast_in_dim(x, shape, broadcast_dimensions, **_):
    full = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        full[d] = x.shape[i]
    return np.broadcast_to(x.reshape(full), shape)


def _pad(x, value, padding_config, **_):
    if any(interior for _, _, interior in padding_config):
        return None
    # negative padding crops (the transpose of a slice in reverse mode is a pad; of a pad, a crop)
    x = x[tuple(slice(max(-int(lo), 0), n - max(-int(hi), 0)) for (lo, hi, _), n in zip(padding_config, x.shape))]
    return np.pad(x, [(max(int(lo), 0), max(int(hi), 0)) for lo, hi, _ in padding_config], constant_values=value)


def _select_n(which, *cases):
    return np.where(which, cases[1], cases[0]) if which.dtype == bool and len(cases) == 2 else np.choose(which, cases)


#: numpy versions of the primitives that build and slice the basis, run at trace time when all
#: their inputs are known constants. In numpy, not ``jax.ensure_compile_time_eval``: each eager
#: JAX op compiles a small program of its own the first time it runs in a process, a cost on
#: every first fit (issue #16 part 2); anything missing here is simply not folded
_FOLD = {
    "iota": lambda **p: _iota(**p),
    "eq": lambda a, b, **_: a == b, "ne": lambda a, b, **_: a != b, "lt": lambda a, b, **_: a < b,
    "gt": lambda a, b, **_: a > b, "le": lambda a, b, **_: a <= b, "ge": lambda a, b, **_: a >= b,
    "and": lambda a, b, **_: a & b, "or": lambda a, b, **_: a | b, "not": lambda a, **_: ~a,
    "add": lambda a, b, **_: a + b, "add_any": lambda a, b, **_: a + b, "sub": lambda a, b, **_: a - b,
    "mul": lambda a, b, **_: a * b, "neg": lambda a, **_: -a,
    "convert_element_type": lambda a, new_dtype, **_: a.astype(new_dtype),
    "split": lambda a, sizes, axis, **_: np.split(a, np.cumsum(sizes)[:-1], axis=axis),
    "slice": lambda a, start_indices, limit_indices, strides, **_: a[tuple(
        slice(i, j, None if strides is None else k) for i, j, k in zip(start_indices, limit_indices, strides or start_indices))],
    "reshape": lambda a, new_sizes, dimensions=None, **_: None if dimensions else a.reshape(new_sizes),
    "squeeze": lambda a, dimensions, **_: np.squeeze(a, axis=tuple(dimensions)),
    "expand_dims": lambda a, dimensions, **_: np.expand_dims(a, tuple(dimensions)),
    "broadcast_in_dim": lambda a, **p: _broadcast_in_dim(a, **p),
    "transpose": lambda a, permutation, **_: np.transpose(a, permutation),
    "concatenate": lambda *xs, dimension, **_: np.concatenate(xs, axis=dimension),
    "select_n": lambda which, *cases, **_: _select_n(which, *cases),
    "pad": lambda a, v, **p: _pad(a, v, **p),
    "rev": lambda a, dimensions, **_: np.flip(a, axis=tuple(dimensions)),
    "copy": lambda a, **_: a, "copy_p": lambda a, **_: a,
    "reduce_sum": lambda a, axes, **_: np.sum(a, axis=tuple(axes)),
}


def _fold(eqn, ins):
    """The outputs of ``eqn`` computed in numpy from known inputs, or None (not foldable, too
    large, or not what the jaxpr says: then it is bound as traced)."""
    fn = _FOLD.get(eqn.primitive.name)
    if fn is None or any(np.prod(o.aval.shape, dtype=np.int64) > _MAX_FOLD for o in eqn.outvars):
        return None
    try:
        res = fn(*[i.val for i in ins], **eqn.params)
    except (TypeError, ValueError):
        return None
    if res is None:
        return None
    res = list(res) if eqn.primitive.multiple_results else [res]
    outs = []
    for r, v in zip(res, eqn.outvars):
        r = np.asarray(r)
        if r.shape != tuple(v.aval.shape):
            return None
        outs.append(_Known(r.astype(v.aval.dtype)))
    return outs

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
        if outs is None and ins and all(isinstance(i, _Known) for i in ins) or (outs is None and name == "iota"):
            outs = _fold(eqn, ins)
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
