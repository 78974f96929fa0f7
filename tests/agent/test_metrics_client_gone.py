"""A scraper that goes away before the agent's metrics answer is sent (a timed-out Prometheus or control plane
collector) is one DEBUG line, never a broken-pipe traceback on stderr (issue 12, finding 15)."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

from meshcore.agent.metrics import AgentMetrics, MetricsServer

from .test_metrics import _facts


def test_a_client_that_went_away_is_one_debug_line(caplog, capsys):
    server = MetricsServer("127.0.0.1:0", AgentMetrics(_facts), lambda: "127.0.0.1:1").start()
    gone = threading.Event()

    def slow_render() -> list[bytes]:  # answers only once the client has hung up, with more than a socket buffer
        assert gone.wait(30)
        return [b"# a large exposition\n" * 1_000_000]

    server.render_parts = slow_render  # type: ignore[method-assign]  # what the handler answers /metrics with
    caplog.set_level(logging.DEBUG, logger="meshcore.agent")
    try:
        host, port = server.bound()  # type: ignore[misc]
        client = socket.create_connection((host, port), timeout=10)
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        client.close()
        gone.set()
        deadline = time.monotonic() + 30
        while "went away before its answer was sent" not in caplog.text:
            assert time.monotonic() < deadline, f"no DEBUG line: {caplog.text}"
            time.sleep(0.05)
    finally:
        server.stop()
    [line] = [r for r in caplog.records if "went away" in r.getMessage()]
    assert line.levelno == logging.DEBUG and "127.0.0.1" in line.getMessage()
    # the metrics server's own records (another test's leftover thread in this worker may log elsewhere)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("meshcore.agent")]
    err = capsys.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err
