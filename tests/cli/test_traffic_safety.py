"""Safer traffic commands (issue 16, item 5), against a real control plane on the bookinfo catalog:
typos and empty subsets are refused (also in --dry-run) unless --force, rollback undoes a split,
`traffic show` names everything that changes a service's traffic, `status` shows a broken catalog file."""

from __future__ import annotations

import json
import time

import pytest

from meshcore.cli.main import main

from ._helpers import control_plane, copy_bookinfo, wait_for_catalog

FAULTY_VS = """\
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - name: broken
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms}
    mirror: {host: details}
    route:
    - destination: {host: ratings}
---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}
"""


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    root = tmp_path_factory.mktemp("traffic-safety")
    catalog = copy_bookinfo(root / "consul.d")
    with control_plane(root / "cp", catalog) as cp:
        wait_for_catalog(cp)
        cp.catalog_dir = catalog  # the tests below break a file of it
        yield cp


@pytest.fixture
def server(plane, monkeypatch) -> str:
    monkeypatch.setenv("MESHCORE_TOKEN_FILE", str(plane.settings.state_dir / "admin.token"))
    return plane.addresses["http"]


def _meshctl(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _stored(capsys, server: str, kind: str) -> list[dict]:
    code, out, _ = _meshctl(capsys, "get", kind, "--server", server, "-o", "json")
    assert code == 0
    return json.loads(out)


def test_a_typo_of_the_service_is_refused_and_nothing_is_written(server, capsys):
    code, _, err = _meshctl(capsys, "traffic", "split", "reviwes", "v1=100", "--server", server)
    assert code == 1
    assert "service 'reviwes' is not in the catalog; did you mean 'reviews'?" in err and "--force" in err
    assert _stored(capsys, server, "vs") == [] and _stored(capsys, server, "dr") == []


def test_a_subset_without_instances_is_refused_in_dry_run_too(server, capsys):
    for extra in ((), ("--dry-run",)):
        code, _, err = _meshctl(capsys, "traffic", "split", "reviews", "v1=90", "v9=10", "--server", server, *extra)
        assert code == 1 and "subset 'v9' of reviews (version=v9) has no instances" in err
    code, _, err = _meshctl(capsys, "traffic", "switch", "reviews", "--to", "green", "--label", "color",
                            "--server", server, "--dry-run")
    assert code == 1 and "color=green" in err
    code, out, _ = _meshctl(capsys, "traffic", "split", "reviews", "v1=90", "v2=10", "--server", server, "--dry-run")
    assert code == 0 and "dry run" in out


def test_force_writes_it_anyway_and_says_so(server, capsys):
    code, out, _ = _meshctl(capsys, "traffic", "split", "nosuch", "v1=100", "--force", "--no-wait",
                            "--server", server)
    assert code == 0 and "forced: service 'nosuch' is not in the catalog" in out
    assert [d["metadata"]["name"] for d in _stored(capsys, server, "vs")] == ["nosuch"]
    assert main(["delete", "vs", "nosuch", "--server", server]) == 0
    assert main(["delete", "dr", "nosuch", "--server", server]) == 0


def test_rollback_undoes_a_split_and_a_second_rollback_redoes_it(server, capsys):
    def default_route() -> list:
        vs = next(d for d in _stored(capsys, server, "vs") if d["metadata"]["name"] == "reviews")
        return vs["spec"]["http"][-1]["route"]

    assert _meshctl(capsys, "traffic", "split", "reviews", "v1=50", "v3=50", "--no-wait", "--server", server)[0] == 0
    assert [d["destination"].get("subset") for d in default_route()] == ["v1", "v3"]
    code, out, _ = _meshctl(capsys, "traffic", "rollback", "reviews", "--no-wait", "--server", server)
    assert code == 0 and "rolled back to *" in out
    assert default_route() == [{"destination": {"host": "reviews"}}]
    code, out, _ = _meshctl(capsys, "traffic", "rollback", "reviews", "--no-wait", "--server", server)
    assert code == 0 and "rolled back to v1=50,v3=50" in out


def test_apply_from_stdin_applies_what_it_validated(server, capsys, monkeypatch):
    """`meshctl apply -f -` validates the text offline and then sends that same text (stdin is read once)."""
    import io

    doc = FAULTY_VS.split("---\n")[1].replace("name: ratings}", "name: ratings-from-stdin}").replace(
        "host: ratings", "host: details")
    monkeypatch.setattr("sys.stdin", io.StringIO(doc))
    code, out, err = _meshctl(capsys, "apply", "-f", "-", "--server", server)
    assert code == 0, err
    assert out.strip() == "DestinationRule/default/ratings-from-stdin created", out
    code, out, _ = _meshctl(capsys, "get", "destinationrule", "ratings-from-stdin", "--server", server, "-o", "json")
    assert code == 0 and "outlierDetection" in out
    assert _meshctl(capsys, "delete", "destinationrule", "ratings-from-stdin", "--server", server)[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("# nothing here\n"))
    code, out, err = _meshctl(capsys, "apply", "-f", "-", "--server", server)
    assert code != 0 and "no resources to apply in -" in err, (out, err)


def test_show_names_faults_timeouts_retries_mirrors_and_policies(server, capsys, tmp_path):
    (tmp_path / "ratings.yaml").write_text(FAULTY_VS)
    assert main(["apply", "-f", str(tmp_path / "ratings.yaml"), "--server", server]) == 0
    capsys.readouterr()
    code, out, _ = _meshctl(capsys, "traffic", "show", "ratings", "--server", server)
    assert code == 0
    assert '"abort":{"httpStatus":503,"percentage":{"value":100}}' in out
    for line in ("timeout: \"2s\"", "retries: {\"attempts\":3", "mirror: {\"host\":\"details\"}",
                 "policy ratings: {\"outlierDetection\""):
        assert line in out, (line, out)
    code, out, _ = _meshctl(capsys, "traffic", "show", "details", "--server", server)
    assert "mirrored from ratings/broken" in out
    code, out, _ = _meshctl(capsys, "traffic", "show", "ratings", "--server", server, "-o", "json")
    view = json.loads(out)
    assert view["routes"][0]["fault"]["abort"]["httpStatus"] == 503
    assert view["policies"][0]["policy"]["outlierDetection"]["consecutive5xxErrors"] == 5


def test_status_shows_a_broken_catalog_file(plane, server, capsys):
    broken = plane.catalog_dir / "vm2" / "details.hcl"
    broken.write_text('service { name = "details" \n this is not hcl')
    deadline = time.monotonic() + 60
    while True:
        code, out, _ = _meshctl(capsys, "status", "--server", server)
        if "rejected vm2/details.hcl" in out and "holding" in out:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.2)
    assert code == 0
