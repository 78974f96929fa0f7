"""The control plane's alerting: evaluate the rules on every Signals, keep the alerts, notify webhooks.

Wiring (see :func:`for_control_plane`): the collector hands each new
:class:`~meshcore.observe.signals.Signals` to :meth:`Alerting.evaluate`; the rules in force are the
shipped defaults merged with the AlertRule resources of the engine's current snapshot. Webhooks
(``--alert-webhook URL``, repeatable, and ``MESHCORE_ALERT_WEBHOOKS``, comma separated) receive
Alertmanager-compatible (version 4) payloads, one per ``alertname`` group, when an alert starts firing
and when a firing alert resolves (and again every ``repeat_interval`` while it keeps firing).

Delivery never blocks evaluation: each webhook has its own queue and worker thread that retries a
failed POST (connection errors, 429 and 5xx) with exponential backoff (tenacity), in order, so a
webhook receives ``firing`` before ``resolved``. A full queue drops its oldest payload, loudly.

With several replicas every one evaluates the rules (``GET /v1/alerts`` answers on each), but only the
leader (a :class:`~meshcore.controlplane._contexts.Leadership` handle) notifies: each notification is sent
once, not once per replica. What was notified is kept in a :class:`NotifiedLedger` (Consul KV with
``--store consul``): a new leader loads it when its term starts, so it neither repeats what the old leader
sent nor misses what started firing during the failover. Payloads already queued when leadership is lost
are still delivered (they were decided while leading, and the ledger records them as sent).

Operator API: ``GET /v1/alerts`` (pending and firing alerts; ``?state=firing``) and
``GET /v1/alerts/rules`` (effective rules incl. defaults; ``?name=``). Metrics, in the control plane's
registry: ``meshcore_alerts{alertname,severity,state}``, ``meshcore_alert_notifications_total{outcome}``,
and two series the exported Prometheus rules need: ``meshcore_proxy_out_of_sync{node}`` and
``meshcore_service_instance_info{instance_id,service,node}``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Protocol, Sequence
from urllib.parse import quote, urlsplit

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..api.operator import AlertRuleView, AlertView
from ..errors import BadRequest, ConfigError, MeshError, NotFound, WebhookDeliveryError
from ..observe.alerts import FIRING, RESOLVED, Alert, AlertEvaluator, Rule, effective_rules, webhook_payload
from ..observe.signals import Signals
from ..resources.model import Resource
from ._http import Request, Router

if TYPE_CHECKING:
    from ..catalog._consul_settings import ConsulSettings
    from ..observe.collector import MeshCollector
    from ._contexts import Leadership, MeshView

log = logging.getLogger("meshcore.controlplane.alerting")

RECEIVER = "meshcore"
WEBHOOKS_ENV = "MESHCORE_ALERT_WEBHOOKS"
DEFAULT_REPEAT_S = 4 * 3600.0
QUEUE_SIZE = 256
POST_TIMEOUT_S = 5.0


def webhook_urls(flags: Sequence[str] | None, env: Mapping[str, str] | None = None) -> list[str]:
    """The webhooks from ``--alert-webhook`` flags plus ``$MESHCORE_ALERT_WEBHOOKS`` (comma list), deduplicated.

    Raises :class:`ConfigError` naming a URL that is not ``http(s)://host...``."""
    source: Mapping[str, str] = os.environ if env is None else env
    urls = list(flags or []) + [u.strip() for u in source.get(WEBHOOKS_ENV, "").split(",")]
    out: list[str] = []
    for url in (u.strip() for u in urls):
        if not url or url in out:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"alert webhook {url!r} is not an http(s) URL; write it like "
                              "http://alertmanager:9093/api/v1/... or https://hooks.example/meshcore "
                              f"(--alert-webhook or {WEBHOOKS_ENV})")
        out.append(url)
    return out



class NotifiedLedger(Protocol):
    """Where the leader records which firing alerts it notified (fingerprint -> when), for the next leader."""

    def load(self) -> dict[str, float]: ...

    def save(self, notified: dict[str, float]) -> None: ...


class MemoryLedger:
    """One replica: the record lives as long as the process (a restart notifies firing alerts again)."""

    def __init__(self) -> None:
        self._notified: dict[str, float] = {}

    def load(self) -> dict[str, float]:
        return dict(self._notified)

    def save(self, notified: dict[str, float]) -> None:
        self._notified = dict(notified)


class ConsulLedger:
    """The record as JSON in one Consul KV key (default ``meshcore/alerts/notified``), read and written with the
    same py-consul client helpers as the resource store. Each write is one ``/v1/txn`` behind ``fence()``'s
    operations (the leader's ``check-session``): a replica that lost the lock cannot overwrite the record."""

    def __init__(self, settings: "ConsulSettings", key: str, fence: Callable[[], list[dict]] = lambda: []):
        self.settings = settings
        self.key = key
        self._fence = fence
        self._client = settings.client()

    def load(self) -> dict[str, float]:
        from ..catalog._consul_calls import consul_errors

        with consul_errors(self.settings, f"reading the alert notification record {self.key!r}"):
            _index, entry = self._client.kv.get(self.key)
        if not entry or not entry.get("Value"):
            return {}
        try:
            data = json.loads(entry["Value"])
            return {str(k): float(v) for k, v in (data.get("notified") or {}).items()}
        except (ValueError, TypeError, AttributeError):
            log.error("alert notification record %s is not meshcore's JSON; starting from an empty one", self.key)
            return {}

    def save(self, notified: dict[str, float]) -> None:
        import base64

        from ..catalog._consul_calls import check, consul_errors, raw

        doing = f"writing the alert notification record {self.key!r}"
        value = base64.b64encode(json.dumps({"notified": notified}, sort_keys=True).encode()).decode("ascii")
        ops = [*self._fence(), {"KV": {"Verb": "set", "Key": self.key, "Value": value}}]
        with consul_errors(self.settings, doing):
            check(raw(self._client, "PUT", "/v1/txn", body=ops), self.settings, doing)


class _Webhook:
    """One webhook: a bounded queue of payloads and a worker thread that POSTs them in order."""

    def __init__(self, url: str, stop: threading.Event, outcome: Callable[[str], None], *,
                 attempts: int, max_backoff: float, timeout: float):
        self.url = url
        self._stop = stop
        self._outcome = outcome
        self._attempts = attempts
        self._max_backoff = max_backoff
        self._timeout = timeout
        self._queue: queue.Queue[dict] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name=f"alert-webhook {url}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def put(self, payload: dict) -> None:
        while True:
            try:
                self._queue.put_nowait(payload)
                return
            except queue.Full:
                try:
                    dropped = self._queue.get_nowait()
                except queue.Empty:
                    continue
                self._outcome("dropped")
                log.error("alert webhook url=%s is not keeping up: dropped a %s notification for group %s",
                          self.url, dropped.get("status"), dropped.get("groupKey"))

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "meshcore-alerting"})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise WebhookDeliveryError(f"HTTP {exc.code}") from exc
            raise  # 4xx: the receiver rejects the payload; retrying will not help
        except (urllib.error.URLError, OSError) as exc:
            raise WebhookDeliveryError(str(getattr(exc, "reason", exc))) from exc

    def deliver(self, payload: dict) -> bool:
        """POST one payload with retries; True when the webhook accepted it."""
        body = json.dumps(payload).encode()

        def before_sleep(state) -> None:
            log.warning("alert webhook url=%s failed (%s), retry %d/%d", self.url, state.outcome.exception(),
                        state.attempt_number, self._attempts - 1)

        def sleep(seconds: float) -> None:  # a stop() ends the wait at once
            self._stop.wait(seconds)

        try:
            for attempt in Retrying(stop=stop_after_attempt(self._attempts),
                                    wait=wait_exponential(multiplier=0.5, max=self._max_backoff),
                                    retry=retry_if_exception_type(WebhookDeliveryError), sleep=sleep,
                                    before_sleep=before_sleep, reraise=True):
                with attempt:
                    if self._stop.is_set() and attempt.retry_state.attempt_number > 1:
                        raise RuntimeError("control plane stopping")
                    self._post(body)
        except Exception as exc:  # noqa: BLE001 - a failed notification is logged and counted, never raised
            self._outcome("failed")
            log.error("alert webhook url=%s: gave up on the %s notification for group %s: %s",
                      self.url, payload.get("status"), payload.get("groupKey"), exc)
            return False
        self._outcome("sent")
        log.info("alert webhook url=%s: sent %s notification for group %s (%d alert(s))", self.url,
                 payload.get("status"), payload.get("groupKey"), len(payload.get("alerts", [])))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                payload = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.deliver(payload)


class Alerting:
    """Evaluates the rules on every Signals, keeps the alerts and notifies the webhooks.

    ``resources()`` returns the current mesh resources (AlertRules among them); ``external_url()`` the
    control plane's HTTP address (``externalURL`` of payloads). Thread-safe: evaluation and the API
    readers share one lock; deliveries run on the webhooks' own threads."""

    def __init__(self, resources: Callable[[], Iterable[Resource]], webhooks: Sequence[str] = (), *,
                 external_url: Callable[[], str] = lambda: "", registry: CollectorRegistry | None = None,
                 repeat_interval: float = DEFAULT_REPEAT_S, attempts: int = 6, max_backoff: float = 30.0,
                 timeout: float = POST_TIMEOUT_S, defaults: bool = True, leadership: "Leadership | None" = None,
                 ledger: NotifiedLedger | None = None):
        self._resources = resources
        self._leadership = leadership
        self._ledger: NotifiedLedger = ledger or MemoryLedger()
        self._term = 0  # the leadership term whose ledger _notified was loaded from
        self._external_url = external_url
        self._defaults = defaults
        self.repeat_interval = repeat_interval
        self._lock = threading.Lock()
        self._evaluator = AlertEvaluator()
        self._alerts: list[Alert] = []
        self._notified: dict[str, float] = {}  # fingerprint of a firing alert -> when webhooks last heard of it
        self._stop = threading.Event()
        self.notifications = Counter("meshcore_alert_notifications", "Alert webhook notifications, by outcome "
                                     "(sent, failed after retries, dropped because the queue was full).",
                                     ["outcome"], registry=registry) if registry is not None else None
        self._webhooks = [_Webhook(url, self._stop, self._count, attempts=attempts, max_backoff=max_backoff,
                                   timeout=timeout) for url in webhooks]
        self.last_signals_at: float | None = None
        if registry is not None:
            registry.register(_AlertsCollector(self))

    @property
    def webhooks(self) -> list[str]:
        return [w.url for w in self._webhooks]

    def _count(self, outcome: str) -> None:
        if self.notifications is not None:
            self.notifications.labels(outcome).inc()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "Alerting":
        for w in self._webhooks:
            w.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for w in self._webhooks:
            w.join(2.0)

    # --- evaluation --------------------------------------------------------------------------
    def rules(self) -> list[Rule]:
        """The effective rules: defaults merged with the AlertRule resources (disabled ones included)."""
        try:
            resources = list(self._resources())
        except Exception:  # noqa: BLE001 - a store hiccup must not stop alerting; use the defaults
            log.exception("reading AlertRule resources failed; evaluating the default rules only")
            resources = []
        return effective_rules(resources, defaults=self._defaults)

    def evaluate(self, signals: Signals) -> list[Alert]:
        """Evaluate every enabled rule on ``signals`` (the collector's subscriber callback)."""
        rules = self.rules()
        lead = self._leadership
        leading = lead is None or lead.is_leader()
        term = lead.term() if lead is not None else 1
        loaded = self._load_ledger() if leading and term != self._term else None  # a new term: the record so far
        with self._lock:
            self._evaluator.set_rules(rules)
            alerts = self._evaluator.evaluate(signals)
            self._alerts = [a for a in alerts if a.state != RESOLVED]
            self.last_signals_at = signals.at
            if loaded is not None:
                self._notified, self._term = loaded, term
            payloads = self._notifications(alerts, signals.at) if leading else []  # only the leader notifies
            record = dict(self._notified) if payloads else None
        if record is not None:
            try:
                self._ledger.save(record)
            except MeshError as exc:
                log.error("recording the alert notifications failed (a new leader may repeat them): %s", exc)
        for a in alerts:
            if a.state == FIRING and a.fired_at == signals.at:
                log.warning("alert firing alertname=%s severity=%s labels=%s value=%s: %s", a.labels["alertname"],
                            a.severity, _labels_text(a), a.value, a.annotations.get("summary", ""))
            elif a.state == RESOLVED:
                log.info("alert resolved alertname=%s labels=%s", a.labels["alertname"], _labels_text(a))
        for payload in payloads:
            for w in self._webhooks:
                w.put(payload)
        return alerts

    def _load_ledger(self) -> dict[str, float] | None:
        try:
            return self._ledger.load()
        except MeshError as exc:
            log.error("reading the alert notification record failed, retried on the next evaluation: %s", exc)
            return None

    def _notifications(self, alerts: list[Alert], now: float) -> list[dict]:
        """Payloads due now, one per alertname with news: an alert started firing or resolved, or the group's
        repeat interval passed. Each carries every firing alert of the group plus those just resolved."""
        groups: dict[str, list[Alert]] = defaultdict(list)
        for a in alerts:
            if a.state in (FIRING, RESOLVED):
                groups[a.labels["alertname"]].append(a)
        out = []
        for _name, members in sorted(groups.items()):
            firing = [a for a in members if a.state == FIRING]
            resolved = [a for a in members if a.state == RESOLVED and a.fingerprint in self._notified]
            news = any(a.fingerprint not in self._notified for a in firing) or bool(resolved)
            due = any(now - self._notified.get(a.fingerprint, now) >= self.repeat_interval for a in firing)
            for a in members:
                if a.state == RESOLVED:
                    self._notified.pop(a.fingerprint, None)
            if not (news or due) or not (firing or resolved):
                continue
            for a in firing:
                self._notified[a.fingerprint] = now
            out.append(webhook_payload(firing + resolved, receiver=RECEIVER, external_url=self._external_url(),
                                       generator_url=self._generator_url(members[0].name)))
        return out

    def _generator_url(self, rule_name: str) -> str:
        base = self._external_url().rstrip("/")
        return f"{base}/v1/alerts/rules?name={quote(rule_name)}" if base else ""

    # --- views ---------------------------------------------------------------------------------
    def alerts(self) -> list[Alert]:
        """Pending and firing alerts as of the last evaluation (most severe first)."""
        with self._lock:
            return list(self._alerts)


def _labels_text(alert: Alert) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(alert.labels.items()) if k not in ("alertname", "severity"))


class _AlertsCollector:
    """``meshcore_alerts``: how many alerts are pending/firing, per alertname and severity."""

    def __init__(self, alerting: Alerting):
        self._alerting = alerting

    def describe(self):
        return []

    def collect(self):
        fam = GaugeMetricFamily("meshcore_alerts", "Alerts the control plane holds, by name, severity and state "
                                "(pending, firing).", labels=["alertname", "severity", "state"])
        counts: dict[tuple[str, str, str], int] = defaultdict(int)
        for a in self._alerting.alerts():
            counts[(a.labels.get("alertname", a.name), a.severity, a.state)] += 1
        for key, n in sorted(counts.items()):
            fam.add_metric(list(key), n)
        yield fam


class _MeshStateCollector:
    """Series the exported Prometheus rules join on, read at scrape time from the control plane's state:
    ``meshcore_service_instance_info`` (instance id -> service, node) and ``meshcore_proxy_out_of_sync``."""

    def __init__(self, mesh: "MeshView"):
        self._mesh = mesh

    def describe(self):
        return []

    def collect(self):
        info = GaugeMetricFamily("meshcore_service_instance_info", "1 for each service instance in the catalog: "
                                 "maps Envoy's inbound_<instance_id> stat prefixes to services.",
                                 labels=["instance_id", "service", "node"])
        sync = GaugeMetricFamily("meshcore_proxy_out_of_sync", "1 when the proxy has not ACKed its current "
                                 "configuration or its last build failed, else 0.", labels=["node"])
        try:
            catalog = self._mesh.catalog()
            for inst in sorted(catalog.instances if catalog else (), key=lambda i: i.id):
                if inst.kind == "":
                    info.add_metric([inst.id, inst.service, inst.node], 1)
            for node, state in sorted(self._mesh.proxies().items()):
                in_sync = self._mesh.synced(node) and not state.error
                sync.add_metric([node], 0 if in_sync else 1)
        except Exception:  # noqa: BLE001 - a scrape must not fail because of this view
            log.warning("reading mesh state for metrics failed", exc_info=True)
        yield info
        yield sync


# --- control plane wiring --------------------------------------------------------------------------

def for_control_plane(mesh: "MeshView", collector: "MeshCollector", registry: CollectorRegistry, *,
                      webhooks: Sequence[str] = (), external_url: Callable[[], str] = lambda: "",
                      leadership: "Leadership | None" = None, ledger: NotifiedLedger | None = None) -> Alerting:
    """The control plane's Alerting: rules from the mesh snapshot's AlertRules, evaluated on every Signals the
    collector makes, metrics in ``registry`` (with the mesh state the exported rules join on). Call ``start()``
    to run the webhooks."""

    def resources() -> Iterable[Resource]:
        snap = mesh.snapshot()
        return snap.resources if snap is not None else ()

    alerting = Alerting(resources, list(webhooks), external_url=external_url, registry=registry,
                        leadership=leadership, ledger=ledger)
    registry.register(_MeshStateCollector(mesh))
    collector.subscribe(alerting.evaluate)
    if alerting.webhooks:
        log.info("alert webhooks: %s", ", ".join(alerting.webhooks))
    return alerting


def add_routes(router: Router, *, alerting: Alerting) -> None:
    """``GET /v1/alerts`` and ``GET /v1/alerts/rules`` on the operator API."""

    def alerts(req: Request) -> list[AlertView]:
        state = req.query.get("state")
        if state and state not in ("pending", "firing"):
            raise BadRequest(f"state={state!r}: use pending or firing (or leave it out for both)")
        return [a.view() for a in alerting.alerts() if not state or a.state == state]

    def rules(req: Request) -> list[AlertRuleView]:
        name = req.query.get("name")
        out = [r.view() for r in alerting.rules() if not name or r.name == name]
        if name and not out:
            raise NotFound(f"no alert rule named {name!r}; see `meshctl alerts rules`")
        return out

    router.add("GET", "/v1/alerts", alerts)
    router.add("GET", "/v1/alerts/rules", rules)


__all__ = ["Alerting", "ConsulLedger", "MemoryLedger", "NotifiedLedger", "add_routes", "for_control_plane", "webhook_urls", "RECEIVER", "WEBHOOKS_ENV"]
