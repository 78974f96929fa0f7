"""The alert rules meshcore ships, on by default, as AlertRule documents.

They are ordinary AlertRule resources (validated by the same schema as the operator's), so an
operator reads, overrides and disables them the same way: an AlertRule with the same name replaces
a default (any namespace), and one with ``spec: {disabled: true}`` switches it off::

    apiVersion: telemetry.mesh.io/v1beta1
    kind: AlertRule
    metadata: {name: policy-denials}
    spec: {disabled: true}

Kept as Python text rather than a package data file so it ships with the code, whatever the packaging.
"""

from __future__ import annotations

from functools import lru_cache

from meshcore.resources.model import Resource

DEFAULT_NAMESPACE = "meshcore-system"
"""Namespace the defaults are listed under (``/v1/alerts/rules``); overrides match by name alone."""

DEFAULT_RULES_YAML = """\
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: high-error-rate, namespace: meshcore-system}
spec:
  signal: error_rate
  op: ">"
  threshold: 5%
  for: 1m
  severity: critical
  summary: "{service} fails {value} of its requests"
  description: "More than {threshold} of the requests to {service} were answered 5xx for {for}. Check
    `meshctl graph` for the failing edge and the service's logs; an injected fault (VirtualService) also shows here."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: high-latency-p99, namespace: meshcore-system}
spec:
  signal: p99_ms
  op: ">"
  threshold: 1s
  for: 2m
  severity: warning
  summary: "{service} p99 latency is {value}"
  description: "The 99th percentile latency of requests to {service} has been above {threshold} for {for}."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: certificate-expiring, namespace: meshcore-system}
spec:
  signal: cert_life_left_ratio
  op: "<"
  threshold: 25%
  for: 0s
  severity: warning
  summary: "certificate of {spiffe_id} on {node} has {value} of its lifetime left (expired when 0% or less)"
  description: "Certificates renew at half their lifetime, so one with less than a quarter left was not renewed;
    the alert stays firing after it expires, until it is renewed. Check the agent on {node} (`journalctl -u
    meshcore-agent`, its status.json certificate_alarms) and `meshctl ca certs`; a node whose certificate
    expired recovers by itself once the control plane is reachable (see docs/security.md)."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: ca-root-expiring, namespace: meshcore-system}
spec:
  signal: ca_root_expiry_seconds
  op: "<"
  threshold: 30d
  for: 5m
  severity: warning
  summary: "the CA root expires in {value}"
  description: "Rotate the root before it expires (`meshctl ca rotate`, then `meshctl ca rotate --finish`);
    every workload certificate chains to it."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: circuit-breaker-shedding, namespace: meshcore-system}
spec:
  signal: circuit_breaker_overflow
  op: ">"
  threshold: 0
  for: 1m
  severity: warning
  summary: "circuit breakers shed {value} of the calls to {service}"
  description: "Callers of {service} hit their connection-pool limits (DestinationRule connectionPool) for {for}:
    the service is saturated or the limits are too low."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: retries-exhausted, namespace: meshcore-system}
spec:
  signal: retry_exhausted
  op: ">"
  threshold: 0
  for: 1m
  severity: warning
  summary: "calls to {service} run out of retries ({value})"
  description: "Requests to {service} failed after every retry the VirtualService allows, for {for}."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: policy-denials, namespace: meshcore-system}
spec:
  signal: policy_denied
  op: ">"
  threshold: 1/s
  for: 5m
  severity: info
  summary: "authorization policy denies {value} requests to {service}"
  description: "More than {threshold} requests to {service} were denied by AuthorizationPolicy for {for}; a
    caller may lack a rule (`meshctl authz check --to {service} --from ...`)."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: proxy-out-of-sync, namespace: meshcore-system}
spec:
  signal: proxy_out_of_sync
  op: ">"
  threshold: 0
  for: 2m
  severity: critical
  summary: "proxy on {node} is out of sync"
  description: "The Envoy on {node} has not ACKed its current configuration (or its build failed) for {for};
    it keeps its last good config. See `meshctl status` and the control plane's log for the NACK or build error."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: proxy-metrics-unreachable, namespace: meshcore-system}
spec:
  signal: metrics_unreachable
  op: ">"
  threshold: 0
  for: 1m
  severity: warning
  summary: "the control plane cannot read the metrics of the proxy on {node}"
  description: "Every scrape of {node}'s metrics failed for {for}: its traffic, errors and latency are missing from
    the dashboard and from alerts (no alert on that VM's services can fire). Check the VM agent on {node}
    (`systemctl status meshcore-agent`), that its metrics port is reachable from the control plane at the node's
    catalog address, and the scrape error on the dashboard (proxies marked 'metrics unreachable')."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: control-plane-loop-restarted, namespace: meshcore-system}
spec:
  signal: thread_restarts
  op: ">"
  threshold: 0
  for: 0s
  keepFiringFor: 15m
  severity: warning
  summary: "control plane loop {thread} died and was restarted"
  description: "The supervisor restarted the control plane's {thread} loop ({value} time(s) in the last collection;
    the alert stays firing 15 minutes after the last restart). The loop runs again, but every loop catches its own
    errors, so a restart is a bug: find `background thread died thread={thread}` in the control plane's log
    (`journalctl -u meshcore-control-plane`, the traceback at DEBUG level), check `meshctl status` (threads and
    sources) and report it. Restarts that repeat mean changes from that loop may be late or lost."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: resources-rejected, namespace: meshcore-system}
spec:
  signal: resources_rejected
  op: ">"
  threshold: 0
  for: 0s
  severity: critical
  summary: "{value} stored resource document(s) in {source} are invalid and left out of the mesh"
  description: "Documents written to {source} behind meshctl's back fail validation, so the mesh is built without
    them: a left-out AuthorizationPolicy opens or closes traffic it should not. `meshctl status` lists each one
    with its key or file and the error; fix it with `meshctl apply -f` (which validates) or delete it."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: catalog-holding, namespace: meshcore-system}
spec:
  signal: catalog_holding
  op: ">"
  threshold: 0
  for: 0s
  severity: warning
  summary: "the catalog from {source} looked like lost data; the last good endpoints are held"
  description: "Consul's catalog answered with an index reset or a drastic shrink (a Consul server restarted empty
    or lost its raft data), so meshcore keeps routing to the last good endpoints until agents re-register or the
    hold ends (--catalog-hold); new registrations and deregistrations may not reach Envoy meanwhile. Check the
    Consul servers (`consul members`, `consul operator raft list-peers`) and the catalog source in `meshctl status`."
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: resource-store-suspect, namespace: meshcore-system}
spec:
  signal: store_suspect
  op: ">"
  threshold: 0
  for: 0s
  severity: critical
  summary: "the resource store {source} lost resources; the last good generation is held"
  description: "The store's backend lost resources this control plane had applied (Consul KV emptied or its
    generation went backwards). The mesh keeps serving the last good generation and `meshctl apply` is refused
    until it is restored: see `meshctl store status`, then `meshctl store restore` (writes the held generation
    back) once Consul is healthy."
"""


@lru_cache(maxsize=1)
def default_rule_resources() -> tuple[Resource, ...]:
    """The shipped rules as validated AlertRule resources (validated once, on first use)."""
    from meshcore.resources.loader import load_documents

    return tuple(load_documents(DEFAULT_RULES_YAML, "<meshcore default alert rules>"))


__all__ = ["DEFAULT_NAMESPACE", "DEFAULT_RULES_YAML", "default_rule_resources"]
