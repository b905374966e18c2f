"""Parameter pytrees: flat vectors, stable labels and the natural/unconstrained scales.

A ``ParamSpec`` is built once from the user's parameter pytree (leaves are arrays, scalars or
``Transform`` declarations). It fixes the order of the flat parameter vector, the label of every
entry (``"beta[3]"``, ``"sigma"``, ``"L[1,0]"``) and which transform applies to which slice.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._pandas import host_array
from ._transforms import Real, Transform

__all__ = ["Labels", "ParamSpec", "path_name", "element_labels"]


def _lists_to_arrays(tree: Any) -> Any:
    """Dict values that are lists or tuples of numbers (``{"beta": [0.1, 0.2]}``) as numpy
    arrays; ``tree`` itself where there are none."""
    if not isinstance(tree, dict):
        return tree
    out, changed = {}, False
    for k, v in tree.items():
        if isinstance(v, (list, tuple)) and v and all(isinstance(e, (int, float, np.number)) or np.ndim(e) > 0 for e in v):
            try:
                out[k], changed = np.asarray(v, dtype=np.float64), True
                continue
            except (TypeError, ValueError):  # ragged: leave it for the structure message
                pass
        sub = _lists_to_arrays(v)
        changed |= sub is not v
        out[k] = sub
    return out if changed else tree


def _is_transform(x: Any) -> bool:
    return isinstance(x, Transform)


def path_name(path: Sequence[Any], root: str) -> str:
    """Readable name of a pytree path: ``("a", "b")`` -> ``"a.b"``, ``(0,)`` -> ``"root[0]"``."""
    name = ""
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            name = f"{name}.{key.key}" if name else str(key.key)
        elif isinstance(key, jax.tree_util.GetAttrKey):
            name = f"{name}.{key.name}" if name else str(key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            name = f"{name or root}[{key.idx}]"
        else:  # FlattenedIndexKey and custom nodes
            name = f"{name or root}[{getattr(key, 'key', key)}]"
    return name or root


def element_labels(name: str, shape: tuple[int, ...], axes: Any = None) -> list[str]:
    """Labels of the elements of an array leaf in C order: ``sigma``, ``beta[3]``, ``L[1,0]``.

    ``axes`` (one entry per axis, a tuple of names or ``None``) replaces indices by names:
    ``beta[age]``, ``B[car,age]``.
    """
    if shape == ():
        return [name]
    axes = axes or (None,) * len(shape)
    return [
        f"{name}[{','.join(str(i) if ax is None else ax[i] for i, ax in zip(idx, axes))}]"
        for idx in np.ndindex(*shape)
    ]


def _name_sequence(value: Any, param: str, axis: Optional[int], length: int) -> tuple[str, ...]:
    """One axis's names as a tuple of strings, checked against the axis length."""
    where = f"names[{param!r}]" + ("" if axis is None else f" axis {axis}")
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(
            f"{where} must be a sequence of names (a list, tuple or pandas Index), got "
            f"{type(value).__name__} {value!r}"
        )
    names = tuple(str(v) for v in value)
    if len(names) != length:
        what = f"parameter {param!r} has {length} elements" if axis is None else f"axis {axis} of parameter {param!r} has length {length}"
        raise ValueError(f"{where} has {len(names)} names but {what}; give one name per element")
    seen: dict = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    dup = sorted(n for n, k in seen.items() if k > 1)
    if dup:
        raise ValueError(f"{where} has duplicate names {dup[:5]}: each element needs its own name")
    return names


def _axis_names(names: Optional[dict], params: tuple[str, ...], shapes: tuple) -> dict:
    """``{parameter: (names of axis 0 or None, ...)}`` from ``Model(names=)``, checked."""
    if names is None:
        return {}
    if not isinstance(names, dict):
        raise TypeError(f"names must be a dict {{parameter: element names}}, got {type(names).__name__}")
    shape_of = dict(zip(params, shapes))
    out = {}
    for param, value in names.items():
        if param not in shape_of:
            raise ValueError(f"names: unknown parameter {param!r}; the model's parameters are {list(params)}")
        shape = shape_of[param]
        if shape == ():
            raise ValueError(f"names: parameter {param!r} is a scalar; its label is its name, so it takes no element names")
        if len(shape) == 1:
            out[param] = (_name_sequence(value, param, None, shape[0]),)
            continue
        if (
            isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != len(shape)
            or any(isinstance(v, (str, bytes)) for v in value)  # ["a", "b"]: one axis's names
        ):
            raise ValueError(
                f"names[{param!r}]: parameter {param!r} has shape {shape}, so give {len(shape)} entries, "
                f"one per axis, each a sequence of names or None, e.g. (row_names, None)"
            )
        out[param] = tuple(
            None if v is None else _name_sequence(v, param, k, n) for k, (v, n) in enumerate(zip(value, shape))
        )
    return out


class Labels(tuple):
    """Parameter labels: a tuple (hashable, so it can be static JAX metadata) that also compares
    equal to a list with the same entries, e.g. ``H.labels == ["beta[0]", "beta[1]"]``."""

    __slots__ = ()

    def __eq__(self, other):
        if isinstance(other, (list, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return repr(list(self))


def _describe_structure(treedef) -> str:
    text = str(treedef)
    return text if len(text) < 200 else text[:200] + "..."


class ParamSpec:
    """Layout of a parameter pytree as one flat vector, with labels and transforms.

    Args:
        params: pytree whose leaves are arrays/scalars (``Real``) or ``Transform`` objects.
        root: name used for a bare (non-container) array, e.g. ``"x"`` gives ``"x[0]"``.
        names: ``{parameter: element names}`` (see ``Model(names=)``): labels ``beta[age]``.
    """

    def __init__(self, params: Any, root: str = "x", names: Optional[dict] = None):
        leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(
            params, is_leaf=_is_transform
        )
        if not leaves_with_path:
            raise ValueError("params is empty: a model needs at least one parameter")
        self.treedef = treedef
        self.names: tuple[str, ...] = tuple(path_name(p, root) for p, _ in leaves_with_path)
        transforms = []
        for name, (_, leaf) in zip(self.names, leaves_with_path):
            try:
                transforms.append(leaf if _is_transform(leaf) else Real(leaf))
            except TypeError as err:
                raise TypeError(f"parameter {name!r}: {err}") from None
        self.transforms: tuple[Transform, ...] = tuple(transforms)
        self.shapes: tuple[tuple[int, ...], ...] = tuple(t.init.shape for t in transforms)
        sizes = [int(np.prod(s, dtype=int)) for s in self.shapes]
        self.offsets: tuple[int, ...] = tuple(int(o) for o in np.cumsum([0] + sizes))
        self.size = self.offsets[-1]
        if self.size == 0:
            raise ValueError("params has no entries: every parameter array is empty")
        axes = _axis_names(names, self.names, self.shapes)
        #: ``{parameter: per-axis names}``, normalised (tuples of strings); what ``with_data``
        #: passes on
        self.element_names: dict = {k: v[0] if len(v) == 1 else v for k, v in axes.items()}
        self._axes = tuple(axes.get(name) for name in self.names)
        #: labels by position (``beta[1]``) whatever the names; still accepted where a user names
        #: a parameter (``index_of``)
        self.index_labels: Labels = Labels(
            lab for name, shape in zip(self.names, self.shapes) for lab in element_labels(name, shape)
        )
        self.labels: Labels = Labels(
            lab for name, shape, ax in zip(self.names, self.shapes, self._axes) for lab in element_labels(name, shape, ax)
        )
        seen: dict = {}
        for lab in self.labels:
            seen[lab] = seen.get(lab, 0) + 1
        dup = sorted(lab for lab, k in seen.items() if k > 1)
        if dup:
            raise ValueError(
                f"duplicate parameter labels {dup[:5]}: two pytree paths print the same (e.g. "
                "{'a': {'b': ...}} and {'a.b': ...}); rename one of them"
            )
        self.all_real = all(type(t) is Real for t in self.transforms)
        self.unconstrained_labels: Labels = Labels(
            lab if not t.link else f"{t.link}({lab})"
            for name, shape, t, ax in zip(self.names, self.shapes, self.transforms, self._axes)
            for lab in element_labels(name, shape, ax)
        )
        self._check_domain(
            [t.init for t in self.transforms], "initial value", [t.domain for t in self.transforms]
        )

    # -- structure ------------------------------------------------------------------------
    def check_structure(self, params: Any, what: str = "params") -> list:
        """Leaves of ``params`` in spec order, after checking names and shapes match."""
        leaves, treedef = jax.tree_util.tree_flatten(params, is_leaf=_is_transform)
        if treedef != self.treedef:
            # {"beta": [0.1, 0.2]}: a list of numbers where the model has an array parameter
            converted = _lists_to_arrays(params)
            if converted is not params:
                leaves, treedef = jax.tree_util.tree_flatten(converted, is_leaf=_is_transform)
        if treedef != self.treedef:
            mine = set(self.names)
            theirs = {
                path_name(p, "x")
                for p, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_transform)[0]
            }
            unknown, missing = sorted(theirs - mine), sorted(mine - theirs)
            detail = []
            if unknown:
                detail.append(f"unknown parameter(s) {unknown}")
            if missing:
                detail.append(f"missing parameter(s) {missing}")
            if not detail:
                detail.append(
                    f"structure {_describe_structure(treedef)} differs from the model's "
                    f"{_describe_structure(self.treedef)}"
                )
            raise ValueError(f"{what} do not match the model's parameters: " + "; ".join(detail))
        out = []
        for name, shape, leaf in zip(self.names, self.shapes, leaves):
            if _is_transform(leaf):
                leaf = leaf.init
            leaf = host_array(leaf, f"{what}: parameter {name!r}")[0]  # a pandas Series of values
            leaf_shape = tuple(np.shape(leaf))
            if leaf_shape != shape:
                raise ValueError(
                    f"{what}: parameter {name!r} has shape {leaf_shape}, the model declares {shape}"
                )
            out.append(leaf)
        return out

    def index_of(self, label: str) -> int:
        """Position of a parameter in the flat vector from its label (``beta[age]``) or its
        index label (``beta[1]``, the label without ``names``); ``ValueError`` otherwise."""
        if label in self.labels:
            return self.labels.index(label)
        if label in self.index_labels:
            return self.index_labels.index(label)
        shown = list(self.labels)
        shown = shown if len(shown) <= 40 else shown[:40] + [f"... ({len(shown)} in all)"]
        raise ValueError(f"unknown parameter {label!r}; the model's parameters are {shown}")

    def element_labels_of(self, k: int) -> list[str]:
        """Labels of the elements of the ``k``-th parameter leaf (names applied)."""
        return element_labels(self.names[k], self.shapes[k], self._axes[k])

    def _check_domain(self, values: list, what: str, domains: list[str]) -> None:
        for k, (name, t, value) in enumerate(zip(self.names, self.transforms, values)):
            arr = np.asarray(value, dtype=np.float64)
            ok = np.asarray(t.in_domain(arr))
            if not ok.all():
                bad = [
                    f"{lab}={v!r}"
                    for lab, v, good in zip(
                        self.element_labels_of(k) if arr.shape == self.shapes[k] else element_labels(name, arr.shape),
                        arr.reshape(-1).tolist(), ok.reshape(-1),
                    )
                    if not good
                ]
                shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                raise ValueError(
                    f"parameter {name!r}: {what} outside the domain {t.domain} of "
                    f"{type(t).__name__}: {shown}"
                )

    def check_domain(self, params: Any, what: str = "params") -> None:
        """Raise ``ValueError`` naming any entry of ``params`` outside its transform's domain."""
        leaves = self.check_structure(params, what)
        self._check_domain(leaves, f"{what} value", [t.domain for t in self.transforms])

    # -- flat vectors -----------------------------------------------------------------------
    def init_tree(self, dtype) -> Any:
        """Initial values on the natural scale, as a pytree of arrays of ``dtype``."""
        return self.treedef.unflatten([jnp.asarray(t.init, dtype) for t in self.transforms])

    def flatten(self, params: Any, dtype=None) -> jax.Array:
        """Natural-scale pytree -> flat vector (traceable; structure must match)."""
        leaves = self.treedef.flatten_up_to(params)
        parts = [jnp.ravel(jnp.asarray(leaf, dtype)) for leaf in leaves]
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

    def unflatten(self, flat: jax.Array) -> Any:
        """Flat vector -> natural-scale pytree (traceable)."""
        leaves = [
            flat[a:b].reshape(shape)
            for a, b, shape in zip(self.offsets[:-1], self.offsets[1:], self.shapes)
        ]
        return self.treedef.unflatten(leaves)

    def _map_segments(self, flat: jax.Array, fn) -> jax.Array:
        if self.all_real:
            return flat
        parts = [fn(t, flat[a:b]) for t, a, b in zip(self.transforms, self.offsets[:-1], self.offsets[1:])]
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

    def to_natural(self, u: jax.Array) -> jax.Array:
        """Flat unconstrained vector -> flat natural-scale vector."""
        return self._map_segments(u, lambda t, seg: t.forward(seg))

    def to_unconstrained(self, x: jax.Array) -> jax.Array:
        """Flat natural-scale vector -> flat unconstrained vector."""
        return self._map_segments(x, lambda t, seg: t.inverse(seg))

    def log_abs_det_jacobian(self, u: jax.Array) -> jax.Array:
        """Sum of log|dx/du| over all entries (for densities on the unconstrained scale)."""
        if self.all_real:
            return jnp.zeros((), u.dtype)
        return jnp.sum(self._map_segments(u, lambda t, seg: t.log_abs_det_jacobian(seg)))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-entry ``(lower, upper)`` domain bounds of the flat natural vector."""
        lower = np.concatenate([np.full(int(np.prod(s, dtype=int)), t.bounds[0]) for t, s in zip(self.transforms, self.shapes)])
        upper = np.concatenate([np.full(int(np.prod(s, dtype=int)), t.bounds[1]) for t, s in zip(self.transforms, self.shapes)])
        return lower, upper

    def bounds_arrays(self, dtype) -> tuple[jax.Array, jax.Array]:
        """``bounds()`` as device arrays of ``dtype``, computed once per spec and dtype."""
        cache = self.__dict__.setdefault("_bounds_cache", {})
        found = cache.get(dtype)  # by the object first: ``np.dtype(...).name`` costs ~5 us per fit
        if found is not None:
            return found
        key = np.dtype(dtype).name
        if key not in cache:
            lower, upper = self.bounds()
            cache[key] = (jnp.asarray(lower, dtype), jnp.asarray(upper, dtype))
        cache[dtype] = cache[key]
        return cache[key]

    @property
    def transformed(self) -> np.ndarray:
        """Per-entry flag: declared with a transform other than ``Real``."""
        return np.concatenate(
            [np.full(int(np.prod(s, dtype=int)), type(t) is not Real) for t, s in zip(self.transforms, self.shapes)]
        )

    def describe(self, flat: np.ndarray, limit: int = 8) -> str:
        """``"beta[0]=0.1, sigma=-1"`` for the first ``limit`` entries of a flat vector."""
        vals = np.asarray(flat).reshape(-1).tolist()
        shown = ", ".join(f"{lab}={v:.6g}" for lab, v in zip(self.labels[:limit], vals[:limit]))
        return shown + (f", ... ({self.size} parameters)" if self.size > limit else "")
