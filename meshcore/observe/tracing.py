"""The control plane traces its own work with OpenTelemetry, exported over OTLP/gRPC.

One trace per change: the root span names the cause (``catalog change``, ``resources change``,
``settings change``, ``proxy connected``), its child ``snapshot rebuild`` builds the MeshSnapshot,
and each proxy's ``proxy build+publish`` (attributes ``meshcore.node``, ``meshcore.version``) is a
child of that. Spans go to the same collector as the Envoys' (``--tracing-otlp``), with the resource
``service.name=meshcore-control-plane``. Without a collector every call here is a no-op, and the
SDK is not even imported.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from ..errors import ConfigError

log = logging.getLogger("meshcore.controlplane.tracing")

__all__ = ["ControlPlaneTracing", "SERVICE_NAME"]

SERVICE_NAME = "meshcore-control-plane"
EXPORT_DELAY_MS = 1000  # a span reaches the collector about a second after it ends


class ControlPlaneTracing:
    """``with tracing.span("snapshot rebuild", **attributes):`` nests under the current span (per thread)."""

    def __init__(self, tracer: Any = None, provider: Any = None, endpoint: str = ""):
        self._tracer = tracer
        self._provider = provider
        self.endpoint = endpoint

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @classmethod
    def start(cls, otlp: str, *, trust_domain: str = "") -> "ControlPlaneTracing":
        """Export to ``otlp`` (``host:port``, OTLP/gRPC, plaintext); ``""`` gives a no-op tracer."""
        if not otlp:
            return cls()
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # xds-protos' older copies of the OTLP modules won the install
            raise ConfigError(
                f"tracing to {otlp} needs opentelemetry-proto's own modules, but they were overwritten ({exc}); "
                "run: pip install --force-reinstall --no-deps opentelemetry-proto (make and the Ansible role "
                "do this after installing meshcore)") from exc
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes = {"service.name": SERVICE_NAME}
        if trust_domain:
            attributes["meshcore.trust_domain"] = trust_domain
        provider = TracerProvider(resource=Resource.create(attributes))
        exporter = OTLPSpanExporter(endpoint=otlp, insecure=True, timeout=5)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
        log.info("tracing the control plane's work to otlp=%s", otlp)
        return cls(provider.get_tracer("meshcore.controlplane"), provider, otlp)

    @contextlib.contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Any]:
        """A span named ``name`` (a child of the current one), or nothing when tracing is off."""
        if self._tracer is None:
            yield None
            return
        attrs = {f"meshcore.{k}": v for k, v in attributes.items() if v is not None and v != ""}
        with self._tracer.start_as_current_span(name, attributes=attrs) as span:
            yield span

    @staticmethod
    def fail(span: Any, error: BaseException | str) -> None:
        """Mark ``span`` failed (a build or publish error), keeping the message."""
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, str(error)))

    def shutdown(self) -> None:
        """Flush what is still buffered, then stop exporting."""
        if self._provider is not None:
            try:
                self._provider.shutdown()
            except Exception as exc:  # the collector may be gone: shutting down must not fail
                log.warning("tracing shutdown: %s", exc)
            self._provider = None
            self._tracer = None
