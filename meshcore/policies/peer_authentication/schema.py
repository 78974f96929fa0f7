"""PeerAuthentication: which mTLS mode a workload's inbound side accepts (spelled like Istio's).

```yaml
apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {name: reviews-permissive, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}   # optional
  mtls: {mode: PERMISSIVE}                    # STRICT (default) | PERMISSIVE | DISABLE | UNSET
  portLevelMtls:                              # optional, needs a selector
    "9080": {mode: DISABLE}
```

Scope of a policy:

* in namespace :data:`ROOT_NAMESPACE` (``meshcore-system``) without a selector: **mesh-wide**;
* in any other namespace without a selector (or with an empty ``matchLabels``): every workload
  of **that namespace**;
* with a selector: the workloads of its namespace whose labels contain every ``matchLabels`` pair.

As in Istio, an omitted ``mtls.mode`` means ``UNSET`` (inherit from the next broader policy), and
``portLevelMtls`` is only accepted together with a selector. Unlike Istio, the mesh default with no
policy at all is ``STRICT``: meshcore is strict unless a policy says otherwise.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from meshcore.resources._kindspec import KindSpec
from meshcore.resources.kinds._fields import ROOT_NAMESPACE
from meshcore.resources.model import Resource
from meshcore.resources.schema import Context, Enum, LabelSelector, MapOf, Obj, Path, PortKey

from .spec import DEFAULT_MODE, DISABLE, MODES, PERMISSIVE, STRICT, UNSET, PeerAuthenticationSpec, parse, spec_of

API_VERSION = "security.mesh.io/v1beta1"
KIND_NAME = "PeerAuthentication"


def _port_level_needs_selector(spec: dict, path: Path, ctx: Context) -> None:
    if spec.get("portLevelMtls") and not (spec.get("selector") or {}).get("matchLabels"):
        ctx.add(
            path.field("portLevelMtls"),
            "requires spec.selector.matchLabels (port-level settings apply to selected workloads only)",
        )


MTLS = Obj({"mode": Enum(*MODES)})

SPEC = Obj(
    {
        "selector": LabelSelector(),
        "mtls": MTLS,
        "portLevelMtls": MapOf(MTLS, key=PortKey()),
    },
    rules=[_port_level_needs_selector],
)

KIND = KindSpec.from_schema(
    API_VERSION,
    KIND_NAME,
    SPEC,
    parse=parse,
    summary="mTLS mode (STRICT, PERMISSIVE, DISABLE) accepted by workloads, mesh-wide, per namespace or per workload",
)


# --- resolution (pure) --------------------------------------------------------------------


def _first(policies: list[tuple[Resource, PeerAuthenticationSpec]]) -> PeerAuthenticationSpec | None:
    return min(policies, key=lambda p: p[0].name)[1] if policies else None


def effective_mtls(resources: Sequence[Resource], labels: Mapping[str, str], namespace: str, port: int) -> str:
    """The mTLS mode (``STRICT``, ``PERMISSIVE`` or ``DISABLE``) for inbound traffic to ``port`` of a workload.

    Precedence, narrowest wins, as in Istio: port-level of the workload policy > workload policy >
    namespace policy > mesh-wide policy > ``STRICT``. ``UNSET`` at any level inherits from the
    next broader one. ``resources`` may contain other kinds; they are ignored. ``labels`` and
    ``namespace`` are the workload's (``ServiceInstance.labels``/``.namespace``); ``port`` is the
    workload's own port (``ServiceInstance.port``), which is what ``portLevelMtls`` keys name.

    When several policies compete at the same level (two selector policies matching the workload,
    two namespace-wide policies, two mesh-wide ones), the one whose name sorts first wins.
    Istio picks the oldest; meshcore resources carry no creation time, so the lexical order is
    the deterministic stand-in.
    """
    pas = [(r, spec_of(r)) for r in resources if r.kind == KIND_NAME]
    mesh = _first([(r, s) for r, s in pas if r.namespace == ROOT_NAMESPACE and not s.match_labels])
    ns = _first([(r, s) for r, s in pas if r.namespace == namespace and not s.match_labels])
    workload = _first([(r, s) for r, s in pas if r.namespace == namespace and s.selects(labels)])

    mode = DEFAULT_MODE
    for level in (mesh, ns, workload):
        if level is not None and level.mode != UNSET:
            mode = level.mode
    if workload is not None:
        m = workload.port_mode(port)
        if m is not None and m != UNSET:
            mode = m
    return mode


__all__ = [
    "API_VERSION",
    "KIND",
    "KIND_NAME",
    "ROOT_NAMESPACE",
    "STRICT",
    "PERMISSIVE",
    "DISABLE",
    "UNSET",
    "MODES",
    "effective_mtls",
]
