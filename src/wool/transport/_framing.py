"""Splitting large payloads into Chunk messages, and joining them again.

No message on the wire is larger than the sender's ``max_message``: the one field of a
message that can be large (its *payload*) travels as Chunk messages holding its leading
parts, immediately followed by the message itself carrying the last part.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from wool._errors import ProtocolError
from wool._serialization import Payload, Segments
from wool.transport._protocol.wool.v1 import Chunk, Items, Request, Response

__all__ = [
    "DEFAULT_LIMITS",
    "Assembler",
    "Limits",
    "decode_chunk",
    "encode_chunk",
    "fixed_size",
    "read_varint",
    "split",
    "varint",
]

M = TypeVar("M", Request, Response)

# A message must hold a task's pickled routine (refused above max_message - 1024 bytes).
_MIN_MESSAGE = 64 * 1024

# Room for a message's own small fields and protobuf framing around a payload part.
_OVERHEAD = 128


@dataclass(frozen=True)
class Limits:
    """How large messages and payloads may be.

    ``max_message``: bytes in one protobuf message on the wire (larger payloads are
    chunked). ``max_payload``: bytes of one pickled argument tuple, return value, item or
    exception; larger ones are refused before they are sent, and on receipt.
    """

    max_message: int = 4 * 1024 * 1024
    max_payload: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_message < _MIN_MESSAGE:
            raise ValueError(
                f"max_message_size must be at least {_MIN_MESSAGE} bytes, got {self.max_message}"
            )
        if self.max_payload < 1:
            raise ValueError(f"max_payload_size must be a positive size, got {self.max_payload}")


DEFAULT_LIMITS = Limits()


def payload(message: Request | Response) -> Payload | None:
    """The message's payload field, or None when it has none."""
    found: Any = None
    if isinstance(message, Request):
        if message.task is not None:
            found = message.task.arguments
        elif message.step is not None:
            found = message.step.value
    elif message.result is not None:
        found = message.result
    elif message.item is not None:
        found = message.item
    elif message.items is not None:
        found = message.items.values[0] if message.items.values else None
    elif message.failure is not None:
        found = message.failure.exception
    return found


def _joined(data: Payload) -> bytes:
    return data.join() if isinstance(data, Segments) else data


def _with_payload(message: Request | Response, data: bytes) -> Request | Response:
    """A copy of ``message`` carrying ``data`` as its payload (the sender may send the
    original again, to another worker)."""
    if isinstance(message, Request):
        if message.task is not None:
            return Request(task=dataclasses.replace(message.task, arguments=data))
        assert message.step is not None
        return Request(step=dataclasses.replace(message.step, value=data))
    if message.result is not None:
        return Response(result=data, context=message.context)
    if message.item is not None:
        return Response(item=data)
    if message.items is not None:
        others = [_joined(value) for value in message.items.values[1:]]
        return Response(items=Items(values=[data, *others]))
    assert message.failure is not None
    return Response(
        failure=dataclasses.replace(message.failure, exception=data), context=message.context
    )


def split(
    message: Request | Response, max_message: int, *, max_chunk: int | None = None
) -> list[Request | Response]:
    """The messages that carry ``message``: Chunks of its payload, then the message.

    Payloads given as :class:`~wool._serialization.Segments` are chunked without joining
    them, or joined when they fit in one message. A Chunk message is at most ``max_chunk``
    bytes (default, and at most, ``max_message``).
    """
    data = payload(message)
    if data is None:
        return [message]
    if len(data) + fixed_size(message) <= max_message:
        if isinstance(data, Segments) or _segmented_items(message):
            return [_with_payload(message, _joined(data))]
        return [message]
    # All of the payload goes in chunks (the message's own part is empty): chunks are
    # encoded here without copies, the message itself by betterproto, which copies.
    rest = _with_payload(message, b"")
    if len(bytes(rest)) + _OVERHEAD > max_message:
        raise ProtocolError(
            f"a {type(message).__name__} without its payload is larger than the maximum "
            f"message size of {max_message} bytes"
        )
    part = min(max_chunk or max_message, max_message) - _OVERHEAD
    kind = type(message)
    messages: list[Request | Response] = []
    for segment in data.parts if isinstance(data, Segments) else [data]:
        view = memoryview(segment)
        for i in range(0, len(view), part):
            messages.append(kind(chunk=Chunk(data=cast(bytes, view[i : i + part]))))
    messages.append(rest)
    return messages


def _segmented_items(message: Request | Response) -> bool:
    items = message.items if isinstance(message, Response) else None
    return items is not None and any(isinstance(value, Segments) for value in items.values)


def fixed_size(message: Request | Response) -> int:
    """At least what a message takes on the wire besides its payload."""
    size = _OVERHEAD
    if isinstance(message, Request):
        task = message.task
        if task is not None:
            size += len(task.function) + len(task.routine) + len(task.id) + len(task.caller)
            size += len(task.parent)
            size += len(task.context) + sum(len(k) + len(v) + 8 for k, v in task.trace.items())
        return size
    size += len(message.context)
    if message.items is not None:
        size += sum(len(value) + 8 for value in message.items.values[1:])
    elif message.failure is not None:
        failure = message.failure
        size += sum(
            len(text.encode()) for text in (failure.type, failure.message, failure.traceback)
        )
    return size


# Chunk messages are the bulk of a large payload's bytes, and betterproto copies a bytes
# field several times on the way in and out: they are encoded and decoded here, with one
# copy out and none in. Wire format: the body's field tag, a length, then Chunk's field 1.
_CHUNK_TAGS: dict[type, int] = {Request: 3 << 3 | 2, Response: 8 << 3 | 2}
_DATA_TAG = 1 << 3 | 2


_SMALL_VARINTS = [bytes([value]) for value in range(0x80)]


def varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes | memoryview, at: int) -> tuple[int, int]:
    """The varint at ``data[at:]`` and where it ends. Raises IndexError if it runs past
    the end, ValueError if it is longer than 64 bits."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def encode_chunk(message: object) -> bytes | None:
    """The wire form of a Chunk message, or None for any other message."""
    if not isinstance(message, (Request, Response)) or message.chunk is None:
        return None
    chunk = message.chunk
    inner = varint(len(chunk.data))
    head = bytes([_CHUNK_TAGS[type(message)]]) + varint(1 + len(inner) + len(chunk.data))
    return b"".join((head, bytes([_DATA_TAG]), inner, chunk.data))


def decode_chunk(data: bytes, message_type: type) -> Any:
    """The Chunk message ``data`` encodes (its payload a view of ``data``), or None."""
    tag = _CHUNK_TAGS.get(message_type)
    if tag is None or not data or data[0] != tag:
        return None
    view = memoryview(data)
    try:
        length, at = read_varint(view, 1)
        if at + length != len(view) or view[at] != _DATA_TAG:
            return None
        size, start = read_varint(view, at + 1)
        if start + size != len(view):
            return None
    except (IndexError, ValueError):
        return None
    return message_type(chunk=Chunk(data=cast(bytes, view[start:])))


class Assembler:
    """Gathers Chunk messages into the payload of the message that follows them.

    The payload comes out as :class:`~wool._serialization.Segments` (in a ``bytes``
    field, like the payloads a sender gives :func:`split`), not joined: a large one is
    joined where it is loaded, off the transport's thread (``_serialization.load``).
    """

    def __init__(self, max_payload: int) -> None:
        self._max_payload = max_payload
        self._parts: list[bytes | memoryview] = []
        self._size = 0

    def add(self, message: M) -> M | None:
        """The whole message once it is complete, or None while its chunks come in."""
        chunk = message.chunk
        if chunk is not None:
            self._size += len(chunk.data)
            self._check(self._size)
            # A copy of the chunk's part (a view of the message it came in) frees that
            # message now, and lets the join of the parts run without the GIL.
            self._parts.append(bytes(chunk.data))
            return None
        if self._parts:
            last = payload(message)
            if not isinstance(last, bytes):
                raise ProtocolError(
                    f"chunks were followed by a {type(message).__name__} with no payload"
                )
            self._check(self._size + len(last))
            parts = [*self._parts, last] if last else self._parts
            self._parts = []
            self._size = 0
            return cast(M, _with_payload(message, cast(bytes, Segments(parts))))
        return message

    def _check(self, size: int) -> None:
        if size > self._max_payload:
            raise ProtocolError(
                f"the peer sent a payload of more than {self._max_payload} bytes, the maximum "
                "payload size here; give callers and workers the same max_payload_size"
            )
