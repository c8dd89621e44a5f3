"""The hand-written wire form of the Calls stream's messages (transport/_wire.py) is the one
betterproto2 writes and reads, both ways, for any message; and it knows every field."""

from __future__ import annotations

import dataclasses

import betterproto2
from hypothesis import given, settings
from hypothesis import strategies as st

from wool.transport._protocol.wool.v1 import (
    Answer,
    AnswerBatch,
    Call,
    CallBatch,
    CancelCall,
    Cancelled,
    CancelResponse,
    Chunk,
    Exhausted,
    Failure,
    Items,
    Rejected,
    RejectedReason,
    Response,
    Task,
)
from wool.transport._wire import (
    _OTHER_BODIES,  # pyright: ignore[reportPrivateUsage]
    _TASK_BYTES,  # pyright: ignore[reportPrivateUsage]
    _TASK_DOUBLES,  # pyright: ignore[reportPrivateUsage]
    _TASK_STRINGS,  # pyright: ignore[reportPrivateUsage]
    _TASK_VARINTS,  # pyright: ignore[reportPrivateUsage]
    body_of,
    decode_answer_batch,
    decode_call_batch,
    decode_task,
    encode_call,
    encode_cancel_call,
    encode_response,
    encode_task,
)

_uint32 = st.integers(min_value=0, max_value=2**32 - 1)
_uint64 = st.integers(min_value=0, max_value=2**64 - 1)
_doubles = st.floats(allow_nan=False)
_text = st.text(max_size=20)
_blob = st.binary(max_size=64)

tasks = st.builds(
    Task,
    version=_uint32,
    id=_text,
    routine=_text,
    function=_blob,
    timeout=st.none() | _doubles,
    grace=_doubles,
    generator=st.booleans(),
    prefetch=_uint32,
    caller=_text,
    arguments=_blob,
    depth=_uint32,
    context=_blob,
    parent=_text,
    trace=st.dictionaries(_text, _text, max_size=3),
)

result_responses = st.builds(Response, result=_blob, context=_blob)
other_responses = st.one_of(
    st.builds(
        Response,
        failure=st.builds(Failure, exception=_blob, type=_text, message=_text, traceback=_text),
        context=_blob,
    ),
    st.builds(Response, item=_blob),
    st.just(Response(exhausted=Exhausted())),
    st.builds(Response, cancelled=st.builds(Cancelled, deadline=st.booleans())),
    st.builds(
        Response,
        rejected=st.builds(Rejected, reason=st.sampled_from(RejectedReason), detail=_text),
    ),
    st.builds(Response, items=st.builds(Items, values=st.lists(_blob, max_size=3))),
    st.builds(Response, chunk=st.builds(Chunk, data=_blob)),
)

calls = st.one_of(
    st.builds(Call, id=_uint64, task=tasks),
    st.builds(Call, id=_uint64, cancel=st.just(CancelCall())),
)
answers = st.one_of(
    st.builds(Answer, id=_uint64, response=result_responses | other_responses),
    st.builds(Answer, id=_uint64, cancelled=st.builds(CancelResponse, cancelled=st.booleans())),
)


@settings(max_examples=300, deadline=None)
@given(tasks)
def test_a_task_is_written_and_read_as_betterproto2_does(task: Task) -> None:
    assert Task.parse(encode_task(task)) == task
    assert decode_task(bytes(task)) == task


@settings(max_examples=200, deadline=None)
@given(_uint64, tasks)
def test_call_entries_are_the_call_messages(call_id: int, task: Task) -> None:
    assert Call.parse(encode_call(call_id, task)) == Call(id=call_id, task=task)
    assert Call.parse(encode_cancel_call(call_id)) == Call(id=call_id, cancel=CancelCall())


@settings(max_examples=200, deadline=None)
@given(st.lists(calls, max_size=4))
def test_a_call_batch_is_read_as_betterproto2_does(entries: list[Call]) -> None:
    batch = CallBatch(calls=entries)
    assert decode_call_batch(bytes(batch)) == batch


@settings(max_examples=200, deadline=None)
@given(st.lists(answers, max_size=4))
def test_an_answer_batch_is_read_as_betterproto2_does(entries: list[Answer]) -> None:
    batch = AnswerBatch(answers=entries)
    assert decode_answer_batch(bytes(batch)) == batch


@settings(max_examples=200, deadline=None)
@given(result_responses)
def test_a_result_is_written_as_betterproto2_does(response: Response) -> None:
    encoded = encode_response(response)
    assert encoded is not None
    assert Response.parse(encoded) == response


@settings(max_examples=100, deadline=None)
@given(other_responses)
def test_other_responses_are_left_to_betterproto2(response: Response) -> None:
    assert encode_response(response) is None


def test_the_hand_written_forms_know_every_field() -> None:
    # A field added to the proto and not here would be dropped on the Calls stream.
    known = {*_TASK_VARINTS.values(), *_TASK_STRINGS.values(), *_TASK_BYTES.values()}
    known |= {*_TASK_DOUBLES.values(), "trace"}
    assert known == {field.name for field in dataclasses.fields(Task)}
    body = {field.name for field in dataclasses.fields(Response)} - {"result", "context"}
    assert set(_OTHER_BODIES) == body
    assert {field.name for field in dataclasses.fields(Call)} == {"id", "task", "cancel"}
    assert {field.name for field in dataclasses.fields(Answer)} == {"id", "response", "cancelled"}


@settings(max_examples=200, deadline=None)
@given(result_responses | other_responses | st.just(Response()))
def test_the_body_of_a_response_is_the_member_betterproto2_names(response: Response) -> None:
    assert body_of(response) == betterproto2.which_one_of(response, "body")
