"""Which discovered workers a pool may talk to, given its credentials."""

from __future__ import annotations

from wool._errors import SecurityError
from wool.discovery import WorkerMetadata
from wool.security import WorkerCredentials, exposure

__all__ = ["refusal"]


def refusal(
    worker: WorkerMetadata, credentials: WorkerCredentials | None, insecure: bool
) -> SecurityError | None:
    """Why a pool with ``credentials`` (and ``insecure``) must not call ``worker``, or None.

    A pool with credentials never sends a call in plaintext; a pool without them never
    talks to a worker that requires TLS, nor, unless ``insecure``, to a plaintext worker
    on another host (its answers are pickles this process would load).
    """
    where = f"worker {worker.id} at {worker.address}"
    if credentials is not None and not worker.secure:
        return SecurityError(
            f"{where} does not use TLS and this pool has credentials; start the worker "
            "with the pool's credentials (wool worker --tls-cert --tls-key --tls-ca)",
            worker=worker.id,
        )
    if credentials is None and worker.secure:
        return SecurityError(
            f"{where} requires TLS and this pool has no credentials; open the pool with "
            "credentials=wool.WorkerCredentials.from_files(...) signed by the worker's CA",
            worker=worker.id,
        )
    if credentials is None and not insecure and exposure(worker.host) == "network":
        return SecurityError(
            f"{where} is a plaintext worker on the network: whoever answers at that address "
            "could run code in this process; give pool and workers credentials, or pass "
            "insecure=True to the pool if the network is trusted",
            worker=worker.id,
        )
    return None
