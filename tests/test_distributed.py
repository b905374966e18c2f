"""Batched calls over several processes (``jax.distributed``) equal a one-process run.

The test starts 2 (and, marked slow, 4) processes on localhost itself: each runs
``tests/distributed_worker.py`` with gloo CPU collectives and 2 forced host devices, joins the
job at a free port and makes the same calls as ``distributed_worker.compute()`` makes here in
one process (the reference). Every subprocess has a timeout, so a hung collective fails the
test instead of hanging the suite.

Tolerance: EXACT (1e-12). A member's inputs (its key, its data row) and its per-member program
are the one-process run's; only the batch it shares a vmapped program with changes (its share,
padded and chunked differently), which changes no member's arithmetic, so the results agree to
rounding: measured identical (0 difference) on the CPU.
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
    """The same calls in this one process (``jax.process_count() == 1``: today's path)."""
    sys.path.insert(0, str(HERE))
    import distributed_worker

    return distributed_worker.compute()


def _check_equal(reference: dict, got: dict) -> None:
    got = dict(got)
    got.pop("local_members")
    assert set(got) == set(reference)
    for name, ref in reference.items():
        if ref.dtype.kind in "fc":
            np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(ref), err_msg=name)
            np.testing.assert_allclose(got[name], ref, rtol=EXACT, atol=0, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], ref, err_msg=name)


def _run_and_compare(n_proc: int, tmp_path, reference) -> None:
    results = _wait(_launch(n_proc, tmp_path), RUN_TIMEOUT_S)
    for i, (rc, stdout, stderr, _) in enumerate(results):
        assert rc == 0, f"process {i} exited with {rc}:\n{stderr[-3000:]}"
    for i in range(n_proc):
        with np.load(tmp_path / f"process_{i}.npz") as f:
            got = dict(f)
        # the work was split: each process ran its own 160 / n_proc replicates, not all 160
        assert int(got["local_members"]) == 160 // n_proc
        _check_equal(reference, got)
    # progress (asked for) is shown once, by process 0, for its share
    assert f"bootstrap: 160 members over {n_proc} processes; process 0 runs {160 // n_proc}" in results[0][2]
    assert all("members" not in r[2] for r in results[1:])


def test_two_processes_equal_one(tmp_path, reference):
    """Bootstrap (compacted stages in each share), fit_batch with two poisoned members (their
    statuses and reasons, on the process that did not fit them too), a simulation study and a
    profile (several rounds of batched refits) equal the one-process run on every process."""
    # the poisoned members are refused with their reasons, as in one process
    assert reference["batch_status"][3] == reference["batch_status"][8] != 0
    assert "not finite" in reference["batch_messages"][3] and "support" in reference["batch_messages"][8]
    assert (reference["batch_input_code"] == 0).sum() == 9
    _run_and_compare(2, tmp_path, reference)


@pytest.mark.slow
def test_four_processes_equal_one(tmp_path, reference):
    """Four processes, shares of 40 bootstrap replicates (one program, no stages) and of 3 data
    sets (the last share padded): still equal to the one-process run."""
    _run_and_compare(4, tmp_path, reference)


def test_a_dead_process_fails_the_others_clearly(tmp_path):
    """Process 1 is killed (SIGKILL) after computing its share, before the gather: process 0
    must exit with an error that says another process died, within DEATH_NOTICED_S, not hang."""
    results = _wait(_launch(2, tmp_path, "die"), RUN_TIMEOUT_S)
    rc1 = results[1][0]
    assert rc1 == -signal.SIGKILL
    rc0, _, stderr0, seconds0 = results[0]
    assert rc0 != 0, "process 0 finished although its peer died"
    assert not (tmp_path / "process_0.npz").exists()
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
    """Process 1 hangs (alive, never reaches the gather): with AUTOHESS_GATHER_TIMEOUT_S=20,
    process 0 raises TimeoutError naming the variable within ~20 s of its share, not never."""
    monkeypatch.setenv("AUTOHESS_GATHER_TIMEOUT_S", "20")
    procs = _launch(2, tmp_path, "hang")
    rc0, _, stderr0, _ = _wait(procs[:1], RUN_TIMEOUT_S)[0]
    procs[1].kill()
    procs[1].communicate()
    assert rc0 != 0
    assert "bootstrap: process 0 of 2 waited 20 s (AUTOHESS_GATHER_TIMEOUT_S)" in stderr0, stderr0[-3000:]
    assert "hung or died" in stderr0
