"""Benchmark: issuing X509-SVIDs, from the bare `cryptography` floor to a 1,000-node join storm.

Scenarios, each reported as a rate and as a ratio to the floor measured in the same run:

* ``floor``: a bare `cryptography` loop doing the least a CA must do per SVID (parse the CSR,
  verify its signature, build the leaf with the X509-SVID extensions, sign it, PEM-encode it),
  in signatures per CPU-second of this process.
* ``in_process_first_1000`` / ``in_process_1000_to_5000``: :meth:`CertificateAuthority.sign_csr` on a
  fresh CA (real state directory, real bookkeeping), over the first 1,000 certificates and the
  4,000 after them: a rate that falls as the number issued grows is bookkeeping that grows.
* ``agent_api_1_client`` / ``agent_api_8_clients``: ``POST /v1/agent/sign`` through the real agent
  API of a real control plane process (``python -m meshcore.controlplane``) over mTLS, with 1 and 8
  concurrent :class:`~meshcore.agent.client.AgentClient` s holding node certificates. The ratio uses
  the control plane's own CPU (from /proc), so client work on the same machine does not count.
* ``join_storm``: N nodes (default 1,000) joining at once the way agents join: a one-time token
  each, a key and CSR made on the "VM", ``POST /v1/agent/join`` with 16 concurrent joiners.

Keys and CSRs are made before the clock starts (that is the VM's work, not the control plane's).
The floor is measured again right before and right after each agent API and join scenario (:data:`FLOOR_AROUND`
signatures each), and that scenario's ratio is to the mean of those two: on a shared machine the floor itself
moves by a third between minutes, more than the changes this benchmark is meant to show (``floor_per_cpu_s``
in each scenario's JSON; the ``floor`` row is the first measurement). Column ``us/sig``: the control plane's
CPU per signature (or join), in microseconds.
Column ``net``: the ratio with the control plane's idle CPU (measured for 2 s before the scenario,
times the scenario's duration) taken off; on a loaded machine a slow run otherwise charges the
control plane's own loops to signing.
Prints a table and writes ``test-artifacts/bench/signing.json``.

``--layers`` also runs the 1-client scenario against a control plane whose request path is timed layer
by layer (thread CPU around the HTTP parser, the handler, ``sign_csr`` and its parts) and prints where one
signature's CPU goes (the wrappers cost a few µs each, so that run's rate is not compared with the others).

Run: python -m tests.benchmarks.bench_signing [--quick] [--join-nodes 1000] [--api-seconds 8] [--layers]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcore import naming
from meshcore.agent.client import AgentClient
from meshcore.ca import CertificateAuthority, JoinTokenStore, generate_kek_file, key_to_pem, make_csr, new_private_key
from meshcore.controlplane._http import free_port
from meshcore.errors import MeshError

TD = naming.DEFAULT_TRUST_DOMAIN
ARTIFACT = Path("test-artifacts/bench/signing.json")
CLK_TCK = os.sysconf("SC_CLK_TCK")
JOIN_TIMEOUT = 30.0  # seconds a joining agent waits for its answer
FLOOR_AROUND = 400  # floor signatures right before and after each agent API and join scenario


def _csrs(spiffe_ids: list[str]) -> list[str]:
    return [make_csr(new_private_key(), sid) for sid in spiffe_ids]


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else 0.0


def _proc_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _net(count: int, cpu: float, idle_cores: float, wall: float) -> dict:
    """The rate per CPU-second of the work itself: the control plane's idle CPU over the run taken off."""
    net = max(cpu - idle_cores * wall, 1e-9)
    return {"cp_idle_cores": idle_cores, "per_cpu_s_net": count / net}


# --- the floor ---------------------------------------------------------------------------------

def floor(n: int) -> dict:
    """Parse, verify, build and sign ``n`` leaves with `cryptography` alone."""
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "floor CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    aki = x509.AuthorityKeyIdentifier(ski.digest, None, None)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshcore")])
    pems = [c.encode() for c in _csrs([naming.workload_spiffe_id(TD, "default", f"svc{i}") for i in range(n)])]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for pem in pems:
        csr = x509.load_pem_x509_csr(pem)
        assert csr.is_signature_valid
        uri = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)[0]
        public_key = csr.public_key()
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(hours=24))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
            .add_extension(aki, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert.public_bytes(serialization.Encoding.PEM)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {"name": "floor", "count": n, "per_s": n / wall, "per_cpu_s": n / cpu}


# --- in process --------------------------------------------------------------------------------

def in_process(total: int, first: int, tmp: Path) -> list[dict]:
    kek = generate_kek_file(tmp / "inproc.kek")
    ca = CertificateAuthority.open(tmp / "inproc-ca", trust_domain=TD, kek=kek)
    ids = [naming.workload_spiffe_id(TD, "default", f"svc{i % 500}") for i in range(total)]
    pems = _csrs(ids)
    marks: list[tuple[float, float]] = []  # (wall, cpu) after each certificate
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i, (pem, sid) in enumerate(zip(pems, ids)):
        ca.sign_csr(pem, spiffe_id=sid, node=f"vm{i % 1000}")
        marks.append((time.perf_counter() - t0, time.process_time() - cpu0))
    out = []
    windows = [("in_process_first_%d" % first, 0, first), ("in_process_%d_to_%d" % (first, total), first, total)]
    for name, lo, hi in windows:
        if hi <= lo:
            continue
        w0, c0 = marks[lo - 1] if lo else (0.0, 0.0)
        w1, c1 = marks[hi - 1]
        out.append({"name": name, "count": hi - lo, "per_s": (hi - lo) / (w1 - w0), "per_cpu_s": (hi - lo) / (c1 - c0)})
    # the last 10% against the first 10%: 1.0 is flat
    tenth = max(1, total // 10)
    head = tenth / marks[tenth - 1][0]
    tail = tenth / (marks[-1][0] - marks[-tenth - 1][0])
    out[-1]["tail_vs_head"] = tail / head
    return out


# --- through the agent API ---------------------------------------------------------------------

# --- where one signature goes (--layers) ---------------------------------------------------------

LAYERS_FILE = "layers.json"
LAYERS = (  # outermost first
    "request (all)", "http: parsing (httptools, callbacks)", "http: recv and TLS decrypt",
    "http: answer (JSON, TLS encrypt, send)", "dispatch (handler + routing)", "handler: AgentApi.sign",
    "handler: body, peer node, refusal check", "handler: node_certificate_refusal", "handler: catalog policy",
    "handler: answer", "ca: sign_csr", "ca: parse + verify CSR", "ca: build + sign leaf, PEM", "ca: journal append",
)
JOIN_LAYERS = (  # the join storm's run (a control plane of its own): per join
    "tls: handshake", "request (all)", "handler: AgentApi.join", "join: token consume", "ca: sign_csr",
    "ca: parse + verify CSR", "ca: build + sign leaf, PEM", "ca: journal append", "http: answer (JSON, TLS encrypt, send)",
)


def _serve_layered(cp_args: list[str]) -> None:
    """Run the control plane with thread-CPU accumulators around the layers of a sign request, and write
    them as ``{layer: [calls, cpu_seconds]}`` to ``<state-dir>/layers.json`` when it stops."""
    import ssl

    from meshcore.ca import _issued, authority, tokens
    from meshcore.controlplane import _http, agent_api, daemon

    acc: dict[str, list[float]] = {label: [0, 0.0] for label in (*LAYERS, *JOIN_LAYERS)}

    def wrap(owner: object, name: str, label: str, static: bool = False) -> None:
        inner = getattr(owner, name)

        def timed(*a, **k):
            t = time.thread_time()
            try:
                return inner(*a, **k)
            finally:
                entry = acc[label]
                entry[0] += 1
                entry[1] += time.thread_time() - t
        setattr(owner, name, staticmethod(timed) if static else timed)

    wrap(_http._Connection, "_one_request", "request (all)")
    wrap(_http._Connection, "_feed", "http: parsing (httptools, callbacks)")
    wrap(ssl.SSLSocket, "recv", "http: recv and TLS decrypt")
    wrap(_http._Connection, "_send", "http: answer (JSON, TLS encrypt, send)")
    wrap(_http.Router, "dispatch", "dispatch (handler + routing)")
    wrap(agent_api.AgentApi, "sign", "handler: AgentApi.sign")
    wrap(agent_api.AgentApi, "_node_and_csr", "handler: body, peer node, refusal check")
    wrap(authority.CertificateAuthority, "node_certificate_refusal", "handler: node_certificate_refusal")
    wrap(agent_api, "check_workload_request", "handler: catalog policy")
    wrap(agent_api.AgentApi, "_issued", "handler: answer")
    wrap(authority.CertificateAuthority, "sign_csr", "ca: sign_csr")
    wrap(authority.CertificateAuthority, "_verified_csr", "ca: parse + verify CSR")
    wrap(authority.CertificateAuthority, "_build_leaf", "ca: build + sign leaf, PEM", static=True)
    wrap(_issued.IssuedJournal, "append", "ca: journal append")
    wrap(ssl.SSLSocket, "do_handshake", "tls: handshake")
    wrap(agent_api.AgentApi, "join", "handler: AgentApi.join")
    wrap(tokens.JoinTokenStore, "consume", "join: token consume")
    wrap(tokens.SharedJoinTokenStore, "consume", "join: token consume")
    state = Path(cp_args[cp_args.index("--state-dir") + 1])
    try:
        daemon.main(cp_args)
    finally:
        (state / LAYERS_FILE).write_text(json.dumps(acc))


def print_layers(layers: dict[str, list[float]], per: str = "handler: AgentApi.sign", what: str = "signature",
                 labels: tuple[str, ...] = LAYERS) -> None:
    count = layers.get(per, [0, 0.0])[0] or 1
    print(f"where one agent API {what} goes ({count} {what}s, thread CPU per {what}):")
    for label in labels:
        print(f"  {label:<46} {layers.get(label, [0, 0.0])[1] / count * 1e6:8.1f} us")


class ControlPlaneProcess:
    """A real control plane (``python -m meshcore.controlplane``) on free loopback ports."""

    def __init__(self, base: Path, sign_nodes: int, layered: bool = False):
        self.base = base
        self.catalog = base / "catalog"
        for n in range(sign_nodes):
            d = self.catalog / f"vm{n}"
            d.mkdir(parents=True)
            (d / "node.json").write_text(json.dumps({"node_name": f"vm{n}", "advertise_addr": f"10.1.0.{n + 1}"}))
            svc = {"name": f"svc{n}", "id": f"svc{n}-1", "port": 8080,
                   "connect": {"sidecar_service": {"port": 21000}}}
            (d / "svc.json").write_text(json.dumps({"service": svc}))
        self.state = base / "state"
        self.state.mkdir()
        self.kek_file = base / "kek"
        self.kek = generate_kek_file(self.kek_file)
        self.api = f"127.0.0.1:{free_port()}"
        entry = ["-m", "tests.benchmarks.bench_signing", "--serve-layered"] if layered else ["-m", "meshcore.controlplane"]
        args = [sys.executable, *entry, "--state-dir", str(self.state),
                "--catalog", f"files:{self.catalog}", "--xds-bind", f"127.0.0.1:{free_port()}",
                "--api-bind", self.api, "--http-bind", f"127.0.0.1:{free_port()}", "--kek-file", str(self.kek_file),
                "--log-level", "warning", "--collect-interval", "1h"]
        self.log = open(base / "controlplane.log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not (self.state / "controlplane.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"control plane did not start: {(base / 'controlplane.log').read_text()[-2000:]}")
            time.sleep(0.05)
        self.ca_file = self.state / "ca" / "bundle.pem"
        self.url = f"https://{self.api}"
        self.tokens = JoinTokenStore(self.state / "join-tokens.sealed", self.kek)

    def cpu(self) -> float:
        return _proc_cpu(self.proc.pid)

    def idle_cores(self, seconds: float = 2.0) -> float:
        """What the control plane spends doing nothing asked of it (its own loops), in cores."""
        c0, t0 = self.cpu(), time.perf_counter()
        time.sleep(seconds)
        return (self.cpu() - c0) / (time.perf_counter() - t0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _node_client(cp: ControlPlaneProcess, node: str, where: Path) -> AgentClient:
    key = new_private_key()
    issued = AgentClient(cp.url, cp.ca_file).join(node, cp.tokens.create(node),
                                                  make_csr(key, naming.node_spiffe_id(TD, node)))
    cert, keyf = where / f"{node}.crt", where / f"{node}.key"
    cert.write_text(issued.chain)
    keyf.write_text(key_to_pem(key))
    return AgentClient(cp.url, cp.ca_file, cert_file=cert, key_file=keyf)


def agent_api(cp: ControlPlaneProcess, clients: int, seconds: float, where: Path) -> dict:
    """``clients`` threads, each signing its node's service identity for ``seconds``."""
    nodes = [_node_client(cp, f"vm{n}", where) for n in range(clients)]
    per_client = max(20, int(seconds * 1500 / clients))  # more CSRs than any client can use in time
    ids = [naming.workload_spiffe_id(TD, "default", f"svc{n}") for n in range(clients)]
    csrs = [_csrs([ids[n]] * per_client) for n in range(clients)]
    for n, client in enumerate(nodes):
        client.sign(csrs[n][0])  # warm up (first connection, catalog read)
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = float("inf")  # set once the idle measurement is done (it sleeps)

    def run(n: int) -> int:
        done = 0
        for pem in csrs[n][1:]:
            if time.perf_counter() >= stop_at:
                break
            t = time.perf_counter()
            nodes[n].sign(pem)
            with lock:
                latencies.append(time.perf_counter() - t)
            done += 1
        return done

    idle = cp.idle_cores()
    cpu0, t0 = cp.cpu(), time.perf_counter()
    stop_at = t0 + seconds
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(run, range(clients)))
    wall, cpu = time.perf_counter() - t0, cp.cpu() - cpu0
    for client in nodes:
        close = getattr(client, "close", None)
        if close:
            close()
    return {"name": f"agent_api_{clients}_client{'s' if clients > 1 else ''}", "count": total,
            "per_s": total / wall, "per_cpu_s": total / cpu if cpu else float("inf"),
            **_net(total, cpu, idle, wall),
            "p50_ms": _pct(latencies, 0.5) * 1000, "p99_ms": _pct(latencies, 0.99) * 1000}


def join_storm(cp: ControlPlaneProcess, nodes: int, concurrency: int) -> dict:
    names = [f"storm{n}" for n in range(nodes)]
    t = time.perf_counter()
    tokens = [cp.tokens.create(name) for name in names]
    token_s = time.perf_counter() - t
    csrs = _csrs([naming.node_spiffe_id(TD, name) for name in names])
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def join(i: int) -> None:
        client = AgentClient(cp.url, cp.ca_file, timeout=JOIN_TIMEOUT)
        t = time.perf_counter()
        try:
            client.join(names[i], tokens[i], csrs[i])
        except MeshError as exc:  # an agent would retry; the benchmark counts it
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")
            return
        with lock:
            latencies.append(time.perf_counter() - t)

    idle = cp.idle_cores()
    cpu0, t0 = cp.cpu(), time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(join, range(nodes)))
    wall, cpu = time.perf_counter() - t0, cp.cpu() - cpu0
    ok = len(latencies)
    if failures:
        print(f"join storm: {len(failures)} of {nodes} joins failed, first: {failures[0]}", flush=True)
    return {"name": "join_storm", "count": ok, "failed": len(failures), "concurrency": concurrency,
            "per_s": ok / wall, "per_cpu_s": ok / cpu if cpu else float("inf"), "total_s": wall,
            **_net(ok, cpu, idle, wall),
            "p50_ms": _pct(latencies, 0.5) * 1000, "p99_ms": _pct(latencies, 0.99) * 1000,
            "token_create_s": token_s}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-layered"]:  # the control plane of --layers (started by ControlPlaneProcess)
        _serve_layered(argv[1:])
        return {}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller counts (about a minute)")
    p.add_argument("--floor", type=int, default=2000, help="signatures in the floor loop")
    p.add_argument("--in-process", type=int, default=5000, help="certificates signed in process")
    p.add_argument("--api-seconds", type=float, default=8.0, help="seconds per agent API scenario")
    p.add_argument("--join-nodes", type=int, default=1000)
    p.add_argument("--join-concurrency", type=int, default=16)
    p.add_argument("--out", type=Path, default=ARTIFACT)
    p.add_argument("--layers", action="store_true", help="also time one signature layer by layer (see above)")
    args = p.parse_args(argv)
    if args.quick:
        args.floor, args.in_process, args.api_seconds, args.join_nodes = 1000, 2000, 4.0, 300
    results: list[dict] = []

    def around(scenario) -> dict:
        """``scenario()``, with the floor of the minute it ran in (the mean of one right before and one after)."""
        before = floor(FLOOR_AROUND)["per_cpu_s"]
        r = scenario()
        r["floor_per_cpu_s"] = (before + floor(FLOOR_AROUND)["per_cpu_s"]) / 2
        return r

    def add(*rs: dict) -> None:
        for r in rs:
            floor_rate = r.get("floor_per_cpu_s") or (results[0]["per_cpu_s"] if results else r["per_cpu_s"])
            r["ratio_to_floor"] = r["per_cpu_s"] / floor_rate
            r["cp_us_per_signature"] = 1e6 / r["per_cpu_s"] if r["per_cpu_s"] else 0.0
            net = ""
            if "per_cpu_s_net" in r:
                r["ratio_to_floor_net"] = r["per_cpu_s_net"] / floor_rate
                net = f"{r['ratio_to_floor_net']:>7.2f}"
            results.append(r)
            p50 = f"{r['p50_ms']:8.1f}" if "p50_ms" in r else f"{'':>8}"
            p99 = f"{r['p99_ms']:8.1f}" if "p99_ms" in r else f"{'':>8}"
            print(f"{r['name']:<28} {r['count']:>6} {r['per_s']:>9.1f} {r['per_cpu_s']:>10.1f} "
                  f"{r['cp_us_per_signature']:>7.0f} {floor_rate:>8.0f} {r['ratio_to_floor']:>7.2f} {net:>7} {p50} "
                  f"{p99}", flush=True)

    print(f"{'scenario':<28} {'count':>6} {'per s':>9} {'per CPU-s':>10} {'us/sig':>7} {'floor':>8} {'/floor':>7} "
          f"{'net':>7} {'p50 ms':>8} {'p99 ms':>8}", flush=True)
    with tempfile.TemporaryDirectory(prefix="meshcore-bench-signing-") as tmp:
        base = Path(tmp)
        add(floor(args.floor))
        add(*in_process(args.in_process, min(1000, args.in_process), base))
        cp = ControlPlaneProcess(base / "cp", sign_nodes=8)
        try:
            (base / "nodes").mkdir()
            add(around(lambda: agent_api(cp, 1, args.api_seconds, base / "nodes")))
            add(around(lambda: agent_api(cp, 8, args.api_seconds, base / "nodes")))
            add(around(lambda: join_storm(cp, args.join_nodes, args.join_concurrency)))
        finally:
            cp.stop()
        layers = join_layers = None
        if args.layers:
            lcp = ControlPlaneProcess(base / "layered", sign_nodes=1, layered=True)
            try:
                (base / "layered-nodes").mkdir()
                agent_api(lcp, 1, args.api_seconds, base / "layered-nodes")
            finally:
                lcp.stop()
            layers = json.loads((lcp.state / LAYERS_FILE).read_text())
            print_layers(layers)
            jcp = ControlPlaneProcess(base / "layered-join", sign_nodes=1, layered=True)
            try:
                join_storm(jcp, min(args.join_nodes, 300), args.join_concurrency)
            finally:
                jcp.stop()
            join_layers = json.loads((jcp.state / LAYERS_FILE).read_text())
            print_layers(join_layers, per="handler: AgentApi.join", what="join", labels=JOIN_LAYERS)
    extra = [r for r in results if "tail_vs_head" in r]
    if extra:
        print(f"in-process rate, last 10% vs first 10%: {extra[0]['tail_vs_head']:.2f} (1.0 = flat)")
    storm = results[-1]
    print(f"join storm: {storm['count']} nodes in {storm['total_s']:.1f} s "
          f"(creating the tokens beforehand took {storm['token_create_s']:.1f} s)")
    report: dict[str, Any] = {"scenarios": results, "cpus": os.cpu_count(), "python": sys.version.split()[0],
                              "when": datetime.now(timezone.utc).isoformat()}
    if layers is not None and join_layers is not None:
        report["layers_us_per_signature"] = {
            label: layers[label][1] / (layers.get("handler: AgentApi.sign", [0, 0.0])[0] or 1) * 1e6
            for label in LAYERS}
        report["layers_us_per_join"] = {
            label: join_layers[label][1] / (join_layers.get("handler: AgentApi.join", [0, 0.0])[0] or 1) * 1e6
            for label in JOIN_LAYERS}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
