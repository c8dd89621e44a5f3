"""Pickling of calls, results and exceptions (cloudpickle, tblib for tracebacks)."""

from __future__ import annotations

import inspect
import io
import marshal
import os
import pickle
import struct
import time
import traceback
from collections.abc import Callable, Sequence
from types import CodeType, TracebackType, WrapperDescriptorType
from typing import Any

import anyio
import anyio.to_thread
import cloudpickle
from anyio.lowlevel import RunVar
from tblib.pickling_support import pickle_exception, pickle_traceback, unpickle_exception

from wool._errors import SerializationError, TaskException

__all__ = [
    "Payload",
    "Segments",
    "dumps",
    "dumps_arguments",
    "dumps_exception",
    "dumps_function",
    "dumps_payload",
    "load",
    "loads",
    "loads_exception",
    "too_large",
    "unpack",
]

_PROTOCOL = pickle.HIGHEST_PROTOCOL


class _Pickler(cloudpickle.Pickler):
    """cloudpickle that keeps tracebacks, causes, contexts and notes of exceptions.

    tblib's reducers are applied here instead of through ``copyreg`` so that wool never
    changes how the rest of the program pickles exceptions.
    """

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is CodeType:
            return _reduce_code(obj)
        if isinstance(obj, BaseException):
            if isinstance(type(obj).__init__, WrapperDescriptorType):
                return _reduce_builtin_exception(obj, self.proto)
            return pickle_exception(obj)
        if isinstance(obj, TracebackType):
            return pickle_traceback(obj)
        return super().reducer_override(obj)


def _reduce_code(code: CodeType) -> Any:
    # cloudpickle >= 3.1.3 renames every code object it pickles by value "<dynamic-code>",
    # so a worker's frames of a routine defined in a script would lose their file and
    # source line. marshal keeps every field, those of nested code objects too; like
    # cloudpickle's own reduction it needs the same Python on both sides.
    try:
        return marshal.loads, (marshal.dumps(code),)
    except ValueError:  # a constant that marshal cannot write (code built by hand)
        return NotImplemented


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


class Segments:
    """A payload in parts, not joined into one buffer.

    Sent: a header, a pickle, then the large ``bytes`` objects it holds, out of band
    (pickle protocol 5), which saves the copy of each of them into the pickle. Received:
    the payloads of the chunks it came in (see ``transport._framing.Assembler``), which
    :func:`load` copies into the objects they hold only once the whole payload is in.
    """

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes | memoryview]) -> None:
        self.parts = parts
        self.size = sum(len(part) for part in parts)

    def __len__(self) -> int:
        return self.size

    def join(self) -> bytes:
        return b"".join(self.parts)

    def release(self) -> None:
        """Drop the parts, one at a time, letting other threads run in between (call it
        off the event loop, once nothing reads them any more). Freeing a large buffer
        gives its pages back to the system while holding the GIL: a 100 MB payload's
        parts at once would stall every thread of the process for about 10 ms."""
        parts, self.parts, self.size = self.parts, [], 0
        while parts:
            parts.pop()
            time.sleep(0)  # releases the GIL


#: What an argument tuple, result, item or sent value is pickled to.
Payload = bytes | Segments

# bytes objects at least this large travel out of band.
_OUT_OF_BAND = 256 * 1024
# A segmented payload starts with this byte (a pickle starts with PROTO, 0x80), then the
# number of segments and their lengths.
_SEGMENTED = b"S"
_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")


class _Bulk:
    """Stands for a large bytes object while pickling: it travels out of band."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> Any:
        return bytes, (pickle.PickleBuffer(self.data),)


def _lift(obj: Any, depth: int, seen: dict[int, _Bulk]) -> Any:
    """``obj`` with its large bytes objects, near the top, wrapped to travel out of band."""
    kind = type(obj)
    if kind is bytes:
        if len(obj) < _OUT_OF_BAND:
            return obj
        bulk = seen.get(id(obj))
        if bulk is None:
            bulk = seen[id(obj)] = _Bulk(obj)
        return bulk
    if depth == 0:
        return obj
    if kind is tuple or kind is list:
        return kind(_lift(item, depth - 1, seen) for item in obj)
    if kind is dict:
        return {key: _lift(value, depth - 1, seen) for key, value in obj.items()}
    return obj


def dumps_payload(obj: Any) -> Payload:
    """Pickle a value for the wire. Large bytes objects in it (itself, or in the tuples,
    lists and dicts that hold it, a few levels down) are not copied into the pickle."""
    buffer = io.BytesIO()
    taken: list[pickle.PickleBuffer] = []

    def out_of_band(view: pickle.PickleBuffer) -> bool:
        taken.append(view)
        return False

    _Pickler(buffer, protocol=_PROTOCOL, buffer_callback=out_of_band).dump(_lift(obj, 3, {}))
    data = buffer.getvalue()
    if not taken:
        return data
    parts: list[bytes | memoryview] = [data, *(view.raw() for view in taken)]
    header = _SEGMENTED + _COUNT.pack(len(parts)) + b"".join(_LENGTH.pack(len(p)) for p in parts)
    return Segments([header, *parts])


def too_large(what: str, size: int, limit: int) -> SerializationError:
    """The error for a payload over ``max_payload_size``, naming what it was."""
    return SerializationError(
        f"{what} pickles to {size} bytes, over the maximum payload size of {limit} bytes; "
        "send less at a time, or something the worker can load the data from (a path, an "
        "address), or raise max_payload_size on the pool and its workers"
    )


def loads(data: Payload | memoryview) -> Any:
    """Unpickle what :func:`dumps` or :func:`dumps_payload` made (whole or received in
    parts). A large payload is better loaded with :func:`load`."""
    pickled, buffers = unpack(data)
    return pickle.loads(pickled, buffers=buffers)


# Received payloads at least this large are unpacked in a worker thread (see load).
_UNPACK_IN_THREAD = 4 * 1024 * 1024


# Threads of its own, not anyio's default limiter: user code that fills that one (with
# blocking calls of its own) must not hold up the arrival of wool's answers.
_UNPACKERS: RunVar[anyio.CapacityLimiter] = RunVar("wool_unpackers")


def _unpackers() -> anyio.CapacityLimiter:
    try:
        return _UNPACKERS.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(min(4, os.cpu_count() or 1))
        _UNPACKERS.set(limiter)
        return limiter


async def load(data: Payload | memoryview) -> Any:
    """:func:`loads`, with the copying of a large payload done in a worker thread.

    Loading a payload received in parts copies every byte once more, into the objects it
    holds (a 100 MB ``bytes`` argument is a 100 MB copy): done on the calling thread, it
    would stall the routines (or the caller's other calls) that share its event loop.
    What is left for this thread, unpickling with every large buffer made already, takes
    no copy of them (``bytes(b)`` is ``b``). A large received payload is consumed: its
    parts are freed there too, so it cannot be loaded twice.
    """
    if isinstance(data, Segments) and data.size >= _UNPACK_IN_THREAD:
        pickled, buffers = await anyio.to_thread.run_sync(
            _unpack_received, data, limiter=_unpackers()
        )
    else:
        pickled, buffers = unpack(data)
    return pickle.loads(pickled, buffers=buffers)


def _unpack_received(data: Segments) -> tuple[Buffer, list[Buffer]]:
    """:func:`unpack`, then the received parts freed (the pieces hold what they need)."""
    unpacked = unpack(data)
    data.release()
    return unpacked


#: One contiguous piece of a payload.
Buffer = bytes | memoryview


def unpack(data: Payload | memoryview) -> tuple[Buffer, list[Buffer]]:
    """The pickle of a payload and its out-of-band buffers, each in one piece."""
    if not isinstance(data, Segments):
        if not data or data[0] != _SEGMENTED[0]:
            return data, []  # a plain pickle in one piece: every small value
        parts: Sequence[Buffer] = [data]
    else:
        parts = data.parts
    size = len(data)
    if not size or _span(parts, 0, 1)[0] != _SEGMENTED[0]:
        return _span(parts, 0, size), []
    at = 1 + _COUNT.size
    (count,) = _COUNT.unpack(_span(parts, 1, at))
    table = _span(parts, at, at + count * _LENGTH.size)
    at += count * _LENGTH.size
    pieces: list[Buffer] = []
    for (length,) in _LENGTH.iter_unpack(table):
        pieces.append(_span(parts, at, at + length))
        at += length
    if not pieces or at != size:
        raise pickle.UnpicklingError("a segmented payload whose lengths do not add up")
    return pieces[0], pieces[1:]


def _span(parts: Sequence[Buffer], start: int, end: int) -> Buffer:
    """Bytes ``start:end`` of the concatenation of ``parts``: a view of one part where
    they lie in one, else a new ``bytes``.

    Joined from ``bytes`` objects only, as received parts are: ``bytes.join`` then copies
    without holding the GIL (from 1 MiB up), so the other threads (the transport's, the
    event loop's) run on while it copies.
    """
    if end > sum(len(part) for part in parts) or start > end:
        raise pickle.UnpicklingError("a segmented payload shorter than its lengths say")
    pieces: list[Buffer] = []
    offset = 0
    for part in parts:
        length = len(part)
        if offset + length > start and offset < end:
            lo, hi = max(start - offset, 0), min(end - offset, length)
            whole = lo == 0 and hi == length
            if not pieces and end - offset <= length:  # all in this part
                return part if whole and type(part) is bytes else memoryview(part)[lo:hi]
            pieces.append(part if whole else bytes(memoryview(part)[lo:hi]))
        offset += length
        if offset >= end:
            break
    return b"".join(pieces)


def dumps_arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Payload:
    """Pickle a call's arguments; on failure say which argument could not be pickled and why."""
    try:
        return dumps_payload((args, kwargs))
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
    data = _loadable(exc, _Pickler)
    if not data and _travels_alone(exc):
        data = _loadable(exc, _StandInPickler)
    return data, type_name, _safely(lambda: str(exc)), text


def _loadable(exc: BaseException, pickler: type[_Pickler]) -> bytes:
    try:
        buffer = io.BytesIO()
        pickler(buffer, protocol=_PROTOCOL).dump(exc)
        data = buffer.getvalue()
        pickle.loads(data)  # a pickle that will not load on the caller is no better than none
    except Exception:
        return b""
    return data


class _StandInPickler(_Pickler):
    """Pickles each exception of a chain that cannot travel as a TaskException describing it.

    One link that cannot be rebuilt elsewhere (trio < 0.31's ``Cancelled`` has no public
    constructor, and is the context of every ``TimeoutError`` from ``fail_after``) must
    not cost the caller the exception the routine actually raised.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stand_ins: dict[int, TaskException] = {}  # one per link, so a cyclic chain ends

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException) and not isinstance(obj, TaskException):
            if id(obj) in self._stand_ins or not _travels_alone(obj):
                stand_in = self._stand_ins.setdefault(id(obj), _stand_in(obj))
                return super().reducer_override(stand_in)
        return super().reducer_override(obj)


def _travels_alone(exc: BaseException) -> bool:
    # The links are detached only for the moment of this synchronous check; the
    # chain is the pickler's to walk, link by link.
    saved = exc.__cause__, exc.__context__, exc.__suppress_context__, exc.__traceback__
    exc.__cause__ = exc.__context__ = exc.__traceback__ = None
    try:
        return bool(_loadable(exc, _Pickler))
    finally:
        exc.__cause__, exc.__context__ = saved[0], saved[1]
        exc.__suppress_context__, exc.__traceback__ = saved[2], saved[3]


def _stand_in(exc: BaseException) -> TaskException:
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    text = _safely(lambda: "".join(traceback.format_exception(exc, chain=False)))
    stand_in = TaskException(type_name, _safely(lambda: str(exc)), text)
    stand_in.__cause__ = exc.__cause__
    stand_in.__context__ = exc.__context__
    stand_in.__suppress_context__ = exc.__suppress_context__
    stand_in.__traceback__ = exc.__traceback__
    return stand_in


def _safely(describe: Callable[[], str]) -> str:
    try:
        return describe()
    except Exception as exc:  # an exception whose __str__ raises must still be reported
        return f"<unprintable: {type(exc).__name__}: {exc!r}>"


def loads_exception(data: Payload, type_name: str, message: str, text: str) -> BaseException:
    """The exception the routine raised, or a TaskException describing it."""
    if len(data):
        try:
            exc = loads(data)
        except Exception:
            pass
        else:
            if isinstance(exc, BaseException):
                return exc
    return TaskException(type_name, message, text)
