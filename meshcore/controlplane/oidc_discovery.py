"""OpenID Connect discovery of JWT issuers' keys, the IO half (the pure half and the why:
:mod:`meshcore.policies.request_authentication.discovery`).

Where: the control plane, once per issuer for all its proxies (each replica on its own, as it builds on its own;
not each Envoy): it reads
``<issuer>/.well-known/openid-configuration`` for every issuer an applied RequestAuthentication writes without
``jwksUri`` or ``jwks``, verified against the control plane host's system store or ``jwks.discovery.caCertificates``
of the mesh config. What it found (``jwks_uri`` per issuer, or the error) goes into the mesh settings
(``MeshSettings.jwks.discovered``), so the engine rebuilds exactly the proxies whose JWT providers read it; the
proxies then fetch the keys themselves from that ``jwks_uri`` (Envoy's remote JWKS, refreshed every 5 minutes), so
a key rotation at the issuer needs no discovery.

When: an issuer is read as soon as a RequestAuthentication names it (each snapshot is looked at), then every
``jwks.discovery.refresh`` (default 20 min, Istio's) so a moved ``jwks_uri`` is picked up. A read is retried with
tenacity (3 attempts, exponential backoff); a failed round is retried after 10 s, doubling up to the refresh. A
failure keeps the last ``jwks_uri`` found (the proxies keep fetching from it); an issuer never discovered has a key
set no token verifies against (its tokens are 401s, Istio's behaviour). Failures show in ``meshctl status`` (the
source ``oidc-discovery``, one rejected entry per issuer), in the log and in
``meshcore_oidc_discovery_ok{issuer}``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..errors import DiscoveryError
from ..policies.request_authentication.discovery import discovery_url, jwks_uri_of
from ..policies.request_authentication.spec import spec_of
from ..policies.request_authentication.trust import NO_SETTINGS, Discovered, JwksSettings

log = logging.getLogger("meshcore.controlplane.oidc")

KIND = "RequestAuthentication"
FETCH_TIMEOUT_S = 5.0
MAX_DOCUMENT_BYTES = 1 << 20
FIRST_RETRY_S = 10.0
ATTEMPTS = 3

Fetch = Callable[[str], Any]  # discovery URL -> the parsed JSON document (raises DiscoveryError)


def https_fetcher(ca_file: str = "", timeout_s: float = FETCH_TIMEOUT_S) -> Fetch:
    """A :data:`Fetch` over HTTP(S), TLS verified against ``ca_file`` (``""``: the host's default store)."""
    context = ssl.create_default_context(cafile=ca_file or None)

    def fetch(url: str) -> Any:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s, context=context) as resp:  # noqa: S310 - http(s)
                body = resp.read(MAX_DOCUMENT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise DiscoveryError(f"GET {url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DiscoveryError(f"GET {url}: {reason}") from exc
        if len(body) > MAX_DOCUMENT_BYTES:
            raise DiscoveryError(f"GET {url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise DiscoveryError(f"GET {url}: not JSON: {exc}") from exc

    return fetch


def issuers_to_discover(resources) -> frozenset[str]:
    """The issuers the RequestAuthentications among ``resources`` write without ``jwksUri`` or ``jwks``."""
    return frozenset(rule.issuer for r in resources if r.kind == KIND for rule in spec_of(r).jwt_rules
                     if rule.jwks is None and rule.jwks_uri is None)


@dataclasses.dataclass
class _Issuer:
    found: Discovered
    due: float = 0.0  # monotonic time of the next read
    backoff: float = FIRST_RETRY_S
    ok_at: float = 0.0  # wall time of the last successful read


class OidcDiscovery:
    """Discovers issuers' ``jwks_uri`` and hands the result to ``publish(discovered)`` (the daemon sets it into the
    engine's mesh settings). :meth:`observe` each snapshot, :meth:`run` in a thread until ``stop`` is set."""

    def __init__(self, settings: JwksSettings | None, publish: Callable[[tuple[Discovered, ...]], None],
                 stop: threading.Event, *, fetch: Fetch | None = None, clock: Callable[[], float] = time.monotonic,
                 registry=None, attempts: int = ATTEMPTS):
        self.settings = settings or NO_SETTINGS
        self._publish = publish
        self._stop = stop
        self._fetch = fetch or https_fetcher(self.settings.discovery_ca_file)
        self._clock = clock
        self._attempts = attempts
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._wanted: frozenset[str] = frozenset()
        self._issuers: dict[str, _Issuer] = {}
        self._published: tuple[Discovered, ...] = ()
        self._gauge = None
        if registry is not None:
            from prometheus_client import Gauge

            self._gauge = Gauge("meshcore_oidc_discovery_ok", "1 when the last OpenID Connect discovery of the "
                                "issuer succeeded", ["issuer"], registry=registry)

    # --- inputs ---------------------------------------------------------------------------------------------
    def observe(self, snapshot) -> None:
        """Look at a new snapshot's RequestAuthentications; wake the loop when the issuers to discover changed."""
        self.want(issuers_to_discover(snapshot.resources_of(KIND)))

    def want(self, issuers: frozenset[str]) -> None:
        with self._lock:
            if issuers == self._wanted:
                return
            self._wanted = issuers
        self._wake.set()

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        while not self._stop.is_set():
            delay = self.run_once()
            self._wake.wait(min(delay, 1.0))  # and look at the stop event every second
            self._wake.clear()

    def run_once(self) -> float:
        """Read every issuer that is due; publish when the result changed. Returns the seconds until the next is due."""
        with self._lock:
            wanted = self._wanted
        for issuer in list(self._issuers):
            if issuer not in wanted:
                del self._issuers[issuer]
                if self._gauge is not None:
                    self._gauge.remove(issuer)
        now = self._clock()
        for issuer in sorted(wanted):
            state = self._issuers.setdefault(issuer, _Issuer(Discovered(issuer)))
            if state.due <= now and not self._stop.is_set():
                self._read(issuer, state)
        discovered = tuple(self._issuers[i].found for i in sorted(self._issuers))
        if discovered != self._published:
            self._published = discovered
            self._publish(discovered)
        if not self._issuers:
            return self.settings.discovery_refresh_s
        return max(0.05, min(s.due for s in self._issuers.values()) - self._clock())

    def _read(self, issuer: str, state: _Issuer) -> None:
        url = discovery_url(issuer)
        try:
            jwks_uri = self._read_with_retries(issuer, url)
        except DiscoveryError as exc:
            kept = f"; the proxies keep fetching keys from {state.found.jwks_uri}" if state.found.jwks_uri else \
                "; until it succeeds, tokens of this issuer are refused (401)"
            error = f"{exc}{kept}"
            if error != state.found.error:
                log.warning("OIDC discovery failed issuer=%s error=%s (retry in %.0fs)", issuer, error, state.backoff)
            state.found = Discovered(issuer, state.found.jwks_uri, error)
            state.due = self._clock() + state.backoff
            state.backoff = min(state.backoff * 2, self.settings.discovery_refresh_s)
            if self._gauge is not None:
                self._gauge.labels(issuer=issuer).set(0)
            return
        if jwks_uri != state.found.jwks_uri or state.found.error:
            log.info("OIDC discovery issuer=%s jwks_uri=%s", issuer, jwks_uri)
        state.found = Discovered(issuer, jwks_uri)
        state.due = self._clock() + self.settings.discovery_refresh_s
        state.backoff = FIRST_RETRY_S
        state.ok_at = time.time()
        if self._gauge is not None:
            self._gauge.labels(issuer=issuer).set(1)

    def _read_with_retries(self, issuer: str, url: str) -> str:
        @retry(retry=retry_if_exception_type(DiscoveryError), stop=stop_after_attempt(self._attempts),
               wait=wait_exponential(multiplier=0.5, max=4), reraise=True,
               sleep=lambda s: None if self._stop.wait(s) else None)
        def once() -> str:
            document = self._fetch(url)
            try:
                return jwks_uri_of(issuer, document)
            except ValueError as exc:
                raise DiscoveryError(f"GET {url}: {exc}") from exc

        return once()

    # --- status ---------------------------------------------------------------------------------------------
    def failures(self) -> list[tuple[str, str]]:
        """``(issuer, error)`` of every issuer whose last read failed."""
        return [(d.issuer, d.error) for d in self._published if d.error]

    def source_status(self):
        """This loop as a source of ``meshctl status`` (None while no issuer is to be discovered)."""
        from ..api.operator import RejectedResource, SourceStatus

        if not self._published:
            return None
        failures = self.failures()
        return SourceStatus(
            name="oidc-discovery", kind="oidc", state="error" if failures else "ok",
            detail=f"{len(self._published)} issuer(s) discovered through /.well-known/openid-configuration",
            error="; ".join(f"{i}: {e}" for i, e in failures),
            rejected=tuple(RejectedResource(key=i, error=e) for i, e in failures))


def with_discovered(settings, discovered: tuple[Discovered, ...]):
    """``settings`` (MeshSettings) with ``discovered`` as its JWKS settings' discovery results."""
    jwks = settings.jwks or NO_SETTINGS
    return dataclasses.replace(settings, jwks=dataclasses.replace(jwks, discovered=discovered))


__all__ = ["OidcDiscovery", "https_fetcher", "issuers_to_discover", "with_discovered"]
