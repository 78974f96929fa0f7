"""Control plane metrics: convergence timing and certificate expiry read from a real CA."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import generate_latest

from meshcore.ca import CertificateAuthority, make_csr, new_private_key
from meshcore.controlplane.metrics import ControlPlaneMetrics


def _samples(m: ControlPlaneMetrics) -> list:
    return [s for f in text_string_to_metric_families(generate_latest(m.registry).decode()) for s in f.samples]


def _value(m, name, **labels):
    return [s.value for s in _samples(m) if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def test_convergence_is_observed_once_per_published_version():
    m = ControlPlaneMetrics()
    m.config_synced("n1")  # an ACK with nothing pending observes nothing
    assert _value(m, "meshcore_convergence_seconds_count") == [0.0]
    m.config_published("n1", since=time.monotonic() - 0.2)
    m.config_published("n1")  # a newer version before the ACK keeps the older start
    m.config_synced("n1")
    m.config_synced("n1")
    assert _value(m, "meshcore_convergence_seconds_count") == [1.0]
    assert _value(m, "meshcore_convergence_seconds_sum")[0] >= 0.2


def test_certificate_and_root_expiry_come_from_the_ca(tmp_path):
    ca = CertificateAuthority.open(tmp_path / "ca", trust_domain="cluster.local", kek=b"k" * 32)
    sid = "spiffe://cluster.local/ns/default/sa/ratings"
    issued = ca.sign_csr(make_csr(new_private_key(), sid), spiffe_id=sid)
    m = ControlPlaneMetrics()
    m.watch_ca(ca)
    leaf = _value(m, "meshcore_certificate_expiry_timestamp_seconds", spiffe_id=sid)
    assert leaf == [issued.not_after.timestamp()]
    [root] = _value(m, "meshcore_ca_root_expiry_timestamp_seconds", role="current")
    assert root > time.time() + 5 * 365 * 86400


def test_store_suspect_gauge_follows_the_stores_own_health():
    """``meshcore_resource_store_suspect`` (the store-suspect alert's series for Prometheus) is read from the
    store at scrape time: 1 while it says suspect, 0 once it is restored."""
    from meshcore.controlplane.engine import MeshEngine
    from meshcore.resources.store import StoreHealth
    from meshcore.xds.cache import SnapshotCache

    class Store:
        state = "ok"

        def health(self):
            return StoreHealth(backend="consul", location="meshcore/resources", state=self.state)

    store, m = Store(), ControlPlaneMetrics()
    MeshEngine(object(), store, SnapshotCache(), trust_domain="cluster.local", metrics=m)  # type: ignore[arg-type]
    assert _value(m, "meshcore_resource_store_suspect") == [0.0]
    store.state = "suspect"
    assert _value(m, "meshcore_resource_store_suspect") == [1.0]
    store.state = "ok"
    assert _value(m, "meshcore_resource_store_suspect") == [0.0]
