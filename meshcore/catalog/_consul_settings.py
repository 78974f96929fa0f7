"""How meshcore reaches Consul: the ``CONSUL_*`` environment variables, as Consul's own CLI reads them.

``ConsulSettings.from_env()`` honours ``CONSUL_HTTP_ADDR`` (``host:port`` or a URL; ``https://``
turns TLS on), ``CONSUL_HTTP_TOKEN`` (wins over ``CONSUL_HTTP_TOKEN_FILE``), ``CONSUL_CACERT`` /
``CONSUL_CAPATH``, ``CONSUL_CLIENT_CERT`` + ``CONSUL_CLIENT_KEY``, ``CONSUL_HTTP_SSL``,
``CONSUL_HTTP_SSL_VERIFY`` and ``CONSUL_DATACENTER``. ``.client()`` builds a py-consul client
from the settings alone: py-consul would otherwise read ``CONSUL_HTTP_*`` from the process
environment and silently override what the caller asked for.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import consul

from ..errors import ConfigError

DEFAULT_ADDRESS = "127.0.0.1:8500"
# Consul holds a request this long before it gives up connecting/answering (blocking waits are added).
DEFAULT_TIMEOUT = 30.0

_TRUE = {"1", "t", "true", "yes", "on"}
_FALSE = {"0", "f", "false", "no", "off"}


def _parse_bool(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; use true or false")


def _split_address(raw: str) -> tuple[str | None, str, int]:
    """``host:port`` / ``http(s)://host:port`` / ``[::1]:8500`` -> (scheme or None, host, port)."""
    text = raw.strip()
    if not text:
        raise ConfigError("CONSUL_HTTP_ADDR is empty; set it to host:port, e.g. 127.0.0.1:8500")
    if text.startswith("unix://"):
        raise ConfigError(f"CONSUL_HTTP_ADDR={raw!r}: unix sockets are not supported by meshcore; use host:port")
    scheme = None
    if "://" in text:
        scheme, _, text = text.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigError(f"CONSUL_HTTP_ADDR={raw!r}: scheme must be http or https")
    parts = urlsplit("//" + text.rstrip("/"))
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"CONSUL_HTTP_ADDR={raw!r}: bad port ({exc}); expected host:port") from exc
    if not parts.hostname:
        raise ConfigError(f"CONSUL_HTTP_ADDR={raw!r}: no host; expected host:port, e.g. 127.0.0.1:8500")
    if port is None:
        port = 443 if scheme == "https" else 8500
    return scheme, parts.hostname, port


@dataclass(frozen=True)
class ConsulSettings:
    """Everything needed to talk to one Consul agent. Build with :meth:`from_env`."""

    host: str = "127.0.0.1"
    port: int = 8500
    scheme: str = "http"
    token: str | None = None
    token_file: str | None = None
    ca_cert: str | None = None  # CA bundle file or directory (CONSUL_CACERT / CONSUL_CAPATH)
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True
    datacenter: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "ConsulSettings":
        """Read ``CONSUL_*`` from ``env`` (default ``os.environ``); keyword overrides win.

        ``address=`` may be given as an override in the same forms as ``CONSUL_HTTP_ADDR``.
        """
        env = os.environ if env is None else env
        address = overrides.pop("address", None) or env.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDRESS
        scheme, host, port = _split_address(address)
        if env.get("CONSUL_HTTP_SSL"):
            if _parse_bool("CONSUL_HTTP_SSL", env["CONSUL_HTTP_SSL"]):
                scheme = "https"
            elif scheme is None:
                scheme = "http"
        verify = True
        if env.get("CONSUL_HTTP_SSL_VERIFY"):
            verify = _parse_bool("CONSUL_HTTP_SSL_VERIFY", env["CONSUL_HTTP_SSL_VERIFY"])
        values: dict[str, Any] = dict(  # overrides below may set any field
            host=host,
            port=port,
            scheme=scheme or "http",
            token=env.get("CONSUL_HTTP_TOKEN") or None,
            token_file=env.get("CONSUL_HTTP_TOKEN_FILE") or None,
            ca_cert=env.get("CONSUL_CACERT") or env.get("CONSUL_CAPATH") or None,
            client_cert=env.get("CONSUL_CLIENT_CERT") or None,
            client_key=env.get("CONSUL_CLIENT_KEY") or None,
            verify=verify,
            datacenter=env.get("CONSUL_DATACENTER") or None,
        )
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown Consul setting(s): {', '.join(sorted(unknown))}")
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if bool(self.client_cert) != bool(self.client_key):
            raise ConfigError("CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be set together (mutual TLS needs both)")
        for name, path in (("CONSUL_CACERT", self.ca_cert), ("CONSUL_CLIENT_CERT", self.client_cert),
                           ("CONSUL_CLIENT_KEY", self.client_key)):
            if path and not os.path.exists(path):
                raise ConfigError(f"{name}={path!r} does not exist")
        if self.scheme not in ("http", "https"):
            raise ConfigError(f"Consul scheme must be http or https, not {self.scheme!r}")

    @property
    def address(self) -> str:
        """Base URL, e.g. ``https://consul.example:8501``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def token_source(self) -> str:
        """Which setting the token comes from, for error messages telling the operator what to check."""
        if self.token:
            return "CONSUL_HTTP_TOKEN"
        if self.token_file:
            return f"CONSUL_HTTP_TOKEN_FILE ({self.token_file})"
        return "CONSUL_HTTP_TOKEN (not set: requests are anonymous)"

    def effective_token(self) -> str | None:
        """The ACL token to send: ``token``, else the contents of ``token_file`` (read now, so rotation works)."""
        if self.token:
            return self.token
        if not self.token_file:
            return None
        try:
            with open(self.token_file, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read CONSUL_HTTP_TOKEN_FILE {self.token_file!r}: {exc.strerror}") from exc

    def client(self) -> consul.Consul:
        """A py-consul client configured from these settings only (never from the process environment)."""
        verify: bool | str = self.verify
        if self.verify and self.ca_cert:
            verify = self.ca_cert
        cert = (self.client_cert, self.client_key) if self.client_cert else None
        c = consul.Consul(host=self.host, port=self.port, scheme=self.scheme, dc=self.datacenter,
                          verify=verify, cert=cert, connections_timeout=self.timeout)
        c.token = self.effective_token()  # py-consul prefers $CONSUL_HTTP_TOKEN over its token argument
        return c
