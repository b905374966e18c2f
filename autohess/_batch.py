"""``fit_batch``: many fits of one model as a single compiled, ``vmap``-ed program.

Each member is solved, differentiated and summarised exactly as ``fit`` does for one data set
(same trust-region loop, same covariance and diagnostics code), so a batch equals a loop of
single fits. Nothing raises for one bad member: a member whose data or start make the
likelihood non-finite gets status ``NONFINITE``, one that stops early ``MAX_ITERATIONS``, and
its neighbours are unaffected (on one CPU device the members run one after another; a
``vmap`` runs every member's loop until the slowest finishes, finished members simply stop
changing).

Inputs that a single ``fit`` would refuse (non-finite data, data outside the model's
``support``, negative or non-finite weights or weights that sum to 0, a start outside a
parameter's domain) are found per member on the host before the run: such a member is not
fitted (it starts from NaN, so its loop stops at once and holds up no one), its status is
``NONFINITE`` (``Status`` has no code of its own for bad input) and ``BatchResult.status`` /
``input_problems`` say what was wrong.

The driver here (``run_members``) is shared by the bootstrap, the simulation study and the
profile likelihood: it runs a per-member function over a leading batch axis in chunks of
``batch_size`` members (every chunk padded to the same size, so one compiled program serves
all of them), shards each chunk's batch axis over all local devices, and reports progress on
long runs. With several processes (``jax.distributed``) each process runs a contiguous share
of the members this way and the outputs are gathered to every process (``_distributed``).

One CPU device (``SEQUENTIAL_ON_CPU``): a chunk's program is a ``lax.map`` of the unbatched
member, so each member runs its own solver loop, as long as it needs, with the solver's
``lax.cond``s branching for real and its working set in cache; there is nothing to compact.
Measured single-threaded (benchmarks/bench_batch.py): a vmapped GARCH-t value/gradient/Hessian
(a 1500-step scan) cost 1.16 ms CPU per member at 1000 members and 0.58 ms at 16, against
0.36 ms unbatched (the scan's per-step work on short vectors, and at 1000 members arrays of
tens of MB that leave the cache); a logistic member's Hessian is as cheap either way. The rest
of this paragraph is the vmapped layout of accelerators and meshes.

Stragglers (``_run_compacted``). A ``vmap``-ed ``while_loop`` runs every member until the
slowest stops: a GARCH-t bootstrap whose replicates near alpha + beta = 1 take 20 iterations
against a median of 5 cost 3-4 single fits per member. So a chunk of ``COMPACT_MIN_BATCH`` or
more members runs the solver in resumable stages (``_solver.staged``: the member function is
traced with its solver limited to a number of loop passes, starting from a given solver state,
and the state it ends in is returned beside the outputs). The first stage runs the whole chunk
for ``FIRST_STAGE_ITERATIONS`` passes; on the host, the members whose status is still
``RUNNING`` are gathered (their batched inputs and solver states, on the device) into a batch
of ``bucket_size`` (the next power of 2, at least ``MIN_BUCKET``; padded with copies of one of
them, whose results are dropped), which runs ``STAGE_ITERATIONS`` more, and so on until none
is left. These later stages are the solver only (``staged(..., solve_only=True)``: the member
function's trace ends at its solve, so its Hessian, covariances and diagnostics are neither
traced nor run there); each recomputes the member's set-up (its resampled or simulated data),
which is why that set-up must be cheap (``_sampling``). Once none is running, the members
that stopped after the first stage are gathered once more, with their final solver states,
into a "results" program (the solver with 0 passes: ``Stage``) that computes their outputs,
written back to their own rows; the first stage's outputs serve every other member. So the
member -> input (key) mapping, statuses and iteration counts (the total over stages) are those
of one uninterrupted loop, and each member's post-solve work runs at most twice (once wasted
in the first stage for the members still running there). One program is compiled per bucket
size and kind (cached on the model, counted in ``trace_counts["<label> compacted"]``);
``LAST_STAGES[label]`` lists the solver stages of the last call.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _distributed
from ._derivatives import _model_params
from ._diagnostics import Diagnostics
from ._fit import FitResult, _escape_hessian, _escape_status, _max_steps, _status_on_face
from ._inference import _covariance_and_diagnostics
from ._config import compiler_options
from ._problem import (
    _member_value_grad_hess, _natural_derivatives, _objective_scale, _solver_unit, _unconstrained, _unscale,
    _weight_unit,
)
from ._model import Model, describe_support_failure
from ._pandas import host_array
from ._params import _is_transform, _lists_to_arrays
from ._solver import Status, staged, trust_region_newton
from ._validation import _display_name, cast_data, from_pandas, weight_problem

__all__ = ["BatchResult", "fit_batch", "run_members", "member_fit", "default_batch_size", "chunk_plan"]

BATCH_COV_TYPES = ("hessian", "opg", "robust")
#: host memory a chunk may use on CPU when the caller does not choose ``batch_size``
CPU_CHUNK_BYTES = 2 * 2**30
#: working set of the members vmapped together on a 1-device CPU (``cpu_group_size``)
CPU_GROUP_BYTES = 256 * 2**10
#: fraction of an accelerator's memory a chunk may use
DEVICE_CHUNK_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """Results of ``fit_batch``: every array has a leading batch axis of length ``B``.

    ``params``, ``bse`` are pytrees shaped like the model's parameters with a leading batch
    axis; ``*_flat`` are ``(B, p)`` in ``labels`` order; ``converged`` is a ``(B,)`` bool
    array and ``status`` a list of readable reasons, one per member. ``cov`` holds the
    covariances of the first requested ``cov_type``; ``cov_params(cov_type)`` any other one
    computed in the same run.

    A member whose inputs a single ``fit`` would refuse (non-finite data, data outside the
    model's ``support`` such as ``y = 2`` for a logistic model, negative / non-finite weights
    or weights summing to 0, a start outside a parameter's domain) is not fitted: its
    ``status_code`` is ``NONFINITE`` (``Status`` has no separate code for bad input), its
    estimates are NaN, and ``status[i]`` / ``input_problems[i]`` name what was wrong.
    """

    params_flat: jax.Array
    cov: jax.Array
    llf: jax.Array
    gradient: jax.Array
    hessian_matrix: jax.Array
    status_code: jax.Array
    iterations: jax.Array
    diagnostics_data: Diagnostics
    other_cov: dict
    model: Model
    cov_type: str
    cov_types: tuple
    #: ``(B,)`` int: 0 where a member's inputs passed the checks, else ``k``: the member was not
    #: fitted, ``input_messages[k - 1]`` says why (None: no checks made, e.g. bootstrap)
    input_code: Any = None
    input_messages: tuple = ()
    #: ``(B, N)`` frequency weights of a weights batch (``None``: unweighted), and the batched
    #: data of a data batch (``None``: every member fitted the model's own data); ``member(i)``
    #: hands member ``i``'s own to its ``FitResult``, so that ``profile``, ``bootstrap``,
    #: ``bic`` and ``df_resid`` of a member use the likelihood that member maximised
    weights: Any = None
    data: Any = None
    #: a bootstrap's fits: ``(B, 2)`` raw key data of each replicate, and ``replicate``, the
    #: function of one key that redraws that replicate's ``(data or None, weights or None)``
    #: exactly as the run drew it (resampling counts, a simulated or block-resampled data set):
    #: ``member(i)`` carries them, at ``N`` numbers per member instead of ``B x N`` kept
    replicate_keys: Any = None
    replicate: Optional[Callable] = None

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.labels

    def __len__(self) -> int:
        return int(self.status_code.shape[0])

    @property
    def converged(self) -> np.ndarray:
        return np.asarray(self.status_code) == Status.CONVERGED

    @property
    def status(self) -> list[str]:
        """One readable reason per member; for a member refused before fitting, what was wrong."""
        out = [Status(int(c)).message for c in np.asarray(self.status_code)]
        for i, problem in enumerate(self.input_problems):
            if problem is not None:
                out[i] = f"failed: not fitted, its input is not valid: {problem}"
        return out

    @property
    def input_problems(self) -> list[Optional[str]]:
        """Per member: ``None``, or why its inputs were refused (the member was not fitted)."""
        if self.input_code is None:
            return [None] * len(self)
        return [self.input_messages[k - 1] if k else None for k in np.asarray(self.input_code).tolist()]

    @property
    def usable(self) -> np.ndarray:
        """``(B,)``: converged with finite estimates; what summaries over members use."""
        return self.converged & np.all(np.isfinite(np.asarray(self.params_flat)), axis=1)

    @property
    def n_failed(self) -> int:
        return int(len(self) - self.usable.sum())

    def cov_params(self, cov_type: Optional[str] = None) -> jax.Array:
        """``(B, p, p)`` covariances of ``cov_type`` (default: the first one requested)."""
        if cov_type is None or cov_type == self.cov_type:
            return self.cov
        if cov_type not in self.other_cov:
            raise ValueError(f"cov_type {cov_type!r} was not computed in this batch; it has {self.cov_types}")
        return self.other_cov[cov_type]

    def bse_flat_of(self, cov_type: Optional[str] = None) -> jax.Array:
        """``(B, p)`` standard errors of ``cov_type`` (NaN where the diagnostics removed them)."""
        return jnp.sqrt(jnp.diagonal(self.cov_params(cov_type), axis1=-2, axis2=-1))

    @property
    def bse_flat(self) -> jax.Array:
        return self.bse_flat_of(None)

    @property
    def params(self) -> Any:
        return jax.vmap(self.model.spec.unflatten)(self.params_flat)

    @property
    def bse(self) -> Any:
        return jax.vmap(self.model.spec.unflatten)(self.bse_flat)

    def member(self, i: int) -> FitResult:
        """Member ``i`` as a ``FitResult``: ``summary()``, ``diagnostics`` in words, intervals.

        It carries member ``i``'s own frequency weights (a weights batch) and a model holding
        member ``i``'s own data (a data batch, ``model.with_data``), so ``profile``,
        ``bootstrap``, ``bic`` and ``df_resid`` describe the fit that member made. For a
        member refused before fitting, its ``status`` says why (as ``input_problems[i]``) and
        its model is the batch's template.
        """
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"member {i} out of range for a batch of {len(self)}")
        take = lambda a: a[i]  # noqa: E731
        refused = self.input_problems[i] is not None
        model = self.model
        weights = None if self.weights is None else self.weights[i]
        if self.data is not None and not refused:
            model = self.model.with_data(jax.tree_util.tree_map(lambda a: np.asarray(a[i]), self.data))
        if self.replicate_keys is not None:
            # a bootstrap replicate is a fit to resampled data: the counts as its weights (the
            # template's unweighted data gave df_resid N - p for any draw and a profile of
            # another likelihood than the one the replicate maximised), or its own data set
            data, weights = self.replicate(self.replicate_keys[i])
            if data is not None:
                model = self.model.with_data(jax.tree_util.tree_map(np.asarray, data))
        return FitResult(
            params_flat=self.params_flat[i], cov=self.cov[i], llf=self.llf[i], gradient=self.gradient[i],
            hessian_matrix=self.hessian_matrix[i], status_code=self.status_code[i],
            iterations=self.iterations[i], diagnostics_data=jax.tree_util.tree_map(take, self.diagnostics_data),
            model=model, cov_type=self.cov_type, method="trust-region",
            weights=weights,
            status_note=self.status[i] if refused else "",
        )

    def __getitem__(self, index) -> "BatchResult":
        """A sub-batch (``index``: slice, integer array or boolean mask)."""
        take = lambda a: a[index]  # noqa: E731
        return dataclasses.replace(
            self,
            **{f: jax.tree_util.tree_map(take, getattr(self, f)) for f in _DATA_FIELDS},
        )

    def __repr__(self) -> str:
        return f"BatchResult({self.model.name!r}, B={len(self)}, converged={int(self.converged.sum())}/{len(self)})"


_DATA_FIELDS = [
    "params_flat", "cov", "llf", "gradient", "hessian_matrix", "status_code", "iterations", "diagnostics_data",
    "other_cov", "input_code", "weights", "data", "replicate_keys",
]
jax.tree_util.register_dataclass(
    BatchResult, data_fields=_DATA_FIELDS, meta_fields=["model", "cov_type", "cov_types", "input_messages", "replicate"]
)


# ------------------------------------------------------------------------------------------
# One member: solve, differentiate, covariances, diagnostics (pure, vmappable)
# ------------------------------------------------------------------------------------------
def member_fit(model: Model, cov_types: Sequence[str], maxiter: int) -> Callable:
    """``(params, data, weights) -> outputs`` of one fit, as ``fit`` computes it.

    ``params`` are natural-scale starting values (a pytree), ``weights`` ``None`` or ``(N,)``.
    The outputs are ``(x, covs, llf, grad, hess, status, iterations, diagnostics)`` with ``covs`` a
    tuple aligned with ``cov_types``.
    """
    spec = model.spec
    mode = model.hessian_mode
    lower, upper = spec.bounds_arrays(model.dtype)
    need_scores = any(c != "hessian" for c in cov_types)

    def one(params, data, weights):
        flat0 = spec.flatten(params, model.dtype)
        scale = _objective_scale(model, flat0, data, weights)  # as ``fit``: see there
        f = _unconstrained(model, data, weights, scale)
        u0 = spec.to_unconstrained(flat0)
        res = trust_region_newton(_member_value_grad_hess(model, data, weights, scale, mode), u0, maxiter=maxiter,
                                  max_step=_max_steps(spec), unit=_solver_unit(scale))
        status, escape = _escape_status(spec, model.dtype, f, res, _solver_unit(scale),
                                        _escape_hessian(model, data, weights, scale))
        x, value, grad, hess, _ = _natural_derivatives(
            spec, res.x, *_unscale(_weight_unit(weights), res.value, res.grad, res.hess, scale))
        scores = None
        if need_scores:
            contrib = lambda t: model._loglik(spec.unflatten(t), data)  # noqa: E731
            scores = jax.jacfwd(contrib)(x)
        covs, diag = _covariance_and_diagnostics(
            x, value, grad, hess, lower, upper, scores, weights, None, escape,
            cov_types=tuple(cov_types), n_groups=None, df_correction=None, scale=scale,
        )
        status = _status_on_face(status, diag, grad, hess, deps=covs)  # as in ``fit``
        # a member whose likelihood is not finite ends with NaNs; its status must say so
        bad = ~(jnp.isfinite(value) & jnp.all(jnp.isfinite(x)))
        status = jnp.where(bad, Status.NONFINITE, status).astype(jnp.int32)
        return x, covs, -value, grad, hess, status, res.iterations, diag

    return one


def result_from_outputs(model: Model, cov_types: Sequence[str], outputs) -> BatchResult:
    """Wrap ``member_fit`` outputs with a leading batch axis into a ``BatchResult``."""
    x, covs, llf, grad, hess, status, iterations, diag = outputs
    return BatchResult(
        params_flat=x, cov=covs[0], llf=llf, gradient=grad, hessian_matrix=hess, status_code=status,
        iterations=iterations, diagnostics_data=diag,
        other_cov={c: v for c, v in zip(cov_types[1:], covs[1:])},
        model=model, cov_type=cov_types[0], cov_types=tuple(cov_types),
    )


# ------------------------------------------------------------------------------------------
# The driver: chunks, padding, sharding, progress
# ------------------------------------------------------------------------------------------
def member_bytes(model: Model, batched: Any = None, size: int = 1) -> int:
    """Estimated working set of one member, in bytes: its own share of the batched inputs (a
    data set or a weight vector; nothing for keys or shared data) plus the derivative
    temporaries, ``itemsize * (4 N p + 16 p^2)`` (the forward-over-reverse Hessian keeps a few
    ``N x p`` tangent arrays alive)."""
    p = model.n_params
    n = model.nobs or 1
    item = np.dtype(model.dtype).itemsize
    own = sum(int(np.prod(np.shape(a))) * np.dtype(a.dtype).itemsize for a in jax.tree_util.tree_leaves(batched))
    return own // max(size, 1) + item * (4 * n * p + 16 * p * p)


def default_batch_size(model: Model, batched: Any = None, size: int = 1) -> int:
    """Members per chunk so that a chunk's working set stays within a memory budget.

    The working set of one member is ``member_bytes``' estimate. The budget is half an
    accelerator's memory, or ``CPU_CHUNK_BYTES`` on the CPU. Pass ``batch_size=`` to override.
    """
    per_member = member_bytes(model, batched, size)
    device = jax.local_devices()[0]
    budget = CPU_CHUNK_BYTES
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        if limit:
            budget = int(DEVICE_CHUNK_FRACTION * limit) * jax.local_device_count()
    return max(1, int(budget // max(per_member, 1)))


def cpu_group_size(model: Model, batched: Any = None, size: int = 1) -> int:
    """Members vmapped together on a 1-device CPU: the largest power of 2 whose working set
    (``member_bytes``) fits ``CPU_GROUP_BYTES``, at least 1 (then the members run unbatched,
    one after another)."""
    per_member = member_bytes(model, batched, size)
    fits = max(1, CPU_GROUP_BYTES // max(per_member, 1))
    return 1 << (int(fits).bit_length() - 1)


def chunk_plan(size: int, cap: int, n_devices: int = 1) -> tuple[int, int]:
    """``(chunks, members per chunk)`` for ``size`` members, at most ``cap`` per chunk (rounded
    up to a multiple of ``n_devices``): equal chunks, so padding wastes less than one member
    per chunk and device."""
    bs = min(int(cap), size)
    chunks = int(math.ceil(size / bs))
    bs = int(math.ceil(size / chunks))
    bs = int(math.ceil(bs / n_devices) * n_devices)
    return int(math.ceil(size / bs)), bs


def _mesh() -> Optional[Mesh]:
    devices = jax.local_devices()
    if len(devices) < 2:
        return None
    return Mesh(np.array(devices), ("batch",))


class _Progress:
    """Host-side progress line on stderr, shown only for a TTY (or when asked)."""

    def __init__(self, label: str, total: int, chunks: int, show: Optional[bool]):
        self.show = (sys.stderr.isatty() and chunks > 1) if show is None else bool(show)
        self.label, self.total, self.start = label, total, time.perf_counter()

    def update(self, done: int) -> None:
        if not self.show:
            return
        elapsed = time.perf_counter() - self.start
        end = "\n" if done >= self.total else ""
        sys.stderr.write(f"\r{self.label}: {done}/{self.total} members, {elapsed:.1f} s{end}")
        sys.stderr.flush()


def run_members(
    member: Callable,
    batched: Any,
    shared: Any,
    size: int,
    *,
    model: Model,
    key: Any,
    batch_size: Optional[int],
    progress: Optional[bool],
    label: str,
    shard: bool = True,
    gather: str = "all",
    _local: bool = False,
) -> Any:
    """Run ``member(batched_i, shared)`` for ``i < size`` as one compiled ``vmap`` per chunk.

    ``batched`` is a pytree whose leaves have a leading axis of length ``size``; ``shared`` is
    passed whole to every member. Chunks are padded (by repeating their first member) to one
    size so every chunk reuses one compiled program, and each chunk's batch axis is sharded
    over all local devices when there are several (``shard=False`` keeps one device). With
    ``batch_size`` at most ``k``, the ``size`` members are split into ``ceil(size / k)`` equal
    chunks (so 5000 members at ``k = 3612`` run as two chunks of 2500, not 3612 + padding). The
    program is cached on the model under ``key``. Returns the stacked outputs, ``size`` long.

    With several processes (``jax.distributed``), each runs a contiguous share of the members
    this way on its own devices and every process gets all outputs (``_distributed``), or, with
    ``gather="process0"``, process 0 gets them and the others an ``_distributed.NotGathered``
    (returned as it is by the callers).
    """
    if not _local and _distributed.active():
        def run_local(part, n, show):
            return run_members(member, part, shared, n, model=model, key=key, batch_size=batch_size,
                               progress=show, label=label, shard=shard, _local=True)

        return _distributed.run_across_processes(run_local, batched, size, progress=progress, label=label,
                                                 gather=gather)
    mesh = _mesh() if shard else None
    n_dev = 1 if mesh is None else mesh.devices.size
    cap = default_batch_size(model, batched, size) if batch_size is None else int(batch_size)
    if cap < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    chunks, bs = chunk_plan(size, cap, n_dev)

    # On one CPU device the members run one after another inside the chunk's program (a
    # ``lax.map`` of the unbatched member, each with its own solver loop): no member waits for
    # a straggler, the solver's ``lax.cond``s branch for real, and one member's working set
    # stays in cache. A ``vmap`` gains a CPU nothing to pay for that: a vmapped GARCH-t
    # Hessian (a 1500-step scan) cost 1.16 ms CPU per member at 1000 members, 0.58 ms at 16,
    # against 0.36 ms unbatched (single-threaded, benchmarks/bench_batch.py docstring). With
    # several devices (a mesh) or an accelerator the chunk is vmapped and compacted as below.
    group = bs
    if SEQUENTIAL_ON_CPU and mesh is None and jax.local_devices()[0].platform == "cpu":
        group = cpu_group_size(model, batched, size) if GROUP is None else GROUP
        if group < bs:
            bs = int(math.ceil(bs / group) * group)  # whole groups (padding: fewer than ``group``)
            chunks = int(math.ceil(size / bs))  # (a longer chunk may leave one fewer)
    group = min(group, bs)
    sequential = group == 1
    # small chunks run to the end in one program, as before staging: a straggler holds up few
    # members there, and the compacted programs' compilations would cost more than they save
    # (and a sequential chunk has no stragglers to compact)
    compact = bs >= COMPACT_MIN_BATCH and group == bs
    # nor for random-effects models: each compacted bucket size is a program of its own, and a
    # Laplace member's program (its Hessian differentiates through the inner solve) takes
    # seconds to compile, so a warm call whose stragglers fall into a new bucket size compiled
    # again (cbpp, 200 parametric-bootstrap refits warm: 6-28 s compacted, 0.52 s without;
    # the refits take 4-8 iterations, so little is lost by running them to the end together)
    compact = compact and model.laplace is None

    def build(kind: str):
        def staged_member(b, s, state):
            limit = _STAGE_PASSES[kind]() if compact else None
            # a compacted stage is the solver only: what ``member`` computes after the solve
            # (Hessian, covariances, diagnostics) is not traced; "results" computes it once
            out = None
            axis = None if sequential else _AXIS
            with staged(limit, state, axis_name=axis, solve_only=kind == "resume") as stage:
                out = member(b, s)
            if kind == "resume":
                return None, stage.final
            # no state where ``member`` runs no solver (one-parameter profile) or no stages
            return out, stage.final if compact else None

        def run(b, s, state):
            # the full-chunk program counts as before; later stages under their own name
            model.trace_counts[label if kind == "first" else f"{label} compacted"] += 1
            if sequential:
                return lax.map(lambda bt: staged_member(bt[0], s, bt[1]), (b, state))
            batched_member = jax.vmap(staged_member, in_axes=(0, None, 0), axis_name=_AXIS)
            n = jax.tree_util.tree_leaves(b)[0].shape[0]
            if group >= n:
                return batched_member(b, s, state)
            split = lambda a: a.reshape((n // group, group) + a.shape[1:])  # noqa: E731
            out = lax.map(lambda bt: batched_member(bt[0], s, bt[1]), jax.tree_util.tree_map(split, (b, state)))
            return jax.tree_util.tree_map(lambda a: a.reshape((n,) + a.shape[2:]), out)

        # a random-effects member (the inner Newton loop, the Laplace marginal's derivatives,
        # the escape test through the marginal) compiles for seconds: XLA's older CPU emitters
        # and LLVM level 1, as the fit's own solve (``compiler_options(large=True)``)
        return jax.jit(run, compiler_options=compiler_options(large=True) if model.laplace is not None else None)

    first = model._jitted((label, key, bs, n_dev, compact, group), lambda: build("first"))
    resume = lambda n, kind="resume": model._jitted((label, key, n, n_dev, kind), lambda: build(kind))  # noqa: E731
    row = None
    if mesh is not None:
        row = NamedSharding(mesh, PartitionSpec("batch"))
        shared = jax.device_put(shared, NamedSharding(mesh, PartitionSpec()))
    bar = _Progress(label, size, chunks, progress)
    pieces = []
    stages = LAST_STAGES[label] = []
    for c in range(chunks):
        lo, hi = c * bs, min((c + 1) * bs, size)
        part = jax.tree_util.tree_map(lambda a: _pad(a[lo:hi], bs), batched)
        if mesh is not None:
            part = jax.device_put(part, row)
        out = _run_compacted(first, resume, part, shared, bs, hi - lo, n_dev, row, stages)
        if chunks == 1 and hi - lo == bs:
            return out
        pieces.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[: hi - lo], out))
        bar.update(hi)
    return jax.tree_util.tree_map(lambda *a: jnp.asarray(np.concatenate(a)), *pieces)


#: loop passes of the first stage (the full chunk): the first pass evaluates the start, so 8
#: passes finish a fit of 7 Newton iterations; typical refits started at or near an estimate
#: take 4-7 (benchmarks/bench_batch.py: logistic bootstrap median 4, max 5; GARCH-t
#: parametric bootstrap median 5, 99th percentile 9, max 23)
FIRST_STAGE_ITERATIONS = 8
#: loop passes of each later stage (the members still running, compacted): long enough that
#: a stage's fixed costs (a host round trip, the member's set-up computed again) stay
#: small against its iterations, short enough that a straggler holds few others up
STAGE_ITERATIONS = 8
#: the ``vmap`` axis of members, named so the solver can ask whether any member needs its
#: trust-region subproblem (``_solver.Stage``)
_AXIS = "members"
#: loop passes per kind of staged program (read when a program is built, so tests may lower
#: the thresholds): the full chunk, a compacted stage, the results of members that stopped late
_STAGE_PASSES = {
    "first": lambda: FIRST_STAGE_ITERATIONS, "resume": lambda: STAGE_ITERATIONS, "results": lambda: 0,
}
#: on a CPU with one device, run a chunk's members one after another in its program (``lax.map``)
#: rather than ``vmap``-ed (see ``run_members``); tests of the vmapped layout turn it off
SEQUENTIAL_ON_CPU = True
#: members per group on the CPU (None: ``cpu_group_size``); for benchmarks
GROUP = None
#: smallest chunk whose unfinished members are compacted (smaller ones run in one program)
COMPACT_MIN_BATCH = 64
#: smallest compacted batch: below it a smaller program saves less than its compilation costs
MIN_BUCKET = 8
#: per ``run_members`` label, the stages of its most recent call: ``(members in the stage,
#: batch size run)`` per stage (for tests and benchmarks; not part of any result)
LAST_STAGES: dict = {}


def bucket_size(running: int, chunk: int, n_devices: int = 1) -> int:
    """Batch size for ``running`` unfinished members of a chunk of ``chunk``: the next power of 2
    (at least ``MIN_BUCKET``, a multiple of ``n_devices``), or the chunk size if that is not
    larger; a fixed set of sizes, so each compiles once (per model and call key)."""
    size = max(MIN_BUCKET, 1 << max(running - 1, 0).bit_length())
    size = int(math.ceil(size / n_devices) * n_devices)
    return min(size, chunk)


@jax.jit
def _take(tree: Any, idx: jax.Array) -> Any:
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), tree)


def _run_compacted(first, resume, part, shared, bs, n_real, n_dev, row, stages) -> Any:
    """One chunk through staged programs: the full chunk for ``FIRST_STAGE_ITERATIONS`` loop
    passes (with every member's results), then only its members still ``RUNNING``, gathered
    (with their solver states and inputs) into a batch of ``bucket_size``, padded with copies
    of one of them, ``STAGE_ITERATIONS`` passes at a time; these stages return solver states
    only. The members that stopped after the first stage then get their results from one
    ``"results"`` program (no solver loop: ``Stage`` with 0 passes) run on their final
    states, gathered into one bucket, and written back to their own rows."""
    out, state = first(part, shared, None)
    if state is None:
        return out
    status = np.asarray(state.status)[:n_real]
    where = np.flatnonzero(status == Status.RUNNING)  # chunk rows still running
    stages.append((n_real, bs))
    if where.size == 0:
        return out
    late = where  # chunk rows whose results the first stage did not have
    finals = state  # every chunk row's latest solver state (a row is final once it stopped)
    rows = where  # row of each running member in ``state``
    while where.size:
        n = bucket_size(where.size, bs, n_dev)
        sub, sub_state = _take(part, _fill(where, n)), _take(state, _fill(rows, n))
        if row is not None:
            sub, sub_state = jax.device_put((sub, sub_state), row)
        _, state = resume(n)(sub, shared, sub_state)
        # written back to the chunk's rows (the padding copies go to row ``bs``: dropped)
        finals = _put(finals, _fill(where, n, bs), state)
        done = np.asarray(state.status)[: where.size] != Status.RUNNING
        stages.append((int(where.size), n))
        rows = np.flatnonzero(~done)
        where = where[~done]
    n = bucket_size(late.size, bs, n_dev)
    sub, sub_state = _take(part, _fill(late, n)), _take(finals, _fill(late, n))
    if row is not None:
        sub, sub_state = jax.device_put((sub, sub_state), row)
    picked, _ = resume(n, "results")(sub, shared, sub_state)
    host = jax.tree_util.tree_map(np.array, out)  # writable copies
    jax.tree_util.tree_map(lambda h, v: h.__setitem__(late, np.asarray(v)[: late.size]), host, picked)
    return jax.tree_util.tree_map(jnp.asarray, host)


def _fill(ix: np.ndarray, n: int, pad: Optional[int] = None) -> np.ndarray:
    """``ix`` padded to ``n`` entries with ``pad`` (default: its first entry, a copy of a real
    member, so the padded rows compute something finite)."""
    return np.concatenate([ix, np.full(n - ix.size, ix[0] if pad is None else pad)]).astype(np.int32)


@jax.jit
def _put(tree: Any, idx: jax.Array, sub: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, v: a.at[idx].set(v, mode="drop"), tree, sub)


def _pad(a: Any, size: int) -> Any:
    short = size - a.shape[0]
    if short <= 0:
        return a
    fill = jnp.broadcast_to(a[:1], (short,) + a.shape[1:])
    return jnp.concatenate([a, fill])


# ------------------------------------------------------------------------------------------
# Public entry point
# ------------------------------------------------------------------------------------------
def _batch_data(model: Model, data: Any) -> tuple[Any, int]:
    """Check that every leaf is the model's leaf with a leading batch axis; cast the dtype.

    Shapes are static mistakes and raise; NaN or infinite values do not (they become a
    member's ``NONFINITE`` status).
    """
    data, _ = from_pandas(data, "data_batch")
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(data)
    ref_leaves, ref_treedef = jax.tree_util.tree_flatten(model.data)
    if treedef != ref_treedef:
        raise ValueError(f"data_batch has structure {treedef}, the model's data {ref_treedef}")
    sizes = set()
    out = []
    for i, ((path, leaf), ref) in enumerate(zip(leaves_with_path, ref_leaves)):
        arr = _like_model_leaf(leaf, ref.dtype, _display_name("data_batch", path), model.dtype)
        if arr.shape[1:] != ref.shape or arr.ndim != ref.ndim + 1:
            raise ValueError(
                f"data_batch leaf {i} has shape {arr.shape}; expected (B,) + {ref.shape}, the model's "
                "data with a leading batch axis"
            )
        sizes.add(arr.shape[0])
        out.append(arr)
    if len(sizes) != 1:
        raise ValueError(f"data_batch leaves disagree on the batch size: {sorted(sizes)}")
    return treedef.unflatten(out), sizes.pop()


def _like_model_leaf(leaf: Any, ref_dtype: np.dtype, name: str, float_dtype: np.dtype) -> jax.Array:
    """A data-batch leaf in the dtype of the model's leaf: floats as the model's float dtype;
    integer and boolean leaves (codes, ids, counts used as indices) kept integer. Floats given
    for an integer leaf are accepted only if they are whole numbers (a cast would truncate)."""
    src = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    if np.issubdtype(ref_dtype, np.floating):
        return cast_data(leaf, float_dtype, name)
    if np.issubdtype(src, np.floating):
        host = np.asarray(leaf)
        if not np.all(np.isfinite(host) & (host == np.round(host))):
            raise TypeError(
                f"{name} has non-integer or non-finite values, but the model's data there are "
                f"{np.dtype(ref_dtype).name} (codes, ids or counts): give whole numbers, as an integer array"
            )
    return jnp.asarray(leaf, ref_dtype)


def _batch_start(model: Model, start: Any) -> tuple[Any, bool, Optional[int]]:
    """``(params, batched, B)`` from ``fit_batch``'s ``start``.

    Each parameter is either its declared shape (one start shared by every member) or that
    shape with a leading batch axis (one row per member); shared parameters are broadcast when
    others are batched. Names and shapes are static mistakes and raise, naming the parameter
    and both accepted shapes. A shared start outside its domain raises as in ``fit``; a batched
    start outside it is that member's problem (see ``_input_problems``).
    """
    if start is None:
        return model.init_params, False, None
    spec = model.spec
    leaves, treedef = jax.tree_util.tree_flatten(_lists_to_arrays(start), is_leaf=_is_transform)
    if treedef != spec.treedef:
        spec.check_structure(start, "start")  # raises, naming unknown / missing parameters
        raise ValueError(f"start has structure {treedef}, the model's parameters {spec.treedef}")
    leaves = [leaf.init if _is_transform(leaf) else leaf for leaf in leaves]
    sizes = {}
    for name, declared, leaf in zip(spec.names, spec.shapes, leaves):
        shape = tuple(np.shape(leaf))
        if shape == declared:
            continue
        if shape[1:] == declared and len(shape) == len(declared) + 1:
            sizes[name] = shape[0]
            continue
        batched = "(B" + "".join(f", {d}" for d in declared) + (")" if declared else ",)")
        raise ValueError(
            f"start: parameter {name!r} has shape {shape}; expected {declared} (one start shared by "
            f"every member) or {batched} (one row per member)"
        )
    if not sizes:
        params = _model_params(model, start, "start")
        spec.check_domain(params, "start")
        return params, False, None
    if len(set(sizes.values())) != 1:
        raise ValueError(f"start: the batched parameters disagree on the batch size B: {sizes}")
    b = next(iter(sizes.values()))
    params = treedef.unflatten(
        [jnp.broadcast_to(jnp.asarray(leaf, model.dtype), (b,) + d) for leaf, d in zip(leaves, spec.shapes)]
    )
    return params, True, b


def _input_problems(
    model: Model, data: Any, data_batched: bool, weights: Optional[jax.Array], params: Any, params_batched: bool,
    size: int,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Per member, what a single ``fit`` would refuse: ``(codes, messages)``, ``codes[i] = 0``
    when member ``i`` is fine, else ``k`` with ``messages[k - 1]`` the reason (members with the
    same reason share a code).

    Checked on the host, before the compiled run: non-finite data, the model's ``support`` hook
    (only for members whose data are finite), non-finite / negative weights or weights that sum
    to 0, batched starts outside their parameter's domain.
    """
    problems: list[list[str]] = [[] for _ in range(size)]
    if data_batched:
        finite_members = np.ones(size, bool)
        for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
            leaf = np.asarray(leaf)  # no copy on the CPU (and numpy compiles nothing per shape)
            rows = np.isfinite(leaf.reshape(size, -1)).all(axis=1)
            for b in np.flatnonzero(~rows):
                host = leaf[b]
                finite = np.isfinite(host)
                n_nan = int(np.isnan(host).sum())
                n_inf = int(host.size - finite.sum() - n_nan)
                first = np.unravel_index(int(np.argmin(finite.reshape(-1))), host.shape)
                first_txt = int(first[0]) if len(first) == 1 else tuple(int(i) for i in first)
                problems[b].append(
                    f"{_display_name('data_batch', path)} has {n_nan} NaN and {n_inf} infinite entries "
                    f"(not finite; first at index {first_txt})"
                )
            finite_members &= rows
        if model.support_fn is not None:
            for cond, ok in model.support_masks(data).items():
                fails = finite_members & ~ok.reshape(size, -1).all(axis=1)
                for b in np.flatnonzero(fails):
                    problems[b].append(f"data outside the model's support: {describe_support_failure(cond, ok[b])}")
    if weights is not None:
        w = np.asarray(weights)
        # the rows worth a closer look, found at once; each then gets fit's own reason
        suspect = (~np.isfinite(w) | (w < 0)).any(axis=1) | ~(w > 0).any(axis=1)
        for b in np.flatnonzero(suspect):
            problems[b].append(weight_problem(w[b]))
    if params_batched:
        spec = model.spec
        for k, (name, t, leaf) in enumerate(zip(spec.names, spec.transforms, jax.tree_util.tree_leaves(params))):
            arr = np.asarray(leaf, np.float64).reshape(size, -1)
            ok = np.asarray(t.in_domain(arr)).reshape(size, -1)
            for b in np.flatnonzero(~ok.all(axis=1)):
                labels = spec.element_labels_of(k)
                bad = [f"{lab}={v!r}" for lab, v, g in zip(labels, arr[b].tolist(), ok[b]) if not g]
                shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                problems[b].append(
                    f"start of parameter {name!r} is outside the domain {t.domain} of {type(t).__name__}: {shown}"
                )
    codes = np.zeros(size, np.int32)
    messages: dict[str, int] = {}
    for b, found in enumerate(problems):
        if found:
            codes[b] = messages.setdefault("; ".join(found), len(messages) + 1)
    return codes, tuple(messages)


def check_cov_types(model: Model, cov_type: Any) -> tuple[str, ...]:
    """Normalise ``cov_type`` (a name or a sequence of names) for batched fits."""
    cov_types = (cov_type,) if isinstance(cov_type, str) else tuple(cov_type)
    if not cov_types:
        raise ValueError("cov_type: give at least one covariance type")
    for c in cov_types:
        if c not in BATCH_COV_TYPES:
            raise ValueError(f"cov_type must be one of {BATCH_COV_TYPES} for batches, got {c!r}")
        if c != "hessian" and not model.per_observation:
            raise ValueError(f"cov_type={c!r} needs per-observation contributions")
    if len(set(cov_types)) != len(cov_types):
        raise ValueError(f"cov_type lists a type twice: {cov_types}")
    return cov_types


def check_maxiter(maxiter: Any) -> int:
    if isinstance(maxiter, (bool, np.bool_)) or not isinstance(maxiter, (int, np.integer)) or maxiter < 0:
        raise ValueError(f"maxiter must be a non-negative integer, got {maxiter!r}")
    return int(maxiter)


def fit_batch(
    model: Model,
    data_batch: Any = None,
    *,
    weights: Any = None,
    start: Any = None,
    cov_type: Any = "hessian",
    maxiter: int = 200,
    batch_size: Optional[int] = None,
    progress: Optional[bool] = None,
    shard: bool = True,
    gather: str = "all",
) -> BatchResult:
    """Fit ``model`` to many data sets, weight vectors or starts at once (one compiled ``vmap``).

    Args:
        model: an ``ah.Model``.
        data_batch: pytree like ``model.data`` with a leading batch axis ``B`` (default: the
            model's own data for every member).
        weights: ``(B, N)`` non-negative frequency weights (bootstrap without copying data).
        start: starting parameters: each parameter in its declared shape (shared by every
            member) or with a leading batch axis ``B`` (one start per member).
        cov_type: ``"hessian"``, ``"opg"`` or ``"robust"``, or a sequence of them (all are
            computed in the same run; ``cov_params(name)`` returns each).
        maxiter: iteration limit per member.
        batch_size: members per compiled chunk (default: as many as fit a memory budget, see
            ``default_batch_size``). Larger batches run chunk after chunk.
        progress: show a progress line on stderr (default: only on a terminal with several
            chunks).
        shard: split each chunk's batch axis over all local devices (``jax.local_devices()``)
            when there are several. With several processes (``jax.distributed``) the members
            are first split into one contiguous share per process; every process gets all
            results (README, "Several devices, several hosts").
        gather: with several processes, ``"all"`` (every process gets every member's results)
            or ``"process0"`` (only process 0 does; the others return an ``ah.NotGathered`` and
            never hold more than one piece of the results, for memory). One process: the same.

    Returns:
        ``BatchResult``. Never raises for a bad member: see ``status``. A member whose inputs
        a single ``fit`` would refuse (non-finite data, data outside the model's ``support``,
        negative / non-finite weights or weights summing to 0, a start outside a parameter's
        domain) is not fitted: status ``NONFINITE``, NaN estimates, and ``status[i]`` /
        ``input_problems[i]`` say what was wrong. Shapes and names are static mistakes and
        raise ``ValueError``.

    Example:
        >>> bres = ah.fit_batch(model, {"X": Xs, "y": ys})   # Xs: (B, N, p), ys: (B, N)
        >>> bres.params["beta"].shape, bres.converged.mean()
    """
    if not isinstance(model, Model):
        raise TypeError(f"fit_batch needs an ah.Model, got {type(model).__name__}")
    gather = _distributed.check_gather(gather)
    cov_types = check_cov_types(model, cov_type)
    maxiter = check_maxiter(maxiter)
    sizes = []
    data_batched = data_batch is not None
    if data_batched:
        with _distributed.host_staging():  # several processes: each copies only its own rows
            data, b = _batch_data(model, data_batch)
        sizes.append(b)
    else:
        data = model.data
    w = None
    if weights is not None:
        with _distributed.host_staging():
            w = jnp.asarray(host_array(weights, "weights")[0], model.dtype)
        if not model.per_observation or w.ndim != 2 or w.shape[1] != model.nobs:
            raise ValueError(f"weights has shape {tuple(w.shape)}, expected (B, {model.nobs})")
        sizes.append(w.shape[0])
    params, params_batched, b_start = _batch_start(model, start)
    if params_batched:
        sizes.append(b_start)
    if not sizes:
        raise ValueError("fit_batch needs something batched: data_batch, weights (B, N) or a batched start")
    if len(set(sizes)) != 1:
        raise ValueError(f"batch sizes disagree: {sizes}")
    if sizes[0] == 0:
        what = ["start (leading axis)", "data_batch (leading axis)", "weights (rows)"]
        given = [n for n, f in zip(what, (params_batched, data_batched, weights is not None)) if f]
        raise ValueError(f"fit_batch got an empty batch: {', '.join(given)} has 0 members; pass at least one")
    codes, messages = _input_problems(model, data, data_batched, w, params, params_batched, sizes[0])
    one = member_fit(model, cov_types, maxiter)
    flags = (params_batched, data_batched, w is not None)

    def member(b, s):
        pick = lambda flag, name: b[name] if flag else s[name]  # noqa: E731
        # a member refused on the host starts from NaN: its loop stops at the first test, its
        # outputs are NaN, and it holds up none of its neighbours (vmap runs to the slowest)
        start_i = jax.tree_util.tree_map(lambda a: jnp.where(b["ok"], a, jnp.nan), pick(flags[0], "params"))
        out = one(start_i, pick(flags[1], "data"), pick(flags[2], "weights"))
        status = jnp.where(b["ok"], out[5], Status.NONFINITE).astype(jnp.int32)
        return out[:5] + (status,) + out[6:]

    inputs = {"params": params, "data": data, "weights": w}
    batched = {k: v for k, v, f in zip(inputs, inputs.values(), flags) if f}
    batched["ok"] = jnp.asarray(codes == 0)
    shared = {k: v for k, v, f in zip(inputs, inputs.values(), flags) if not f}
    out = run_members(
        member, batched, shared, sizes[0], model=model, key=(cov_types, maxiter, flags),
        batch_size=batch_size, progress=progress, label="fit_batch", shard=shard, gather=gather,
    )
    if isinstance(out, _distributed.NotGathered):  # gather="process0", and this is another process
        return out
    result = result_from_outputs(model, cov_types, out)
    return dataclasses.replace(
        result, input_code=jnp.asarray(codes), input_messages=messages, weights=w, data=data if data_batched else None
    )
