"""Log lines cannot be forged: control characters in a message are escaped, one record is one line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from meshcore.logs import escape_control, setup_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_escape_control():
    assert escape_control("a\nb\r\tc\x1b[31m\x00\x7f\x85\u2028") == "a\\nb\\r\\tc\\x1b[31m\\x00\\x7f\\x85\\u2028"
    assert escape_control("vm-1 ünïcode") == "vm-1 ünïcode"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_field_value_cannot_start_a_new_line(restore_logging, fmt):
    stream = io.StringIO()
    setup_logging("info", fmt, stream=stream)
    logging.getLogger("meshcore.test").warning("join refused node=%s", "vm1\n2026-01-01 INFO forged=yes")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    if fmt == "json":
        assert json.loads(lines[0])["msg"] == "join refused node=vm1\n2026-01-01 INFO forged=yes"
    else:
        assert lines[0].endswith("join refused node=vm1\\n2026-01-01 INFO forged=yes")


def test_tracebacks_still_follow(restore_logging):
    stream = io.StringIO()
    setup_logging("info", "text", stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("meshcore.test").exception("failed node=%s", "a\nb")
    text = stream.getvalue()
    assert "failed node=a\\nb\nTraceback" in text and "RuntimeError: boom" in text
