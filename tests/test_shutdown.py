"""A worker's server closes while callers keep their connections open. On Python >= 3.12.1
asyncio's ``Server.wait_closed`` waits for every accepted connection (gh-79033; r6 of the
review); uvloop's does not, so this runs on a plain asyncio loop."""

from __future__ import annotations

import asyncio

from wool.transport import Client, Server, WorkerInfo


class _Service:
    def info(self) -> WorkerInfo:
        return WorkerInfo(id="probe")


def test_a_server_closes_while_a_client_stays_connected() -> None:
    async def close_while_connected() -> None:
        server = Server(_Service())  # type: ignore[arg-type]
        port = await server.start("127.0.0.1", 0)
        client = Client("127.0.0.1", port)
        try:
            assert (await client.info(5.0)).id == "probe"  # the client keeps its connection
            await asyncio.wait_for(server.close(), 10)
        finally:
            await client.close()

    asyncio.run(close_while_connected())
