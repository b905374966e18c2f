"""The structure of the inner Hessian ``-H_uu`` and its factorisations.

How the random coefficients are laid out (``Structure``: block-diagonal, dense, crossed) and the
linear algebra each layout needs: positive-definite solves and log-determinants with derivative
rules of their own (``spd_solve``, ``spd_logdet``), closed forms for ``q <= 2`` blocks, and the
crossed path's block elimination (``_Crossed``, ``_Layout``, ``_crossed_parts``,
``_single_schur``). No derivatives of the user's ``loglik`` here: ``_laplace`` forms ``-H_uu``
and this module factorises it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Structure:
    """How the random coefficients are laid out: ``n_levels x q`` (block-diagonal: one group per
    row; dense: one row of all ``Q`` coefficients) and where each block sits in a row."""

    blocks: tuple
    block_diagonal: bool
    n_levels: int
    q: int
    offsets: tuple  # dense: start of each block inside the row
    #: several grouping factors, observation ``i`` on one level of each (checked at
    #: construction): ``H_uu`` is assembled from per-observation Hessians and the largest
    #: factor's block-diagonal part is eliminated first (``_Crossed``); ``False``: plain dense
    crossed: bool = False
    eliminated: int = 0  # crossed: the block eliminated first (the one with most coefficients)
    #: crossed: every level of the eliminated factor has at most one observation (an
    #: observation-level effect, checked on the model's data): its Schur complement update is
    #: one ``m_C x m_C`` block per observation (``_crossed_factor``)
    single: bool = False
    #: single form: every ordered pair ``(i, j)`` of observations on one level of the second
    #: factor (``_second_factor``), two tuples, from the model's data, where there are fewer
    #: than the dense coupling has entries: ``E' D^-1 E`` is then summed pair by pair
    #: (``_single_schur``; grouseticks: 1,791 pairs instead of a 118 x 63 x 63 product). Data
    #: given later whose pairs differ get a NaN log det, never a wrong one.
    pairs: Optional[tuple] = None

    @property
    def groups(self) -> Optional[str]:
        return self.blocks[0].groups if self.block_diagonal else None

    @property
    def size(self) -> int:
        return self.n_levels * self.q

    def split(self, u: jax.Array) -> dict:
        """``(G, q)`` coefficients -> ``{name: array shaped as loglik sees it}``."""
        if self.block_diagonal:
            return {self.blocks[0].name: self.blocks[0].to_user(u)}
        row = u.reshape(-1)
        return {
            b.name: b.to_user(row[o : o + b.size].reshape(b.n_levels, b.q)) for b, o in zip(self.blocks, self.offsets)
        }

    def join(self, named: dict) -> jax.Array:
        """Inverse of ``split``."""
        if self.block_diagonal:
            return self.blocks[0].from_user(named[self.blocks[0].name])
        return jnp.concatenate([jnp.reshape(named[b.name], (-1,)) for b in self.blocks]).reshape(1, -1)


def make_structure(blocks: tuple, block_diagonal: bool, crossed: bool = False, data: Any = None) -> Structure:
    if block_diagonal:
        (b,) = blocks
        return Structure(blocks, True, b.n_levels, b.q, (0,))
    offsets, total = [], 0
    for b in blocks:
        offsets.append(total)
        total += b.size
    crossed = bool(crossed) and len(blocks) > 1 and all(b.groups is not None for b in blocks)
    eliminated = int(np.argmax([b.size for b in blocks])) if crossed else 0
    single = False
    if crossed and data is not None:
        be = blocks[eliminated]
        single = bool(np.bincount(np.asarray(data[be.groups]).reshape(-1), minlength=be.n_levels).max(initial=0) <= 1)
    structure = Structure(blocks, False, 1, total, tuple(offsets), crossed, eliminated, single)
    if single:
        structure = dataclasses.replace(structure, pairs=_same_level_pairs(structure, data))
    return structure


def _same_level_pairs(s: Structure, data: Any) -> Optional[tuple]:
    """``(i, j)`` of every ordered pair of observations on one level of the single form's
    second factor, or ``None`` where the dense coupling is as small (see ``Structure.pairs``)."""
    lay = _second_factor(s)
    G, q = lay.idx_f.shape
    others = [k for k in range(len(s.blocks)) if k != s.eliminated]
    bf = s.blocks[others[lay.which]]
    codes = np.asarray(data[bf.groups]).reshape(-1)
    counts = np.bincount(codes, minlength=G)
    if lay.rest.size == 0 or int(np.sum(counts.astype(np.int64) ** 2)) >= G * q * lay.rest.size:
        return None
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    pi, pj = [], []
    for g in range(G):
        members = order[starts[g] : starts[g + 1]]
        pi.append(np.repeat(members, members.size))
        pj.append(np.tile(members, members.size))
    return tuple(np.concatenate(pi).tolist()), tuple(np.concatenate(pj).tolist())


def dense_size(structure: Structure) -> int:
    """The side of the dense matrix the path factorises: ``Q`` (dense), the coefficients left
    after eliminating the largest factor (crossed), ``q`` (block-diagonal)."""
    if structure.crossed:
        return structure.size - structure.blocks[structure.eliminated].size
    return structure.q


class _Crossed(NamedTuple):
    """``-H_uu`` of the crossed path: ``A`` ``(G_e, q_e, q_e)`` the diagonal blocks of the
    eliminated factor ``e`` (its levels never share an observation, so that part is
    block-diagonal), their coupling ``B`` to the other ``Q_C`` coefficients kept per
    observation (coordinate form: a dense ``G_e x Q_C`` coupling has ``m_C`` non-zeros per
    observation, and forming ``B' A^-1 B`` densely cost ``G_e Q_C^2``, 96% of grouseticks' fit):
    ``Bv`` ``(q_e, m_C, N)`` the values, ``rows`` ``(N,)`` each observation's level of ``e``,
    ``cols`` ``(m_C, N)`` its positions among the other coefficients (``C``'s rows). ``C``, the
    other coefficients' own block, is kept in the same form: ``Cv`` ``(m_C, m_C, N)`` each
    observation's second derivatives and ``Cl`` one ``(G_k, q_k, q_k)`` array per other factor
    (its log density's per-level blocks), never as a dense ``Q_C x Q_C`` matrix: with an
    observation-level factor eliminated, the dense matrices of the fit are the second factor's
    coupling ``E`` and the rest's ``S2`` only (grouseticks: 118 x 63 and 63 x 63 instead of
    181 x 181, and 7 tangents of each in the outer Hessian). Entries of observations sharing
    a level and a column add up."""

    A: jax.Array
    Bv: jax.Array
    rows: jax.Array
    cols: jax.Array
    Cv: jax.Array
    Cl: tuple



# -- symmetric positive-definite factorisations with derivative rules of their own ---------------
# The outer Hessian differentiates ``log det`` and solves of the dense matrices (the crossed
# path's Schur complement, the dense path's ``-H_uu``) twice. JAX's Cholesky rules, nested
# (forward over reverse, one tangent per parameter), cost many triangular solves of the whole
# matrix per tangent: the Hessian of ``log det`` of a 181 x 181 matrix in 7 parameters took
# 136 ms against 0.7 ms for the value on the loaded 2-core VM. The identities
# ``d log det S = tr(S^-1 dS)`` and ``d(S^-1 b) = S^-1 (db - dS S^-1 b)`` need only solves with
# the one Cholesky factor of ``S``, and because each rule calls the functions again, their own
# derivatives (all orders) are exact too.


@jax.custom_jvp
def spd_solve(S: jax.Array, b: jax.Array) -> jax.Array:
    """``S^{-1} b`` for symmetric positive-definite ``S`` ``(..., n, n)`` and ``b``
    ``(..., n, k)``; NaN where ``S`` is not positive definite."""
    L = jnp.linalg.cholesky(S)
    return jax.scipy.linalg.cho_solve((L, True), b)


@spd_solve.defjvp
def _spd_solve_jvp(primals, tangents):
    S, b = primals
    dS, db = tangents
    x = spd_solve(S, b)
    return x, spd_solve(S, db - dS @ x)


@jax.custom_jvp
def spd_logdet(S: jax.Array) -> jax.Array:
    """``log det S`` of symmetric positive-definite ``S`` ``(..., n, n)``; NaN where not
    positive definite."""
    L = jnp.linalg.cholesky(S)
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), axis=-1)


@spd_logdet.defjvp
def _spd_logdet_jvp(primals, tangents):
    (S,), (dS,) = primals, tangents
    eye = jnp.broadcast_to(jnp.eye(S.shape[-1], dtype=S.dtype), S.shape)
    # tr(S^-1 dS) = sum_ij (S^-1)_ji dS_ij; S^-1 is symmetric
    return spd_logdet(S), jnp.sum(spd_solve(S, eye) * dS, axis=(-2, -1))


def _logdet(A: jax.Array) -> jax.Array:
    """``log det A`` of symmetric positive-definite ``(..., q, q)`` blocks; ``q <= 2`` in closed
    form (what the outer Hessian differentiates twice: a Cholesky's derivative rules, nested,
    compile to far larger programs than ``a d - b^2``); NaN where ``A`` is not positive definite."""
    q = A.shape[-1]
    if q == 1:
        a = A[..., 0, 0]
        return jnp.where(a > 0, jnp.log(jnp.where(a > 0, a, 1.0)), jnp.nan)
    if q == 2:
        a, b, d = A[..., 0, 0], A[..., 0, 1], A[..., 1, 1]
        det = a * d - b * b
        ok = (a > 0) & (det > 0)
        return jnp.where(ok, jnp.log(jnp.where(ok, det, 1.0)), jnp.nan)
    return spd_logdet(A)


def _solve(A: jax.Array, b: jax.Array) -> jax.Array:
    """``A^{-1} b`` for symmetric positive-definite ``(..., q, q)`` blocks and ``(..., q)``
    right-hand sides; ``q <= 2`` in closed form (see ``_logdet``)."""
    q = A.shape[-1]
    if q == 1:
        return b / A[..., 0, :]
    if q == 2:
        a, c, d = A[..., 0, 0], A[..., 0, 1], A[..., 1, 1]
        det = a * d - c * c
        return jnp.stack([d * b[..., 0] - c * b[..., 1], a * b[..., 1] - c * b[..., 0]], axis=-1) / det[..., None]
    return spd_solve(A, b[..., None])[..., 0]


def _block_factor(K: jax.Array) -> tuple[jax.Array, Callable]:
    """``(logdet, solve)`` of positive-definite ``(G, q, q)`` blocks (one Cholesky, shared)."""
    q = K.shape[-1]
    if q <= 2:
        return _logdet(K), lambda r: _solve(K, r)
    return spd_logdet(K), lambda r: spd_solve(K, r[..., None])[..., 0]



def _diag_scale(K: Any) -> jax.Array:
    """Mean absolute diagonal of ``K`` per level ``(G,)``: the unit of the inner damping."""
    if isinstance(K, _Crossed):
        d = jnp.concatenate([jnp.diagonal(K.A, axis1=-2, axis2=-1).reshape(-1), _c_diagonal(K)])
        return jnp.mean(jnp.abs(d)).reshape(1)
    return jnp.mean(jnp.abs(jnp.diagonal(K, axis1=-2, axis2=-1)), axis=-1)


def _c_offsets(K: _Crossed) -> np.ndarray:
    """Start of each other factor's coefficients among ``C``'s rows, and their total ``Q_C``."""
    return np.cumsum([0] + [c.shape[0] * c.shape[1] for c in K.Cl])


def _c_dense(K: _Crossed) -> jax.Array:
    """The crossed path's ``C`` (the non-eliminated coefficients' block) as a dense matrix."""
    starts = _c_offsets(K)
    C = jnp.zeros((starts[-1],) * 2, K.Cv.dtype).at[K.cols[:, None, :], K.cols[None, :, :]].add(K.Cv)
    for H, o in zip(K.Cl, starts):
        idx = o + np.arange(H.shape[0])[:, None] * H.shape[1] + np.arange(H.shape[1])[None, :]
        C = C.at[idx[:, :, None], idx[:, None, :]].add(H)
    return C


def _c_diagonal(K: _Crossed) -> jax.Array:
    """The diagonal of ``C`` without forming it."""
    starts = _c_offsets(K)
    per_obs = jnp.diagonal(K.Cv, axis1=0, axis2=1).T  # (m_C, N)
    own = jnp.concatenate([jnp.diagonal(H, axis1=-2, axis2=-1).reshape(-1) for H in K.Cl])
    return own.at[K.cols.reshape(-1)].add(per_obs.reshape(-1)) if starts[-1] else own


class _Layout(NamedTuple):
    """Where the second factor ``f`` (the largest non-eliminated one) sits: ``idx_f``
    ``(G_f, q_f)`` its positions among ``C``'s rows, ``rest`` ``(Q_R,)`` the others', ``start``
    its first position, ``cf``/``cr`` which of an observation's ``m_C`` directions are
    ``f``'s (in coefficient order) and the rest's, ``in_rest`` ``(Q_C,)`` a ``C`` position's
    place in ``rest`` (-1 for ``f``'s), ``which`` ``f``'s index in ``_Crossed.Cl``, ``own_rest``
    each remaining factor's ``(index in Cl, positions in rest (G_k, q_k))``."""

    idx_f: np.ndarray
    rest: np.ndarray
    start: int
    cf: np.ndarray
    cr: np.ndarray
    in_rest: np.ndarray
    which: int
    own_rest: tuple


def _second_factor(s: Structure) -> _Layout:
    others = [k for k in range(len(s.blocks)) if k != s.eliminated]
    starts = np.cumsum([0] + [s.blocks[k].size for k in others])
    i = int(np.argmax([s.blocks[k].size for k in others]))
    bf = s.blocks[others[i]]
    idx_f = starts[i] + np.arange(bf.size).reshape(bf.n_levels, bf.q)
    rest = np.setdiff1d(np.arange(starts[-1]), idx_f.reshape(-1))
    in_rest = np.full(int(starts[-1]), -1)
    in_rest[rest] = np.arange(rest.size)
    directions = [j for j, k in enumerate(others) for _ in range(s.blocks[k].q)]
    cf = np.array([c for c, j in enumerate(directions) if j == i], dtype=int)
    cr = np.array([c for c, j in enumerate(directions) if j != i], dtype=int)
    own_rest = tuple(
        (j, in_rest[starts[j] + np.arange(s.blocks[k].size).reshape(s.blocks[k].n_levels, s.blocks[k].q)])
        for j, k in enumerate(others) if j != i
    )
    return _Layout(idx_f, rest, int(starts[i]), cf, cr, in_rest, i, own_rest)


class _CrossedParts(NamedTuple):
    """The crossed path's block elimination (``_crossed_parts``): ``logdet`` ``(1,)``,
    ``solve`` for right-hand sides shaped like ``u``, and ``s_inverse()``, the Schur
    complement's dense inverse in ``C``'s order (for the conditional variances only)."""

    logdet: jax.Array
    solve: Callable
    s_inverse: Callable
    W: jax.Array  # single form: A_g^-1 b_i per observation (N, q_e, m_C); else A^-1 B (G_e, q_e, Q_C)


def _crossed_factor(K: _Crossed, structure: Structure, shift: Optional[jax.Array] = None) -> tuple[jax.Array, Callable]:
    """``(logdet (1,), solve)`` of the crossed ``-H_uu = [[A, B], [B', C]]`` (``_crossed_parts``)."""
    parts = _crossed_parts(K, structure, shift)
    return parts.logdet, parts.solve


def _crossed_parts(K: _Crossed, structure: Structure, shift: Optional[jax.Array] = None) -> _CrossedParts:
    """Block elimination of the crossed ``-H_uu = [[A, B], [B', C]]``, the block-diagonal ``A``
    first: ``log det = sum_g log det A_g + log det S`` with the Schur complement
    ``S = C - B' A^{-1} B`` (``Q_C x Q_C``); a solve is two block solves and one with ``S``.
    With one observation per level of the eliminated factor (``structure.single``), ``S`` is
    never formed: see ``_single_schur``. NaN log det where not positive definite."""
    A, Bv, rows, cols, Cv, Cl = K
    if shift is not None:
        A = A + shift[0] * jnp.eye(A.shape[-1], dtype=A.dtype)
        Cl = tuple(H + shift[0] * jnp.eye(H.shape[-1], dtype=H.dtype) for H in Cl)
    GE, qe = A.shape[0], A.shape[-1]
    QC = int(_c_offsets(K)[-1])
    ld_a = _logdet(A)
    a_solve = lambda r: _solve(A, r)  # noqa: E731
    if structure.single:
        # one observation per level: B_g is observation i's own m_C entries, so B' A^-1 B is a
        # sum of m_C x m_C blocks b_i' A_g^-1 b_i: O(N q_e m_C^2). A data set given later (a
        # batch member) with two observations on one level has no such form: its log det is
        # NaN, never wrong.
        Bt = jnp.moveaxis(Bv, -1, 0)  # (N, q_e, m_C)
        W = Bt / A[rows, 0, 0][:, None, None] if qe == 1 else spd_solve(A[rows], Bt)
        s_obs = jnp.moveaxis(Cv, -1, 0) - jnp.einsum("nac,nad->ncd", Bt, W)  # (N, m_C, m_C)
        counts = jax.ops.segment_sum(jnp.ones(rows.shape, A.dtype), rows, num_segments=GE)
        ld_a = jnp.where(jnp.max(counts) <= 1, ld_a, jnp.nan)
        ld_s, s_solve, s_inverse = _single_schur(s_obs, cols, Cl, _second_factor(structure), structure.pairs)
    else:
        # A^-1 B densely (G_e, q_e, Q_C) from one scatter of the observations' entries; B' (A^-1 B)
        # is then a sum over observations of Bv times rows of it: O(N m_C q_e Q_C), not G_e Q_C^2
        dense_b = _coupling_dense(K)
        W = dense_b / A[:, :1, :1] if qe == 1 else spd_solve(A, dense_b)
        picked = W[rows]  # (N, q_e, Q_C): the eliminated level's row of A^-1 B per observation
        contrib = jnp.einsum("acn,nal->cnl", Bv, picked).reshape(-1, QC)
        S = _c_dense(K._replace(Cl=Cl)) - jnp.zeros((QC, QC), A.dtype).at[cols.reshape(-1)].add(contrib)
        ld_s = spd_logdet(S)
        s_solve = lambda b: spd_solve(S, b[:, None])[:, 0]  # noqa: E731
        s_inverse = lambda: spd_solve(S, jnp.eye(QC, dtype=S.dtype))  # noqa: E731
    logdet = jnp.sum(ld_a) + ld_s
    pos_e, pos_c = _crossed_positions(structure)
    back = np.argsort(np.concatenate([pos_e, pos_c]))  # (eliminated, rest) -> row order

    def solve(r):
        # [[A, B], [B', C]] x = r by block elimination, B applied entry by entry (coordinates)
        row = r.reshape(-1)
        y = a_solve(_take(row, pos_e).reshape(GE, qe))
        bty = jnp.zeros(QC, y.dtype).at[cols.reshape(-1)].add(jnp.einsum("acn,na->cn", Bv, y[rows]).reshape(-1))
        xc = s_solve(_take(row, pos_c) - bty)
        bx = jax.ops.segment_sum(jnp.einsum("acn,cn->na", Bv, xc[cols]), rows, num_segments=GE)  # B xc
        xa = y - a_solve(bx)
        return _take(jnp.concatenate([xa.reshape(-1), xc]), back).reshape(r.shape)

    return _CrossedParts(logdet.reshape(1), solve, s_inverse, W)


def _single_schur(s_obs: jax.Array, cols: jax.Array, Cl: tuple, lay: _Layout,
                  pairs: Optional[tuple] = None) -> tuple[jax.Array, Callable, Callable]:
    """``(log det S, solve, inverse)`` of the Schur complement left by an observation-level
    factor, from its per-observation blocks ``s_obs`` ``(N, m_C, m_C)`` at ``cols`` and the
    other factors' own blocks ``Cl``, without forming ``S``.

    Every observation sees one level of each factor, and after eliminating a factor with one
    observation per level each Schur update still touches one level of each other factor: the
    part of ``S`` of any other factor ``f`` is block-diagonal (``D``, per level). Eliminating
    it too leaves ``S2 = F - E' D^-1 E`` over the rest ``R``, the only dense factorisation;
    ``D``, the coupling ``E`` ``(G_f, q_f, Q_R)`` and ``F`` are summed from the observations'
    blocks directly (forming ``S`` densely and gathering them from it made grouseticks' outer
    Hessian move seven 181 x 181 tangents through every step)."""
    G, q = lay.idx_f.shape
    QR = lay.rest.size
    level = (cols[lay.cf[0]] - lay.start) // q  # (N,) each observation's level of f
    D = jax.ops.segment_sum(_take(_take(s_obs, lay.cf, 1), lay.cf, 2), level, num_segments=G) + Cl[lay.which]
    ld_d = jnp.sum(_logdet(D))
    d_solve = lambda r: _solve(D, r)  # noqa: E731
    if QR == 0:
        order = np.argsort(lay.idx_f.reshape(-1))

        def inverse_only_f():
            eye = jnp.eye(q, dtype=D.dtype)
            d_inv = 1.0 / D if q == 1 else spd_solve(D, jnp.broadcast_to(eye, D.shape))
            full = jnp.zeros((G * q, G * q), D.dtype)
            idx = np.arange(G * q).reshape(G, q)
            full = full.at[idx[:, :, None], idx[:, None, :]].set(d_inv)
            return full[order][:, order]

        return ld_d, lambda b: d_solve(b[lay.idx_f]).reshape(-1)[order], inverse_only_f
    pos_r = jnp.asarray(lay.in_rest)[cols[lay.cr]].T  # (N, m_R) each observation's places in rest
    e_obs = _take(_take(s_obs, lay.cf, 1), lay.cr, 2)  # (N, q_f, m_R): each observation's entries of E

    def dense_E():
        return jnp.zeros((G, q, QR), s_obs.dtype).at[
            level[:, None, None], jnp.arange(q)[None, :, None], pos_r[:, None, :]].add(e_obs)

    F = jnp.zeros((QR, QR), s_obs.dtype).at[pos_r[:, :, None], pos_r[:, None, :]].add(_take(_take(s_obs, lay.cr, 1), lay.cr, 2))
    for j, idx in lay.own_rest:
        F = _add_blocks(F, Cl[j], idx)
    if pairs is None:
        E = dense_E()
        DinvE = E / D[:, :1, :1] if q == 1 else spd_solve(D, E)
        S2 = F - jnp.einsum("gak,gal->kl", E, DinvE)
        e_t_y = lambda y: jnp.einsum("gak,ga->k", E, y)  # noqa: E731
        dinv_e_x = lambda x: jnp.einsum("gak,k->ga", DinvE, x)  # noqa: E731
    else:
        # E' D^-1 E = sum over levels g of sum over observations i, j on g of e_i' D_g^-1 e_j:
        # one m_R x m_R block per pair, no dense G_f x Q_R coupling and no G_f Q_R^2 product
        pi, pj = (np.asarray(p, dtype=np.int32) for p in pairs)
        dinv_obs = e_obs / D[level][:, :1, :1] if q == 1 else spd_solve(D[level], e_obs)  # (N, q_f, m_R)
        blocks = jnp.einsum("pak,pal->pkl", e_obs[pi], dinv_obs[pj])
        S2 = F - jnp.zeros((QR, QR), s_obs.dtype).at[pos_r[pi][:, :, None], pos_r[pj][:, None, :]].add(blocks)
        counts = jax.ops.segment_sum(jnp.ones(level.shape, s_obs.dtype), level, num_segments=G)
        complete = jnp.all(level[pi] == level[pj]) & (jnp.sum(counts * counts) == pi.size)
        ld_d = jnp.where(complete, ld_d, jnp.nan)
        e_t_y = lambda y: jnp.zeros(QR, y.dtype).at[pos_r].add(jnp.einsum("nak,na->nk", e_obs, y[level]))  # noqa: E731
        dinv_e_x = lambda x: jax.ops.segment_sum(  # noqa: E731
            jnp.einsum("nak,nk->na", dinv_obs, x[pos_r]), level, num_segments=G)
    back = np.argsort(np.concatenate([lay.idx_f.reshape(-1), lay.rest]))

    def solve(b):
        y = d_solve(_take(b, lay.idx_f.reshape(-1)).reshape(lay.idx_f.shape))
        xr = spd_solve(S2, (_take(b, lay.rest) - e_t_y(y))[:, None])[:, 0]
        xf = y - dinv_e_x(xr)
        return _take(jnp.concatenate([xf.reshape(-1), xr]), back)

    def inverse():
        # [[D, E], [E', F]]^-1 = [[D^-1 + Z S2^-1 Z', -Z S2^-1], [-S2^-1 Z', S2^-1]], Z = D^-1 E
        E = dense_E()
        DinvE = E / D[:, :1, :1] if q == 1 else spd_solve(D, E)
        s2_inv = spd_solve(S2, jnp.eye(QR, dtype=S2.dtype))
        T = jnp.einsum("gak,kl->gal", DinvE, s2_inv).reshape(G * q, QR)
        Z = DinvE.reshape(G * q, QR)
        d_inv = 1.0 / D if q == 1 else spd_solve(D, jnp.broadcast_to(jnp.eye(q, dtype=D.dtype), D.shape))
        idx = np.arange(G * q).reshape(G, q)
        ff = (Z @ T.T).at[idx[:, :, None], idx[:, None, :]].add(d_inv)
        full = jnp.concatenate([jnp.concatenate([ff, -T], axis=1), jnp.concatenate([-T.T, s2_inv], axis=1)], axis=0)
        return full[back][:, back]

    return ld_d + spd_logdet(S2), solve, inverse


def _crossed_inverse_diagonal(K: _Crossed, structure: Structure, parts: _CrossedParts) -> jax.Array:
    """``diag((-H_uu)^-1)`` ``(1, Q)`` of the crossed path from its elimination: the other
    coefficients' part is ``diag(S^-1)``; the eliminated factor's is
    ``diag(A^-1) + diag(W S^-1 W')`` with ``W = A^-1 B`` (a few entries per observation), so
    no ``Q`` right-hand sides are solved (grouseticks: 584 solves were 8 ms of its SEs)."""
    A, GE, qe = K.A, K.A.shape[0], K.A.shape[-1]
    s_inv = parts.s_inverse()
    a_inv = 1.0 / A[..., 0] if qe == 1 else jnp.diagonal(
        spd_solve(A, jnp.broadcast_to(jnp.eye(qe, dtype=A.dtype), A.shape)), axis1=-2, axis2=-1)  # (G_e, q_e)
    if structure.single:
        colsT = K.cols.T  # (N, m_C)
        extra = jnp.einsum("nac,ncd,nad->na", parts.W, s_inv[colsT[:, :, None], colsT[:, None, :]], parts.W)
        diag_e = a_inv + jax.ops.segment_sum(extra, K.rows, num_segments=GE)
    else:
        diag_e = a_inv + jnp.einsum("gac,cd,gad->ga", parts.W, s_inv, parts.W)
    pos_e, pos_c = _crossed_positions(structure)
    back = np.argsort(np.concatenate([pos_e, pos_c]))
    return jnp.concatenate([diag_e.reshape(-1), jnp.diagonal(s_inv)])[back].reshape(1, -1)


def _coupling_dense(K: _Crossed) -> jax.Array:
    """The crossed path's coupling ``B`` as a dense ``(G_e, q_e, Q_C)`` array."""
    qe, mc, n = K.Bv.shape
    rows = jnp.broadcast_to(K.rows[None, None, :], K.Bv.shape)
    arow = jnp.broadcast_to(jnp.arange(qe)[:, None, None], K.Bv.shape)
    cols = jnp.broadcast_to(K.cols[None, :, :], K.Bv.shape)
    return jnp.zeros((K.A.shape[0], qe, int(_c_offsets(K)[-1])), K.Bv.dtype).at[rows, arow, cols].add(K.Bv)


def _take(x: jax.Array, idx: np.ndarray, axis: int = 0) -> jax.Array:
    """``jnp.take(x, idx, axis)`` for static positions ``idx``, as slices of their contiguous
    runs (the crossed path's blocks and directions: one run, or a few) rather than a gather:
    the reverse mode transposes a gather into a scatter-add, which XLA's CPU backend compiles
    into a loop of its own, at every derivative order the outer Hessian takes (grouseticks'
    solve: 12 of its 76 loops and 25 of its 500 kernels, ~10% of its compile)."""
    idx = np.asarray(idx).reshape(-1)
    if idx.size == 0:
        return jnp.take(x, idx, axis=axis)
    cuts = np.flatnonzero(np.diff(idx) != 1) + 1
    runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(idx, cuts)]
    if len(runs) > 8:  # scattered positions: a gather is the smaller program
        return jnp.take(x, idx, axis=axis)
    if len(runs) == 1 and runs[0] == (0, x.shape[axis]):
        return x
    return jnp.concatenate([jax.lax.slice_in_dim(x, a, b, axis=axis) for a, b in runs], axis=axis)


def _add_blocks(F: jax.Array, H: jax.Array, idx: np.ndarray) -> jax.Array:
    """``F`` plus the per-level blocks ``H`` ``(G, q, q)`` at the static positions ``idx``
    ``(G, q)``: where those are one run in level order (a factor's own coefficients), its
    block-diagonal matrix padded into place (no scatter, see ``_take``), else a scatter-add."""
    G, q = idx.shape
    a, n = int(idx.reshape(-1)[0]), F.shape[0]
    if not np.array_equal(idx.reshape(-1), np.arange(a, a + G * q)):
        return F.at[idx[:, :, None], idx[:, None, :]].add(H)
    eye = jnp.eye(G, dtype=H.dtype)
    dense = (H[:, :, None, :] * eye[:, None, :, None]).reshape(G * q, G * q)  # [g a, h b] = H_g[a, b] (g = h)
    return F + jnp.pad(dense, ((a, n - a - G * q), (a, n - a - G * q)))


def _crossed_positions(s: Structure) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the coefficient row of the eliminated factor and of the rest (in ``C``)."""
    e, be = s.eliminated, s.blocks[s.eliminated]
    pos_e = np.arange(s.offsets[e], s.offsets[e] + be.size)
    pos_c = np.concatenate([np.arange(o, o + b.size) for k, (b, o) in enumerate(zip(s.blocks, s.offsets)) if k != e])
    return pos_e, pos_c


