"""
Fixtures shared by every test module.

pytest-twisted runs one global reactor for the session and has no reactor
fixture of its own; this one hands it to tests that need real sockets.
Unit tests do not use it.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from coursenet.tls import ensureDevCertificate

# In CI the fuzzers replay the same examples every run, so a red build
# means a change broke something, not that the dice rolled differently.
# Elsewhere they keep exploring.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

#: Set by .ci/run: a test that would skip for want of root, /dev/net/tun or
#: network namespaces fails instead, so CI proves it ran.
REQUIRE_ALL = bool(os.environ.get("COURSENET_REQUIRE_ALL"))


def skipOrFail(reason: str) -> None:
    """
    Skip with C{reason}, or fail when CI demands that everything runs.
    """
    if REQUIRE_ALL:
        pytest.fail(f"required by COURSENET_REQUIRE_ALL but unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture
def reactor():
    """
    The global reactor pytest-twisted runs.
    """
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="session")
def devCert(tmp_path_factory):
    """
    A self-signed certificate for localhost and 127.0.0.1: C{(cert, key)}.
    """
    return ensureDevCertificate(str(tmp_path_factory.mktemp("tls")))
