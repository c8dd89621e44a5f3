"""Splitting large payloads into Chunk messages, and joining them again.

No message on the wire is larger than the sender's ``max_message``: the one field of a
message that can be large (its *payload*) travels as Chunk messages holding its leading
parts, immediately followed by the message itself carrying the last part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from wool._errors import ProtocolError
from wool.transport._protocol.wool.v1 import Chunk, Request, Response

__all__ = ["DEFAULT_LIMITS", "Assembler", "Limits", "split"]

M = TypeVar("M", Request, Response)

# Room for a message's own fields and protobuf framing around a payload part.
_OVERHEAD = 64


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
        if self.max_message < 1024:
            raise ValueError(f"max_message_size must be at least 1024 bytes, got {self.max_message}")
        if self.max_payload < 1:
            raise ValueError(f"max_payload_size must be a positive size, got {self.max_payload}")


DEFAULT_LIMITS = Limits()


def payload(message: Request | Response) -> bytes | None:
    """The message's payload field, or None when it has none."""
    if isinstance(message, Request):
        if message.task is not None:
            return message.task.arguments
        if message.step is not None:
            return message.step.value
        return None
    if message.result is not None:
        return message.result
    if message.item is not None:
        return message.item
    if message.items is not None:
        return message.items.values[0] if message.items.values else None
    if message.failure is not None:
        return message.failure.exception
    return None


def _set_payload(message: Request | Response, data: bytes) -> None:
    if isinstance(message, Request):
        if message.task is not None:
            message.task.arguments = data
        elif message.step is not None:
            message.step.value = data
    elif message.result is not None:
        message.result = data
    elif message.item is not None:
        message.item = data
    elif message.items is not None:
        message.items.values[0] = data
    elif message.failure is not None:
        message.failure.exception = data


def split(message: M, max_message: int) -> list[M]:
    """The messages that carry ``message``: Chunks of its payload, then itself.

    ``message`` is changed in place when its payload is split.
    """
    data = payload(message)
    if data is None or len(data) + _OVERHEAD <= max_message:
        return [message]
    _set_payload(message, b"")
    room = max_message - len(bytes(message)) - _OVERHEAD
    if room <= 0:
        raise ProtocolError(
            f"a {type(message).__name__} without its payload is larger than the maximum "
            f"message size of {max_message} bytes"
        )
    part = max_message - _OVERHEAD
    head = len(data) - min(room, len(data))
    view = memoryview(data)
    kind = type(message)
    messages: list[M] = [
        kind(chunk=Chunk(data=bytes(view[i : min(i + part, head)]))) for i in range(0, head, part)
    ]
    _set_payload(message, bytes(view[head:]))
    messages.append(message)
    return messages


class Assembler:
    """Joins Chunk messages back into the payload of the message that follows them."""

    def __init__(self, max_payload: int) -> None:
        self._max_payload = max_payload
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, message: M) -> M | None:
        """The whole message once it is complete, or None while its chunks come in."""
        chunk = message.chunk
        if chunk is not None:
            self._size += len(chunk.data)
            self._check(self._size)
            self._parts.append(chunk.data)
            return None
        if self._parts:
            last = payload(message)
            if last is None:
                raise ProtocolError(f"chunks were followed by a {type(message).__name__} with no payload")
            self._check(self._size + len(last))
            self._parts.append(last)
            _set_payload(message, b"".join(self._parts))
            self._parts.clear()
            self._size = 0
        return message

    def _check(self, size: int) -> None:
        if size > self._max_payload:
            raise ProtocolError(
                f"the peer sent a payload of more than {self._max_payload} bytes, the maximum "
                "payload size here; give callers and workers the same max_payload_size"
            )
