"""A guard for tests of the SSRF defences: this process may connect to loopback only.

The machine's network is closed and any other traffic is flagged, so a test that checks a
refusal must not rely on the code under test alone: :func:`loopback_only` makes every
``socket.connect`` to a non-loopback address raise (and records it), so a guard that failed
to refuse would fail the test instead of sending a packet.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


class ForbiddenConnection(AssertionError):
    """A test tried to connect beyond loopback."""


@contextmanager
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Patch socket.connect/connect_ex; yields the list of refused addresses."""
    refused: list[Any] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        if isinstance(address, tuple):
            host = str(address[0]).split("%", 1)[0]
            try:
                ok = ipaddress.ip_address(host).is_loopback
            except ValueError:
                ok = False  # a name here would be resolved by the OS: refuse it too
            if not ok:
                refused.append(address)
                raise ForbiddenConnection(f"test tried to connect to {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield refused
