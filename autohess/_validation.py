"""Input checks that turn silent numerical trouble into errors naming the user's arrays.

Everything here runs on the host, once, when a model is built (or when a public function is
called with new inputs); nothing here is traced.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._pandas import host_array
from ._params import path_name

__all__ = [
    "prepare_data", "choose_dtype", "float32_warning", "Float32Warning", "UNTRACEABLE", "not_traceable",
    "weight_problem", "from_pandas", "cast_data", "check_containers",
]

#: what JAX raises when user code (a loglik, a support hook, a delta-method function, an
#: audited objective) uses numpy or Python control flow on traced values
UNTRACEABLE = (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError)


def weight_problem(w: np.ndarray) -> "str | None":
    """Why an ``(N,)`` vector of frequency weights cannot be used (``None`` if it can): the
    reason ``fit`` raises and a batch member is refused for."""
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        return (
            f"weights must be finite and non-negative; got {int(np.sum(~np.isfinite(w)))} non-finite and "
            f"{int(np.sum(w < 0))} negative entries (first at observation {int(np.argmax(bad))})"
        )
    if not np.any(w > 0):
        return (
            f"weights sum to 0: no observation is in the sample (all {w.size} weights are 0); give at "
            "least one observation a positive weight"
        )
    return None


def not_traceable(what: str, err: Exception) -> TypeError:
    """The error for user code JAX cannot trace, naming it and saying what to write instead."""
    return TypeError(
        f"{what} is not traceable by JAX ({type(err).__name__}): write it with jax.numpy (jnp) "
        "instead of numpy, and use jnp.where / lax.cond instead of Python `if` on parameter or "
        "data values"
    )


class Float32Warning(UserWarning):
    """Computation in float32: Hessians and standard errors keep only about 7 digits."""


def _leaf_dtype(leaf: Any) -> np.dtype:
    return np.asarray(leaf).dtype if not hasattr(leaf, "dtype") else np.dtype(leaf.dtype)


def choose_dtype(*trees: Any) -> np.dtype:
    """float64 unless every floating input was explicitly given as float32 (or lower).

    Python scalars, integers and booleans count as "no opinion", so plain data gets float64.
    """
    float_dtypes = set()
    for tree in trees:
        for leaf in jax.tree_util.tree_leaves(tree):
            dt = _leaf_dtype(leaf)
            if np.issubdtype(dt, np.floating) and not isinstance(leaf, float):
                float_dtypes.add(dt)
    if float_dtypes and all(np.finfo(dt).bits <= 32 for dt in float_dtypes):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def float32_warning(what: str) -> None:
    warnings.warn(
        f"{what} is float32, so autohess computes in float32: Hessians keep about 7 significant "
        "digits and standard errors may be badly wrong for ill-conditioned models. Pass float64 "
        "arrays (the default for numpy and for jax once autohess is imported) unless you are "
        "batch-fitting on a GPU on purpose.",
        Float32Warning,
        stacklevel=3,
    )


def from_pandas(tree: Any, what: str = "data") -> tuple[Any, dict]:
    """``(tree, columns)``: every pandas ``DataFrame`` / ``Series`` leaf of ``tree`` converted
    once to numpy (index ignored), and ``{leaf name: column names}`` for the DataFrames.

    pandas objects are leaves to JAX (pandas registers no pytree), so one pass over the leaves
    finds them all. Text, categorical and date columns and missing values raise, naming the
    leaf and the column.
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out, columns = [], {}
    for path, leaf in leaves_with_path:
        name = _display_name(what, path)
        arr, cols = host_array(leaf, name)
        if cols is not None:
            columns[name] = cols
        out.append(arr)
    return jax.tree_util.tree_unflatten(treedef, out), columns


def check_containers(tree: Any, what: str, numbers_ok: bool = False) -> None:
    """Refuse containers JAX would misread, naming them: dicts whose keys mix types (JAX sorts
    keys and fails with a bare "Comparator raised exception") and, unless ``numbers_ok``,
    Python lists or tuples of numbers (each number would become its own data array, and a
    later error would list them all: 1,200 leaves for a 600 x 2 list)."""

    def walk(node: Any, name: str) -> None:
        if isinstance(node, dict):
            keys = list(node.keys())
            try:
                sorted(keys)
            except TypeError:
                kinds = sorted({type(k).__name__ for k in keys})
                shown = ", ".join(repr(k) for k in keys[:6]) + (", ..." if len(keys) > 6 else "")
                raise TypeError(
                    f"{name} is a dict whose keys mix types ({' and '.join(kinds)}: {shown}); JAX "
                    "sorts dict keys, so they must be comparable: use strings for every key"
                ) from None
            for k in keys:
                walk(node[k], f"{name}[{k!r}]")
        elif isinstance(node, (list, tuple)):
            named = hasattr(node, "_fields")  # a NamedTuple of numbers is a deliberate record
            if not numbers_ok and not named and node and all(_is_number_or_number_list(item) for item in node):
                shape = np.shape(node) if _is_number_or_number_list(node) else (len(node),)
                raise TypeError(
                    f"{name} is a Python {type(node).__name__} of numbers (shape {shape}); autohess "
                    f"would read every number as a separate data array. Pass an array: "
                    f"np.asarray({name.split('[', 1)[0] if name == what else name})"
                )
            for i, item in enumerate(node):
                walk(item, f"{name}[{i}]")

    walk(tree, what)


def _is_number_or_number_list(x: Any) -> bool:
    if isinstance(x, (bool, int, float, np.generic)):
        return True
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return bool(x) and all(_is_number_or_number_list(item) for item in x)
    return False


def cast_data(arr: Any, dtype: np.dtype, name: str) -> Any:
    """``arr`` as ``dtype``, warning when integers do not survive the cast to a float (beyond
    2**53 for float64, 2**24 for float32: a large id or count would silently change)."""
    src = _leaf_dtype(arr)
    if np.dtype(dtype) == src:
        return arr
    if np.issubdtype(dtype, np.floating) and np.issubdtype(src, np.integer):
        host = np.asarray(arr)
        limit = 2 ** (np.finfo(dtype).nmant + 1)
        if host.size and np.max(np.abs(host.astype(np.float64))) >= limit:
            back = host.astype(dtype).astype(src)
            if not np.array_equal(back, host):
                warnings.warn(
                    f"{name} holds integers beyond 2**{np.finfo(dtype).nmant + 1} that {np.dtype(dtype).name} "
                    f"cannot represent exactly ({int(np.sum(back != host))} of {host.size} entries change); "
                    "pass them as an integer array where they are codes or ids",
                    UserWarning,
                    stacklevel=4,
                )
    return jnp.asarray(arr, dtype)


def prepare_data(data: Any, dtype: np.dtype, what: str = "data") -> Any:
    """Validate and convert a data pytree.

    Floating arrays become ``dtype``. Integer and boolean arrays keep their dtype: they are
    never differentiated, and category codes, group ids and counts are used as indices
    (``cuts[y]``), which JAX allows only for integers; arithmetic with float parameters
    promotes them where it happens. NaN or infinite entries raise ``ValueError`` naming the
    array and the count. pandas leaves are converted first (see ``from_pandas``).
    """
    data, _ = from_pandas(data, what)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(data)
    out = []
    for path, leaf in leaves_with_path:
        name = _display_name(what, path)
        if isinstance(leaf, jax.core.Tracer):
            raise TypeError(f"{name} is a JAX tracer: build the Model outside jit/vmap")
        arr = np.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
        dt = _leaf_dtype(arr)
        if dt == object or not (np.issubdtype(dt, np.number) or np.issubdtype(dt, np.bool_)):
            host = np.asarray(arr)
            first = host.reshape(-1)[0] if host.size else None
            first = first.item() if isinstance(first, np.generic) else first
            raise TypeError(
                f"{name} must be a numeric array, got dtype {dt} (first entry {first!r}). Code "
                "text labels or categories as numbers (0/1, or integer codes) before building "
                "the model"
            )
        if np.issubdtype(dt, np.complexfloating):
            raise TypeError(f"{name} is complex ({dt}); log-likelihoods need real data")
        if np.size(arr) == 0:
            raise ValueError(f"{name} is empty (shape {tuple(np.shape(arr))}): there are no observations to fit")
        if np.issubdtype(dt, np.floating):
            host = np.asarray(arr)
            finite = np.isfinite(host)
            if not finite.all():
                n_nan = int(np.isnan(host).sum())
                n_inf = int(host.size - finite.sum() - n_nan)
                first = np.unravel_index(int(np.argmin(finite.reshape(-1))), host.shape)
                first_txt = tuple(int(i) for i in first) if host.ndim > 1 else int(first[0]) if host.ndim else ()
                raise ValueError(
                    f"{name} contains {n_nan} NaN and {n_inf} infinite entries "
                    f"(of {host.size}, shape {host.shape}); first at index {first_txt}. "
                    "Drop or impute those observations before building the model."
                )
            out.append(_owned(arr, dtype))
        else:
            out.append(_owned(arr, dt))
    return jax.tree_util.tree_unflatten(treedef, out)


def _owned(arr: Any, dtype: np.dtype) -> jax.Array:
    """A jax array of ``dtype`` that shares no memory with the caller's ``arr``.

    On CPU ``jnp.asarray`` wraps a numpy buffer without copying when it happens to be 64-byte
    aligned (and copies otherwise), so editing the caller's array after building a model would
    change some results (a compiled fit reads the buffer) and not others (derived leaves, checks
    made at construction). Copying here makes one rule: data are copied when the model is
    built. jax arrays are copied too: one made by ``jnp.asarray(a, dtype=np.float64)`` shares
    ``a``'s buffer in the same way.
    """
    if isinstance(arr, jax.Array):
        return jnp.array(arr, dtype=dtype, copy=True)
    # device_put, not jnp.asarray: jax 0.10's asarray stages the copy through a compiled
    # program per shape and dtype (two per model, 20-40 ms in a fresh process); a transfer
    # compiles nothing. The numpy copy is ours alone, so the device may keep its buffer.
    return jax.device_put(np.array(arr, dtype=dtype, copy=True))


def _display_name(what: str, path) -> str:
    if not path:
        return what
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(f"[{key.key!r}]")
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(f"[{key.idx}]")
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(f".{key.name}")
        else:
            parts.append(f"[{path_name([key], '')}]")
    return what + "".join(parts)
