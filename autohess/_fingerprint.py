"""What a plain function can read when JAX traces it, summarised so that caches of compiled
programs notice when it changes.

JAX bakes the arrays and numbers a function closes over into a compiled program as constants;
a cache keyed on the function object alone keeps serving the old constants after the caller
edits a closed-over numpy array in place or rebinds a global (issue #18 item 10).
"""

from __future__ import annotations

import functools
import hashlib
import types
import weakref
from typing import Any, Callable, Optional

import jax
import numpy as np

__all__ = ["closure_fingerprint"]

#: how deep the fingerprint follows functions, containers and instance attributes
_FINGERPRINT_DEPTH = 4
#: containers longer than this are fingerprinted by id and length only
_FINGERPRINT_MAX_ITEMS = 256


def closure_fingerprint(f: Callable) -> tuple[tuple, list]:
    """``(fingerprint, kept)``: a hashable summary of the values ``f`` can read when traced: its
    closure cells, defaults, the globals its code names, a bound method's instance attributes
    and a ``functools.partial``'s arguments, followed through nested functions, lists, tuples,
    dicts and instance attributes to depth ``_FINGERPRINT_DEPTH``. numpy arrays enter by a
    hash of their bytes (in-place edits change it), Python numbers and strings by value, jax
    arrays by identity (they are immutable; ``kept`` holds them so an id is not reused).

    Where ``f`` reads nothing that can change in place (no arrays, lists, dicts, objects: only
    numbers, strings, modules and functions), the result is memoised with the slots it was read
    from (each function's code, closure cells, defaults and named globals, compared by
    identity): a later call that finds them unchanged returns it without the walk (~1 us
    instead of 4-14 us per fit and per ``ah.hessian``, issue #16)."""
    memo = _MEMO.get(id(f))
    if memo is not None and memo.holds(f):
        return memo.parts, []
    parts, kept, reads = _walk(f)
    if reads is not None:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[id(f)] = _Memo(f, reads, parts)
    else:
        _MEMO.pop(id(f), None)
    return parts, kept


def _walk(f: Callable) -> tuple[tuple, list, Optional[list]]:
    """``closure_fingerprint``'s walk: ``(parts, kept, reads)``; ``reads``: the slots read
    (``_Memo``), None where something read can change in place."""
    parts: list = []
    kept: list = []
    seen: set = set()
    reads: list = []
    immutable = [True]

    def visit(obj: Any, depth: int) -> None:
        kind = type(obj)
        if kind in _PLAIN:
            # (by exact type first: the fingerprint runs on every fit and ``ah.hessian`` call,
            # and the ``isinstance`` chain below cost ~2 us per object; subclasses fall through)
            parts.append(obj)
            return
        if kind is types.ModuleType:
            return
        if depth > 0 and id(obj) not in seen:
            if kind is types.FunctionType:
                _visit_function(obj, depth)
                return
            if kind is tuple or kind is list or kind is dict:
                seen.add(id(obj))
                _visit_container(obj, depth)
                return
        if isinstance(obj, (bool, int, float, complex, str, bytes, type(None))):
            parts.append(obj)
            return
        if not (kind is tuple or isinstance(obj, (np.generic, type, types.ModuleType, types.FunctionType))):
            immutable[0] = False  # (an array, a list, an object: contents can change in place)
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                parts.append(("object-array", id(obj)))
                return
            digest = hashlib.blake2b(np.ascontiguousarray(obj).reshape(-1).view(np.uint8), digest_size=16)
            parts.append(("np", obj.shape, obj.dtype.str, digest.hexdigest()))
            return
        if isinstance(obj, np.generic):
            parts.append(("np-scalar", obj.dtype.str, obj.item()))
            return
        if isinstance(obj, jax.Array):
            kept.append(obj)
            parts.append(("jax", id(obj)))
            return
        if depth <= 0 or id(obj) in seen or isinstance(obj, (type, types.ModuleType)):
            return
        if _jax_library(obj):
            # JAX's own module-level functions (``log_ndtr``, a ``custom_jvp`` object; ``gammaln``)
            # read only JAX's module state; following a Tobit's ``log_ndtr`` into its rule and
            # globals cost ~0.1 ms per fit (87 parts)
            parts.append(("jax", obj.__module__, obj.__qualname__))
            return
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            visit(obj.func, depth - 1)
            for item in obj.args:
                visit(item, depth - 1)
            for name, item in sorted(obj.keywords.items()):
                parts.append(name)
                visit(item, depth - 1)
            return
        if isinstance(obj, types.MethodType):
            visit(obj.__func__, depth - 1)
            visit(obj.__self__, depth - 1)
            return
        if isinstance(obj, types.FunctionType):
            _visit_function(obj, depth)
            return
        if isinstance(obj, (list, tuple, dict)):
            _visit_container(obj, depth)
            return
        if hasattr(obj, "_compiled") and hasattr(obj, "trace_counts"):
            # an autohess Model: its data are copied and immutable, and its program cache and
            # trace counters change on every new compilation, which would make a function
            # that names its model recompile on every call
            kept.append(obj)
            parts.append(("model", id(obj)))
            return
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict) and len(attrs) <= _FINGERPRINT_MAX_ITEMS:
            parts.append(type(obj).__qualname__)
            for name, item in list(attrs.items()):
                parts.append(name)
                visit(item, depth - 1)

    def _visit_container(obj: Any, depth: int) -> None:
        items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj))
        if len(items) > _FINGERPRINT_MAX_ITEMS:
            parts.append(("container", id(obj), len(items)))
            return
        parts.append((type(obj).__name__, len(items)))
        for k, item in items:
            parts.append(repr(k))
            visit(item, depth - 1)

    def _visit_function(obj: types.FunctionType, depth: int) -> None:
        if _jax_library(obj):
            parts.append(("jax", obj.__module__, obj.__qualname__))
            return
        seen.add(id(obj))
        if _own(obj):
            # the zoo's log-likelihoods and hooks read only autohess's own module globals
            # (constants, jax functions): following them cost 15-20 us per fit and per
            # ``ah.hessian`` for a logistic model, a few per cent of a warm fit
            parts.append(("autohess", obj.__module__, obj.__qualname__))
            return
        if obj.__kwdefaults__:
            immutable[0] = False  # (a dict)
        g = obj.__globals__
        names = _global_names(obj.__code__)
        closure = obj.__closure__ or ()
        contents = []
        for cell in closure:
            try:
                contents.append(cell.cell_contents)
            except ValueError:
                contents.append(_EMPTY)
        reads.append((weakref.ref(obj), obj.__code__, obj.__closure__, tuple(contents), obj.__defaults__,
                      obj.__kwdefaults__, g, names, tuple(g.get(n, _EMPTY) for n in names)))
        for cell in obj.__closure__ or ():
            try:
                visit(cell.cell_contents, depth - 1)
            except ValueError:  # an empty cell (a name assigned later)
                parts.append("empty-cell")
        for item in obj.__defaults__ or ():
            visit(item, depth - 1)
        for name, item in sorted((obj.__kwdefaults__ or {}).items()):
            parts.append(name)
            visit(item, depth - 1)
        names = obj.__globals__
        for name in _global_names(obj.__code__):
            if name in names:
                parts.append(name)
                visit(names[name], depth - 1)

    visit(f, _FINGERPRINT_DEPTH + 1)
    return tuple(parts), kept, (reads if immutable[0] and not kept else None)


#: stands for an empty closure cell or a global name not (yet) defined
_EMPTY = object()
#: memoised fingerprints by ``id`` of what was fingerprinted (checked by identity on use)
_MEMO: dict = {}
_MEMO_MAX = 512


class _Memo:
    """A fingerprint and the slots it was read from. Functions are held weakly (a memo does not
    keep a model's functions alive); what their slots held is held strongly (numbers, modules,
    functions: no arrays), so an ``id`` seen here is not reused by a new object."""

    __slots__ = ("root", "reads", "parts")

    def __init__(self, root: Any, reads: list, parts: tuple):
        items = root if type(root) is tuple else (root,)
        self.root = (type(root) is tuple, tuple(_weak(x) for x in items))
        self.reads, self.parts = reads, parts

    def holds(self, root: Any) -> bool:
        is_tuple, refs = self.root
        items = root if type(root) is tuple else (root,)
        if is_tuple != (type(root) is tuple) or len(items) != len(refs):
            return False
        for ref, item in zip(refs, items):
            if (ref() if isinstance(ref, weakref.ref) else ref) is not item:
                return False
        for ref, code, closure, contents, defaults, kwdefaults, g, names, values in self.reads:
            fn = ref()
            if (fn is None or fn.__code__ is not code or fn.__closure__ is not closure
                    or fn.__defaults__ is not defaults or fn.__kwdefaults__ is not kwdefaults):
                return False
            for cell, value in zip(closure or (), contents):
                try:
                    if cell.cell_contents is not value:
                        return False
                except ValueError:
                    if value is not _EMPTY:
                        return False
            for name, value in zip(names, values):
                if g.get(name, _EMPTY) is not value:
                    return False
        return True


def _weak(x: Any) -> Any:
    try:
        return weakref.ref(x)
    except TypeError:  # None, numbers
        return x


def _own(fn: types.FunctionType) -> bool:
    """A module-level function of autohess itself: no closure, no defaults that could hold a
    user's arrays (a closure autohess builds around a user's function is followed as usual)."""
    module = getattr(fn, "__module__", None) or ""
    return (module.startswith("autohess.") and fn.__closure__ is None and not fn.__defaults__
            and not fn.__kwdefaults__ and "<locals>" not in fn.__qualname__)


def _jax_library(obj: Any) -> bool:
    """A function (or JAX function object: ``custom_jvp``, a jitted function) defined at module
    level in JAX itself, by its ``__module__`` and ``__qualname__``; a user's function wrapped by
    JAX keeps the user's module and is followed as usual."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not (isinstance(module, str) and isinstance(qualname, str)) or "<locals>" in qualname:
        return False
    if not (module == "jax" or module.startswith("jax.")):
        return False
    if isinstance(obj, types.FunctionType):
        return obj.__closure__ is None
    return type(obj).__module__.startswith(("jax.", "jaxlib."))


#: exact types recorded by value
_PLAIN = frozenset({bool, int, float, complex, str, bytes, type(None)})


@functools.lru_cache(maxsize=4096)
def _global_names(code: types.CodeType) -> tuple:
    """Names the code object (and the functions and lambdas defined inside it) looks up
    (memoised: code objects are immutable, and a user's loglik is fingerprinted on every call)."""
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return tuple(names)
