"""The protobuf wire form of what every small call carries, written by hand for speed.

betterproto2 spends about 130 µs encoding a :class:`Task` and 50 µs decoding a batch of one
call or one answer (it enters ``warnings.catch_warnings`` for every field it encodes): more
than the rest of wool's own work on a trivial call. These functions produce and read the
same messages, from the field numbers in ``protos/wool/v1/worker.proto``: the Task inside a
Calls-stream entry, the caller's ``CallBatch`` and ``AnswerBatch``, and a Response that
carries a result. Anything else is left to betterproto2. ``tests/test_wire.py`` checks
both directions against betterproto2 on generated messages, so a field added to the proto
and forgotten here fails there.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, cast

import betterproto2

from wool.transport._framing import read_varint, varint
from wool.transport._protocol.wool.v1 import (
    Answer,
    AnswerBatch,
    Call,
    CallBatch,
    CancelCall,
    CancelResponse,
    Response,
    Task,
)

__all__ = [
    "body_of",
    "decode_answer_batch",
    "decode_call_batch",
    "decode_task",
    "encode_call",
    "encode_cancel_call",
    "encode_response",
    "encode_task",
]

_DOUBLE = struct.Struct("<d")

# Wire types.
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


# The tag of each length-delimited field number below 16 (one byte each).
_LENGTH_TAGS = [bytes([number << 3 | _LENGTH]) for number in range(16)]


def _length_delimited(number: int, data: bytes) -> bytes:
    return b"".join((_LENGTH_TAGS[number], varint(len(data)), data))


_TRACE_TAG = _LENGTH_TAGS[14]


def encode_task(task: Task) -> bytes:
    """``bytes(task)``, faster."""
    parts: list[bytes] = []
    add = parts.append
    if task.version:
        add(b"\x08" + varint(task.version))
    for number, text in ((2, task.id), (3, task.routine)):
        if text:
            add(_length_delimited(number, text.encode()))
    if task.function:
        add(_length_delimited(4, task.function))
    if task.timeout is not None:
        add(b"\x29" + _DOUBLE.pack(task.timeout))
    if task.grace:
        add(b"\x31" + _DOUBLE.pack(task.grace))
    if task.generator:
        add(b"\x38\x01")
    if task.prefetch:
        add(b"\x40" + varint(task.prefetch))
    if task.caller:
        add(_length_delimited(9, task.caller.encode()))
    if task.arguments:
        add(_length_delimited(10, task.arguments))
    if task.depth:
        add(b"\x58" + varint(task.depth))
    if task.context:
        add(_length_delimited(12, task.context))
    if task.parent:
        add(_length_delimited(13, task.parent.encode()))
    for key, value in task.trace.items():
        entry = _length_delimited(1, key.encode()) + _length_delimited(2, value.encode())
        add(_TRACE_TAG + varint(len(entry)) + entry)
    return b"".join(parts)


def encode_call(call_id: int, task: Task) -> bytes:
    """``bytes(Call(id=call_id, task=task))``, faster."""
    return b"\x08" + varint(call_id) + _length_delimited(2, encode_task(task))


def encode_cancel_call(call_id: int) -> bytes:
    """``bytes(Call(id=call_id, cancel=CancelCall()))``."""
    return b"\x08" + varint(call_id) + b"\x1a\x00"


def encode_response(response: Response) -> bytes | None:
    """``bytes(response)`` for a Response that carries a result (and maybe context),
    faster; None for any other Response."""
    result = response.result
    if result is None or not _only_result(response):
        return None
    encoded = _length_delimited(1, result)
    if response.context:
        encoded += _length_delimited(9, response.context)
    return encoded


# The members of Response's body besides result.
_OTHER_BODIES = ("failure", "item", "exhausted", "cancelled", "rejected", "items", "chunk")


def _only_result(response: Response) -> bool:
    return all(getattr(response, name) is None for name in _OTHER_BODIES)


def body_of(response: Response) -> tuple[str, Any]:
    """The name and value of the member of ``response``'s body that is set (``("", None)``
    if none is): ``betterproto2.which_one_of(response, "body")``, faster for a result."""
    if response.result is not None:
        return "result", response.result
    return betterproto2.which_one_of(response, "body")


# ---------------------------------------------------------------------------- decoding


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of each field of a message: ints for varints,
    bytes for the rest. Raises ValueError on bytes that are no protobuf message."""
    at, end = 0, len(data)
    while at < end:
        # Tags, small integers and short lengths are one byte: read them inline.
        key = data[at]
        key, at = (key, at + 1) if key < 0x80 else _varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, at = _varint(data, at)
            yield number, wire_type, value
            continue
        if wire_type == _LENGTH:
            size = data[at] if at < end else 0x80
            size, at = (size, at + 1) if size < 0x80 else _varint(data, at)
        elif wire_type == _FIXED64:
            size = 8
        elif wire_type == _FIXED32:
            size = 4
        else:
            raise ValueError(f"unsupported wire type {wire_type} of field {number}")
        if at + size > end:
            raise ValueError(f"field {number} runs past the end of the message")
        yield number, wire_type, data[at : at + size]
        at += size


def _varint(data: bytes, at: int) -> tuple[int, int]:
    try:
        return read_varint(data, at)
    except IndexError:
        raise ValueError("a varint runs past the end of the message") from None


def _wrong_type(number: int, wire_type: int, expected: int) -> ValueError:
    return ValueError(f"field {number} has wire type {wire_type}, not {expected}")


def _int(number: int, wire_type: int, value: int | bytes) -> int:
    if wire_type != _VARINT:
        raise _wrong_type(number, wire_type, _VARINT)
    return cast(int, value)


def _bytes(number: int, wire_type: int, value: int | bytes, expected: int = _LENGTH) -> bytes:
    if wire_type != expected:
        raise _wrong_type(number, wire_type, expected)
    return cast(bytes, value)


_TASK_VARINTS = {1: "version", 7: "generator", 8: "prefetch", 11: "depth"}
_TASK_STRINGS = {2: "id", 3: "routine", 9: "caller", 13: "parent"}
_TASK_BYTES = {4: "function", 10: "arguments", 12: "context"}
_TASK_DOUBLES = {5: "timeout", 6: "grace"}


def decode_task(data: bytes) -> Task:
    """``Task.parse(data)``, faster. Raises ValueError (or UnicodeDecodeError) on bytes
    that are no Task."""
    values: dict[str, Any] = {}
    trace: dict[str, str] = {}
    for number, wire_type, value in _fields(data):
        if (name := _TASK_VARINTS.get(number)) is not None:
            integer = _int(number, wire_type, value)
            values[name] = bool(integer) if number == 7 else integer
        elif (name := _TASK_STRINGS.get(number)) is not None:
            values[name] = _bytes(number, wire_type, value).decode()
        elif (name := _TASK_BYTES.get(number)) is not None:
            values[name] = _bytes(number, wire_type, value)
        elif (name := _TASK_DOUBLES.get(number)) is not None:
            values[name] = _DOUBLE.unpack(_bytes(number, wire_type, value, _FIXED64))[0]
        elif number == 14:
            key, item = _trace_entry(_bytes(number, wire_type, value))
            trace[key] = item
        # Unknown fields are skipped, as protobuf requires.
    return Task(**values, trace=trace)  # pyright: ignore[reportArgumentType]


def _trace_entry(data: bytes) -> tuple[str, str]:
    key = value = ""
    for number, wire_type, field in _fields(data):
        if number in (1, 2):
            text = _bytes(number, wire_type, field).decode()
            if number == 1:
                key = text
            else:
                value = text
    return key, value


def decode_call_batch(data: bytes) -> CallBatch:
    """``CallBatch.parse(data)``, faster."""
    calls: list[Call] = []
    for number, wire_type, value in _fields(data):
        if number == 1:
            calls.append(_call(_bytes(number, wire_type, value)))
    return CallBatch(calls=calls)


def _call(data: bytes) -> Call:
    call_id = 0
    task: Task | None = None
    cancel: CancelCall | None = None
    for number, wire_type, value in _fields(data):
        if number == 1:
            call_id = _int(number, wire_type, value)
        elif number == 2:
            task, cancel = decode_task(_bytes(number, wire_type, value)), None
        elif number == 3:
            _bytes(number, wire_type, value)
            task, cancel = None, CancelCall()
    if task is not None:
        return Call(id=call_id, task=task)
    if cancel is not None:
        return Call(id=call_id, cancel=cancel)
    return Call(id=call_id)


def decode_answer_batch(data: bytes) -> AnswerBatch:
    """``AnswerBatch.parse(data)``, faster."""
    answers: list[Answer] = []
    for number, wire_type, value in _fields(data):
        if number == 1:
            answers.append(_answer(_bytes(number, wire_type, value)))
    return AnswerBatch(answers=answers)


def _answer(data: bytes) -> Answer:
    answer_id = 0
    response: Response | None = None
    cancelled: CancelResponse | None = None
    for number, wire_type, value in _fields(data):
        if number == 1:
            answer_id = _int(number, wire_type, value)
        elif number == 2:
            response, cancelled = _response(_bytes(number, wire_type, value)), None
        elif number == 3:
            response = None
            cancelled = CancelResponse.parse(_bytes(number, wire_type, value))
    if response is not None:
        return Answer(id=answer_id, response=response)
    if cancelled is not None:
        return Answer(id=answer_id, cancelled=cancelled)
    return Answer(id=answer_id)


def _response(data: bytes) -> Response:
    """A Response with a result (and maybe context) by hand; any other by betterproto2."""
    result: bytes | None = None
    context = b""
    for number, wire_type, value in _fields(data):
        if number == 1 and wire_type == _LENGTH:
            result = cast(bytes, value)
        elif number == 9 and wire_type == _LENGTH:
            context = cast(bytes, value)
        else:
            return Response.parse(data)
    if result is None:
        return Response.parse(data)
    return Response(result=result, context=context)
