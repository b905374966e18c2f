"""Batched calls over several processes (``jax.distributed``) equal a one-process run.

The test starts 2 (and, marked slow, 4) processes on localhost itself: each runs
``tests/distributed_worker.py`` with gloo CPU collectives and 2 forced host devices, joins the
job at a free port and makes the same calls as ``distributed_worker.compute()`` makes here in
one process (the reference). Every subprocess has a timeout, so a hung collective fails the
test instead of hanging the suite.

Tolerance: EXACT (1e-12). A member's inputs (its key, its data row) and its per-member program
are the one-process run's; only the batch it shares a vmapped program with changes (its share,
padded, chunked and sharded differently), which changes no member's arithmetic beyond the
order of a vectorised reduction, so the results agree to rounding. Measured on the CPU: the
bootstrap, fit_batch and simulation results bit-equal, the profile's log-likelihoods within
7e-15 absolute (2e-16 relative) and its interval ends within 2e-16.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

#: every test here compares the compacted path of the batches too (run_members stages)
pytestmark = pytest.mark.compaction

from helpers import EXACT

HERE = pathlib.Path(__file__).parent
WORKER = HERE / "distributed_worker.py"
#: seconds a whole multi-process run may take: ~20-40 s of compilation and fitting per process
#: on the 2-core CI machine, loaded; a hang is caught well within this
RUN_TIMEOUT_S = 300
#: a dying peer must be noticed within this: gloo's closed connection fails the gather at once;
#: the heartbeat (distributed_worker.HEARTBEAT_S = 10 s) within ~2 heartbeats
DEATH_NOTICED_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    # each process: 2 CPU devices (local sharding inside each process's share), autohess from
    # this checkout
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _launch(n_proc: int, out_dir: pathlib.Path, scenario: str = "") -> list:
    port = _free_port()
    args = [[sys.executable, str(WORKER), str(port), str(n_proc), str(i), str(out_dir)] + ([scenario] if scenario else [])
            for i in range(n_proc)]
    return [subprocess.Popen(a, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in args]


def _wait(procs: list, timeout: float) -> list:
    """``(returncode, stdout, stderr, seconds)`` per process; kills all on a timeout (and fails)."""
    start = time.monotonic()
    out = []
    try:
        for p in procs:
            left = max(1.0, timeout - (time.monotonic() - start))
            stdout, stderr = p.communicate(timeout=left)
            out.append((p.returncode, stdout, stderr, time.monotonic() - start))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        tails = [(p.communicate()[1] or "")[-2000:] for p in procs]
        pytest.fail(f"the {len(procs)}-process run did not finish within {timeout} s (a hung collective?):\n"
                    + "\n---\n".join(tails))
    return out


@pytest.fixture(scope="module")
def reference():
    """The same calls in this one process (``jax.process_count() == 1``: today's path, which
    never enters the multi-process code: it raises here if it does)."""
    sys.path.insert(0, str(HERE))
    import distributed_worker

    from autohess import _distributed

    def never(*args, **kwargs):
        raise AssertionError("one process took the multi-process path")

    saved = _distributed.run_across_processes
    _distributed.run_across_processes = never
    try:
        return distributed_worker.compute()
    finally:
        _distributed.run_across_processes = saved


@pytest.mark.parametrize("size,n_proc", [(160, 2), (11, 4), (3, 4), (1, 2), (7, 3)])
def test_process_slices_cover_every_member_once(size, n_proc):
    """Shares are contiguous, in process order, cover 0..size-1 exactly once, and every process
    gathers the same ``per`` rows (a share of 0 members when size < processes)."""
    from autohess._distributed import process_slice

    shares = [process_slice(size, n_proc, i) for i in range(n_proc)]
    assert len({per for _, _, per in shares}) == 1
    per = shares[0][2]
    assert per * n_proc >= size > (per - 1) * n_proc
    members = [m for lo, hi, _ in shares for m in range(lo, hi)]
    assert members == list(range(size))
    for i, (lo, hi, _) in enumerate(shares):
        assert lo == min(i * per, size)  # row i * per of the gathered array is member lo


def test_gather_packs_and_unpacks_every_dtype_bit_for_bit():
    """The gather sends each output leaf's bytes side by side in one array; in one process the
    collective is the identity, so the round trip must return every leaf exactly (float64 with
    NaN and -0.0, int32, bool, a zero-width leaf, a (per, p, p) leaf)."""
    from autohess import _distributed

    per = 5
    rng = np.random.default_rng(1)
    tree = {
        "x": np.where(rng.uniform(size=(per, 3)) < 0.2, np.nan, rng.normal(size=(per, 3))),
        "cov": rng.normal(size=(per, 2, 2)),
        "status": rng.integers(-3, 9, size=per).astype(np.int32),
        "ok": rng.uniform(size=(per, 4)) < 0.5,
        "empty": np.zeros((per, 0)),
        "signed_zero": np.full((per,), -0.0),
    }
    back = _distributed._gather(tree, per, "test")
    for k, v in tree.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert back[k].tobytes() == v.tobytes(), k


def test_gather_in_pieces_is_the_same_and_a_dropping_process_keeps_nothing(monkeypatch):
    """Results travel in pieces of at most PIECE_BYTES per process (so a process that drops them,
    gather='process0', holds one piece at a time): pieces of 1, 2 and 3 rows of 7 reassemble
    bit for bit, one collective per piece; with keep=False nothing comes back."""
    from autohess import _distributed

    per = 7
    rng = np.random.default_rng(2)
    tree = {"x": rng.normal(size=(per, 3)), "code": rng.integers(0, 9, size=per).astype(np.int32)}
    width = 3 * 8 + 4
    calls = []
    real = _distributed._allgather

    def counting(host, label):
        calls.append(host.shape)
        return real(host, label)

    monkeypatch.setattr(_distributed, "_allgather", counting)
    for rows in (1, 2, 3):
        calls.clear()
        monkeypatch.setattr(_distributed, "PIECE_BYTES", rows * width)
        back = _distributed._gather(tree, per, "test")
        assert [c[0] for c in calls] == [min(rows, per - lo) for lo in range(0, per, rows)]
        for k, v in tree.items():
            assert back[k].tobytes() == v.tobytes(), (rows, k)
        assert _distributed._gather(tree, per, "test", keep=False) is None


def test_gather_option_is_checked_and_not_gathered_says_where_the_results_are():
    """gather= takes 'all' or 'process0' (anything else raises naming both); with one process
    'process0' is 'all' (process 0 is everyone). On the other processes the result is a falsy
    NotGathered whose attributes raise, naming the call, the process and what to do."""
    import jax
    import autohess as ah
    from distributed_worker import problems

    model = problems()[0]
    res = ah.fit(model)
    for bad in ("process_0", "first", None, 0):
        with pytest.raises(ValueError, match="give 'all'.*or 'process0'"):
            ah.bootstrap(res, n=4, key=1, gather=bad)
        with pytest.raises(ValueError, match="gather="):
            ah.simulation_study(model, n=4, key=1, gather=bad)
    one = ah.bootstrap(res, n=4, key=jax.random.key(3), gather="process0")
    assert isinstance(one, ah.BootstrapResult)
    np.testing.assert_array_equal(one.replicates, ah.bootstrap(res, n=4, key=jax.random.key(3)).replicates)
    nothing = ah.NotGathered("bootstrap", 1, 4)
    assert not nothing
    with pytest.raises(AttributeError, match=r"bootstrap\(\.\.\., gather='process0'\).*process 1 of 4.*no \.se.*"
                                             r"jax.process_index\(\) == 0.*gather='all'"):
        nothing.se
    assert not hasattr(nothing, "replicates")


def _check_equal(reference: dict, got: dict) -> None:
    got = dict(got)
    got.pop("local_members")
    assert set(got) <= set(reference) and {k for k in reference if k.startswith(("boot_", "batch_"))} <= set(got)
    for name, ref in ((k, reference[k]) for k in got):
        if ref.dtype.kind in "fc":
            np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(ref), err_msg=name)
            np.testing.assert_allclose(got[name], ref, rtol=EXACT, atol=0, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], ref, err_msg=name)


def _check_process0_only(i: int, n_proc: int, reference: dict, got: dict) -> None:
    """gather='process0' (``distributed_worker.process0_calls``, pieces of 4096 bytes per
    process): process 0 has the one-process results (1e-12, as above); every other process has
    an ah.NotGathered that says where the results are, and no collective handed it more than
    one piece from each process (bounded memory), over several pieces."""
    p0 = {k: got.pop(k) for k in list(got) if k.startswith("p0_")}
    assert int(p0["p0_held_bytes"]) <= n_proc * 4096
    assert int(p0["p0_collectives"]) > 4  # headers + several pieces per call
    if i == 0:
        for name, ref in [("p0_boot_replicates", "boot_replicates"), ("p0_boot_se", "boot_se"),
                          ("p0_batch_params", "batch_params"), ("p0_batch_status", "batch_status")]:
            np.testing.assert_allclose(p0[name], reference[ref], rtol=EXACT, atol=0, equal_nan=True, err_msg=name)
    else:
        assert p0["p0_types"].tolist() == ["NotGathered", "NotGathered"]
        assert f"process {i} of {n_proc}, which holds none (no .se)" in str(p0["p0_message"])


def _run_and_compare(n_proc: int, tmp_path, reference, scenario: str = "") -> None:
    results = _wait(_launch(n_proc, tmp_path, scenario), RUN_TIMEOUT_S)
    for i, (rc, stdout, stderr, _) in enumerate(results):
        assert rc == 0, f"process {i} exited with {rc}:\n{stderr[-3000:]}"
    for i in range(n_proc):
        with np.load(tmp_path / f"process_{i}.npz") as f:
            got = dict(f)
        # the work was split: each process ran its own 160 / n_proc replicates, not all 160
        assert int(got["local_members"]) == 160 // n_proc
        _check_process0_only(i, n_proc, reference, got)
        _check_equal(reference, got)
    # progress (asked for) is shown once, by process 0, for its share
    assert f"bootstrap: 160 members over {n_proc} processes; process 0 runs {160 // n_proc}" in results[0][2]
    assert all("members" not in r[2] for r in results[1:])


def test_two_processes_equal_one(tmp_path, reference):
    """Bootstrap (compacted stages in each share), fit_batch with two poisoned members (their
    statuses and reasons, on the process that did not fit them too), a simulation study and a
    profile (several rounds of batched refits) equal the one-process run on every process (1e-12)."""
    # the poisoned members are refused with their reasons, as in one process
    assert reference["batch_status"][3] == reference["batch_status"][8] != 0
    assert "not finite" in reference["batch_messages"][3] and "support" in reference["batch_messages"][8]
    assert (reference["batch_input_code"] == 0).sum() == 9
    _run_and_compare(2, tmp_path, reference)


@pytest.mark.slow
def test_four_processes_equal_one(tmp_path, reference):
    """Four processes, shares of 40 bootstrap replicates (one program, no stages) and of 3 data
    sets (the last share padded): still equal to the one-process run (the bootstrap and
    fit_batch; the simulation study and the profile split the same way and are compared with
    two processes). Slow: four processes compile on two cores."""
    _run_and_compare(4, tmp_path, reference, "batches")


def test_a_dead_process_fails_the_others_clearly(tmp_path):
    """Process 1 is killed (SIGKILL) after computing its share, before the gather: process 0
    must exit with an error that says another process died, within DEATH_NOTICED_S, not hang."""
    results = _wait(_launch(2, tmp_path, "die"), RUN_TIMEOUT_S)
    rc1 = results[1][0]
    assert rc1 == -signal.SIGKILL
    rc0, _, stderr0, seconds0 = results[0]
    # it raised (the worker prints the RuntimeError and exits with 3; jax.distributed's shutdown
    # may then abort the process instead, its peer being gone): not a clean exit either way
    assert rc0 != 0, "process 0 finished although its peer died"
    assert "process 0: RuntimeError: " in stderr0, stderr0[-3000:]
    # process 0 fails at its first gather after the death: gloo's connection to the dead peer is
    # closed, and the error autohess raises names the call, the likely cause and what to do
    assert "bootstrap: process 0 of 2 could not gather the results of the other processes" in stderr0, stderr0[-3000:]
    assert "died or was killed" in stderr0 and "Restart the job" in stderr0
    # process 1 died after a share computed in well under this; process 0 noticed at once
    assert seconds0 < DEATH_NOTICED_S + results[1][3], seconds0


def test_processes_in_different_calls_raise_instead_of_hanging(tmp_path):
    """Process 1 asks for 21 bootstrap replicates, process 0 for 20: both raise, naming the
    sizes, before any work (a gather of unequal shapes would hang or mix results)."""
    results = _wait(_launch(2, tmp_path, "mismatch"), RUN_TIMEOUT_S)
    for rc, _, stderr, _ in results:
        assert rc == 3, stderr[-3000:]
        assert "bootstrap: the 2 processes are not in the same batched call (sizes per process [20, 21])" in stderr


@pytest.mark.slow
def test_a_hung_process_times_out_with_autohess_gather_timeout(tmp_path, monkeypatch):
    """Process 1 hangs (alive, never reaches the gather): with AUTOHESS_GATHER_TIMEOUT_S=6,
    process 0 raises TimeoutError naming the variable within ~6 s of its share, not never."""
    # process 0 computes its share after the header (which both reach), then waits this long
    monkeypatch.setenv("AUTOHESS_GATHER_TIMEOUT_S", "6")
    procs = _launch(2, tmp_path, "hang")
    rc0, _, stderr0, _ = _wait(procs[:1], RUN_TIMEOUT_S)[0]
    procs[1].kill()
    procs[1].communicate()
    assert rc0 != 0
    assert "bootstrap: process 0 of 2 waited 6 s (AUTOHESS_GATHER_TIMEOUT_S)" in stderr0, stderr0[-3000:]
    assert "hung or died" in stderr0


@pytest.mark.parametrize("value,ok", [("", None), ("  ", None), ("12.5", 12.5), ("abc", False), ("0", False), ("-3", False)])
def test_gather_timeout_variable_is_checked(monkeypatch, value, ok):
    """AUTOHESS_GATHER_TIMEOUT_S: unset / blank waits as long as needed; a positive number is
    the limit; anything else raises naming the variable (not a silent default)."""
    from autohess import _distributed

    monkeypatch.setenv("AUTOHESS_GATHER_TIMEOUT_S", value)
    if ok is False:
        with pytest.raises(ValueError, match=f"AUTOHESS_GATHER_TIMEOUT_S={value!r}"):
            _distributed._timeout()
    else:
        assert _distributed._timeout() == ok
