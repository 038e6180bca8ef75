"""Fixtures of the data tests: no network."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(autouse=True)
def network_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run every data test as on a machine without internet: host lookups fail as they do offline.

    Returns the hosts that code tried to reach, so a test can assert that nothing tried.
    """
    attempts: list[str] = []

    def offline(host: str, *args: object, **kwargs: object) -> None:
        attempts.append(str(host))
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    return attempts
