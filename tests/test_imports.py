"""Light package faces: importing a pure module of the generation path loads no gRPC, HTTP or Consul client.

Each import runs in a fresh interpreter (this process has long since loaded everything), and the test
lists what the import pulled in. Why it matters: the generation path is imported by ``meshctl``, by the
engine's workers and by tests; it must stay pure, and a heavy face (a package ``__init__`` re-exporting
the ADS server or the Consul source eagerly) makes every caller pay for it.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import meshcore.policies

FORBIDDEN = ("grpc", "urllib.request", "consul")
"""Top-level names: a module counts when it is one of these or inside one (``grpc._channel``)."""

POLICY_MODULES = sorted(m.name for m in pkgutil.walk_packages(meshcore.policies.__path__, "meshcore.policies."))
"""Every module of every policy (its folder's schema, spec, plugin and helpers too)."""
PURE_MODULES = ["meshcore._addresses", "meshcore.xds.generate", "meshcore.xds.generate.vocab", "meshcore.compose", "meshcore.snapshot",
                "meshcore.policies", *POLICY_MODULES]

_PROBE = """
import json, sys
before = set(sys.modules)
import {module}
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _loaded_by(module: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(module=module)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, f"import {module} failed:\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def _forbidden(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def test_policy_modules_are_found():
    assert {"meshcore.policies.destination_rule.plugin", "meshcore.policies.destination_rule.schema",
            "meshcore.policies.registry", "meshcore.policies.telemetry"} <= set(POLICY_MODULES)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_loads_no_network_client(module):
    loaded = _loaded_by(module)
    assert module in loaded
    bad = _forbidden(loaded)
    assert not bad, f"import {module} loads {bad}; make the package face that pulls them in lazy"


def test_the_probe_sees_a_network_client():
    """The check can fail: importing the ADS server does load grpc."""
    assert "grpc" in _forbidden(_loaded_by("meshcore.xds.server"))


def test_lazy_faces_still_export():
    import meshcore.catalog
    import meshcore.observe
    import meshcore.xds

    assert meshcore.xds.SnapshotCache.__name__ == "SnapshotCache"
    assert meshcore.catalog.ConsulCatalogSource.__name__ == "ConsulCatalogSource"
    assert meshcore.observe.compute_edges.__name__ == "compute_edges"
    with pytest.raises(AttributeError):
        meshcore.xds.no_such_name  # noqa: B018
