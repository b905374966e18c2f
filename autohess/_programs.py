"""A fit's compiled programs kept on disk between processes.

JAX's persistent compilation cache (``_config``) saves the XLA compilation in a second process,
but its key is the lowered program: the process still traces and lowers every program before
it can look it up, which was most of a warm first fit (logistic N = 1500, p = 12: the solve's
trace and lowering 0.17 s, the covariance program's 0.045 s, of 0.5 s). Here the solve and
the covariance program are stored as executables (``jax.experimental.serialize_executable``)
under a key computed without tracing them, and a later process with the same key loads and
runs them directly.

The key must determine the program: a stale program reused would be a silent wrong answer. It
is a digest of

* everything outside the model: autohess's own source (every ``.py`` file of the package),
  the versions of Python, jax, jaxlib and numpy, the backend, its devices and platform
  version, the CPU (model and instruction-set flags: an executable compiled for one CPU can
  crash another), ``XLA_FLAGS``, the compiler options, every ``jax.config`` value and the
  configuration JAX keys its own tracing cache on (``trace_context``: matmul precision,
  dtype promotion, ...);
* the call: the program's name and static options (method, maxiter, rtol, chunk, data start,
  covariance type, ...), the tree structure, shapes and dtypes of its arguments (data,
  parameters, weights present or not);
* the model: dtype, Hessian mode, observation flags, the parameters' layout and transforms,
  and the user's log-likelihood as JAX traced it (the jaxpr of the construction check, which
  model construction traced already, so it costs no trace here), with the values of every
  constant it closed over. Custom derivative rules appear in a jaxpr by name only: each
  ``custom_jvp`` rule is traced (as JAX itself traces it when differentiating) and its jaxpr
  digested too; a ``custom_vjp`` function, a host callback, or anything that prints as a
  Python object (``<... at 0x...>``) makes the model not storable, and it is compiled as
  before.

autohess's source digest is taken at the first fit of a process (reading the package's files
costs ~20 ms, too much for ``import autohess``): editing autohess's files while a process runs
would key that process's programs with code it is not running.

Whatever cannot be keyed safely is compiled as before (JAX's own cache still applies):
random-effects models, Gauss-Newton fits, user-defined transforms, a ``start_fn`` that is not
autohess's own and cannot be traced, backends other than the CPU. A program for the store is
compiled outside JAX's cache (``_outside_jax_cache``): an executable JAX reads back from its
cache serialises without its kernels (running it fails "Function ... not found"), so a program
JAX already had (from an earlier autohess, or a fit without the store) could never be stored;
and JAX writing the same executable (serialised and zlib-compressed a second time) cost
0.05-0.1 s of a cold first fit. Entries are written atomically (a temporary file, then
renamed), with a checksum, on a thread of their own while the fit runs; an entry that cannot
be read, does not match its key or fails to load is removed and the program compiled. The
covariance program's shapes are known before the solve runs, so ``fit`` prepares it first
(``stored``'s ``ahead``) and it compiles on another thread while the solve is traced and
compiled. Entries live in ``autohess-programs/`` inside the
cache directory (``AUTOHESS_CACHE_DIR``); only when autohess chose that directory (a cache
directory set by the user or a test harness turns this off, as does ``AUTOHESS_CACHE=0``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import platform
import sys
import tempfile
import threading
import types
import uuid
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax._src import config as _jax_config

from . import _config
from ._config import lapack_ready

__all__ = ["stored", "program_dir"]

#: subdirectory of the cache directory holding the stored programs
SUBDIR = "autohess-programs"
#: first bytes of every entry (the format's version: a new layout is a new magic)
_MAGIC = b"autohess-program-v1\n"
#: custom_jvp rules digested per jaxpr before giving up (a generated chain of rules)
_MAX_RULES = 200

# ------------------------------------------------------------------------------------------
# Where
# ------------------------------------------------------------------------------------------
def program_dir() -> Optional[str]:
    """The directory of stored programs, or ``None`` where programs are not stored: autohess
    did not choose the cache directory (``AUTOHESS_CACHE=0``, or a directory set by the user,
    which may since have changed), or the backend is not one CPU device in one process."""
    ours = _config.cache_dir()
    if ours is None:
        return None
    try:
        # the settings themselves: ``jax.config.values`` builds a dict of every option (~30 us)
        if _jax_config.compilation_cache_dir.value != ours or not _jax_config.enable_compilation_cache.value:
            return None
    except AttributeError:  # a JAX that keeps them elsewhere: no store, nothing else changes
        return None
    if not _on_cpu():
        return None
    return os.path.join(ours, SUBDIR)


@functools.cache
def _on_cpu() -> bool:
    # asked on every call of a stored program: jax.default_backend() costs ~20 us, a twentieth
    # of a warm logistic fit, and cannot change once JAX's backends exist. One CPU device in one
    # process only: with several (``--xla_force_host_platform_device_count``, a distributed
    # run) an executable compiled ahead from shapes alone expected its arguments on every
    # device and failed ("Expected args to execute_sharded_on_local_devices to have 4 shards")
    return jax.default_backend() == "cpu" and jax.device_count() == 1 and jax.process_count() == 1


# ------------------------------------------------------------------------------------------
# Keys
# ------------------------------------------------------------------------------------------
class NotStorable(Exception):
    """Raised while building a key for a program that cannot be keyed safely (see the module
    docstring); it is then compiled as usual."""


@functools.cache
def _fixed_environment() -> str:
    """Digest of what cannot change within a process (see the module docstring)."""
    import jaxlib

    h = hashlib.blake2b(digest_size=20)
    package = os.path.dirname(os.path.abspath(__file__))
    sources = []
    for folder, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        sources += [os.path.join(folder, name) for name in files if name.endswith(".py")]
    for path in sorted(sources):
        h.update(os.path.relpath(path, package).encode())
        with open(path, "rb") as fh:
            h.update(hashlib.blake2b(fh.read(), digest_size=20).digest())
    backend = jax.devices()[0].client
    for part in (sys.version, jax.__version__, jaxlib.__version__, np.__version__, platform.machine(),
                 platform.system(), _cpu_identity(), os.environ.get("XLA_FLAGS", ""),
                 backend.platform, backend.platform_version,
                 repr([(d.platform, d.device_kind, d.id) for d in jax.devices()])):
        h.update(repr(part).encode())
    return h.hexdigest()


def _cpu_identity() -> str:
    """The CPU's model name and instruction-set flags (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln.strip() for ln in fh if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        kept = list(dict.fromkeys(lines))  # one line of each kind per distinct CPU
        if kept:
            return "\n".join(kept)
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _config_state() -> str:
    """Every ``jax.config`` value and the per-thread configuration JAX traces under."""
    from jax._src import config as jax_config
    from jax._src import core

    parts = []
    for item in jax_config.trace_context():
        if isinstance(item, core.AxisEnv):
            # named axes (inside a user's vmap or shard_map): a program for a different world
            if item.axis_sizes or item.spmd_axis_names or item.explicit_mesh_axis_names:
                raise NotStorable("traced inside named axes")
            parts.append("AxisEnv()")
        else:
            parts.append(_stable_repr(item))
    parts.append(_stable_repr(sorted(jax.config.values.items())))
    return "\n".join(parts)


def _stable_repr(value: Any) -> str:
    """``repr`` (numpy arrays in full under ``_full_print``, which the callers enter); an object
    that prints its address (``at 0x...``) is different in every process and cannot key
    anything."""
    text = repr(value)
    if " at 0x" in text or "object at" in text:
        raise NotStorable(f"cannot key {text[:80]!r}")
    return text


def jaxpr_digest(closed: Any) -> str:
    """Digest of a closed jaxpr: every equation (primitive, parameters, variables in order of
    first use, shapes and dtypes, literals), the bytes of every constant, nested jaxprs, and the
    jaxpr of every ``custom_jvp`` rule. Raises ``NotStorable`` for what cannot be keyed."""
    h = hashlib.blake2b(digest_size=20)
    with _full_print():
        _feed_closed(h, closed, set())
    return h.hexdigest()


def _feed_closed(h, closed: Any, rules: set) -> None:
    from jax._src import core

    if isinstance(closed, core.ClosedJaxpr):
        _feed_jaxpr(h, closed.jaxpr, rules)
        _feed_consts(h, closed.consts)
    elif isinstance(closed, core.Jaxpr):
        _feed_jaxpr(h, closed, rules)
    else:
        raise NotStorable(f"not a jaxpr: {type(closed).__name__}")


def _feed_consts(h, consts) -> None:
    for c in consts:
        arr = np.asarray(c)
        if arr.dtype == object:
            raise NotStorable("an object-dtype constant")
        h.update(repr((arr.shape, arr.dtype.str)).encode())
        h.update(hashlib.blake2b(np.ascontiguousarray(arr).reshape(-1).view(np.uint8), digest_size=20).digest())


def _feed_jaxpr(h, jaxpr: Any, rules: set) -> None:
    from jax._src import core

    names: dict = {}

    def var(v) -> str:
        if isinstance(v, core.Literal):
            return "lit(" + _stable_repr(np.asarray(v.val)) + ":" + _stable_repr(v.aval) + ")"
        if id(v) not in names:
            names[id(v)] = (len(names), v)  # the Var kept alive: ids stay unique meanwhile
        return f"v{names[id(v)][0]}:" + _stable_repr(v.aval)

    h.update(b"jaxpr(")
    h.update(" ".join(var(v) for v in (*jaxpr.constvars, *jaxpr.invars)).encode())
    h.update(_stable_repr(sorted(map(repr, jaxpr.effects))).encode())
    for eqn in jaxpr.eqns:
        h.update(b"\n" + eqn.primitive.name.encode() + b" ")
        h.update(" ".join(var(v) for v in eqn.invars).encode() + b" -> ")
        h.update(" ".join(var(v) for v in eqn.outvars).encode())
        name = eqn.primitive.name
        if name in ("pure_callback", "io_callback", "debug_callback", "custom_vjp_call", "custom_vjp_call_jaxpr",
                    "custom_lin", "custom_transpose_call"):
            # a Python function runs or is called later (host callbacks, reverse-mode rules)
            raise NotStorable(f"{name} in the log-likelihood")
        for key in sorted(eqn.params):
            h.update(b" " + key.encode() + b"=")
            if key == "jvp_jaxpr_fun" and name == "custom_jvp_call":
                _feed_jvp_rule(h, eqn, rules)
            else:
                _feed_param(h, eqn.params[key], rules, name, key)
    h.update(b"\nout " + " ".join(var(v) for v in jaxpr.outvars).encode() + b")")


def _feed_param(h, value: Any, rules: set, name: str, key: str) -> None:
    """One equation parameter: jaxprs digested with their constants (also inside tuples, as
    ``cond``'s branches or ``custom_linear_solve``'s jaxprs), anything else by its ``repr``."""
    from jax._src import core

    if isinstance(value, (core.Jaxpr, core.ClosedJaxpr)):
        _feed_closed(h, value, rules)
    elif isinstance(value, (tuple, list)):
        h.update(f"{type(value).__name__}[{len(value)}](".encode())
        for item in value:
            _feed_param(h, item, rules, name, key)
            h.update(b",")
        h.update(b")")
    elif isinstance(value, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial)) \
            or hasattr(value, "call_wrapped"):
        # (other callable objects, such as jit's mesh, are keyed by their repr below)
        raise NotStorable(f"{name} carries a Python function ({key})")
    else:
        text = _stable_repr(value)
        if "lambda" in text:
            # a jaxpr printed inside some other object: its constants would not be in the text
            raise NotStorable(f"{name}: a jaxpr inside {type(value).__name__} ({key})")
        h.update(text.encode())


def _feed_jvp_rule(h, eqn: Any, rules: set) -> None:
    """The jaxpr of a ``custom_jvp`` rule with every tangent non-zero, as JAX traces it when it
    differentiates the call (its own memoised trace, so the solve, when traced, reuses it)."""
    if eqn.params.get("symbolic_zeros"):
        # the rule sees which tangents are zero and may take other branches for other patterns
        raise NotStorable("a custom_jvp rule with symbolic_zeros=True")
    fun = eqn.params["jvp_jaxpr_fun"]
    # a rule that calls its own function (softplus's rule computes softplus): the rule at these
    # shapes is being digested further up, so the recursion stops here
    info = getattr(fun, "debug_info", None)
    where = (getattr(info, "func_src_info", None), tuple(_stable_repr(v.aval) for v in eqn.invars))
    if where[0] is None:
        raise NotStorable("a custom_jvp rule without source information")
    h.update(_stable_repr(where).encode())
    if where in rules:
        return
    if len(rules) > _MAX_RULES:
        raise NotStorable("too many custom_jvp rules")
    rules.add(where)
    n_tangents = len(eqn.invars) - int(eqn.params.get("num_consts", 0))
    rule_jaxpr, rule_consts, out_zeros = fun.call_wrapped(*([False] * n_tangents))
    h.update(repr(tuple(bool(z) for z in out_zeros)).encode())
    _feed_jaxpr(h, rule_jaxpr, rules)
    _feed_consts(h, rule_consts)


def _avals(tree: Any) -> str:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    shapes = []
    for leaf in leaves:
        aval = jax.api_util.shaped_abstractify(leaf)
        shapes.append((aval.shape, aval.dtype.str, bool(aval.weak_type)))
    return repr((str(treedef), shapes))


def program_key(name: str, parts: tuple, args: tuple, kwargs: dict) -> str:
    """Hex digest keying program ``name`` with ``parts`` (its options and the model's, see
    ``_fit``) at these arguments."""
    h = hashlib.blake2b(digest_size=24)
    with _full_print():
        for part in (_MAGIC, _fixed_environment(), _config_state(), name, _stable_repr(parts), _avals((args, kwargs))):
            h.update(part.encode() if isinstance(part, str) else part)
            h.update(b"\0")
    return h.hexdigest()


def _full_print():
    """numpy arrays printed in full, every float to its last digit: a summarised ``[1, ..., 9]``
    would key two different arrays alike."""
    return np.printoptions(threshold=sys.maxsize, floatmode="unique")


# ------------------------------------------------------------------------------------------
# Entries
# ------------------------------------------------------------------------------------------
def _read(path: str, key: str) -> Optional[tuple]:
    """``(payload, in_tree, out_tree)`` of an entry, or None (missing; unreadable, foreign or
    damaged: removed)."""
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except OSError:
        return None
    try:
        if not blob.startswith(_MAGIC):
            raise ValueError("not an autohess program")
        body = blob[len(_MAGIC):]
        digest, body = body[:32], body[32:]
        if hashlib.blake2b(body, digest_size=32).digest() != digest:
            raise ValueError("checksum")
        stored_key, payload, in_tree, out_tree = pickle.loads(body)
        if stored_key != key:
            raise ValueError("key")
        return payload, in_tree, out_tree
    except Exception:  # noqa: BLE001 - a damaged entry is a miss
        _remove(path)
        return None


def _write(folder: str, path: str, key: str, serialized: tuple) -> None:
    body = pickle.dumps((key, *serialized), protocol=pickle.HIGHEST_PROTOCOL)
    blob = _MAGIC + hashlib.blake2b(body, digest_size=32).digest() + body
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            os.replace(tmp, path)  # readers see the whole entry or none
        except BaseException:
            _remove(tmp)
            raise
    except OSError:
        pass  # a read-only or full cache directory: the next process compiles again


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# JAX's persistent-cache reads on this thread: an executable JAX read back from its cache
# serialises without its compiled kernels, so it is never written here
_reads = threading.local()
_listening = False


def _on_event(event: str, **_: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _reads.count = getattr(_reads, "count", 0) + 1


def _listen() -> None:
    global _listening
    if not _listening:
        jax.monitoring.register_event_listener(_on_event)
        _listening = True


# ------------------------------------------------------------------------------------------
# Programs
# ------------------------------------------------------------------------------------------
def stored(jitted: Callable, name: str, describe: Callable[..., tuple], static: tuple = ()) -> Callable:
    """``jitted``, each signature's executable loaded from the program store where a previous
    process left it (or, after compiling it, left there for the next one).

    ``describe(*args, **kwargs)`` gives the key's parts beyond the arguments' structure and
    shapes (see ``program_key``), or raises ``NotStorable``; ``static``: names of keyword
    arguments that are static for ``jitted`` (in the key; not passed to the executable).
    Without a program directory (``program_dir``) every call goes to ``jitted``.

    ``run.ahead(*args, **kwargs)`` (arguments may be ``jax.ShapeDtypeStruct``s) prepares the
    program for a call to come: loaded from the store, or traced and lowered here and compiled
    on a thread of its own (XLA releases Python's lock while it compiles), so that it compiles
    while the caller traces and compiles something else; the call with those shapes then
    waits for it."""
    table: dict = {}  # fast signature -> executable, or jitted where not storable
    by_shape: dict = {}  # signature by abstract values -> executable or a _Pending compile
    last: list = [None, None]  # (statics, executable) of the latest call

    def run(*args, **kwargs):
        if program_dir() is None:
            return jitted(*args, **kwargs)
        statics = tuple(kwargs.get(k) for k in static)
        dynamic = {k: v for k, v in kwargs.items() if k not in static} if static else kwargs
        if last[1] is not None and last[0] == statics:
            # the common case, a fit repeated: the executable checks the arguments' structure,
            # shapes and dtypes itself (TypeError if they differ) at no cost, while the
            # signature below costs ~18 us per call, 4% of a warm logistic fit per program
            fn = last[1]
            if fn is jitted:
                return jitted(*args, **kwargs)
            try:
                return _call(fn, args, dynamic)
            except TypeError:
                pass
            except _Broken:
                return _drop(fn, args, kwargs)
        leaves, tree = jax.tree_util.tree_flatten((args, dynamic))
        sig = (tree, statics, tuple((type(x), getattr(x, "shape", None), getattr(x, "dtype", None),
                                     getattr(x, "weak_type", None)) for x in leaves))
        fn = table.get(sig)
        if fn is None:
            shaped = _shape_signature(args, kwargs, static)
            fn = by_shape.get(shaped)
            if isinstance(fn, _Pending):
                fn = fn.result()
            if fn is None:
                fn = _resolve(jitted, name, describe, args, kwargs, static)
            table[sig] = by_shape[shaped] = fn
        last[0], last[1] = statics, fn
        if fn is jitted:
            return jitted(*args, **kwargs)
        try:
            return _call(fn, args, dynamic)
        except TypeError:  # arguments the signature above did not tell apart: not this executable
            return jitted(*args, **kwargs)
        except _Broken:
            return _drop(fn, args, kwargs)

    def _drop(fn, args, kwargs):
        # a stored executable that loaded but cannot run: its entry is gone (``_call``), and
        # this signature goes to the program as compiled without the store from now on
        for d in (table, by_shape):
            for k, v in list(d.items()):
                if v is fn:
                    d[k] = jitted
        last[0], last[1] = None, None
        return jitted(*args, **kwargs)

    def ahead(*args, **kwargs):
        if program_dir() is None:
            return
        shaped = _shape_signature(args, kwargs, static)
        if shaped not in by_shape:
            by_shape[shaped] = _resolve(jitted, name, describe, args, kwargs, static, wait=False)

    run.__wrapped__ = jitted
    run.ahead = ahead
    run.trace, run.lower = jitted.trace, jitted.lower  # what callers inspect stays the program's
    return run


class _Broken(Exception):
    """A stored executable failed to run (``_call``)."""


#: ``id`` of each executable read from the store -> its entry's path (``_call`` removes an
#: entry that loads but does not run)
_loaded_paths: dict = {}


def _call(fn: Callable, args: tuple, dynamic: dict) -> Any:
    """``fn(*args, **dynamic)``; an executable read from the store that fails in XLA's runtime
    (one serialised without its kernels fails "Function ... not found" before it computes
    anything, seen once in CI with xdist workers sharing JAX's cache) has its entry removed and
    raises ``_Broken``, so the caller compiles the program instead of failing the fit."""
    try:
        return fn(*args, **dynamic)
    except jax.errors.JaxRuntimeError:
        path = _loaded_paths.pop(id(fn), None)
        if path is None:
            raise
        _remove(path)
        raise _Broken() from None


def _shape_signature(args: tuple, kwargs: dict, static: tuple) -> tuple:
    statics = tuple(kwargs.get(k) for k in static)
    dynamic = {k: v for k, v in kwargs.items() if k not in static}
    leaves, tree = jax.tree_util.tree_flatten((args, dynamic))
    return tree, statics, tuple(jax.api_util.shaped_abstractify(x) for x in leaves)


class _Pending:
    """An executable compiling on a thread of its own (``stored``'s ``ahead``)."""

    def __init__(self, compile_fn: Callable, fallback: Callable):
        self._out: list = []
        self._fallback = fallback
        self._thread = threading.Thread(target=lambda: self._out.append(_attempt(compile_fn)), name="autohess-compile",
                                        daemon=True)
        _compiles.append(self._thread)
        self._thread.start()

    def result(self) -> Callable:
        self._thread.join()
        ok, value = self._out[0] if self._out else (False, None)
        return value if ok else self._fallback


def _attempt(fn: Callable) -> tuple:
    try:
        return True, fn()
    except Exception:  # noqa: BLE001 - the program's own call compiles it and raises what is wrong
        return False, None


#: ``jax.monitoring`` events: a program loaded from the store (duration: key, read and load),
#: a program written to it (duration: serialise and write), one not keyed (``NotStorable``);
#: ``fun_name`` is the program's name ("solve", "covariance")
LOAD_EVENT = "/autohess/program_store/load_sec"
WRITE_EVENT = "/autohess/program_store/write_sec"
NOT_STORABLE_EVENT = "/autohess/program_store/not_storable"


def _resolve(jitted, name, describe, args, kwargs, static, wait: bool = True):
    """The callable for one signature: a stored executable, a freshly compiled one (stored),
    or ``jitted`` where the program cannot be keyed. ``wait=False``: a compile runs on a thread
    and a ``_Pending`` is returned."""
    import time

    from jax.experimental import serialize_executable

    t0 = time.perf_counter()
    folder = program_dir()
    lapack_ready()  # before any executable is loaded or run (and it saves the lowering's import)
    try:
        statics = tuple((k, kwargs[k]) for k in static if k in kwargs)
        dynamic = {k: v for k, v in kwargs.items() if k not in static}
        key = program_key(name, (describe(*args, **kwargs), statics), args, dynamic)
    except Exception as why:  # noqa: BLE001 - NotStorable, or a trace that fails: the program's own call says why
        jax.monitoring.record_event(NOT_STORABLE_EVENT, fun_name=name, reason=str(why)[:200])
        return jitted
    path = os.path.join(folder, f"{name}-{key}.bin")
    entry = _read(path, key)
    if entry is not None:
        try:
            compiled = serialize_executable.deserialize_and_load(*entry)
        except Exception:  # noqa: BLE001 - e.g. an executable this jaxlib cannot load
            _remove(path)
        else:
            jax.monitoring.record_event_duration_secs(LOAD_EVENT, time.perf_counter() - t0, fun_name=name)
            _loaded_paths[id(compiled)] = path
            return compiled
    try:
        lowered = jitted.trace(*args, **kwargs).lower()
    except Exception:  # noqa: BLE001 - the program's own call raises it where the user sees it
        if wait:
            raise
        return jitted

    def compile_and_store():
        _listen()
        before = getattr(_reads, "count", 0)
        with _outside_jax_cache():
            compiled = lowered.compile()
        if getattr(_reads, "count", 0) == before:  # compiled here, not read from JAX's cache
            _write_later(folder, path, key, compiled, name)
        return compiled

    return compile_and_store() if wait else _Pending(compile_and_store, jitted)


_salt_lock = threading.Lock()
_salted = [0, None]  # compiles under way outside JAX's cache, JAX's own hook while they run


class _outside_jax_cache:
    """A compile for the store, outside JAX's persistent cache: JAX neither reads it (an
    executable read back from JAX's cache serialises without its kernels, so a program JAX
    already had, from an earlier autohess or a fit without the store, could never be stored and
    every later process would trace it again) nor writes it (the same executable serialised and
    zlib-compressed a second time, 0.05-0.1 s of a cold first fit). JAX's key is salted through
    its ``cache_key.custom_hook`` while the compile runs (a compile on another thread meanwhile
    only misses JAX's cache), and its write threshold raised to infinity on this thread."""

    def __enter__(self):
        from jax._src import config as jax_config

        try:
            from jax._src import cache_key
        except ImportError:  # a JAX without it: cache hits are still never written (see _reads)
            cache_key = None
        self._cache_key = cache_key
        if cache_key is not None and hasattr(cache_key, "custom_hook"):
            with _salt_lock:
                if _salted[0] == 0:
                    own = _salted[1] = cache_key.custom_hook
                    # a new salt each time: a compile on another thread meanwhile (its write
                    # threshold not raised) may write to JAX's cache under the salted key, and a
                    # later compile for the store must never read that back (a read-back
                    # executable serialises without its kernels)
                    salt = f"|autohess program store {uuid.uuid4().hex}: not from JAX's cache"
                    cache_key.custom_hook = lambda: own() + salt
                _salted[0] += 1
        try:
            self._threshold = jax_config.persistent_cache_min_compile_time_secs(float("inf"))
        except AttributeError:  # a JAX without it: JAX writes its copy too, nothing else changes
            self._threshold = contextlib.nullcontext()
        self._threshold.__enter__()
        return self

    def __exit__(self, *exc):
        self._threshold.__exit__(*exc)
        cache_key = self._cache_key
        if cache_key is not None and hasattr(cache_key, "custom_hook"):
            with _salt_lock:
                _salted[0] -= 1
                if _salted[0] == 0:
                    cache_key.custom_hook, _salted[1] = _salted[1], None
        return False


_writers: list = []


def _write_later(folder: str, path: str, key: str, compiled: Any, name: str) -> None:
    """Serialise and write ``compiled`` on a thread of its own: the first fit runs meanwhile
    (serialising releases Python's lock), and Python waits for the thread at exit."""
    import time

    def write():
        t0 = time.perf_counter()
        from jax.experimental import serialize_executable

        try:
            serialized = serialize_executable.serialize(compiled)
            _write(folder, path, key, serialized)
        except Exception:  # noqa: BLE001 - not serialisable (constants passed as arguments, an
            return  # output tree that does not pickle): compiled in every process, as before
        jax.monitoring.record_event_duration_secs(WRITE_EVENT, time.perf_counter() - t0, fun_name=name)

    thread = threading.Thread(target=write, name=f"autohess-store-{name}", daemon=False)
    _writers.append(thread)
    thread.start()


_compiles: list = []


def wait_for_writes() -> None:
    """Block until every program this process compiled ahead is compiled and every program it
    compiled is written (tests; Python waits for the writes at exit)."""
    while _compiles:
        _compiles.pop().join()
    while _writers:
        _writers.pop().join()
