"""pandas in and out, without importing pandas.

pandas is optional and ``import autohess`` must not import it. A pandas object can only reach
autohess if the user's program imported pandas first, so ``sys.modules`` is where to look: no
import is ever attempted for input, and the labelled-frame outputs import it only when asked.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Optional

import numpy as np

__all__ = ["is_pandas", "host_array", "require_pandas"]


def is_pandas(x: Any) -> bool:
    """Whether ``x`` is a pandas ``DataFrame``, ``Series`` or ``Index``."""
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(x, (pd.DataFrame, pd.Series, pd.Index))


def require_pandas(what: str, instead: str) -> Any:
    """The pandas module, or an ``ImportError`` saying which call needs it and what to call
    without pandas."""
    try:
        import pandas
    except ImportError as err:
        raise ImportError(
            f"{what} returns a pandas DataFrame, but pandas is not installed: pip install pandas, "
            f"or use {instead}"
        ) from err
    return pandas


def _column(col: Any, name: str) -> np.ndarray:
    """One Series as a numpy array, refusing what cannot be numeric data (naming it)."""
    dt = col.dtype
    kind = getattr(dt, "kind", "O")
    if str(dt) == "category":
        raise TypeError(
            f"{name} is categorical: autohess needs numbers; pass its integer codes "
            "(.cat.codes) or dummy columns (pd.get_dummies)"
        )
    if kind not in "biuf":  # object, string, datetime, timedelta, complex, ...
        raise TypeError(
            f"{name} has dtype {dt}, not a number (text or dates?): encode it as numbers "
            "(pd.factorize for codes, pd.get_dummies for indicators) or drop it"
        )
    missing = np.asarray(col.isna())
    if missing.any():
        first = int(np.argmax(missing))
        label = col.index[first]
        label = label.item() if hasattr(label, "item") else label  # 7, not np.int64(7)
        raise ValueError(
            f"{name} has {int(missing.sum())} missing values (NaN / pd.NA) of {missing.size}; the "
            f"first in row {first} (index label {label!r}). Drop or impute those "
            "observations before building the model."
        )
    # nullable dtypes (Int64, Float64, boolean) carry their plain numpy dtype
    return col.to_numpy(dtype=getattr(dt, "numpy_dtype", None))


def host_array(x: Any, name: str) -> tuple[Any, Optional[tuple[str, ...]]]:
    """``(array, columns)``: a pandas object as numpy (index ignored, a DataFrame's column names
    kept as strings); anything else is returned as it is, with ``columns`` None.

    Text, categorical and date columns raise ``TypeError``, missing values ``ValueError``, each
    naming ``name`` and the column.
    """
    if not is_pandas(x):
        return x, None
    pd = sys.modules["pandas"]
    if isinstance(x, pd.DataFrame):
        columns = tuple(str(c) for c in x.columns)
        if len(set(columns)) != len(columns):
            dup = sorted({c for c in columns if columns.count(c) > 1})
            raise ValueError(f"{name} has duplicate column names {dup[:5]}; rename them")
        parts = [_column(x.iloc[:, j], f"{name} column {c!r}") for j, c in enumerate(columns)]
        if not parts:
            return np.empty((len(x), 0)), columns
        arr = np.column_stack(parts)
        if np.issubdtype(arr.dtype, np.floating):
            for c, part in zip(columns, parts):
                if np.issubdtype(part.dtype, np.integer) and not np.array_equal(arr[:, columns.index(c)].astype(part.dtype), part):
                    warnings.warn(
                        f"{name}: integer column {c!r} is stacked with floating columns into one "
                        f"{arr.dtype} array and some of its values (beyond 2**53) are rounded; pass "
                        "it as its own data array to keep it exact",
                        UserWarning,
                        stacklevel=4,
                    )
        return arr, columns
    label = name if isinstance(x, pd.Index) or x.name is None else f"{name} (Series {x.name!r})"
    return _column(pd.Series(x) if isinstance(x, pd.Index) else x, label), None
