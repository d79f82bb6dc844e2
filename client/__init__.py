"""The tinysub Python client: a thin, typed library over the registry's REST API.

    from client import Client
    with Client("http://127.0.0.1:8000", token="tsk_...") as c:
        job = c.compute_basis("sst2", "task", rank=8)
        job.wait()
        V = c.load_basis("sst2", "task")          # {layer: torch.Tensor (D, k)}

Names load on first use, so the command line does not import httpx until it needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BasisCache",
    "BasisRef",
    "Client",
    "Job",
    "PulledBasis",
    "RegistryConfig",
    "RetriesExhausted",
    "RetryPolicy",
    "error_from_body",
    "raise_for_response",
]

_WHERE = {
    "BasisCache": "client.cache",
    "BasisRef": "client.refs",
    "Client": "client.client",
    "Job": "client.jobs",
    "PulledBasis": "client.transfer",
    "RegistryConfig": "client.refs",
    "RetriesExhausted": "client.retry",
    "RetryPolicy": "client.retry",
    "error_from_body": "client.errors",
    "raise_for_response": "client.errors",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'client' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
