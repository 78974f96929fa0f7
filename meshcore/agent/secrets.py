"""File-based SDS: the secrets Envoy reads from ``<state>/secrets/``.

Each file holds one ``envoy.extensions.transport_sockets.tls.v3.Secret`` wrapped the way Envoy
expects a file-based SDS source to look (a DiscoveryResponse-shaped JSON document). Files are
replaced atomically (temp file + rename in the same directory, 0600); Envoy watches the directory
(``watched_directory``) and reloads a secret when its file is renamed into place, so certificates
rotate without restarting Envoy or dropping connections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meshcore import naming
from meshcore._files import (
    TEMP_PREFIX,
    ensure_private_dir,
    os_errors_as,
    read_text,
    remove_stale_temp_files,
    write_if_changed,
)
from meshcore.errors import AgentError

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SECRET_FILE_MODE = 0o600


def tls_certificate_secret(name: str, chain_pem: str, key_pem: str) -> dict[str, Any]:
    """A Secret with a certificate chain and its private key (node identity or a workload SVID)."""
    return {
        "@type": SECRET_TYPE,
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"inline_string": chain_pem},
            "private_key": {"inline_string": key_pem},
        },
    }


def validation_context_secret(name: str, bundle_pem: str) -> dict[str, Any]:
    """A Secret with the trust bundle Envoy validates peers against."""
    return {
        "@type": SECRET_TYPE,
        "name": name,
        "validation_context": {"trusted_ca": {"inline_string": bundle_pem}},
    }


def sds_document(secret: dict[str, Any]) -> dict[str, Any]:
    """The file content for one secret: ``{"resources": [secret]}``."""
    return {"resources": [secret]}


def render_sds_file(secret: dict[str, Any]) -> str:
    return json.dumps(sds_document(secret), indent=2, sort_keys=True) + "\n"


class SecretsDirectory:
    """The directory Envoy watches; one file per secret, named by :func:`naming.secret_file`."""

    def __init__(self, path: Path):
        self.path = path

    def prepare(self) -> None:
        with os_errors_as(AgentError, f"cannot create directory {self.path}", "check the agent's permissions"):
            ensure_private_dir(self.path)
        remove_stale_temp_files(self.path)

    def path_of(self, secret_name: str) -> Path:
        return self.path / naming.secret_file(secret_name)

    def write(self, secret: dict[str, Any]) -> bool:
        """Write ``secret`` (atomic, 0600) unless the file already holds it; True when written."""
        path = self.path_of(secret["name"])
        with os_errors_as(AgentError, f"cannot write {path}"):
            return write_if_changed(path, render_sds_file(secret), SECRET_FILE_MODE)

    def read(self, secret_name: str) -> dict[str, Any] | None:
        """The Secret stored for ``secret_name``, or None when missing or unreadable."""
        path = self.path_of(secret_name)
        with os_errors_as(AgentError, f"cannot read {path}"):
            text = read_text(path)
        if not text:
            return None
        try:
            resources = json.loads(text).get("resources") or []
        except (ValueError, AttributeError):
            return None
        for resource in resources:
            if isinstance(resource, dict) and resource.get("name") == secret_name:
                return resource
        return None

    def names(self) -> list[str]:
        """Names of the secrets stored in the directory (read from each file's content)."""
        names: list[str] = []
        if not self.path.is_dir():
            return names
        for entry in sorted(self.path.iterdir()):
            if entry.name.startswith(TEMP_PREFIX) or not entry.is_file():
                continue
            try:
                resources = json.loads(entry.read_text()).get("resources") or []
            except (OSError, ValueError, AttributeError):
                continue
            for resource in resources:
                name = resource.get("name") if isinstance(resource, dict) else None
                if isinstance(name, str) and self.path_of(name) == entry:
                    names.append(name)
        return names

    def exists(self, secret_name: str) -> bool:
        return self.path_of(secret_name).is_file()

    def remove_except(self, keep: set[str]) -> list[str]:
        """Delete every secret file not named in ``keep`` (secret names); returns the files removed."""
        wanted = {naming.secret_file(name) for name in keep}
        removed: list[str] = []
        if not self.path.is_dir():
            return removed
        for entry in sorted(self.path.iterdir()):
            if entry.name.startswith(TEMP_PREFIX) or entry.name in wanted or not entry.is_file():
                continue
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
        return removed
