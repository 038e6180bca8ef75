"""Fixtures of the data tests: no network, and fake CIFAR-10 files accepted by torchvision."""

from __future__ import annotations

import socket

import pytest
import torchvision.datasets.cifar
from torchvision.datasets.utils import check_integrity


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


@pytest.fixture
def fake_cifar_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision's CIFAR10 read fake batches: it compares every file with the official release's MD5.

    torchvision's own dataset tests (test/datasets_utils.py, ``_patch_checks``) patch ``check_integrity`` in
    the dataset's module for fake data; we do the same, but keep the check that each file exists.
    """
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: check_integrity(fpath)
    )
