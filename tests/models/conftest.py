"""Fixtures of the model tests: one thread for their small tensors, and no internet."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import URLError

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run on one thread: a few small images gain nothing from more, and two contending threads per pytest
    worker (``-n 2`` on two cores) make them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """A machine without internet whose torch hub cache is ``tmp_path/hub``; returns the URLs code tried."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    tried: list[str] = []

    def no_download(url: str, *args: Any, **kwargs: Any) -> None:
        tried.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    def no_lookup(host: str, *args: Any, **kwargs: Any) -> None:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)  # in case anything reached past torch.hub
    return tried
