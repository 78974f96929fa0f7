"""``authz dry-run``: observed calls from JSON access logs (the access-log contract), decided under the
current and the proposed policies by the same evaluator as ``authz check``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from meshcore.authz.dry_run import HEADER_CAVEAT, ObservedCall, call_of_entry, dry_run, read_access_log
from meshcore.resources import load_documents

from ..policies._catalog import snapshot, write_catalog

LOG = Path(__file__).parent / "data" / "access.log"

CURRENT = """\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
"""

GET_ONLY_FROM_PRODUCTPAGE = """\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: details-get, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
    to: [{operation: {methods: [GET]}}]
"""


def _mesh(tmp_path: Path, policies: str = CURRENT):
    write_catalog(tmp_path / "catalog", [{"name": "details"}, {"name": "productpage"}, {"name": "reviews"},
                                         {"name": "ledger", "protocol": "tcp"}])
    return snapshot(tmp_path / "catalog", policies)


def test_reads_inbound_entries_and_counts_identical_calls():
    counts, skipped = read_access_log(LOG.read_text().splitlines())
    assert skipped == 1  # Envoy's own log line
    get = ObservedCall(service="details", node="n1", source_principal="cluster.local/ns/default/sa/productpage",
                       source_ip="127.0.0.1", method="GET", path="/details/0", host="details")
    assert counts[get] == 2  # query string dropped, source port ignored
    assert sum(counts.values()) == 7  # the outbound entry is the caller's side of an inbound one: skipped
    ipv6 = next(c for c in counts if c.source_principal == "other.example/ns/default/sa/client")
    assert ipv6.source_ip == "::1"
    tcp = next(c for c in counts if c.service == "ledger")
    assert (tcp.method, tcp.path, tcp.source_principal) == (None, None, None)
    assert call_of_entry({"direction": "outbound", "service": "x"}) is None


def test_lists_calls_the_new_policy_would_deny(tmp_path):
    snap = _mesh(tmp_path)
    counts, _ = read_access_log(LOG.read_text().splitlines())
    result = dry_run(snap, load_documents(GET_ONLY_FROM_PRODUCTPAGE, "new.yaml"), counts)
    flips = {(g["source"], g["method"], g["path"]): g for g in result["would_deny"]}
    assert set(flips) == {("cluster.local/ns/default/sa/productpage", "POST", "/details/0"),
                          ("other.example/ns/default/sa/client", "GET", "/health")}
    post = flips[("cluster.local/ns/default/sa/productpage", "POST", "/details/0")]
    assert post["count"] == 1 and post["source_service"] == "productpage" and post["destination"] == "details"
    assert post["before"]["allowed"] is True and post["after"]["allowed"] is False
    assert "details-get" in post["after"]["reason"]
    assert result["would_allow"] == []
    # GET from productpage (2), DELETE from reviews (denied before and after), the TCP connection: unchanged
    assert result["unchanged"] == 4 and result["observed"] == 7
    assert result["unknown_destinations"] == {"gone": 1}
    assert result["resources"] == ["AuthorizationPolicy/default/details-get"] and result["caveats"] == []


def test_replacing_a_deny_policy_lists_calls_it_would_allow(tmp_path):
    snap = _mesh(tmp_path)
    lifted = CURRENT.replace("methods: [DELETE]", "methods: [PATCH]")
    counts, _ = read_access_log(LOG.read_text().splitlines())
    result = dry_run(snap, load_documents(lifted, "new.yaml"), counts)
    assert result["would_deny"] == []
    [group] = result["would_allow"]
    assert (group["source_service"], group["method"], group["before"]["policy"]) == ("reviews", "DELETE",
                                                                                     "default/no-delete")


def test_tcp_calls_and_header_caveat(tmp_path):
    snap = _mesh(tmp_path, "")
    deny_plain = """\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: ledger-mtls-only, namespace: default}
spec:
  selector: {matchLabels: {app: ledger}}
  rules: [{from: [{source: {principals: ["*"]}}]}]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: debug, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules: [{when: [{key: "request.headers[x-debug]", values: ["*"]}]}]
"""
    calls = Counter({ObservedCall(service="ledger", node="n1", source_ip="127.0.0.9"): 3})
    result = dry_run(snap, load_documents(deny_plain, "new.yaml"), calls)
    [group] = result["would_deny"]
    assert (group["source"], group["method"], group["count"]) == ("(plaintext)", None, 3)
    assert result["caveats"] == [HEADER_CAVEAT]
