"""``simulation_study``: simulate from known parameters, refit in batch, check the inference.

"I would not trust any code not validated by simulation study": this draws ``n`` data sets
from the model's ``simulate`` at ``true_params`` (inside the compiled program, one key per
replicate), refits each with exact derivatives, and reports per parameter the mean estimate,
bias, empirical SD, mean standard error and Wald coverage for each covariance type, each with
its Monte-Carlo standard error:

* bias: ``SD / sqrt(R)``;
* empirical SD: ``SD / sqrt(2 (R - 1))`` (normal-theory);
* mean SE: ``SD(se) / sqrt(R)``;
* coverage ``c``: ``sqrt(c (1 - c) / R)``;

with ``R`` the number of replicates whose fit converged (the others are counted and left out).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
from jax.scipy.stats import norm

from ._batch import BatchResult, check_cov_types, check_maxiter, member_fit, result_from_outputs, run_members
from ._resampling import check_simulate, key_data, no_spread_message, simulated
from ._derivatives import _model_params
from ._distributed import NotGathered, check_gather
from ._format import format_table
from ._html import table as html_table
from ._model import Model

__all__ = ["SimulationStudy", "StudyTable", "simulation_study"]


@dataclasses.dataclass(frozen=True)
class StudyTable:
    """Per-parameter results of a simulation study (``str()`` is a table; ``to_dict()``)."""

    labels: tuple
    truth: np.ndarray
    mean: np.ndarray
    bias: np.ndarray
    bias_mcse: np.ndarray
    emp_sd: np.ndarray
    emp_sd_mcse: np.ndarray
    mean_se: dict  # cov_type -> (p,)
    mean_se_mcse: dict
    coverage: dict  # cov_type -> (p,)
    coverage_mcse: dict
    level: float
    n_ok: int
    n: int

    def to_dict(self) -> dict:
        plain = lambda v: {k: a.tolist() for k, a in v.items()} if isinstance(v, dict) else (v.tolist() if isinstance(v, np.ndarray) else v)  # noqa: E731
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)} | {"labels": list(self.labels)}

    def __str__(self) -> str:
        title, headers, rows, notes = _study_parts(self)
        return format_table(headers, rows, title) + "".join("\n" + n for n in notes)

    def _repr_html_(self) -> str:
        return html_table(*_study_parts(self))

    def to_frame(self) -> Any:
        """The table as a pandas DataFrame indexed by label: ``true``, ``mean``, ``bias``,
        ``bias mcse``, ``emp SD``, ``emp SD mcse``, then per cov_type ``SE <k>``,
        ``SE <k> mcse``, ``cover <k>``, ``cover <k> mcse`` (needs pandas)."""
        from ._pandas import require_pandas

        pd = require_pandas("StudyTable.to_frame()", "to_dict() or str()")
        cols = {"true": self.truth, "mean": self.mean, "bias": self.bias, "bias mcse": self.bias_mcse,
                "emp SD": self.emp_sd, "emp SD mcse": self.emp_sd_mcse}
        for k in self.coverage:
            cols.update({f"SE {k}": self.mean_se[k], f"SE {k} mcse": self.mean_se_mcse[k],
                         f"cover {k}": self.coverage[k], f"cover {k} mcse": self.coverage_mcse[k]})
        return pd.DataFrame(cols, index=list(self.labels))


@dataclasses.dataclass(frozen=True)
class SimulationStudy:
    """Refits of ``n`` simulated data sets; ``table()`` summarises them."""

    truth: np.ndarray  # (p,) natural scale, labels order
    fits: BatchResult
    alpha: float

    @property
    def labels(self) -> tuple[str, ...]:
        return self.fits.labels

    @property
    def ok(self) -> np.ndarray:
        return self.fits.usable

    @property
    def n_failed(self) -> int:
        return self.fits.n_failed

    def coverage(self, cov_type: Optional[str] = None, alpha: Optional[float] = None) -> np.ndarray:
        """Fraction of converged replicates whose Wald interval covers the true value."""
        return self._coverage(cov_type, self.alpha if alpha is None else alpha)[0]

    def _coverage(self, cov_type, alpha):
        ok = self.ok
        est = np.asarray(self.fits.params_flat, dtype=np.float64)[ok]
        se = np.asarray(self.fits.bse_flat_of(cov_type), dtype=np.float64)[ok]
        z = float(norm.ppf(1.0 - alpha / 2.0))
        covered = np.abs(est - self.truth) <= z * se  # a NaN SE never covers
        return covered.mean(axis=0), se

    def table(self) -> StudyTable:
        ok = self.ok
        R = int(ok.sum())
        if R < 2:
            raise ValueError(f"only {R} of {len(self.fits)} simulated fits converged: nothing to summarise")
        est = np.asarray(self.fits.params_flat, dtype=np.float64)[ok]
        sd = est.std(axis=0, ddof=1)
        mean_se, mean_se_mcse, cov, cov_mcse = {}, {}, {}, {}
        for c in self.fits.cov_types:
            cv, se = self._coverage(c, self.alpha)
            mean_se[c] = np.nanmean(se, axis=0)
            mean_se_mcse[c] = np.nanstd(se, axis=0, ddof=1) / np.sqrt(R)
            cov[c] = cv
            cov_mcse[c] = np.sqrt(cv * (1.0 - cv) / R)
        return StudyTable(
            labels=tuple(self.labels), truth=self.truth, mean=est.mean(axis=0), bias=est.mean(axis=0) - self.truth,
            bias_mcse=sd / np.sqrt(R), emp_sd=sd, emp_sd_mcse=sd / np.sqrt(2.0 * (R - 1)),
            mean_se=mean_se, mean_se_mcse=mean_se_mcse, coverage=cov, coverage_mcse=cov_mcse,
            level=1.0 - self.alpha, n_ok=R, n=len(self.fits),
        )

    def __repr__(self) -> str:
        return f"SimulationStudy(n={len(self.fits)}, failed={self.n_failed}, cov_types={self.fits.cov_types})"

    def plot(self, ax=None, **kwargs):
        """Coverage per parameter and cov_type with Monte-Carlo bands: ``ah.plot.coverage``
        (needs matplotlib)."""
        from .plot import coverage as draw

        return draw(self, ax, **kwargs)

    def _repr_html_(self) -> str:
        import html as _h

        head = f"<p>{_h.escape(repr(self))}</p>"
        return head + (self.table()._repr_html_() if int(np.sum(self.ok)) >= 2 else "")


def simulation_study(
    model: Model,
    true_params: Any = None,
    n: int = 1000,
    key: Any = None,
    *,
    cov_type: Any = ("hessian", "robust"),
    alpha: float = 0.05,
    start: Any = None,
    maxiter: int = 200,
    batch_size: Optional[int] = None,
    progress: Optional[bool] = None,
    shard: bool = True,
    gather: str = "all",
) -> SimulationStudy:
    """Simulate ``n`` data sets at ``true_params``, refit each, and check the inference.

    Args:
        model: an ``ah.Model`` with ``simulate`` (all zoo models have one); its data are the
            template (e.g. the design matrix is kept and ``y`` is redrawn).
        true_params: natural-scale parameters to simulate from (default: the model's initial
            values).
        n: number of simulated data sets.
        key: a JAX PRNG key or an integer seed.
        cov_type: covariance types whose Wald intervals are checked (``"hessian"``,
            ``"opg"``, ``"robust"``); all are computed from the same refits.
        alpha: Wald intervals at level ``1 - alpha``.
        start: starting values of every refit (default: ``true_params``).
        maxiter, batch_size, progress, shard, gather: as for ``fit_batch`` (``gather="process0"``:
            with several processes, the study on process 0 and an ``ah.NotGathered`` elsewhere).

    Returns:
        ``SimulationStudy``; ``table()`` gives bias, empirical SD, mean SE and coverage with
        Monte-Carlo standard errors.

    Example:
        >>> study = ah.simulation_study(ah.models.logistic(X, y), {"beta": beta}, n=2000, key=0)
        >>> print(study.table())
    """
    if not isinstance(model, Model):
        raise TypeError(f"simulation_study needs an ah.Model, got {type(model).__name__}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    gather = check_gather(gather)
    cov_types = check_cov_types(model, cov_type)
    maxiter = check_maxiter(maxiter)
    truth = model.init_params if true_params is None else _model_params(model, true_params, "true_params")
    model.spec.check_domain(truth, "true_params")
    init = truth if start is None else _model_params(model, start, "start")
    check_simulate(model, truth)
    raw = key_data(key, n, 2, " (a coverage or an empirical SD needs at least two simulated data sets)")
    one = member_fit(model, cov_types, maxiter)

    def member(k, s):
        return one(s["start"], simulated(model, k, s["truth"], s["data"]), None)

    out = run_members(
        member, raw, {"truth": truth, "start": init, "data": model.data}, int(n), model=model,
        key=("simulation", cov_types, maxiter), batch_size=batch_size, progress=progress,
        label="simulation_study", shard=shard, gather=gather,
    )
    if isinstance(out, NotGathered):  # gather="process0", and this is another process
        return out
    fits = result_from_outputs(model, cov_types, out)
    message = no_spread_message(np.asarray(fits.params_flat, dtype=np.float64)[np.asarray(fits.usable)], "simulation_study")
    if message is not None:
        raise ValueError(message)
    truth_flat = np.asarray(model.spec.flatten(truth, model.dtype), dtype=np.float64)
    return SimulationStudy(truth=truth_flat, fits=fits, alpha=float(alpha))


def _study_parts(t) -> tuple:
    """``(title, headers, rows, notes)`` of ``StudyTable`` (its text and HTML)."""
    kinds = list(t.coverage)
    headers = ["parameter", "true", "mean", "bias", "(mcse)", "emp SD", "(mcse)"]
    for k in kinds:
        headers += [f"SE {k}", f"cover {k}", "(mcse)"]
    rows = []
    for i, lab in enumerate(t.labels):
        row = [lab, t.truth[i], t.mean[i], t.bias[i], t.bias_mcse[i], t.emp_sd[i], t.emp_sd_mcse[i]]
        for k in kinds:
            row += [t.mean_se[k][i], t.coverage[k][i], t.coverage_mcse[k][i]]
        rows.append(row)
    title = (
        f"simulation study: {t.n_ok} of {t.n} fits converged; Wald coverage at nominal {t.level:.3g}"
    )
    return title, headers, rows, []
