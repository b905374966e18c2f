"""Exact Hessians through linear predictors: a regression's ``p`` tangent directions folded into
the few of its linear predictors, found in the log-likelihood's jaxpr.

A regression's log-likelihood meets its coefficients in products ``eta = X @ beta`` (the
design times a slice of the parameters) and is otherwise a function of each observation's own
row: ``c_i = c(eta_i, other parameters)``. Forward-over-reverse pushes all ``p`` basis vectors
through every elementwise operation after ``X @ beta`` (``N x p`` arithmetic per operation);
the closed forms (``X' diag(w) X``) push one per linear predictor. A Tobit's ``log_ndtr``
(tens of operations per observation, for each branch) made each solver pass ~3x the closed
form at p = 11 (issue #16: 10 passes of ~1.3 ms against a numpy Newton loop's ~0.4 ms).

``rowwise_value_grad_hess`` traces ``x -> contributions``, finds each ``dot_general`` of a
constant ``N x l`` matrix (data: independent of the parameters) with a 0/1 selection of the
parameters (a slice, reshape or transpose of ``x``: linear, with a constant Jacobian), and
checks that everything downstream of those products keeps row ``i`` of its output a function
of row ``i`` of its inputs (elementwise operations, reductions and concatenations along other
axes, ``take_along_axis``'s batched gather, and the same inside nested ``jit`` and custom-rule
calls). Then the second derivatives of the contributions with respect to each row's linear
predictors and the parameters used directly (a Tobit's ``sigma``) come from one
forward-over-reverse pass with one tangent per predictor column and per direct parameter, all
rows at once (the ``ones`` tangent along the observations gives each row its own derivative,
because row ``i`` depends on its own predictors only), and are mapped to the parameters by
``X' diag(.) X`` products. Exact: the same derivatives by the chain rule, equal to the direct
Hessian to rounding. Anything it does not recognise (a recursion, a reduction over the
observations, a scan, a gather across rows, predictors that are not a selection of the
parameters) returns None, and the caller differentiates as before.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from ._basis import _FOLD
from ._derivatives import _symmetrize
from ._rules import with_cheap_rules

__all__ = ["rowwise_value_grad_hess"]

#: a single predictor with every parameter in it (a GLM) and fewer operations than this on its
#: rows keeps forward-over-reverse: with the basis folded (``fold_basis``) its pass is the
#: closed form's arithmetic plus ``p`` tangents through a few cheap operations, and XLA laid
#: the solver's loop out better for it (the zoo's logistic, 9 operations, and Poisson, 5: solves
#: ~10% slower through the predictor, where ``X' W X`` went to a YNNPACK fusion; the README's
#: logistic, 12: equal; a probit's ``norm.logcdf``, 90: 0.86x the fit's CPU time)
FEW_OPS = 20

#: primitives that act elementwise (operands of the output's shape, or scalars)
_ELEMENTWISE = frozenset("""
add sub mul div neg exp exp2 log log1p expm1 tanh logistic sqrt rsqrt cbrt pow integer_pow square
abs sign max min select_n erf erfc erf_inv lgamma digamma igamma igammac polygamma zeta ne eq lt gt
le ge and or not xor is_finite convert_element_type stop_gradient sin cos tan asin acos atan atan2
sinh cosh asinh acosh atanh floor ceil round clamp rem nextafter copy copy_p bessel_i0e bessel_i1e
""".split())

#: primitives whose sub-jaxpr is the computation (checked recursively); for custom derivative
#: rules the rule is taken to share its function's structure (it differentiates it)
_CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr", "custom_vjp_call_jaxpr": "fun_jaxpr"}

#: structural primitives through which the product by a 0/1 selection of the parameters stays one
_SELECT = frozenset({"slice", "reshape", "squeeze", "expand_dims", "transpose", "convert_element_type",
                     "copy", "copy_p"})

_REDUCE = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin",
                     "reduce_and", "reduce_or"})


def _sub_jaxpr(eqn):
    key = _CALLS.get(eqn.primitive.name)
    if key is None or key not in eqn.params:
        return None
    sub = eqn.params[key]
    return sub.jaxpr if hasattr(sub, "jaxpr") else sub


def _keeps_rows(eqn, row_in: list, n: int) -> bool:
    """Whether ``eqn``, some of whose inputs are row-wise (``row_in``), gives outputs whose row
    ``i`` depends on row ``i`` of those inputs alone (and on anything of the others)."""
    name = eqn.primitive.name
    p = eqn.params
    ins = [v.aval for v in eqn.invars]
    outs = [v.aval for v in eqn.outvars]
    if any(len(o.shape) == 0 or o.shape[0] != n for o in outs):
        return False
    r = next(a for a, flag in zip(ins, row_in) if flag)
    if name in _ELEMENTWISE:
        # (operands of the output's rank broadcast along their size-1 axes; a row-wise one must
        # keep its rows)
        shape = outs[0].shape
        return all(
            a.shape == () or (len(a.shape) == len(shape) and all(d in (1, s) for d, s in zip(a.shape, shape))
                              and (not flag or a.shape[0] == n))
            for a, flag in zip(ins, row_in)
        )
    if name == "broadcast_in_dim":
        return tuple(p["broadcast_dimensions"])[:1] == (0,) and r.shape[0] == n
    if name == "reshape":
        return p.get("dimensions") is None and r.shape[0] == n
    if name in ("squeeze", "expand_dims", "rev"):
        return 0 not in tuple(p["dimensions"])
    if name == "transpose":
        return tuple(p["permutation"])[0] == 0
    if name in _REDUCE:
        return 0 not in tuple(p["axes"])
    if name in ("cumsum", "cumlogsumexp", "cumprod", "cummax", "cummin"):
        return p["axis"] != 0
    if name == "concatenate":
        return p["dimension"] != 0
    if name == "slice":
        return p["start_indices"][0] == 0 and p["limit_indices"][0] == n and (p["strides"] is None or p["strides"][0] == 1)
    if name == "pad":
        return tuple(p["padding_config"][0]) == (0, 0, 0)
    if name == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        if lb or rb:
            return tuple(lb)[:1] == (0,) and tuple(rb)[:1] == (0,)
        return row_in[0] and not row_in[1] and 0 not in tuple(lc)
    if name == "gather":
        # take_along_axis: operand and indices batched along the rows, output rows from the indices'
        dn = p["dimension_numbers"]
        return (row_in[0] and not row_in[1] and tuple(dn.operand_batching_dims) == (0,)
                and tuple(dn.start_indices_batching_dims) == (0,) and 0 not in tuple(dn.offset_dims))
    return False


def _walk(jaxpr, row: dict, n: int, count: list, skip: frozenset = frozenset()) -> bool:
    """Mark in ``row`` the variables of ``jaxpr`` that are row-wise functions of those already
    marked (nested calls followed); False if some operation mixes rows. ``count[0]`` counts the
    operations on rows; equations whose first output is in ``skip`` are passed over."""
    for eqn in jaxpr.eqns:
        if skip and eqn.outvars and eqn.outvars[0] in skip:
            continue
        flags = [not isinstance(v, jcore.Literal) and row.get(v, False) for v in eqn.invars]
        if not any(flags):
            continue
        sub = _sub_jaxpr(eqn)
        if sub is not None:
            # (a custom_jvp_call's operands are its function's; custom_vjp_call's may lead with
            # residual consts: match from the end)
            k = len(sub.invars)
            if k > len(flags) or any(flags[: len(flags) - k]):
                return False
            out = _rows(sub, flags[len(flags) - k:], n, count)
            if out is None:
                return False
            for v, f in zip(eqn.outvars, out):
                row[v] = f
            continue
        if not _keeps_rows(eqn, flags, n):
            return False
        count[0] += 1
        for v in eqn.outvars:
            row[v] = True
    return True


def _rows(jaxpr, row_in: list, n: int, count: list) -> Optional[list]:
    """Which outputs of ``jaxpr`` are row-wise functions of its row-wise inputs (``row_in``);
    None if some operation mixes rows. ``count[0]`` counts the operations on rows."""
    row = {v: flag for v, flag in zip(jaxpr.invars, row_in)}
    if not _walk(jaxpr, row, n, count):
        return None
    return [not isinstance(v, jcore.Literal) and row.get(v, False) for v in jaxpr.outvars]


class _Structure:
    """Where the parameters enter a jaxpr of ``x -> contributions``: the predictor products
    (their equations, selection indices ``(l, k)`` into ``x``) and the coordinates of ``x``
    used otherwise (``direct``)."""

    def __init__(self, index_eqns: dict, direct: np.ndarray, ops: int):
        self.index_eqns = index_eqns  # eqn id -> (eqn, index (l, k) array, k or None for a vector)
        self.direct = direct
        self.ops = ops  # operations on the rows after the products


def _analyse(jaxpr, p: int, n: int) -> Optional[_Structure]:
    (x,) = jaxpr.invars
    sel = {x: np.arange(p)}  # var -> the positions of x it holds (a selection of x)
    dep = {x}  # vars that depend on x
    index_eqns = {}
    direct = np.zeros(p, bool)
    for eqn in jaxpr.eqns:
        invars = [v for v in eqn.invars if not isinstance(v, jcore.Literal)]
        if not any(v in dep for v in invars):
            continue
        name = eqn.primitive.name
        if name in _SELECT and len(eqn.invars) == 1 and eqn.invars[0] in sel:
            src = sel[eqn.invars[0]]
            if name == "convert_element_type" and eqn.params["new_dtype"] != eqn.invars[0].aval.dtype:
                direct[src.ravel()] = True
            else:
                try:
                    out = _FOLD[name](src, **eqn.params)
                except (TypeError, ValueError, KeyError):
                    out = None
                if out is not None and np.shape(out) == tuple(eqn.outvars[0].aval.shape):
                    sel[eqn.outvars[0]] = np.asarray(out).astype(np.int64)
                else:
                    direct[src.ravel()] = True
            dep.update(eqn.outvars)
            continue
        if name == "dot_general" and _is_index(eqn, sel, dep, n):
            idx = sel[eqn.invars[1]]
            index_eqns[id(eqn)] = (eqn, idx if idx.ndim == 2 else idx[:, None], None if idx.ndim == 1 else idx.shape[1])
            dep.update(eqn.outvars)
            continue
        for v in invars:
            if v in sel:
                direct[sel[v].ravel()] = True
        dep.update(eqn.outvars)
    for v in jaxpr.outvars:
        if not isinstance(v, jcore.Literal) and v in sel:
            direct[sel[v].ravel()] = True
    if not index_eqns:
        return None
    # the predictors' rows must stay rows down to the contributions
    etas = {eqn.outvars[0] for eqn, _, _ in index_eqns.values()}
    ops = _rows_from(jaxpr, etas, n)
    if ops is None:
        return None
    return _Structure(index_eqns, np.flatnonzero(direct), ops)


def _rows_from(jaxpr, etas: set, n: int) -> Optional[int]:
    """The number of operations on the predictors' rows down to the contributions (nested
    calls counted through), or None if one mixes rows."""
    count = [0]
    if not _walk(jaxpr, {v: True for v in etas}, n, count, skip=frozenset(etas)):
        return None
    (out,) = jaxpr.outvars
    return count[0] if isinstance(out, jcore.Literal) or tuple(out.aval.shape) == (n,) else None


def _is_index(eqn, sel, dep, n) -> bool:
    """``X @ s`` with ``X`` a constant ``(n, l)`` matrix and ``s`` a selection of ``x`` of
    shape ``(l,)`` or ``(l, k)``, contracted over ``l``."""
    lhs, rhs = eqn.invars
    if isinstance(lhs, jcore.Literal) or isinstance(rhs, jcore.Literal) or lhs in dep or rhs not in sel:
        return False
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    return (not lb and not rb and tuple(lc) == (1,) and tuple(rc) == (0,) and len(lhs.aval.shape) == 2
            and lhs.aval.shape[0] == n and len(rhs.aval.shape) in (1, 2)
            and lhs.aval.dtype == rhs.aval.dtype == eqn.outvars[0].aval.dtype)


def _eval(jaxpr, consts, x, etas: Optional[dict], index_eqns: dict, designs: Optional[dict] = None):
    """Evaluate ``jaxpr`` at ``x``; the predictor products take the values in ``etas`` (by
    equation id) where given, and their designs are recorded in ``designs``."""
    env = {}
    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    env[jaxpr.invars[0]] = x
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        hit = index_eqns.get(id(eqn))
        if hit is not None:
            if designs is not None:
                designs[id(eqn)] = ins[0]
                if len(designs) == len(index_eqns):
                    return None  # (the designs are all that was asked for)
            if etas is not None:
                env[eqn.outvars[0]] = etas[id(eqn)]
                continue
        bind_params = eqn.primitive.get_bind_params(eqn.params)
        with eqn.ctx.manager:
            res = eqn.primitive.bind(*ins, **bind_params)
        res = res if eqn.primitive.multiple_results else [res]
        for v, r in zip(eqn.outvars, res):
            env[v] = r
    return read(jaxpr.outvars[0])


def rowwise_value_grad_hess(contributions: Callable, p: int, n: int, dtype: Any, weights: Any = None,
                            scale: Any = None) -> Optional[Callable]:
    """``x -> (f, grad f, Hessian)`` of ``f(x) = -sum(w * contributions(x)) / scale`` through
    its linear predictors (module docstring), or None where the structure is not recognised.

    ``contributions``: ``x (p,) -> (n,)``, traced here once (at the caller's trace time)."""
    closed = jax.make_jaxpr(with_cheap_rules(contributions))(jax.ShapeDtypeStruct((p,), dtype))
    jaxpr = closed.jaxpr
    if len(jaxpr.invars) != 1 or len(jaxpr.outvars) != 1 or tuple(jaxpr.outvars[0].aval.shape) != (n,):
        return None
    structure = _analyse(jaxpr, p, n)
    if structure is None:
        return None
    index_eqns = structure.index_eqns
    direct = structure.direct
    q = sum(idx.shape[1] for _, idx, _ in index_eqns.values()) + len(direct)
    if q >= p:
        return None  # no fewer directions than the parameters themselves
    if q == 1 and structure.ops < FEW_OPS:
        return None  # forward-over-reverse through ``fold_basis`` is already the closed form's work

    consts = closed.consts
    keys = list(index_eqns)

    def objective(etas, x):
        c = _eval(jaxpr, consts, x, dict(zip(keys, etas)), index_eqns)
        if weights is not None:
            c = weights * c
        total = -jnp.sum(c)
        return total  # (divided by ``scale`` at the end: see ``fun``)

    # the tangents, one per predictor column and per direct coordinate: ones down the column
    # (every row its own direction: row i depends on its own predictors only)
    widths = [idx.shape[1] for _, idx, _ in (index_eqns[k] for k in keys)]
    offsets = np.cumsum([0] + widths)
    n_eta = int(offsets[-1])
    patterns = []
    for j, (key, w) in enumerate(zip(keys, widths)):
        pat = np.zeros((q, w), dtype)
        pat[offsets[j]:offsets[j + 1]] = np.eye(w, dtype=dtype)
        patterns.append(pat if index_eqns[key][2] is not None else pat[:, 0])
    t_x = np.zeros((q, p), dtype)
    t_x[np.arange(n_eta, q), direct] = 1.0
    # the Hessian in z order (each predictor's selection, raveled, then the direct coordinates):
    # assembled by blocks and permuted once where z covers every coordinate exactly once (the
    # usual case), else scattered
    order = np.concatenate([index_eqns[k][1].reshape(-1) for k in keys] + [direct])
    permutation = np.argsort(order) if np.array_equal(np.sort(order), np.arange(p)) else None

    def value_and_grads(etas, x):
        value, (g_eta, g_x) = jax.value_and_grad(objective, argnums=(0, 1))(etas, x)
        return value, g_eta, g_x

    def fun(x):
        designs: dict = {}
        etas = []
        _eval_designs(jaxpr, consts, x, index_eqns, designs, etas, keys)

        def push(pats, tx):
            tangent = [jnp.broadcast_to(t[None] if e.ndim == 1 else t[None, :], e.shape) for t, e in zip(pats, etas)]
            return jax.jvp(value_and_grads, (etas, x), (tangent, tx))

        # one forward and reverse sweep; its tangents in one batch (as ``jacfwd`` does), or the
        # one tangent of a single-predictor model with no direct parameter (a GLM) unbatched
        if q == 1:
            (value, g_eta, g_x), (_, d_eta, d_x) = push([jnp.asarray(pt[0]) for pt in patterns], jnp.asarray(t_x[0]))
            d_eta, d_x = [d[None] for d in d_eta], d_x[None]
        else:
            (value, g_eta, g_x), (_, d_eta, d_x) = jax.vmap(push, out_axes=((None, None, None), 0))(
                [jnp.asarray(pt) for pt in patterns], jnp.asarray(t_x))
        # per-row second derivatives against each tangent: (n, k_j, q)
        per_row = [jnp.moveaxis(d.reshape(q, n, -1), 0, -1) for d in d_eta]
        Xs = [designs[k] for k in keys]
        # (g' X, transposed: as a matrix product; X' g became a loop fusion on XLA's CPU)
        grad_z = [jax.lax.dot_general(g.reshape(n, -1), X, (((0,), (0,)), ((), ()))).T.reshape(-1)
                  for X, g in zip(Xs, g_eta)]
        # blocks[j][jj]: sum_i X_j[i, l] M[i, a, b] X_jj[i, m] as (l a, m b); direct columns last
        rows_ = []
        for j, X_j in enumerate(Xs):
            row = [_weighted_gram(X_j, per_row[j][:, :, offsets[jj]:offsets[jj + 1]], X_jj) for jj, X_jj in enumerate(Xs)]
            if len(direct):
                row.append(jnp.einsum("nl,nad->lad", X_j, per_row[j][:, :, n_eta:]).reshape(-1, len(direct)))
            rows_.append(row)
        if len(direct):
            dd = d_x[n_eta:][:, direct]  # (d, d): the direct coordinates' own block
            rows_.append([r[-1].T for r in rows_] + [dd])
            grad_z.append(g_x[direct])
        hz = jnp.block(rows_) if len(rows_) > 1 or len(rows_[0]) > 1 else rows_[0][0]
        gz = jnp.concatenate(grad_z) if len(grad_z) > 1 else grad_z[0]
        if permutation is not None:
            if not np.array_equal(permutation, np.arange(p)):
                gz, hz = gz[permutation], hz[permutation][:, permutation]
            return _divide(scale, value, gz, _symmetrize(hz))
        # a coordinate both in a product and used directly (its terms add), or one not used
        grad = jnp.zeros((p,), dtype).at[order].add(gz)
        hess = jnp.zeros((p, p), dtype).at[order[:, None], order[None, :]].add(hz)
        return _divide(scale, value, grad, _symmetrize(hess))

    return fun


def _divide(scale, value, grad, hess):
    """The objective's scale divided out of the results, not out of every row: as a scalar
    factor inside the pass, XLA moved it onto the design (loop-invariant, hoisted out of the
    solver's loop, transposed) and formed ``X' W X`` in a loop fusion instead of a matrix
    product (the zoo logistic's solve ~10% slower than forward-over-reverse)."""
    if scale is None:
        return value, grad, hess
    return value / scale, grad / scale, hess / scale


def _weighted_gram(X: jax.Array, M: jax.Array, Y: jax.Array) -> jax.Array:
    """``sum_i X[i, l] M[i, a, b] Y[i, m]`` as an ``(l a, m b)`` matrix: one matrix product
    ``X' (M * Y)`` (``X' diag(w) Y`` for one column each), as the closed forms compute it."""
    n, l = X.shape
    k, kk, m = M.shape[1], M.shape[2], Y.shape[1]
    if k == kk == 1:
        # contracted over the rows as the forward-over-reverse program does; written as
        # ``X.T @ (w Y)`` XLA fused the transpose into a loop instead of a matrix product
        # inside the solver's loop (the zoo logistic's solve ~10% slower)
        return jax.lax.dot_general(M[:, 0, 0, None] * Y, X, (((0,), (0,)), ((), ()))).T
    return jnp.einsum("nl,nab,nm->lamb", X, M, Y).reshape(l * k, m * kk)


def _eval_designs(jaxpr, consts, x, index_eqns, designs, etas, keys):
    """The predictors' designs and values at ``x`` (in ``keys`` order)."""
    _eval(jaxpr, consts, x, None, index_eqns, designs)
    for key in keys:
        eqn, idx, k = index_eqns[key]
        X = designs[key]
        flat = idx.reshape(-1)
        if np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
            sel = x[int(flat[0]):int(flat[0]) + flat.size].reshape(idx.shape)  # a slice, not a gather
        else:
            sel = x[idx]  # (l, k)
        etas.append(X @ (sel[:, 0] if k is None else sel))
