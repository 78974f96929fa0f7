"""DestinationRule ``tls``: TLS origination towards services outside the mesh, and plaintext towards mesh services.

Istio's modes, per level (``trafficPolicy``, ``subsets[].trafficPolicy``) and per port (``portLevelSettings[]``):

* ``ISTIO_MUTUAL``: the mesh's own mTLS, what meshcore does towards every mesh service anyway. Refused towards a
  ServiceEntry host (an outside server does not trust the mesh CA, and the mesh's keys are not for it). Its
  ``subjectAltNames`` (SPIFFE IDs) replace the server identities accepted, as in Istio (Istio's trust-domain
  federation sample accepts a service's SVIDs of two trust domains that way).
* ``SIMPLE`` (ServiceEntry hosts): the app speaks plaintext to its local listener and its sidecar originates TLS, as
  Istio's egress TLS origination task does. The server is verified against ``caCertificates`` (a PEM file on the
  calling VM), or the system trust store (:data:`SYSTEM_TRUST_STORE`) when it is left out; its certificate must carry ``subjectAltNames`` (any
  of them, of any SAN type), else the SNI as a DNS name. ``sni`` defaults to the host. ``caCrl`` adds a
  revocation list; ``insecureSkipVerify: true`` turns every server check off (and may not be combined with them).
* ``MUTUAL``: SIMPLE plus the calling VM's own ``clientCertificate`` and ``privateKey`` files.
* ``DISABLE``: plaintext. The default towards a ServiceEntry host. Towards a mesh service it turns the mesh's mTLS
  off for the callers (Istio's DISABLE): accepted only where the service's PeerAuthentication accepts plaintext
  (PERMISSIVE or DISABLE), since against STRICT every request would fail in the handshake; the proxy's config is
  refused (it keeps its last good one) if an instance turns STRICT later.
* ``SIMPLE`` and ``MUTUAL`` towards a mesh service are refused: its identity is the mesh's (ISTIO_MUTUAL).
* ``credentialName`` (a Kubernetes secret) is refused: name the files.

Which rule decides is the calling workload's, as Istio's (:func:`rule_of`): a rule whose ``workloadSelector``
selects the caller replaces the host's rule without one, ``tls`` included (not merged).

The files are read by Envoy on the calling VM: the control plane sends their paths only (private keys never leave
the VM), as SDS secrets over ADS whose data sources are those files (:func:`file_secrets`). Envoy watches the
directory of each file and reloads the secret when a file is replaced by a rename (``mv new.pem cert.pem``, what
certbot and ``install`` do), without a config push and without dropping connections; an in-place rewrite is not
seen until the next push. The secrets are named by their files, so clusters sharing files share one secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshcore.errors import FieldError
from meshcore.resources.model import Resource
from meshcore.resources.schema import Bool, Context, Custom, Enum, ListOf, Obj, Path, Required, Str

DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL = "DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"
MODES = (DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL)
ORIGINATING = (SIMPLE, MUTUAL)
TLS_SOCKET = "envoy.transport_sockets.tls"
FILE_FIELDS = ("caCertificates", "caCrl", "clientCertificate", "privateKey")
VERIFY_FIELDS = ("caCertificates", "caCrl", "subjectAltNames")
SYSTEM_TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"
"""The VM's system CA bundle (Debian's and Ubuntu's ca-certificates; the lab's and the Ansible roles' hosts), what
verifies the server without ``caCertificates``. A file, not Envoy's ``system_root_certs``: Envoy refuses SAN checks
without a trusted CA file, and as an SDS file secret it reloads when the package updates the bundle."""

CREDENTIAL_NAME = ("a Kubernetes secret: meshcore's sidecars read the certificates from files on the calling VM; "
                   "write clientCertificate, privateKey and caCertificates (paths of PEM files)")
MESH_ORIGINATION = ("a mesh service is always reached over the mesh's own mTLS (ISTIO_MUTUAL: its identity and "
                    "certificates are the mesh CA's); SIMPLE and MUTUAL are for ServiceEntry hosts outside the mesh")
OUTSIDE_ISTIO_MUTUAL = ("ISTIO_MUTUAL presents the mesh's workload certificate and expects the mesh CA's, and a "
                        "ServiceEntry host is outside the mesh; write SIMPLE (or MUTUAL with your client "
                        "certificate files), or DISABLE for plaintext")
TLS_IN_TLS = ("the app already speaks TLS on this port (protocol {protocol}), so the sidecar would wrap TLS in TLS; "
              "originate on a plaintext port instead (as Istio's task: ports: [{{number: 80, name: http, "
              "protocol: HTTP, targetPort: 443}}] with tls on port 80), or set mode DISABLE for port {port}")


def _file_problem(value: str) -> str | None:
    if not value.startswith("/"):
        return f"{json.dumps(value)}: give the absolute path of a PEM file on the calling VM"
    return None


FILE = Custom(Str(min_len=1), _file_problem)


def _tls_rules(cleaned: dict, path: Path, ctx: Context) -> None:
    mode = cleaned.get("mode")
    if bool(cleaned.get("clientCertificate")) != bool(cleaned.get("privateKey")):
        ctx.add(path, "clientCertificate and privateKey go together (the calling VM's certificate and its key)")
    if mode == MUTUAL and not cleaned.get("clientCertificate"):
        ctx.add(path.field("mode"), "MUTUAL presents a client certificate: give clientCertificate and privateKey "
                                    "(or use SIMPLE to verify the server only)")
    if mode == SIMPLE and cleaned.get("clientCertificate"):
        ctx.add(path.field("clientCertificate"), "SIMPLE presents no client certificate: use mode MUTUAL to send it")
    if mode == ISTIO_MUTUAL:
        for i, san in enumerate(cleaned.get("subjectAltNames") or ()):
            if isinstance(san, str) and not san.startswith("spiffe://"):
                ctx.add(path.field("subjectAltNames").index(i),
                        f"{san!r}: with ISTIO_MUTUAL the server presents a mesh SVID, whose only name is its SPIFFE ID "
                        "(spiffe://<trust domain>/ns/<namespace>/sa/<account>); write that")
    if mode not in ORIGINATING:
        for f in (*FILE_FIELDS, "sni", "subjectAltNames", "insecureSkipVerify"):
            if f == "subjectAltNames" and mode == ISTIO_MUTUAL:
                continue  # the server identities the mesh's mTLS accepts instead of the host's (as in Istio)
            if f in cleaned:
                ctx.add(path.field(f), f"{f} configures the TLS the sidecar originates, with mode SIMPLE or MUTUAL; "
                                       f"mode {mode} " + ("sends plaintext" if mode == DISABLE
                                                          else "uses the mesh's own certificates"))
    if cleaned.get("insecureSkipVerify"):
        for f in VERIFY_FIELDS:
            if f in cleaned:
                ctx.add(path.field(f), f"insecureSkipVerify: true turns every server check off, so {f} would not "
                                       "be checked; leave one of them out")


TLS = Obj(
    {
        "mode": Required(Enum(*MODES)),
        "caCertificates": FILE,
        "caCrl": FILE,
        "clientCertificate": FILE,
        "privateKey": FILE,
        "sni": Str(min_len=1, max_len=253),
        "subjectAltNames": ListOf(Str(min_len=1), min_items=1),
        "insecureSkipVerify": Bool(),
    },
    rules=[_tls_rules],
    refused={"credentialName": CREDENTIAL_NAME},
)
"""``tls`` of a DestinationRule traffic policy (host, subset and port level alike)."""


# --- typed settings and their resolution (pure) ----------------------------------------------------------


@dataclass(frozen=True)
class UpstreamTls:
    """One level's ``tls`` as written, and where (``spec.subsets[0].trafficPolicy.tls``: for messages)."""

    mode: str
    where: str = ""
    ca_certificates: str | None = None
    ca_crl: str | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    sni: str | None = None
    subject_alt_names: tuple[str, ...] = ()
    insecure_skip_verify: bool = False


def parse_tls(block: Mapping[str, Any], where: str = "") -> UpstreamTls:
    """A validated ``tls`` mapping as :class:`UpstreamTls`."""
    return UpstreamTls(
        mode=block["mode"], where=where,
        ca_certificates=block.get("caCertificates"), ca_crl=block.get("caCrl"),
        client_certificate=block.get("clientCertificate"), private_key=block.get("privateKey"),
        sni=block.get("sni"), subject_alt_names=tuple(block.get("subjectAltNames") or ()),
        insecure_skip_verify=bool(block.get("insecureSkipVerify")),
    )


def _level(policy: Mapping[str, Any] | None, port: int | None, where: str) -> UpstreamTls | None:
    """A level's ``tls`` for ``port``: its ``portLevelSettings`` entry's when that sets one, else the level's."""
    if not policy:
        return None
    for i, entry in enumerate(policy.get("portLevelSettings") or ()):
        if port is not None and entry["port"]["number"] == port and entry.get("tls"):
            return parse_tls(entry["tls"], f"{where}.portLevelSettings[{i}].tls")
    return parse_tls(policy["tls"], f"{where}.tls") if policy.get("tls") else None


def tls_for(rule: Resource | None, subset: str | None, port: int | None) -> UpstreamTls | None:
    """The ``tls`` that applies to ``rule``'s host (``subset`` None) or one of its subsets, on ``port``.

    As Istio's merge: the subset's policy (its port-level entry first) replaces the host's ``tls`` as a whole; the
    host's (its port-level entry first) applies otherwise. None: no ``tls`` anywhere (the kind's default).
    """
    if rule is None:
        return None
    spec = rule.spec or {}
    if subset is not None:
        for k, s in enumerate(spec.get("subsets") or ()):
            if s.get("name") == subset:
                own = _level(s.get("trafficPolicy"), port, f"spec.subsets[{k}].trafficPolicy")
                if own is not None:
                    return own
    return _level(spec.get("trafficPolicy"), port, "spec.trafficPolicy")


Workload = tuple[Mapping[str, str], str]
"""The calling workload: its labels and namespace (what a DestinationRule's ``workloadSelector`` selects)."""


def rule_of(snapshot: Any, host: str, workload: Workload | None = None) -> Resource | None:
    """``host``'s DestinationRule in ``snapshot`` as the calling ``workload`` sees it, as Istio's: the rule whose
    ``workloadSelector`` selects it, else the rule without a selector (:func:`.schema.rule_for`, from its
    per-snapshot index by host: generation asks once per cluster). Without a workload, the rule without a selector
    only: another workload's rule never decides TLS."""
    from .schema import _by_host, rule_for  # schema imports this module's field rules

    rules = snapshot.resources_of("DestinationRule")
    if not rules:
        return None
    if workload is not None:
        return rule_for(rules, host, workload)
    from .spec import spec_of

    return next((r for r in _by_host(rules).get(host, ()) if not spec_of(r).selector), None)


def _every_tls(rule: Resource, port: int | None) -> list[tuple[str | None, UpstreamTls]]:
    """(subset, tls) for the host and each subset of ``rule`` on ``port``, where a tls applies."""
    out = [(None, tls_for(rule, None, port))]
    out += [(s["name"], tls_for(rule, s["name"], port)) for s in (rule.spec or {}).get("subsets") or ()]
    return [(subset, t) for subset, t in out if t is not None]


# --- cross-resource checks (validation) -------------------------------------------------------------------


def _mesh_plaintext_problem(resources: Sequence[Resource], host: str, namespace: str, port: int | None) -> str | None:
    from ..peer_authentication.schema import effective_mtls

    mode = effective_mtls(resources, {"app": host}, namespace, port or 0)
    if mode in ("PERMISSIVE", "DISABLE"):
        return None
    return (f"DISABLE sends plaintext, and {host!r} accepts mTLS only (its PeerAuthentication mode is {mode}): every "
            "request would fail in the handshake; give the service a PeerAuthentication with mode PERMISSIVE (or "
            "DISABLE) first, or leave tls out (the mesh's mTLS)")


def set_problems(resources: Sequence[Resource]) -> list[FieldError]:
    """What a DestinationRule's ``tls`` cannot mean given the other resources: SIMPLE/MUTUAL towards a mesh
    service, ISTIO_MUTUAL towards a ServiceEntry host, TLS originated on a port where the app speaks TLS itself,
    DISABLE towards a mesh service whose PeerAuthentication is STRICT."""
    from ..service_entry.schema import entries_by_host
    from ..service_entry.spec import spec_of as entry_spec

    entries = entries_by_host(resources)
    errors: list[FieldError] = []
    seen: set[tuple[str, str, str]] = set()

    def add(rule: Resource, where: str, message: str) -> None:
        if (str(rule.key), where, message) not in seen:
            seen.add((str(rule.key), where, message))
            errors.append(FieldError(str(rule.key), None, f"{where}.mode", message))

    for rule in sorted((r for r in resources if r.kind == "DestinationRule"), key=lambda r: (r.namespace, r.name)):
        host = (rule.spec or {}).get("host")
        if not isinstance(host, str):
            continue
        entry = entries.get(host)
        if entry is None:
            if "." in host:
                continue  # neither a service nor a declared host: the ServiceEntry checks say so
            for _subset, t in _every_tls(rule, None) + [p for n in _port_numbers(rule) for p in _every_tls(rule, n)]:
                if t.mode in ORIGINATING:
                    add(rule, t.where, f"{t.mode} towards mesh service {host!r} is not supported: {MESH_ORIGINATION}")
                elif t.mode == DISABLE:
                    port = _port_of(t.where, rule)
                    problem = _mesh_plaintext_problem(resources, host, rule.namespace, port)
                    if problem is not None:
                        add(rule, t.where, problem)
            continue
        for p in entry_spec(entry).ports:
            for _subset, t in _every_tls(rule, p.number):
                if t.mode == ISTIO_MUTUAL:
                    add(rule, t.where, f"ISTIO_MUTUAL towards ServiceEntry host {host!r} is not supported: "
                                       f"{OUTSIDE_ISTIO_MUTUAL}")
                elif t.mode in ORIGINATING and p.family == "tls":
                    add(rule, t.where, f"{t.mode} on port {p.number} of {host!r}: "
                                       + TLS_IN_TLS.format(protocol=p.protocol, port=p.number))
    return errors


def _port_numbers(rule: Resource) -> list[int]:
    spec = rule.spec or {}
    policies = [spec.get("trafficPolicy") or {}] + [(s.get("trafficPolicy") or {}) for s in spec.get("subsets") or ()]
    return sorted({e["port"]["number"] for p in policies for e in p.get("portLevelSettings") or ()})


def _port_of(where: str, rule: Resource) -> int | None:
    """The port a ``...portLevelSettings[i].tls`` path names (None for a level's own tls)."""
    if ".portLevelSettings[" not in where:
        return None
    node: Any = rule.spec
    for part in where.removeprefix("spec.").removesuffix(".tls").split("."):
        name, _, index = part.partition("[")
        node = node[name] if not index else node[name][int(index.rstrip("]"))]
    number: int = node["port"]["number"]
    return number


# --- Envoy (pure) -----------------------------------------------------------------------------------------


def cert_secret_name(certificate: str, key: str) -> str:
    return f"file-cert:{certificate}|{key}"


def ca_secret_name(ca: str | None, crl: str | None) -> str:
    return f"file-ca:{ca or SYSTEM_TRUST_STORE}|{crl or ''}"


def _ads_sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3))


def file_secrets(tls: UpstreamTls) -> list[secret_pb2.Secret]:
    """The SDS secrets ``tls`` names, each reading its files on the VM (Envoy reloads them when replaced)."""
    out = []
    if tls.mode == MUTUAL and tls.client_certificate and tls.private_key:
        out.append(secret_pb2.Secret(
            name=cert_secret_name(tls.client_certificate, tls.private_key),
            tls_certificate=common_pb2.TlsCertificate(certificate_chain=base_pb2.DataSource(filename=tls.client_certificate),
                                                      private_key=base_pb2.DataSource(filename=tls.private_key))))
    if not tls.insecure_skip_verify:
        validation = common_pb2.CertificateValidationContext()
        validation.trusted_ca.filename = tls.ca_certificates or SYSTEM_TRUST_STORE
        if tls.ca_crl:
            validation.crl.filename = tls.ca_crl
        out.append(secret_pb2.Secret(name=ca_secret_name(tls.ca_certificates, tls.ca_crl), validation_context=validation))
    return out


_SAN_TYPES = (common_pb2.SubjectAltNameMatcher.DNS, common_pb2.SubjectAltNameMatcher.URI,
              common_pb2.SubjectAltNameMatcher.EMAIL, common_pb2.SubjectAltNameMatcher.IP_ADDRESS)


def upstream_tls_context(tls: UpstreamTls, host: str, http2: bool = False) -> tls_pb2.UpstreamTlsContext:
    """The TLS a sidecar originates towards ``host`` (SIMPLE or MUTUAL): SNI, the server's checks, the client
    certificate; ALPN ``h2`` on an HTTP/2 port (the cluster speaks HTTP/2), none otherwise (HTTP/1.1)."""
    sni = tls.sni or host
    common = tls_pb2.CommonTlsContext(alpn_protocols=["h2"] if http2 else [])
    if tls.mode == MUTUAL and tls.client_certificate and tls.private_key:
        common.tls_certificate_sds_secret_configs.append(
            _ads_sds(cert_secret_name(tls.client_certificate, tls.private_key)))
    if not tls.insecure_skip_verify:
        checks = common_pb2.CertificateValidationContext()
        if tls.subject_alt_names:  # as Istio: any of the names, as any SAN type of the server's certificate
            checks.match_typed_subject_alt_names.extend(
                common_pb2.SubjectAltNameMatcher(san_type=t, matcher=string_pb2.StringMatcher(exact=san))
                for san in tls.subject_alt_names for t in _SAN_TYPES)
        else:
            checks.match_typed_subject_alt_names.append(common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=sni)))
        common.combined_validation_context.CopyFrom(tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=checks,
            validation_context_sds_secret_config=_ads_sds(ca_secret_name(tls.ca_certificates, tls.ca_crl))))
    return tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=sni)


def _add_secrets(resources: dict, secrets: list[secret_pb2.Secret]) -> None:
    from ...xds.generate.vocab import SECRET

    held = {s.name for s in resources[SECRET]}
    for s in secrets:
        if s.name not in held:
            held.add(s.name)
            resources[SECRET].append(s)
    resources[SECRET].sort(key=lambda s: s.name)


def originate(resources: dict, cluster: cluster_pb2.Cluster, rule: Resource | None, host: str, subset: str | None,
              port: int, http2: bool = False) -> None:
    """A ServiceEntry host's ``cluster`` (to ``port`` of the entry; ``subset``'s, or the host's): the TLS its rule
    says the sidecar originates (SIMPLE, MUTUAL), with the SDS secrets of its files added to ``resources``; plaintext
    otherwise (DISABLE, no rule, no tls). ISTIO_MUTUAL never gets here (validation refuses it)."""
    tls = tls_for(rule, subset, port)
    if tls is None or tls.mode not in ORIGINATING:
        cluster.ClearField("transport_socket")
        return
    cluster.transport_socket.CopyFrom(base_pb2.TransportSocket(
        name=TLS_SOCKET, typed_config=_pack(upstream_tls_context(tls, host, http2))))
    _add_secrets(resources, file_secrets(tls))


def _pack(message: Any) -> Any:
    from ...xds.generate.vocab import pack

    return pack(message)


def plaintext_problems(snapshot: Any, host: str, port: int | None) -> list[str]:
    """Instances of mesh service ``host`` that refuse plaintext (STRICT) on ``port``: a DISABLE rule towards them
    would fail every request, so the proxy's config is refused with this reason (it keeps its last good one)."""
    from ..peer_authentication.schema import effective_mtls

    policies = snapshot.resources_of("PeerAuthentication")
    strict = sorted(i.id for i in snapshot.catalog.instances_of(host)
                    if effective_mtls(policies, i.labels, i.namespace, i.port) == "STRICT")
    if not strict:
        return []
    return [f"DestinationRule tls mode DISABLE towards {host!r}{f' port {port}' if port else ''}: instance(s) "
            f"{', '.join(strict)} accept mTLS only (PeerAuthentication STRICT), so plaintext would fail every "
            "request; give them a PeerAuthentication with mode PERMISSIVE, or remove the DISABLE"]


def mesh_tls(snapshot: Any, node: str, cluster: cluster_pb2.Cluster, host: str, subset: str | None,
             port: int | None, workload: Workload | None = None) -> None:
    """A mesh service's ``cluster`` (``subset``'s, or the host's) as the calling ``workload`` reaches it (its
    DestinationRule, :func:`rule_of`):

    * tls mode DISABLE: plaintext to its sidecars (no default transport socket; remote datacenters behind mesh
      gateways stay mTLS, their gateways route by SNI). Raises :class:`~meshcore.errors.SnapshotInvalid` when an
      instance of ``host`` accepts mTLS only (see :func:`plaintext_problems`);
    * ISTIO_MUTUAL with ``subjectAltNames``: the server identities accepted are those SPIFFE IDs instead of the
      host's own (Istio's meaning: e.g. a service served from two federated trust domains), on every transport
      socket of the cluster.

    No-op for other modes and for ServiceEntry hosts (:func:`originate`)."""
    from ...errors import SnapshotInvalid

    if "." in host:
        return
    tls = tls_for(rule_of(snapshot, host, workload), subset, port)
    if tls is not None and tls.mode == ISTIO_MUTUAL and tls.subject_alt_names:
        _accept_only(cluster, tls.subject_alt_names)
        return
    if tls is None or tls.mode != DISABLE:
        return
    problems = plaintext_problems(snapshot, host, port)
    if problems:
        raise SnapshotInvalid(node, problems)
    # Only the default socket (the instances it reaches directly): endpoints behind a mesh gateway keep their
    # transport socket matches, as the gateway routes by the SNI of the mesh's mTLS.
    cluster.ClearField("transport_socket")
    _without_alpn(cluster)


def _accept_only(cluster: cluster_pb2.Cluster, spiffe_ids: Sequence[str]) -> None:
    """Every mTLS transport socket of ``cluster`` (the default one and those per gateway SNI) accepts exactly the
    servers whose URI SAN is one of ``spiffe_ids``."""
    from ...xds.generate.vocab import uri_san

    sockets = [cluster.transport_socket] if cluster.HasField("transport_socket") else []
    sockets += [m.transport_socket for m in cluster.transport_socket_matches]
    for socket in sockets:
        context = tls_pb2.UpstreamTlsContext()
        if not socket.typed_config.Unpack(context):
            continue
        sans = context.common_tls_context.combined_validation_context.default_validation_context
        del sans.match_typed_subject_alt_names[:]
        sans.match_typed_subject_alt_names.extend(uri_san(exact=sid) for sid in spiffe_ids)
        socket.typed_config.CopyFrom(_pack(context))


def _without_alpn(cluster: cluster_pb2.Cluster) -> None:
    """A mesh HTTP cluster picks HTTP/2 or HTTP/1.1 by ALPN (``auto_config``), which plaintext has not (Envoy refuses
    the cluster): HTTP/1.1, keeping the rest of its protocol options (timeouts, limits)."""
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

    from ...xds.generate.clusters import HTTP_PROTOCOL_OPTIONS

    if HTTP_PROTOCOL_OPTIONS not in cluster.typed_extension_protocol_options:
        return
    options = hpo_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(options)
    if not options.HasField("auto_config"):
        return
    http1 = options.auto_config.http_protocol_options
    options.explicit_http_config.http_protocol_options.CopyFrom(http1)  # replaces the auto_config (a oneof)
    cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(_pack(options))


__all__ = ["TLS", "MODES", "SYSTEM_TRUST_STORE", "DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL", "UpstreamTls", "parse_tls", "tls_for",
           "set_problems", "file_secrets", "upstream_tls_context", "originate", "mesh_tls",
           "plaintext_problems", "rule_of", "cert_secret_name", "ca_secret_name", "Workload"]
