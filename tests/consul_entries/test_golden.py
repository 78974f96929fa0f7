"""Golden tests: example config entries (written in Consul's documented JSON/HCL form) compile to the expected
meshcore resources and findings, and through the existing generation to the expected Envoy config.

Each case of ``testdata/cases.json`` keeps ``testdata/golden/<case>.compiled.yaml`` (the resources and
findings) and ``testdata/golden/<case>.envoy.json`` (the whole proxy of its node, built by the real code
path over the bookinfo catalog). Run with ``--update-golden`` after an intended change and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from meshcore.catalog.files import FileCatalogSource
from meshcore.compose import build_proxy
from meshcore.consul_entries import CatalogFacts, CompileOptions, compile_entries, load_entry_files
from meshcore.consul_entries.defaults import entry_defaults, with_defaults
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.xds.validate import validate_snapshot

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "testdata"
GOLDEN = DATA / "golden"
CASES = {k: v for k, v in json.loads((DATA / "cases.json").read_text()).items() if k != "_"}


def catalog(case: str | None = None):
    """The case's catalog (``catalog``: a testdata directory), else bookinfo's."""
    where = CASES[case].get("catalog") if case else None
    root = DATA / where if where else ROOT / "examples" / "bookinfo" / "consul.d"
    return FileCatalogSource(root).poll(None, 0).catalog


def entries_of(case: str):
    return load_entry_files([DATA / f for f in CASES[case]["files"]])


def compiled(case: str):
    options = CompileOptions(default_intention=CASES[case]["default"], catalog=CatalogFacts.of(catalog(case)))
    return compile_entries(entries_of(case), options)


def case_catalog(case: str):
    """The catalog as the control plane hands it to generation: protocols and gateway modes from the entries."""
    return with_defaults(catalog(case), entry_defaults(entries_of(case)))


def _compare(path: Path, rendered: str, update: bool) -> None:
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
    assert path.exists(), f"{path.relative_to(ROOT)} is missing; run with --update-golden and review it"
    assert rendered == path.read_text(), f"{path.relative_to(ROOT)} differs; if intended, --update-golden and review"


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiles_to_expected_resources(case, update_golden):
    result = compiled(case)
    findings = "".join(f"# {f}\n" for f in result.findings) or "# no findings\n"
    docs = yaml.safe_dump_all([r.to_document() for r in result.resources], sort_keys=True)
    _compare(GOLDEN / f"{case}.compiled.yaml", findings + "---\n" + docs, update_golden)


@pytest.mark.parametrize("case", sorted(CASES))
def test_generates_expected_envoy_config(case, update_golden):
    result = compiled(case)
    node = CASES[case]["node"]
    snapshot = MeshSnapshot.build(case_catalog(case), list(result.resources))
    built = build_proxy(snapshot, ProxyInfo(node=node, secrets_dir="/var/lib/meshcore-agent/secrets",
                                            admin="127.0.0.1:19000"))
    assert validate_snapshot(node, built) == []
    rendered = {t.rsplit(".", 1)[-1]: [json_format.MessageToDict(m) for m in msgs] for t, msgs in sorted(built.items())}
    _compare(GOLDEN / f"{case}.envoy.json", json.dumps(rendered, indent=2, sort_keys=True) + "\n", update_golden)


def test_every_case_changes_the_envoy_config():
    """A case whose resources left the proxy as it was would test nothing."""
    plain = {}
    for case, spec in CASES.items():
        node = (spec["node"], spec.get("catalog"))
        if node not in plain:
            plain[node] = build_proxy(MeshSnapshot.build(catalog(case), []), ProxyInfo(node=node[0], secrets_dir="/s"))
        built = build_proxy(MeshSnapshot.build(case_catalog(case), list(compiled(case).resources)),
                            ProxyInfo(node=node[0], secrets_dir="/s"))
        assert built != plain[node], case
