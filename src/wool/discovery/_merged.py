"""Several discoveries seen as one (a hybrid pool's spawned and discovered workers)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import anyio
from anyio.abc import ObjectSendStream

from wool.discovery._protocol import (
    DiscoveryEvent,
    DiscoveryLike,
    DiscoveryPublisherLike,
    WorkerFilter,
)

__all__ = ["MergedDiscovery"]


class MergedDiscovery:
    """Subscribes to every discovery given; publishes to the first."""

    def __init__(self, *discoveries: DiscoveryLike) -> None:
        if not discoveries:
            raise ValueError("MergedDiscovery needs at least one discovery")
        self.discoveries = discoveries

    def __repr__(self) -> str:
        return " + ".join(repr(d) for d in self.discoveries)

    def publisher(self) -> AbstractAsyncContextManager[DiscoveryPublisherLike]:
        return self.discoveries[0].publisher()

    @asynccontextmanager
    async def subscriber(
        self, filter: WorkerFilter | None = None
    ) -> AsyncGenerator[AsyncIterator[DiscoveryEvent], None]:
        send, receive = anyio.create_memory_object_stream[DiscoveryEvent]()
        async with receive, AsyncExitStack() as stack, anyio.create_task_group() as tg:
            for discovery in self.discoveries:
                events = await stack.enter_async_context(discovery.subscriber(filter))
                tg.start_soon(_forward, events, send.clone())
            send.close()
            try:
                yield receive
            finally:
                tg.cancel_scope.cancel()


async def _forward(
    events: AsyncIterator[DiscoveryEvent], send: ObjectSendStream[DiscoveryEvent]
) -> None:
    async with send:
        async for event in events:
            await send.send(event)
