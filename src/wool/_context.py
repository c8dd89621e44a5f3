"""``wool.ContextVar``: context variables whose values travel with routine calls.

All values live in one stdlib context variable holding an immutable dict (name to value),
replaced on every change: copy-on-start for tasks comes from contextvars itself, and a
call only has to look at one dict to know whether it carries anything. Names are the
identity across processes; a worker keeps (and passes on to its nested calls) values of
variables its own code never declared.
"""

from __future__ import annotations

import contextvars
import sys
import weakref
from typing import Any, Generic, TypeVar, cast, overload

from wool._errors import SerializationError
from wool._serialization import dumps, loads

__all__ = ["ContextVar", "Token", "absorb", "changes_since", "enter", "outgoing", "snapshot"]

T = TypeVar("T")
D = TypeVar("D")

_EMPTY: dict[str, Any] = {}
_values: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "wool_context_values", default=_EMPTY
)
_registry: weakref.WeakValueDictionary[str, ContextVar[Any]] = weakref.WeakValueDictionary()

#: Values are metadata (ids, tenants, trace context): they travel in the Task message,
#: unchunked, so they are bounded well below the smallest allowed message size.
MAX_CONTEXT_BYTES = 32 * 1024


class _Missing:
    def __repr__(self) -> str:
        return "<Token.MISSING>"


_MISSING: Any = _Missing()


class Token(Generic[T]):
    """What :meth:`ContextVar.set` returns: pass it to :meth:`ContextVar.reset`."""

    MISSING: Any = _MISSING

    def __init__(self, var: ContextVar[T], old_value: Any) -> None:
        self.var = var
        #: The value before the ``set``, or ``Token.MISSING`` if there was none.
        self.old_value = old_value
        self._used = False


class ContextVar(Generic[T]):
    """A context variable whose value travels with each routine call, both ways.

    It behaves like :class:`contextvars.ContextVar` (``get``, ``set``, ``reset``, copied into
    new tasks), and in addition a routine sees the value its caller had, at any depth of
    nesting, on any worker; a value an awaited coroutine routine sets is visible to its
    caller once the call returns or raises, as after a local ``await``.

    ``name`` identifies the variable across processes: give each variable of a program its
    own (a dotted name such as ``"myapp.request_id"`` avoids collisions with libraries).
    Values must be picklable with cloudpickle; they are copied, so changing a value in
    place (appending to a list) is not seen on the other side: set a new value instead.

    Values are stored by name: two variables of one name share them. Declaring a name again
    in the same module replaces the variable (a module reloaded, a notebook cell run again).

    Raises:
        ValueError: a live ``wool.ContextVar`` of another module has the same name.
    """

    __slots__ = ("__weakref__", "_default", "_module", "_name")

    def __init__(self, name: str, *, default: T = _MISSING) -> None:
        if not isinstance(name, str) or not name:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"a wool.ContextVar needs a non-empty str name, got {name!r}")
        module = sys._getframe(1).f_globals.get("__name__")
        existing = _registry.get(name)
        # The same module may declare it again (a reload, a notebook cell run twice); a
        # variable made by unpickling stands in until its module declares it.
        if existing is not None and existing._module not in (module, None):
            raise ValueError(
                f"a wool.ContextVar named {name!r} exists already (declared in module "
                f"{existing._module!r}); names identify variables across processes, so each "
                "variable needs its own"
            )
        self._name = name
        self._default = default
        self._module: str | None = module
        _registry[name] = self

    @property
    def name(self) -> str:
        """The name given to the constructor, which identifies the variable in every process."""
        return self._name

    @overload
    def get(self, /) -> T: ...

    @overload
    def get(self, default: D, /) -> T | D: ...

    def get(self, default: Any = _MISSING, /) -> Any:
        """The value in the current context, else ``default``, else the variable's default.

        Raises:
            LookupError: the variable has no value here and no default.
        """
        value = _values.get().get(self._name, _MISSING)
        if value is not _MISSING:
            return value
        if default is not _MISSING:
            return default
        if self._default is not _MISSING:
            return self._default
        raise LookupError(self)

    def set(self, value: T) -> Token[T]:
        """Set the value in the current context; the token undoes it (:meth:`reset`)."""
        values = _values.get()
        token = Token(self, values.get(self._name, _MISSING))
        _values.set({**values, self._name: value})
        return token

    def reset(self, token: Token[T]) -> None:
        """Give the variable back the value it had before the ``set`` that made ``token``.

        Only this variable changes, whatever else was set since.

        Raises:
            ValueError: the token was made by another variable.
            RuntimeError: the token was used already.
        """
        if token.var is not self:
            raise ValueError(f"{token!r} was created by a different ContextVar")
        if token._used:
            raise RuntimeError(f"{token!r} has already been used once")
        token._used = True
        if token.old_value is _MISSING:
            _replace({}, (self._name,))
        else:
            _replace({self._name: token.old_value}, ())

    def __reduce__(self) -> Any:
        # By name: a routine that refers to the variable finds the worker's own.
        return _named, (self._name, self._default)

    def __repr__(self) -> str:
        return f"<wool.ContextVar name={self._name!r} at {id(self):#x}>"


def _named(name: str, default: Any) -> ContextVar[Any]:
    found = _registry.get(name)
    if found is None:
        found = ContextVar(name, default=default)
        found._module = None  # a stand-in: the module that declares it may come later
    return found


def _replace(changed: dict[str, Any], removed: tuple[str, ...] | list[str]) -> None:
    values = {**_values.get(), **changed}
    for name in removed:
        values.pop(name, None)
    _values.set(values)


# ---------------------------------------------------------------------------- the wire


def snapshot() -> dict[str, Any]:
    """The values of the current context (do not modify)."""
    return _values.get()


def outgoing() -> bytes:
    """The current values for a Task, or ``b""`` when none is set (no work done then).

    Raises:
        SerializationError: a value cannot be pickled, or the values are too large.
    """
    values = _values.get()
    return _pickled(values, "the caller's") if values else b""


def _pickled(values: dict[str, Any], whose: str) -> bytes:
    try:
        data = dumps(values)
    except Exception:
        for name, value in values.items():
            try:
                dumps(value)
            except Exception as exc:
                raise SerializationError(
                    f"wool.ContextVar {name!r} holds {whose} value of type "
                    f"{type(value).__name__}, which cannot be pickled: {exc}; context variables "
                    "that travel with calls need picklable values"
                ) from exc
        raise
    if len(data) > MAX_CONTEXT_BYTES:
        sizes = sorted(((len(dumps(v)), n) for n, v in values.items()), reverse=True)
        raise SerializationError(
            f"{whose} wool.ContextVar values pickle to {len(data)} bytes, more than the "
            f"{MAX_CONTEXT_BYTES} a call carries (largest: {sizes[0][1]!r}, {sizes[0][0]} "
            "bytes); pass large data as arguments"
        )
    return data


def enter(data: bytes) -> dict[str, Any]:
    """On a worker: make the caller's values (a Task's ``context``) current; return them.

    Raises:
        SerializationError: the values cannot be unpickled here.
    """
    if not data:
        if _values.get():
            _values.set(_EMPTY)
        return _EMPTY
    try:
        values = loads(data)
    except Exception as exc:
        raise SerializationError(
            f"the caller's wool.ContextVar values cannot be unpickled on the worker: {exc!r}"
        ) from exc
    if not isinstance(values, dict):
        raise SerializationError("the caller's wool.ContextVar values are not a dict")
    _values.set(cast(dict[str, Any], values))
    return cast(dict[str, Any], values)


def changes_since(baseline: dict[str, Any]) -> bytes:
    """On a worker, after the routine: what it changed, for the Response, or ``b""``.

    Raises:
        SerializationError: a value the routine set cannot be pickled.
    """
    values = _values.get()
    if values is baseline:
        return b""
    changed = {n: v for n, v in values.items() if baseline.get(n, _MISSING) is not v}
    removed = [n for n in baseline if n not in values]
    if not (changed or removed):
        return b""
    _pickled(changed, "the routine's")  # names the culprit, checks the size
    return dumps((changed, removed))


def absorb(data: bytes, routine: str) -> None:
    """In the caller, after a call: apply what the routine changed (a Response's ``context``).

    Raises:
        SerializationError: the values cannot be unpickled here.
    """
    if not data:
        return
    try:
        changed, removed = loads(data)
    except Exception as exc:
        raise SerializationError(
            f"the wool.ContextVar values {routine!r} set cannot be unpickled here: {exc!r}"
        ) from exc
    _replace(changed, removed)
