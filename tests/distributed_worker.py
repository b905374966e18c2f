"""One process of the multi-process tests (``tests/test_distributed.py``); not a test file.

``python tests/distributed_worker.py PORT N_PROCESSES PROCESS_ID OUT_DIR [SCENARIO]`` joins a
``jax.distributed`` job on localhost (gloo CPU collectives, the devices XLA_FLAGS forces),
runs ``compute()`` (the same calls a one-process run makes, in ``test_distributed.py``'s own
process, as the reference) and saves every process's results to ``OUT_DIR/process_<id>.npz``.
SCENARIO ``batches``: only the bootstrap and ``fit_batch`` of ``compute()``; ``die``: process 1 kills itself (SIGKILL) once its share is computed, before the
gather, so the test can check that the others fail with a clear error instead of hanging;
``hang``: process 1 sleeps there instead (process 0 has ``AUTOHESS_GATHER_TIMEOUT_S``);
``mismatch``: process 1 asks for one bootstrap replicate more than process 0.
Besides the results, ``local_members`` is how many members this process ran and gathered in
the bootstrap (its share, not the whole batch).
"""

import os
import signal
import sys
import time

#: jax.distributed's heartbeat: a process that dies before any collective is noticed by the
#: coordination service within about twice this (default 100 s; the test's timeout is tighter)
HEARTBEAT_S = 10
#: how long a process waits at exit for the others to exit too (default 300 s): a process that
#: gave up on a hung peer (AUTOHESS_GATHER_TIMEOUT_S) would otherwise wait that long there
SHUTDOWN_S = 10


def problems():
    """Small problems whose fits, bootstraps, simulations and profiles the test compares."""
    import jax.numpy as jnp
    import numpy as np

    import autohess as ah

    rng = np.random.default_rng(20261201)
    n = 80
    X = np.c_[np.ones(n), rng.normal(size=(n, 2))]
    beta = np.array([-0.2, 0.9, -0.5])
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ beta))).astype(float)
    model = ah.models.logistic(X, y)
    # a data batch of 11 Poisson data sets (not a multiple of 2 or 4 processes: padded shares)
    B, m = 11, 40
    Xp = np.c_[np.ones(m), rng.normal(size=m)]
    ys = rng.poisson(np.exp(Xp @ np.array([0.5, 0.3])), size=(B, m)).astype(float)
    ys[3, 7] = np.nan  # poisoned: non-finite data, refused on the host
    ys[8, 2] = -1.0  # poisoned: outside the Poisson support
    pois = ah.models.poisson(Xp, ys[0])
    data_batch = {k: jnp.broadcast_to(v, (B,) + v.shape) for k, v in pois.data.items()}
    data_batch = {**data_batch, "y": ys}
    from jax.scipy.special import gammaln
    data_batch["log_y_factorial"] = np.asarray(gammaln(np.where(np.isfinite(ys) & (ys >= 0), ys, 0.0) + 1.0))
    return model, pois, data_batch


def compute(progress=None, batches_only=False):
    """The calls under test; returns flat ``{name: array}`` of every result compared.
    ``batches_only``: the bootstrap and ``fit_batch`` only (their shares and padding), not the
    simulation study and the profile (their programs: most of a process's compilation)."""
    import jax
    import numpy as np

    import autohess as ah

    model, pois, data_batch = problems()
    res = ah.fit(model)
    out = {}
    # 160 replicates: a share of 80 (2 processes) or 40 (4) per process; 80 and 160 run in
    # compacted stages (64 members or more), 40 in one program: both paths are compared
    boot = ah.bootstrap(res, n=160, key=jax.random.key(7), progress=progress)
    out["boot_replicates"] = np.asarray(boot.replicates)
    out["boot_status"] = np.asarray(boot.fits.status_code)
    out["boot_iterations"] = np.asarray(boot.fits.iterations)
    out["boot_bse"] = np.asarray(boot.fits.bse_flat)
    out["boot_se"] = np.asarray(boot.se_flat)
    bres = ah.fit_batch(pois, data_batch, cov_type=("hessian", "robust"))
    out["batch_params"] = np.asarray(bres.params_flat)
    out["batch_robust"] = np.asarray(bres.cov_params("robust"))
    out["batch_status"] = np.asarray(bres.status_code)
    out["batch_input_code"] = np.asarray(bres.input_code)
    out["batch_messages"] = np.array(bres.status)
    if batches_only:
        return out
    study = ah.simulation_study(model, {"beta": np.array([-0.2, 0.9, -0.5])}, n=12, key=3)
    out["study_params"] = np.asarray(study.fits.params_flat)
    out["study_bse"] = np.asarray(study.fits.bse_flat)
    out["study_coverage"] = np.asarray(study.coverage("robust"))
    prof = ah.profile(res, "beta[1]", n_grid=7, refine=2)
    out["profile_values"] = np.asarray(prof.values)
    out["profile_llf"] = np.asarray(prof.llf)
    out["profile_interval"] = np.asarray(prof.interval)
    return out


def process0_calls(piece_bytes=4096):
    """The bootstrap and fit_batch of ``compute()`` again with ``gather="process0"``, results
    gathered in pieces of ``piece_bytes`` per process: process 0 keeps them (``p0_*`` arrays to
    compare with the reference), the others record what they got (``ah.NotGathered``, its
    message) and the most bytes one collective handed them (``p0_held_bytes``)."""
    import jax
    import numpy as np

    import autohess as ah
    from autohess import _distributed

    model, pois, data_batch = problems()
    res = ah.fit(model)
    held = []
    real, saved = _distributed._allgather, _distributed.PIECE_BYTES

    def holding(host, label):
        got = real(host, label)
        held.append(got.nbytes)
        return got

    _distributed._allgather, _distributed.PIECE_BYTES = holding, piece_bytes
    try:
        boot = ah.bootstrap(res, n=160, key=jax.random.key(7), gather="process0")
        bres = ah.fit_batch(pois, data_batch, cov_type=("hessian", "robust"), gather="process0")
    finally:
        _distributed._allgather, _distributed.PIECE_BYTES = real, saved
    out = {"p0_held_bytes": np.array(max(held)), "p0_collectives": np.array(len(held))}
    if jax.process_index() == 0:
        out["p0_boot_replicates"] = np.asarray(boot.replicates)
        out["p0_boot_se"] = np.asarray(boot.se_flat)
        out["p0_batch_params"] = np.asarray(bres.params_flat)
        out["p0_batch_status"] = np.asarray(bres.status_code)
    else:
        out["p0_types"] = np.array([type(boot).__name__, type(bres).__name__])
        try:
            boot.se
        except AttributeError as e:
            out["p0_message"] = np.array(str(e))
    return out


def main():
    port, n_proc, proc_id, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    scenario = sys.argv[5] if len(sys.argv) > 5 else ""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n_proc,
                               process_id=proc_id, heartbeat_timeout_seconds=HEARTBEAT_S,
                               shutdown_timeout_seconds=SHUTDOWN_S)
    import autohess as ah  # noqa: F401
    from autohess import _distributed

    assert jax.process_count() == n_proc and jax.process_index() == proc_id
    if scenario in ("die", "hang") and proc_id == 1:
        def stop(*args, **kwargs):
            if scenario == "die":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)

        _distributed._gather = stop
    import numpy as np

    if scenario and scenario != "batches":
        # the failure scenarios need one small batched call (20 members: one program, few
        # compilations), not compute()'s
        model = problems()[0]
        try:
            ah.bootstrap(ah.fit(model), n=20 + (proc_id if scenario == "mismatch" else 0), key=1)
        except RuntimeError as e:
            print(f"process {proc_id}: RuntimeError: {e}", file=sys.stderr, flush=True)
            sys.exit(3)
        sys.exit(0)
    shares = {}
    gather = _distributed._gather

    def recording(out, per, label, keep=True):
        shares.setdefault(label, per)  # rows this process ran in its first call of ``label``
        return gather(out, per, label, keep)

    _distributed._gather = recording
    result = compute(progress=True, batches_only=scenario == "batches")
    result["local_members"] = np.array(shares["bootstrap"])
    result.update(process0_calls())
    np.savez(os.path.join(out_dir, f"process_{proc_id}.npz"), **result)
    print(f"process {proc_id}: done", flush=True)


if __name__ == "__main__":
    main()
