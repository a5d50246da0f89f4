"""What the server needs to know of each API it hosts on its port."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from lstm_serve.facade import DomainFacade


@dataclass(frozen=True)
class ApiService:
    """One gRPC service over the domain: its full name (for health, reflection and
    the interceptor's metrics) and how to register its servicer."""

    name: str
    register: Callable[[DomainFacade, grpc.aio.Server], None]

    @property
    def prefix(self) -> str:
        """The method path prefix, ``/<name>/``."""
        return f"/{self.name}/"
