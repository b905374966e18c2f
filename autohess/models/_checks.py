"""Shape and support checks shared by the zoo constructors."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .._pandas import host_array, is_pandas
from .._validation import cast_data


def design(X: Any, y: Any, model: str, y_name: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """``X`` as a 2-D float array and ``y`` as 1-D, with matching numbers of rows.

    Integer and boolean ``X`` and ``y`` become float64 here (``ah.Model`` keeps integer data
    as it is, for indexing; the zoo's likelihoods only do arithmetic with them), with a
    warning if an integer does not survive the cast. pandas inputs are converted once.
    """
    X = _float(X, f"{model}: X")
    y = _float(y, f"{model}: {y_name}")
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"{model}: X must be 2-D (observations x regressors), got shape {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"{model}: {y_name} must be 1-D, got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{model}: X has {X.shape[0]} rows but {y_name} has {y.shape[0]} entries; "
            "they must describe the same observations"
        )
    if X.shape[0] == 0:
        raise ValueError(f"{model}: no observations (X has 0 rows)")
    return X, y


def beta_names(X: Any) -> Optional[dict]:
    """``{"beta": X.columns}`` when ``X`` is a pandas DataFrame (labels ``beta[age]``), else None."""
    cols = getattr(X, "columns", None) if is_pandas(X) else None
    return None if cols is None else {"beta": tuple(str(c) for c in cols)}


def _float(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(host_array(value, name)[0])
    if arr.dtype.kind not in "biuf":
        first = arr.reshape(-1)[0].item() if arr.size else None
        short = name.rsplit(": ", 1)[-1]
        raise TypeError(
            f"{name} must be numeric, got dtype {arr.dtype} (first entry {first!r}). Code labels "
            f"as numbers before building the model, e.g. ({short} == {first!r}).astype(float) for "
            "a 0/1 outcome"
        )
    if arr.dtype.kind in "biu":
        arr = np.asarray(cast_data(arr, np.dtype(np.float64), name))
    return arr


def support(values: np.ndarray, ok: np.ndarray, model: str, name: str, what: str) -> None:
    """Raise ``ValueError`` naming how many entries of ``name`` violate ``what``."""
    bad = np.flatnonzero(~ok & np.isfinite(values))
    if bad.size:
        raise ValueError(
            f"{model}: {name} must be {what}; {bad.size} entries are not "
            f"(first at index {bad[0]}: {values[bad[0]]!r})"
        )


def vector(value: Optional[Any], n: int, model: str, name: str, why: str) -> np.ndarray:
    """A float64 vector of length ``n`` (zeros when ``value`` is None); ``why`` says whence ``n``."""
    if value is None:
        return np.zeros(n)
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{model}: {name} has shape {arr.shape}, expected ({n},): {why}")
    return arr


def coef(value: Optional[Any], p: int, model: str, name: str = "beta") -> np.ndarray:
    """Initial coefficient vector of length ``p`` (zeros by default)."""
    return vector(value, p, model, f"initial {name}", f"X has {p} columns")


def with_support(model: Any, support_fn: Callable[[Any], Any]) -> Any:
    """Declare a zoo model's ``support`` hook (``Model(support=)``) after construction.

    The constructors have already checked the same conditions on their data with numpy (and
    named the array and first bad index), so the hook is attached without running it again:
    compiling it costs ~50 ms per data shape. ``fit_batch`` evaluates it per member, and
    ``model.with_data`` checks new data against it.
    """
    model.support_fn = support_fn
    return model
