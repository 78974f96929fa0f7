"""Synthetic ADS clients that behave like Envoy, many streams in one asyncio process (``grpc.aio``).

Each client presents a real node SVID (mTLS), subscribes CDS and LDS (wildcard), then EDS and RDS for
exactly the names the clusters and listeners reference, and ACKs every response with its version and
nonce, as Envoy does (the EDS/RDS subscription goes out before the CDS/LDS ACK). Told to, it NACKs the
next response of a type (``error_detail`` set, the last accepted version kept). It speaks state of the
world or delta xDS; ``auto`` tries delta and falls back to SotW when the server answers UNIMPLEMENTED.
After a broken stream it reconnects with jittered backoff (Envoy's 0.5-1 s base) and, on delta, sends
the versions it holds as ``initial_resource_versions``. A delta server owes no response to a reconnect
whose versions are all current (nothing differs), so such a stream is never timed out for silence, as
Envoy never does; whether the control plane counts it as synced is asked of the control plane
(:attr:`SyntheticProxy.stream_started_at` tells when the current stream began).

Everything it receives is kept (serialized, per type and name) so scenarios can ask whether a change
arrived (:meth:`SyntheticProxy.watch`) and the benchmark can measure config bytes per proxy.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

_P = "type.googleapis.com/"
CDS = _P + "envoy.config.cluster.v3.Cluster"
EDS = _P + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = _P + "envoy.config.listener.v3.Listener"
RDS = _P + "envoy.config.route.v3.RouteConfiguration"
TYPES = (CDS, EDS, LDS, RDS)
SHORT = {CDS: "cds", EDS: "eds", LDS: "lds", RDS: "rds"}
MESSAGE = {CDS: cluster_pb2.Cluster, EDS: endpoint_pb2.ClusterLoadAssignment, LDS: listener_pb2.Listener,
           RDS: route_pb2.RouteConfiguration}
FIRST_RESPONSE_S = 10.0  # a new stream owed a response that answers nothing for this long is dropped and retried
HCM_URL = _P + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def resource_name(type_url: str, raw: bytes) -> str:
    msg = MESSAGE[type_url].FromString(raw)
    return msg.cluster_name if type_url == EDS else msg.name  # type: ignore[attr-defined]


def eds_names(clusters: dict[str, bytes]) -> frozenset[str]:
    out = set()
    for name, raw in clusters.items():
        c = cluster_pb2.Cluster.FromString(raw)
        if c.type == cluster_pb2.Cluster.EDS:
            out.add(c.eds_cluster_config.service_name or name)
    return frozenset(out)


def rds_names(listeners: dict[str, bytes]) -> frozenset[str]:
    out = set()
    for raw in listeners.values():
        lst = listener_pb2.Listener.FromString(raw)
        for chain in [*lst.filter_chains, *([lst.default_filter_chain] if lst.HasField("default_filter_chain") else [])]:
            for f in chain.filters:
                if f.typed_config.type_url == HCM_URL:
                    hcm = hcm_pb2.HttpConnectionManager.FromString(f.typed_config.value)
                    if hcm.HasField("rds"):
                        out.add(hcm.rds.route_config_name)
    return frozenset(out)


@dataclass
class TypeState:
    resources: dict[str, bytes] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # delta: per-resource versions
    version: str = ""  # last accepted (SotW version_info, or delta system_version_info)
    nonce: str = ""  # last received
    names: frozenset[str] = frozenset()  # subscribed names (EDS/RDS)
    subscribed: bool = False


@dataclass
class Stats:
    responses: int = 0
    acks: int = 0
    nacks: int = 0
    streams: int = 0
    streams_answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class SyntheticProxy:
    def __init__(self, node: str, target: str, *, key_pem: str, chain_pem: str, bundle_pem: str,
                 secrets_dir: str, xds: str = "auto"):
        self.node = node
        self.target = target
        self.creds = grpc.ssl_channel_credentials(bundle_pem.encode(), key_pem.encode(), chain_pem.encode())
        self.secrets_dir = secrets_dir
        self.mode = xds  # "sotw", "delta" or "auto" (resolved to one of the two on the first stream)
        self.types: dict[str, TypeState] = {t: TypeState() for t in TYPES}
        self.stats = Stats()
        self.nack_next: set[str] = set()
        self.last_error = ""
        self.last_ack = 0.0  # monotonic time of the last ACK sent
        self.synced_at = 0.0  # when all four types were last ACKed after a (re)connect
        self.stream_started_at = 0.0  # when the current stream's first requests were written (0: none open)
        self._owed = True  # the current stream must be answered (not a delta reconnect holding every version)
        self._watches: list[tuple[Callable[[SyntheticProxy], bool], asyncio.Future]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self._acked_types: set[str] = set()

    # --- what scenarios use ---------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.gather(self._task, return_exceptions=True), 3.0)
            except asyncio.TimeoutError:
                self._task.cancel()

    def watch(self, predicate: Callable[[SyntheticProxy], bool]) -> asyncio.Future:
        """A future resolved with the monotonic time of the first ACK after which ``predicate(self)`` holds."""
        fut = asyncio.get_running_loop().create_future()
        self._watches.append((predicate, fut))
        return fut

    def message(self, type_url: str, name: str):
        raw = self.types[type_url].resources.get(name)
        return None if raw is None else MESSAGE[type_url].FromString(raw)

    def config_bytes(self) -> int:
        return sum(len(v) for t in self.types.values() for v in t.resources.values())

    @property
    def synced(self) -> bool:
        return self.synced_at > 0

    # --- the stream -----------------------------------------------------------------------------
    def _node(self) -> base_pb2.Node:
        md = struct_pb2.Struct()
        md.update({"secrets_dir": self.secrets_dir, "admin": "", "metrics": ""})
        return base_pb2.Node(id=self.node, cluster=self.node, user_agent_name="meshcore-bench-synthetic", metadata=md)

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            channel = grpc.aio.secure_channel(self.target, self.creds, options=[
                ("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)])
            started = time.monotonic()
            code: grpc.StatusCode | None = None
            try:
                delta = self.mode in ("delta", "auto")
                await (self._delta(channel) if delta else self._sotw(channel))
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                self.last_error = f"{code.name}: {exc.details()}"
            except asyncio.InvalidStateError:  # a write after the server ended the RPC: ask how it ended
                code = await self._call.code() if self._call is not None else grpc.StatusCode.UNKNOWN
            except asyncio.CancelledError:
                if self._stop.is_set():
                    return
                code = grpc.StatusCode.CANCELLED
            except Exception as exc:  # noqa: BLE001 - like Envoy, any broken stream is retried
                code = grpc.StatusCode.UNKNOWN
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self._call = None
                self.stream_started_at = 0.0
                try:  # grpc.aio's close can hang on a channel whose server went away: do not wait forever
                    await asyncio.wait_for(channel.close(), 2.0)
                except asyncio.TimeoutError:
                    self.stats.errors["CLOSE_TIMEOUT"] = self.stats.errors.get("CLOSE_TIMEOUT", 0) + 1
            if code is not None:
                if self.mode == "auto" and code == grpc.StatusCode.UNIMPLEMENTED:
                    self.mode = "sotw"
                    continue
                self.stats.errors[code.name] = self.stats.errors.get(code.name, 0) + 1
            if self._stop.is_set():
                return
            self.synced_at = 0.0
            if time.monotonic() - started > 5:
                backoff = 0.5
            await asyncio.sleep(backoff * random.uniform(1.0, 2.0))
            backoff = min(backoff * 2, 2.0)  # Envoy starts at 0.5 s; capped low so a storm measures the server

    async def _read(self, call):
        """The next response; the first of a stream that is owed one is awaited at most FIRST_RESPONSE_S."""
        if self.stats.streams_answered == self.stats.streams or not self._owed:
            resp = await call.read()
        else:
            resp = await asyncio.wait_for(call.read(), FIRST_RESPONSE_S)
        self.stats.streams_answered = self.stats.streams
        return resp

    def _begin_stream(self) -> None:
        self.stats.streams += 1
        self._owed = True
        self._acked_types = set()
        for t in TYPES:  # nonces belong to a stream: one from the last stream is stale and would be ignored
            self.types[t].nonce = ""
        for t in (EDS, RDS):
            self.types[t].subscribed = False

    def _accepted(self, type_url: str) -> None:
        now = self.last_ack = time.monotonic()
        self.stats.acks += 1
        self._acked_types.add(type_url)
        if not self.synced_at and self._acked_types >= set(TYPES):
            self.synced_at = now
        if self._watches:
            keep = []
            for pred, fut in self._watches:
                if fut.done():
                    continue
                try:
                    hit = pred(self)
                except Exception as exc:  # noqa: BLE001 - a bad predicate fails its scenario, not the stream
                    fut.set_exception(exc)
                    continue
                if hit:
                    fut.set_result(now)
                else:
                    keep.append((pred, fut))
            self._watches = keep

    def _wanted(self, type_url: str) -> frozenset[str] | None:
        """Names to subscribe for EDS/RDS after ``type_url`` changed, or None when unchanged."""
        if type_url == CDS:
            names, dep = eds_names(self.types[CDS].resources), EDS
        elif type_url == LDS:
            names, dep = rds_names(self.types[LDS].resources), RDS
        else:
            return None
        st = self.types[dep]
        if st.subscribed and names == st.names:
            return None
        return names

    # SotW ---------------------------------------------------------------------------------------
    async def _sotw(self, channel: grpc.aio.Channel) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = self._call = stub.StreamAggregatedResources()
        self._begin_stream()
        node = self._node()
        for t in (CDS, LDS):
            await asyncio.wait_for(call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=t, version_info="")),
                                   FIRST_RESPONSE_S)
            node = None
        self.stream_started_at = time.monotonic()
        while True:
            resp = await self._read(call)
            if resp is grpc.aio.EOF:
                return
            await self._sotw_response(call, resp)

    async def _sotw_response(self, call, resp: discovery_pb2.DiscoveryResponse) -> None:
        t = resp.type_url
        if t not in self.types:
            return
        self.stats.responses += 1
        st = self.types[t]
        st.nonce = resp.nonce
        if t in self.nack_next:
            self.nack_next.discard(t)
            self.stats.nacks += 1
            await call.write(discovery_pb2.DiscoveryRequest(
                type_url=t, version_info=st.version, response_nonce=resp.nonce, resource_names=sorted(st.names),
                error_detail=status_pb2.Status(code=3, message="meshcore-bench: NACK on request")))
            return
        st.resources = {resource_name(t, a.value): a.value for a in resp.resources}
        st.version = resp.version_info
        wanted = self._wanted(t)
        if wanted is not None:
            dep = EDS if t == CDS else RDS
            ds = self.types[dep]
            ds.names, ds.subscribed = wanted, True
            await call.write(discovery_pb2.DiscoveryRequest(type_url=dep, version_info=ds.version,
                                                            response_nonce=ds.nonce, resource_names=sorted(wanted)))
        await call.write(discovery_pb2.DiscoveryRequest(type_url=t, version_info=resp.version_info,
                                                        response_nonce=resp.nonce, resource_names=sorted(st.names)))
        self._accepted(t)

    # delta --------------------------------------------------------------------------------------
    async def _delta(self, channel: grpc.aio.Channel) -> None:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        call = self._call = stub.DeltaAggregatedResources()
        self._begin_stream()
        node = self._node()
        # A reconnect that holds versions of every type may hear nothing (nothing differs): not owed an answer.
        self._owed = not (self.types[CDS].versions or self.types[LDS].versions)
        for t in (CDS, LDS):
            st = self.types[t]
            await asyncio.wait_for(call.write(discovery_pb2.DeltaDiscoveryRequest(
                node=node, type_url=t, initial_resource_versions=st.versions)), FIRST_RESPONSE_S)
            node = None
        for t in (EDS, RDS):  # like Envoy, a reconnect subscribes again to the names it held, with their versions
            st = self.types[t]
            if st.names:
                st.subscribed = True
                await call.write(discovery_pb2.DeltaDiscoveryRequest(
                    type_url=t, resource_names_subscribe=sorted(st.names),
                    initial_resource_versions={n: v for n, v in st.versions.items() if n in st.names}))
        self.stream_started_at = time.monotonic()
        while True:
            resp = await self._read(call)
            if resp is grpc.aio.EOF:
                return
            if self.mode == "auto":
                self.mode = "delta"
            await self._delta_response(call, resp)

    async def _delta_response(self, call, resp: discovery_pb2.DeltaDiscoveryResponse) -> None:
        t = resp.type_url
        if t not in self.types:
            return
        self.stats.responses += 1
        st = self.types[t]
        st.nonce = resp.nonce
        if t in self.nack_next:
            self.nack_next.discard(t)
            self.stats.nacks += 1
            await call.write(discovery_pb2.DeltaDiscoveryRequest(
                type_url=t, response_nonce=resp.nonce,
                error_detail=status_pb2.Status(code=3, message="meshcore-bench: NACK on request")))
            return
        for r in resp.resources:
            name = r.name or resource_name(t, r.resource.value)
            st.resources[name] = r.resource.value
            st.versions[name] = r.version
        for name in resp.removed_resources:
            st.resources.pop(name, None)
            st.versions.pop(name, None)
        st.version = resp.system_version_info or st.version
        wanted = self._wanted(t)
        if wanted is not None:
            dep = EDS if t == CDS else RDS
            ds = self.types[dep]
            first = not ds.subscribed
            add, drop = sorted(wanted - ds.names), sorted(ds.names - wanted)
            ds.names, ds.subscribed = wanted, True
            await call.write(discovery_pb2.DeltaDiscoveryRequest(
                type_url=dep, resource_names_subscribe=add if not first else sorted(wanted),
                resource_names_unsubscribe=drop if not first else [],
                initial_resource_versions={n: v for n, v in ds.versions.items() if n in wanted} if first else {}))
            for n in drop:
                ds.resources.pop(n, None)
                ds.versions.pop(n, None)
        await call.write(discovery_pb2.DeltaDiscoveryRequest(type_url=t, response_nonce=resp.nonce))
        self._accepted(t)
