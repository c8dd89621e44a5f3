"""Wrong input to WorkerPool is refused at once, naming the argument (issue 9, item 4)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import wool
from wool.discovery import DiscoveryEvent, WorkerFilter


def choose_a_worker() -> None:
    return None


class NoChoice:
    """The protocol before balancers saw the call: add/remove/choose()."""

    def add(self, worker: wool.WorkerMetadata) -> None: ...

    def remove(self, worker_id: str) -> None: ...


@pytest.mark.parametrize(
    ("balancer", "message"),
    [
        (wool.RoundRobinLoadBalancer, r"instance, got the class .*pass RoundRobinLoadBalancer\(\)"),
        (choose_a_worker, r"function has no choose\(\) \(a function is not a load balancer"),
        (NoChoice(), r"NoChoice has no choose\(\)"),
    ],
)
def test_a_bad_loadbalancer_is_refused_at_once(balancer: Any, message: str) -> None:
    with pytest.raises(TypeError, match=r"^loadbalancer") as info:
        wool.WorkerPool(size=1, loadbalancer=balancer)
    assert info.match(message)


class NotContextManagers:
    """Has publisher() and subscriber(), but they are plain async generators."""

    async def publisher(self) -> AsyncIterator[None]:
        yield None

    async def subscriber(self, filter: WorkerFilter | None = None) -> AsyncIterator[None]:
        yield None


class CoroutineFactories:
    async def publisher(self) -> None: ...

    async def subscriber(self, filter: WorkerFilter | None = None) -> None: ...


class AttributesNotMethods:
    publisher = "local"
    subscriber = "local"


class Fine:
    @asynccontextmanager
    async def publisher(self) -> AsyncIterator[None]:
        yield None

    @asynccontextmanager
    async def subscriber(
        self, filter: WorkerFilter | None = None
    ) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        async def nothing() -> AsyncIterator[DiscoveryEvent]:
            return
            yield

        yield nothing()


@pytest.mark.parametrize(
    ("discovery", "message"),
    [
        (wool.LocalDiscovery, r"^discovery must be an instance, got the class LocalDiscovery"),
        (NotContextManagers(), r"^discovery.publisher\(\) must return an async context manager"),
        (CoroutineFactories(), r"^discovery.publisher\(\) must return an async context manager"),
        (AttributesNotMethods(), r"^discovery.publisher must be a method"),
        (object(), r"^discovery must implement wool.DiscoveryLike"),
    ],
)
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_a_bad_discovery_is_refused_at_once(discovery: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        wool.WorkerPool(discovery=discovery)


def test_a_good_custom_discovery_and_balancer_are_accepted() -> None:
    pool = wool.WorkerPool(discovery=Fine(), loadbalancer=wool.RoundRobinLoadBalancer())
    assert pool.discovery is not None
