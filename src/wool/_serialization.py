"""Pickling of calls, results and exceptions (cloudpickle, tblib for tracebacks)."""

from __future__ import annotations

import inspect
import io
import pickle
import traceback
from collections.abc import Callable
from types import TracebackType, WrapperDescriptorType
from typing import Any

import cloudpickle
from tblib.pickling_support import pickle_exception, pickle_traceback, unpickle_exception

from wool._errors import SerializationError, TaskException

__all__ = [
    "dumps",
    "dumps_arguments",
    "dumps_exception",
    "dumps_function",
    "loads",
    "loads_exception",
]

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class _Pickler(cloudpickle.Pickler):
    """cloudpickle that keeps tracebacks, causes, contexts and notes of exceptions.

    tblib's reducers are applied here instead of through ``copyreg`` so that wool never
    changes how the rest of the program pickles exceptions.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException):
            if isinstance(type(obj).__init__, WrapperDescriptorType):
                return _reduce_builtin_exception(obj, self.proto)
            return pickle_exception(obj)
        if isinstance(obj, TracebackType):
            return pickle_traceback(obj)
        return super().reducer_override(obj)


def _reduce_builtin_exception(exc: BaseException, protocol: int) -> Any:
    # tblib rebuilds exceptions without calling __init__, which loses the fields that a
    # C-level __init__ sets (SystemExit.code, UnicodeDecodeError.reason, ...): keep the
    # exception's own reduction and add what tblib carries.
    func, args, *rest = exc.__reduce_ex__(protocol)
    notes = getattr(exc, "__notes__", None)
    carried = (
        func,
        args,
        exc.__cause__,
        exc.__traceback__,
        exc.__context__,
        exc.__suppress_context__,
        notes,
    )
    return (unpickle_exception, carried, *rest)


def dumps(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=_PROTOCOL).dump(obj)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def dumps_arguments(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle a call's arguments; on failure say which argument could not be pickled and why."""
    try:
        return dumps((args, kwargs))
    except Exception as exc:
        raise _explain_call_failure(fn, args, kwargs, exc) from exc


def dumps_function(fn: Callable[..., Any]) -> bytes:
    try:
        return dumps(fn)
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise SerializationError(
            f"routine {name!r} cannot be pickled: {exc}. Values it uses from its module or "
            "closure must be picklable too."
        ) from exc


def _explain_call_failure(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception
) -> SerializationError:
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs).arguments
    except (TypeError, ValueError):
        bound = {f"#{i}": value for i, value in enumerate(args)} | kwargs
    for param, value in bound.items():
        try:
            dumps(value)
        except Exception as reason:
            return SerializationError(
                f"argument {param!r} of routine {name!r} cannot be pickled "
                f"({type(value).__name__}): {reason}. Pass a picklable value, "
                f"or something the worker can use to build it (a path, an address)."
            )
    return SerializationError(f"the arguments of routine {name!r} cannot be pickled: {exc}")


def dumps_exception(exc: BaseException) -> tuple[bytes, str, str, str]:
    """Pickle an exception for the wire: (pickle or b"", type name, message, traceback text)."""
    text = _safely(lambda: "".join(traceback.format_exception(exc)))
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        data = dumps(exc)
        pickle.loads(data)  # a pickle that will not load on the caller is no better than none
    except Exception:
        data = b""
    return data, type_name, _safely(lambda: str(exc)), text


def _safely(describe: Callable[[], str]) -> str:
    try:
        return describe()
    except Exception as exc:  # an exception whose __str__ raises must still be reported
        return f"<unprintable: {type(exc).__name__}: {exc!r}>"


def loads_exception(data: bytes, type_name: str, message: str, text: str) -> BaseException:
    """The exception the routine raised, or a TaskException describing it."""
    if data:
        try:
            exc = pickle.loads(data)
        except Exception:
            pass
        else:
            if isinstance(exc, BaseException):
                return exc
    return TaskException(type_name, message, text)
