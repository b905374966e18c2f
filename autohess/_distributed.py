"""Batched calls over several processes (``jax.distributed``): split, run locally, gather.

When ``jax.process_count() > 1`` (the script was started once per process or host and each
called ``jax.distributed.initialize()``), ``run_members`` hands its members to
``run_across_processes``; with one process nothing here runs and today's path is taken as it
was. Every batched entry point goes through ``run_members``, so ``fit_batch``, ``bootstrap``,
``simulation_study`` and ``profile`` spread over all processes' devices without a new argument.

Design: each process takes a contiguous slice of the member range and runs it on its own
addressable devices with the one-process machinery (chunks, padding, local sharding, staged
compaction of stragglers); then one collective gathers every process's outputs to every
process. Why this and not one global array sharded over a global mesh:

* A member's inputs (its key, its data row, its start) are the rows the one-process run would
  give it, and its program is the same per-member computation, so its results are those of a
  one-process run (equal to rounding, 1e-12: a vmapped program's per-member results do not
  depend on which other members share its batch beyond the order of a vectorised reduction;
  on the CPU bootstrap, fit_batch and simulation results come out bit-equal, profile
  log-likelihoods within 2e-16 relative), whatever the process count.
* Compaction stays local: between stages the host looks at which members are still running
  and gathers them into a smaller batch. Over a global mesh every stage would be a collective,
  and one process's stragglers would hold every other process at each stage; here a process
  whose members finish early simply waits once, at the final gather.
* The gather is a single ``process_allgather`` of one byte array per process: every output
  leaf (float64, int32, bool) is viewed as bytes and the rows packed side by side, so the
  results arrive bit for bit and cost one collective (and one compiled program per byte
  width), not one per leaf of the diagnostics pytree.

Results come back to every process by default: the bootstrap's summaries, a profile's next
grid and the simulation table are computed from all members on each process, so every process
continues with the same state. ``gather="process0"`` (``fit_batch``, ``bootstrap``,
``simulation_study``) keeps them on process 0 only, for memory: the others return a
``NotGathered`` whose every attribute raises, naming the option. The bytes still travel through
the same collective (one all-gather is the only collective the CPU and GPU backends share), but
in pieces of at most ``PIECE_BYTES`` per process that the other processes drop at once, so
their peak memory is one piece, not ``B`` members' results. A profile always gathers to every
process: its next grid needs every member, and a grid is small.

Data: keys (bootstrap, simulation) are tiny and each process generates its members' data on
its devices from them; a data batch given on the host (``fit_batch``) is staged on the CPU
backend (``host_staging``), so a process copies only its own rows to its accelerator.

Progress is shown by process 0 only (for its own share). A member that fails is a status, as in
one process; nothing stops another process. Every process must make the same calls in the
same order with the same sizes (as any multi-controller JAX program): a short header is
gathered first and a mismatch raises, naming the call and the sizes, instead of hanging. A
process that dies makes the others fail: a gather whose peer's connection closed raises at once
(the error names the likely cause); one that dies before the first collective is caught by
``jax.distributed``'s heartbeat, which terminates the survivors with "another task died"
(``heartbeat_timeout_seconds`` of ``jax.distributed.initialize``). A peer that hangs without
dying is caught by ``AUTOHESS_GATHER_TIMEOUT_S`` (seconds; unset: wait as long as needed, as a
slow share is not a dead one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import threading
import zlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GATHER", "NotGathered", "active", "check_gather", "host_staging", "process_slice",
           "run_across_processes"]

#: environment variable: seconds a process waits at a gather before it gives up on its peers
TIMEOUT_ENV = "AUTOHESS_GATHER_TIMEOUT_S"
#: where a batched call's results go with several processes: every process, or process 0 only
GATHER = ("all", "process0")
#: bytes per process in one gather collective: results are gathered piece by piece, so a
#: process that drops them (``gather="process0"``) holds at most one piece of everyone's at a time
PIECE_BYTES = 32 << 20


def check_gather(gather: Any) -> str:
    """``gather`` checked: ``"all"`` or ``"process0"``."""
    if not isinstance(gather, str) or gather not in GATHER:
        raise ValueError(
            f"gather={gather!r}: give 'all' (every process gets every member's results; the default) "
            "or 'process0' (only process 0 gets them and the other processes get an ah.NotGathered, "
            "which saves their memory); with one process both are the same"
        )
    return gather


@dataclasses.dataclass(frozen=True)
class NotGathered:
    """What ``fit_batch``, ``bootstrap`` and ``simulation_study`` return on every process but 0
    when called with ``gather="process0"`` under ``jax.distributed``: the results were gathered
    to process 0 only. It is falsy, and reading any result attribute raises ``AttributeError``
    saying where the results are.

    Attributes:
        call: the batched call (``"bootstrap"``, ...).
        process_index: this process.
        process_count: the number of processes.
    """

    call: str
    process_index: int
    process_count: int

    def __bool__(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe for dunders: the usual answer
            raise AttributeError(name)
        raise AttributeError(
            f"{self.call}(..., gather='process0') gathered its results to process 0 only; this is "
            f"process {self.process_index} of {self.process_count}, which holds none (no .{name}). "
            f"Read them on process 0 (`if jax.process_index() == 0:`), or call {self.call} with "
            "gather='all' to get them on every process"
        )


def active() -> bool:
    """Whether batched calls are split over processes (``jax.distributed`` with several)."""
    return jax.process_count() > 1


def host_staging() -> contextlib.AbstractContextManager:
    """Arrays created inside stay in host memory (the CPU backend) when several processes run,
    so a batch given on the host is not copied whole to each process's accelerator before it
    is split; with one process, nothing changes."""
    if not active():
        return contextlib.nullcontext()
    return jax.default_device(jax.local_devices(backend="cpu")[0])


def process_slice(size: int, n_processes: int, index: int) -> tuple[int, int, int]:
    """``(lo, hi, per)``: process ``index`` of ``n_processes`` runs members ``lo:hi`` of
    ``size``, padded to ``per = ceil(size / n_processes)`` rows (every process gathers the same
    shape; the padding rows repeat a real member and are dropped)."""
    per = int(math.ceil(size / n_processes))
    lo = min(index * per, size)
    return lo, min(lo + per, size), per


def run_across_processes(
    run_local: Callable[[Any, int, Optional[bool]], Any], batched: Any, size: int, *,
    progress: Optional[bool], label: str, gather: str = "all",
) -> Any:
    """Members ``0..size-1`` split over processes; every process gets all ``size`` outputs
    (``gather="all"``), or process 0 gets them and the others a ``NotGathered`` (``"process0"``).

    ``run_local(part, n, progress)`` runs ``n`` members (``part``'s leaves have a leading axis
    of ``n``) on this process's devices and returns their outputs with that leading axis.
    """
    n_proc, me = jax.process_count(), jax.process_index()
    lo, hi, per = process_slice(size, n_proc, me)
    _check_same_call(label, size)
    # this process's rows, copied to the host (a key or a row of data each); a share shorter
    # than ``per`` (the last process's, or an empty one when size < processes) repeats its last
    # member, or the batch's last
    start, stop = (lo, hi) if hi > lo else (size - 1, size)
    take = np.minimum(np.arange(per), stop - start - 1)
    part = jax.tree_util.tree_map(lambda a: np.asarray(a[start:stop])[take], batched)
    show = None if progress is None else bool(progress)
    if me != 0:
        show = False  # one progress line for the job, not one per process
    elif show is not False and (show or sys.stderr.isatty()):
        sys.stderr.write(f"{label}: {size} members over {n_proc} processes; process 0 runs {hi - lo}\n")
    out = run_local(part, per, show)
    gathered = _gather(out, per, label, keep=gather == "all" or me == 0)
    if gathered is None:
        return NotGathered(label, me, n_proc)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a[:size]), gathered)


def _check_same_call(label: str, size: int) -> None:
    """Every process must be in the same batched call with the same size: compare a header."""
    tag = zlib.crc32(label.encode())
    header = np.array([[size, tag]], np.int64)
    every = _allgather(header, label)
    if not (every == header).all():
        sizes = every[:, 0].tolist()
        same_label = bool((every[:, 1] == tag).all())
        raise RuntimeError(
            f"{label}: the {len(sizes)} processes are not in the same batched call "
            f"({'sizes per process ' + str(sizes) if same_label else 'different calls'}); every "
            "process must run the same autohess calls, in the same order, with the same n, data "
            "batch and key (a multi-process JAX script runs the same program everywhere)"
        )


def _gather(out: Any, per: int, label: str, keep: bool = True) -> Any:
    """Every process's ``(per, ...)`` outputs, concatenated in process order, on every process
    that ``keep``s them (``None`` on the others): collectives of the leaves' bytes, in pieces of
    at most ``PIECE_BYTES`` rows' worth per process, unpacked bit for bit."""
    leaves, treedef = jax.tree_util.tree_flatten(out)
    hosts = [np.ascontiguousarray(np.asarray(a)) for a in leaves]
    blocks = [h.reshape(per, -1).view(np.uint8) if h.size else np.zeros((per, 0), np.uint8) for h in hosts]
    packed = np.concatenate(blocks, axis=1) if blocks else np.zeros((per, 0), np.uint8)
    # every process has the same ``per`` and row width (the header check), so the same pieces
    rows = max(1, PIECE_BYTES // max(1, packed.shape[1]))
    pieces = []
    for lo in range(0, per, rows):
        got = _allgather(packed[lo:lo + rows], label)  # (processes * rows here, width)
        if keep:
            pieces.append(got.reshape(-1, min(rows, per - lo), packed.shape[1]))
    if not keep:
        return None
    every = np.concatenate(pieces, axis=1).reshape(-1, packed.shape[1])
    total = every.shape[0]
    unpacked, at = [], 0
    for h, b in zip(hosts, blocks):
        width = b.shape[1]
        raw = np.ascontiguousarray(every[:, at:at + width])
        unpacked.append(raw.view(h.dtype).reshape((total,) + h.shape[1:]) if h.size else
                        np.zeros((total,) + h.shape[1:], h.dtype))
        at += width
    return treedef.unflatten(unpacked)


def _timeout() -> Optional[float]:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: give a number of seconds (or leave it unset)") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: give a positive number of seconds (or leave it unset)")
    return value


def _allgather(host: np.ndarray, label: str) -> np.ndarray:
    """``process_allgather(host, tiled=True)`` with the failures a user meets named: a peer that
    died (its connection closed) and, with ``AUTOHESS_GATHER_TIMEOUT_S``, a peer that never
    arrives."""
    from jax.experimental import multihost_utils

    n_proc, me = jax.process_count(), jax.process_index()
    box: dict = {}

    def work():
        try:
            box["out"] = multihost_utils.process_allgather(host, tiled=True)
        except Exception as e:  # noqa: BLE001  (re-raised in the caller's thread below)
            box["error"] = e

    timeout = _timeout()
    if timeout is None:
        work()
    else:
        # the collective cannot be cancelled; a daemon thread lets this process raise and exit
        thread = threading.Thread(target=work, name=f"autohess-gather-{label}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(
                f"{label}: process {me} of {n_proc} waited {timeout:g} s ({TIMEOUT_ENV}) for the other "
                "processes' results; one of them has hung or died (see its log). Restart the job; "
                f"if a process's share only takes longer than that, raise {TIMEOUT_ENV}"
            )
    if "error" in box:
        e = box["error"]
        raise RuntimeError(
            f"{label}: process {me} of {n_proc} could not gather the results of the other processes: "
            "most likely one of them died or was killed (see its log; the cause is there, not here). "
            f"Restart the job. The collective said: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    return box["out"]
