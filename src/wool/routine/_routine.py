"""The ``@wool.routine`` decorator."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
import sys
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable
from types import MethodType
from typing import Any, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

import anyio

from wool._errors import NoPoolError, WorkerLost
from wool._serialization import Payload, dumps_arguments, dumps_function
from wool._tracebacks import hide_dispatch_frames
from wool.routine._analysis import reads_ahead_safely
from wool.routine._context import Dispatcher, current_dispatcher
from wool.transport import StepKind

__all__ = ["Routine", "routine"]

P = ParamSpec("P")
T = TypeVar("T")

_Kind = Literal["function", "classmethod", "staticmethod"]

#: Items an async generator routine may run ahead of its caller by default.
DEFAULT_PREFETCH = 128
_MAX_PREFETCH = 1 << 20


class Routine(Generic[P, T]):
    """An async function whose calls run on a worker of the current pool.

    Calling it returns a coroutine, as calling the function would; awaiting it pickles the
    function and arguments, sends them to a worker, and returns what the function returned
    there or raises what it raised. Calling a generator routine returns an async generator
    whose steps run on one worker; each step raises as a call does.

    A call is cancelled as a local await is: by the scope around it
    (:class:`anyio.CancelScope`, :func:`anyio.fail_after`, :func:`trio.move_on_after`, a
    cancelled task group or :class:`trio.Nursery`). The routine is then cancelled on the
    worker, and the caller's cancellation completes once the routine's ``finally`` blocks
    have run, waiting at most the routine's (else the pool's) ``grace``. The caller's
    deadline travels with the call.

    Raises:
        wool.NoPoolError: the call was made outside any pool (raised by the call itself,
            before anything is awaited).
        wool.SerializationError: the arguments, the return value or an item could not be
            pickled or unpickled, or are larger than the pool's ``max_payload_size``. The
            message names the culprit; nothing was run when the arguments were at fault.
        wool.NoWorkersAvailable: the pool had no worker for the call within its
            ``start_timeout``.
        wool.WorkerLost: the worker died, stopped or became unreachable while it had the
            call. The call may have run in part; it is never retried.
        wool.TaskException: the routine raised an exception that could not be brought back
            as itself; it carries the type's name, the message and the remote traceback.
        wool.ProtocolError: the worker speaks another protocol version, or sent what wool
            cannot read.
        TimeoutError: the caller's deadline expired on the worker while the caller itself
            had none (a caller with a deadline sees its own scope's cancellation instead).
        Exception: whatever the routine raised, as itself, with the worker's traceback
            after the caller's frames.
    """

    __wrapped__: Callable[P, Coroutine[Any, Any, T]]

    def __init__(
        self,
        fn: Any,
        *,
        grace: float | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        tags: frozenset[str] | set[str] | tuple[str, ...] | list[str] = frozenset(),
    ) -> None:
        kind: _Kind = "function"
        if isinstance(fn, classmethod):
            kind, fn = "classmethod", fn.__func__
        elif isinstance(fn, staticmethod):
            kind, fn = "staticmethod", fn.__func__
        self._generator = inspect.isasyncgenfunction(fn)
        if not (self._generator or inspect.iscoroutinefunction(fn)):
            raise TypeError(f"@wool.routine needs an `async def` function, got {fn!r}")
        if grace is not None and not (math.isfinite(grace) and grace >= 0):
            raise ValueError(f"grace must be a finite number of seconds >= 0, got {grace!r}")
        whole = isinstance(prefetch, int) and not isinstance(prefetch, bool)  # pyright: ignore[reportUnnecessaryIsInstance]
        if not (whole and 0 <= prefetch <= _MAX_PREFETCH):
            raise ValueError(
                f"prefetch must be a whole number of items from 0 to {_MAX_PREFETCH}, "
                f"got {prefetch!r}"
            )
        functools.update_wrapper(self, fn)
        #: Hints for the pool's load balancer (``CallInfo.tags``); they are not sent.
        self.tags = _tags(tags)
        self._name: str = fn.__qualname__
        self._fn = fn
        self._kind = kind
        self._grace = grace
        self._prefetch = prefetch
        self._window: int | None = None  # prefetch, once the generator is known to allow it
        self._pickled: bytes | None = None

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if self._kind == "staticmethod":
            return self
        if self._kind == "classmethod":
            return MethodType(self, owner if owner is not None else type(instance))
        if instance is None:
            return self
        return MethodType(self, instance)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        call: Any = self._stream(args, kwargs) if self._generator else self._dispatch(args, kwargs)
        # Named as the routine, so that "coroutine ... was never awaited" names it.
        call.__name__ = self._fn.__name__
        call.__qualname__ = self._fn.__qualname__
        return call

    def _prepare(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Dispatcher, bytes, Payload, float | None]:
        dispatcher = current_dispatcher()
        if dispatcher is None:
            raise NoPoolError(self._name)
        if self._pickled is None:
            # Once per process: a routine defined in __main__ travels by value, and
            # cloudpickling a function costs far more than the rest of a call.
            self._pickled = dumps_function(self)
        arguments = dumps_arguments(self._fn, args, kwargs)
        deadline = anyio.current_effective_deadline()
        timeout = None if deadline == float("inf") else deadline - anyio.current_time()
        return dispatcher, self._pickled, arguments, timeout

    async def _dispatch(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        dispatcher, function, arguments, timeout = self._prepare(args, kwargs)
        try:
            return await dispatcher.call(
                self._name,
                function,
                arguments,
                grace=self._grace,
                timeout=timeout,
                tags=self.tags,
            )
        except BaseException as exc:
            hide_dispatch_frames(exc)
            raise

    async def _stream(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncGenerator[Any, Any]:
        # A real async generator standing in for the remote one, step for step: misuse,
        # exhaustion and the event loop's finalization of a dropped generator behave as
        # they would locally, and each of them reaches the worker.
        dispatcher, function, arguments, timeout = self._prepare(args, kwargs)
        if self._window is None:
            self._window = self._prefetch if reads_ahead_safely(self._fn) else 0
        window = self._window
        try:
            async with dispatcher.generator(
                self._name,
                function,
                arguments,
                grace=self._grace,
                timeout=timeout,
                prefetch=window,
                tags=self.tags,
            ) as remote:
                done, item = await remote.next()
                while not done:
                    try:
                        sent = yield item
                    except GeneratorExit:
                        # A worker that is gone has closed the generator already (it closes
                        # the generators of callers whose connection drops).
                        with contextlib.suppress(WorkerLost):
                            await remote.control(StepKind.CLOSE)
                        raise
                    except BaseException as exc:
                        done, item = await remote.control(StepKind.THROW, exc)
                        continue
                    if sent is None or window:
                        # A generator that reads ahead ignores what is sent to it.
                        done, item = await remote.next()
                    else:
                        done, item = await remote.control(StepKind.SEND, sent)
        except BaseException as exc:
            hide_dispatch_frames(exc)
            raise

    def run_here(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, T]:
        """Run the function in this process (what a worker does with a call).

        Nothing is pickled or sent, and no pool is needed: useful to test the function's
        own logic. It raises what the function raises.
        """
        return self._fn(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pickled": None, "_window": None}

    def __reduce_ex__(self, protocol: Any) -> Any:
        # An importable routine travels by reference: the worker imports it.
        module = self._fn.__module__
        if module != "__main__" and _resolve(module, self._name) is self:
            return _resolve, (module, self._name)
        return super().__reduce_ex__(protocol)

    def __repr__(self) -> str:
        return f"<wool.routine {self._fn.__module__}.{self._name}>"


def _tags(tags: Iterable[str]) -> frozenset[str]:
    if isinstance(tags, str) or not all(isinstance(t, str) and t for t in tags):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"tags must be a collection of non-empty strings, got {tags!r}")
    return frozenset(tags)


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = sys.modules.get(module) or importlib.import_module(module)
    for part in qualname.split("."):
        if part == "<locals>":
            return None
        obj = inspect.getattr_static(obj, part, None)
        if isinstance(obj, (classmethod, staticmethod)):
            obj = obj.__func__
        if obj is None:
            return None
    return obj


@overload
def routine(fn: Callable[P, AsyncGenerator[T, Any]], /) -> Callable[P, AsyncGenerator[T, Any]]: ...


@overload
def routine(fn: Callable[P, Coroutine[Any, Any, T]], /) -> Callable[P, Coroutine[Any, Any, T]]: ...


@overload
def routine(
    *,
    grace: float | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    tags: frozenset[str] | set[str] | tuple[str, ...] | list[str] = frozenset(),
) -> _Decorator: ...


def routine(
    fn: Any = None,
    /,
    *,
    grace: float | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    tags: frozenset[str] | set[str] | tuple[str, ...] | list[str] = frozenset(),
) -> Any:
    """Make an ``async def`` function (or method) run on the current pool's workers.

    Use it bare (``@wool.routine``) or with options (``@wool.routine(grace=2.0)``):

    - ``grace``: seconds a cancelled call waits for the remote routine to finish
      unwinding before the caller moves on; defaults to the pool's.
    - ``prefetch`` (async generators): items the worker may produce ahead of the
      caller while the caller only iterates (default 128; 0 steps the generator in
      lock-step). It applies only to generators that ignore the values sent to them and
      have no ``yield`` inside a ``try``, ``with`` or ``async with`` that could catch,
      swallow or replace a thrown exception (nor unreadable source): the others are
      always stepped exactly, so ``asend`` and ``athrow`` reach them at the ``yield`` they
      would locally. Read-ahead never changes what the program observes; ``aclose`` and
      ``athrow`` wait for a step run ahead to reach its ``yield`` and apply there.
    - ``tags``: labels for the pool's load balancer, which sees them in
      ``CallInfo.tags`` with the routine's name (e.g. to send every ``"gpu"`` routine
      to the workers started with that tag; see ``docs/loadbalancing.md``). They are
      hints only: nothing is sent, and the default balancers ignore them.

    Works on functions and on instance, class and static methods (put ``@wool.routine``
    above or below ``@classmethod``/``@staticmethod``). The function, its arguments, its
    return value and its exceptions must be picklable with cloudpickle. What awaiting a
    call raises is listed under :class:`Routine`.

    Raises:
        TypeError: ``fn`` is not an ``async def`` function or async generator function, or
            ``tags`` is a string or holds something other than non-empty strings.
        ValueError: ``grace`` is not a finite number of seconds >= 0, or ``prefetch`` is not
            a whole number from 0 to 2**20.
    """
    if fn is None:
        _tags(tags)  # fails at the decorator's call, not at its application
        return lambda f: Routine(f, grace=grace, prefetch=prefetch, tags=tags)
    return Routine(fn, grace=grace, prefetch=prefetch, tags=tags)


class _Decorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[P, AsyncGenerator[T, Any]], /
    ) -> Callable[P, AsyncGenerator[T, Any]]: ...

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, T]], /
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
