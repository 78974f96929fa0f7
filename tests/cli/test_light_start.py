"""``meshctl --help`` and ``meshctl get`` import none of the heavy libraries: only the commands that use
grpc, protobuf, Envoy's protos, cryptography, Ansible or Fabric load them (see cli/_commands.py).

Which modules load is asserted, not how long it takes (timing belongs in benchmarks)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

HEAVY = ("grpc", "google.protobuf", "envoy", "cryptography", "ansible", "fabric", "paramiko", "consul", "spiffe")

_PROBE = """
import json, sys
from meshcore.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted({m for m in sys.modules for h in json.loads(HEAVY) if m == h or m.startswith(h + ".")})
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _imports(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE.replace("HEAVY", repr(json.dumps(HEAVY))), *argv],
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_imports_no_heavy_module():
    result = _imports("--help")
    assert result["code"] == 0
    assert result["heavy"] == []


@pytest.mark.parametrize("kind", ["proxies", "virtualservices"])
def test_get_imports_no_heavy_module(kind):
    result = _imports("get", kind, "--server", f"http://127.0.0.1:{_closed_port()}")
    assert result["code"] == 1  # nothing listens there: the call fails, after the imports it needed
    assert result["heavy"] == []


def test_a_command_that_needs_a_heavy_module_still_gets_it():
    """The lazy registry does not lose commands: `operator cert issue --help` builds its full parser."""
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "operator", "cert", "issue", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--role" in out.stdout


def test_every_module_command_is_listed_and_registers():
    """Each command of _commands.MODULE_COMMANDS appears in --help and its module really registers it."""
    from meshcore.cli._commands import MODULE_COMMANDS
    from meshcore.cli.main import build_parser

    full = build_parser()  # every module registers
    sub = next(a for a in full._actions if a.dest == "command")
    for name, _module, _help in MODULE_COMMANDS:
        assert name in sub.choices, name
        lazy = build_parser([name])
        assert lazy._actions[-1].choices[name].format_usage() == sub.choices[name].format_usage()
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert {n: helps[n] for n, _, _ in MODULE_COMMANDS} == {n: h for n, _, h in MODULE_COMMANDS}
