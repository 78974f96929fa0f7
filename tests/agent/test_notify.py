"""sd_notify: the datagrams reach a unix socket the test binds, as systemd's would."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from meshcore.agent.notify import SystemdNotifier, notify, socket_address, watchdog_interval


@pytest.fixture
def listener(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2)
    yield str(path), sock
    sock.close()


def _recv(sock) -> str:
    return sock.recv(4096).decode()


def test_notify_sends_one_datagram(listener):
    path, sock = listener
    assert notify("READY=1\nSTATUS=serving", env={"NOTIFY_SOCKET": path})
    assert _recv(sock) == "READY=1\nSTATUS=serving"


def test_abstract_namespace_socket():
    name = f"meshcore-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        assert _recv(sock) == "WATCHDOG=1"
    assert socket_address("@x") == b"\0x"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


def test_without_systemd_nothing_is_sent():
    assert notify("READY=1", env={}) is False
    assert SystemdNotifier(env={}).ready() is False
    assert notify("READY=1", env={"NOTIFY_SOCKET": "relative/path"}) is False


def test_unreachable_socket_is_not_fatal(tmp_path):
    assert notify("READY=1", env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}) is False


def test_notifier_messages(listener):
    path, sock = listener
    n = SystemdNotifier(env={"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("envoy ready; 2/2 SVIDs")
    assert _recv(sock) == "READY=1\nSTATUS=envoy ready; 2/2 SVIDs"
    assert n.ready_sent
    assert n.status("renewing") and _recv(sock) == "STATUS=renewing"
    assert n.status("renewing") is False  # unchanged status is not re-sent
    assert n.watchdog() and _recv(sock) == "WATCHDOG=1"
    assert n.reloading()
    lines = _recv(sock).split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    assert n.stopping() and _recv(sock) == "STOPPING=1"


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None  # not for us
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
