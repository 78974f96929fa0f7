"""Registers this VM's services and checks in the local Consul agent (``--consul-services-dir``).

The definitions directory is re-read on every sync (every refresh interval), and watched in
between (the names, sizes and modification times of its files, every ``WATCH_INTERVAL``): a file an
operator drops in is registered within about a second. Syncs run in a worker thread: a slow or absent Consul never delays
certificate renewal or the systemd watchdog. Errors are logged (once per distinct message) and
reported in ``status.json``; they never stop the agent.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meshcore.errors import ConsulAuthError, MeshError

log = logging.getLogger("meshcore.agent.consul")

Syncer = Callable[[list[dict[str, Any]]], Any]
WATCH_INTERVAL = 1.0


def dir_signature(directory: Path) -> tuple[tuple[str, int, int], ...] | None:
    """(name, mtime_ns, size) of each file in ``directory``; None when it cannot be listed."""
    try:
        entries = []
        with os.scandir(directory) as it:
            for entry in it:
                try:
                    st = entry.stat()
                except OSError:
                    continue
                entries.append((entry.name, st.st_mtime_ns, st.st_size))
    except OSError:
        return None
    return tuple(sorted(entries))


def load_payloads(services_dir: Path, node: str) -> list[dict[str, Any]]:
    """Consul agent registration bodies for every service defined in ``services_dir``.

    The directory may hold only service files: the node's address (which registrations do not
    carry; the Consul agent knows it) is then not required.
    """
    from meshcore.catalog.definitions import DefinitionFile, build_node, definition_files, parse_definition
    from meshcore.errors import FieldError, ValidationError

    files: list[DefinitionFile] = []
    errors: list[FieldError] = []
    try:
        paths = definition_files(services_dir)
    except OSError as exc:
        raise ValidationError([FieldError(str(services_dir), None, "", f"cannot list: {exc}")],
                              summary="cannot read the consul services directory") from exc
    for path in paths:
        source = f"{services_dir.name}/{path.name}"
        try:
            files.append(parse_definition(path.read_text(encoding="utf-8"), source))
        except ValidationError as exc:
            errors.extend(exc.errors)
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(FieldError(source, None, "", f"cannot read: {exc}"))
    if errors:
        raise ValidationError(errors, summary=f"invalid service definitions in {services_dir}")
    if not any(f.advertise_addr or f.bind_addr for f in files):
        files.append(DefinitionFile(source="<meshcore-agent>", advertise_addr="127.0.0.1"))
    definition = build_node(files, node, source=str(services_dir))
    if definition.name != node:
        log.warning("definitions in %s are for node %r but this agent is %r; registering them anyway",
                    services_dir, definition.name, node)
    return [service.to_agent_payload() for service in definition.services]


def consul_syncer(env: Mapping[str, str] | None = None) -> Syncer:
    """The real Consul registrar, configured from ``CONSUL_*`` (as Consul's own CLI is)."""
    from meshcore.agent.consul_registration import ConsulRegistrar
    from meshcore.catalog.consul import ConsulSettings

    registrar = ConsulRegistrar(ConsulSettings.from_env(env))
    return registrar.sync


def _in_mesh(payload: dict[str, Any]) -> bool:
    """A sidecar-proxied service or a gateway: the control plane lists it for this node's SVIDs."""
    return bool((payload.get("Connect") or {}).get("SidecarService")) or payload.get("Kind") == "ingress-gateway"


class ConsulSync:
    """Keeps the local Consul agent's registrations equal to the definitions directory."""

    def __init__(self, services_dir: Path | None, node: str, *, syncer_factory: Callable[[], Syncer] = consul_syncer,
                 extra_payloads: Callable[[], list[dict[str, Any]]] | None = None,
                 before_register: Callable[[frozenset[str]], None] | None = None,
                 after_register: Callable[[frozenset[str]], None] | None = None,
                 after_deregister: Callable[[frozenset[str]], None] | None = None,
                 resync_on: Callable[[], object] | None = None):
        self.services_dir = services_dir
        self.resync_on = resync_on  # a value that, when it moves, makes the worker sync (the ACKed config version)
        self._resync_seen: object = None
        self.extra_payloads = extra_payloads  # registrations besides the files' (the agent's own service)
        # Called with the mesh services of a sync: before registering them (their SVID files must exist
        # before the control plane can name them in a listener) and after, with those newly registered.
        self.before_register = before_register
        self.after_register = after_register
        self.after_deregister = after_deregister
        self.node = node
        self._factory = syncer_factory
        self._syncer: Syncer | None = None
        self._event = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._signature: tuple[tuple[str, int, int], ...] | None = None  # the directory at the last sync
        self.last_sync: datetime | None = None
        self.last_error: str | None = None
        self.registered: tuple[str, ...] = ()
        self.mesh_services: frozenset[str] = frozenset()  # names of registered services that join the mesh

    @property
    def enabled(self) -> bool:
        return self.services_dir is not None

    def trigger(self) -> None:
        """Ask for a sync soon (non-blocking); starts the worker on first use."""
        if not self.enabled:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="consul-sync", daemon=True)
            self._thread.start()
        self._event.set()

    def stop(self) -> None:
        self._stopping.set()
        self._event.set()

    def sync_now(self) -> bool:
        """One sync in the caller's thread; True on success."""
        assert self.services_dir is not None
        self._signature = dir_signature(self.services_dir)
        self._resync_seen = self.resync_on() if self.resync_on is not None else None
        try:
            payloads = load_payloads(self.services_dir, self.node)
            payloads += self.extra_payloads() if self.extra_payloads else []
            mesh = frozenset(str(p["Name"]) for p in payloads if _in_mesh(p))
            if self.before_register is not None:
                self.before_register(mesh)
            if self._syncer is None:
                self._syncer = self._factory()
            self._syncer(payloads)
        except MeshError as exc:
            message = str(exc)
            if message != self.last_error and isinstance(exc, ConsulAuthError):  # a 403 is not transient
                log.error("consul registration refused: Consul rejects the agent's ACL token (not a transient error: "
                          "fix the token; retried every refresh interval until then): %s", message)
            elif message != self.last_error:
                log.warning("consul registration failed (retrying every refresh interval): %s", message)
            self.last_error = message
            return False
        if self.last_error is not None or not self.last_sync:
            log.info("consul registrations in sync services=%s", ",".join(p.get("ID", "") for p in payloads))
        self.registered = tuple(str(p.get("ID", "")) for p in payloads)
        new, gone = mesh - self.mesh_services, self.mesh_services - mesh
        self.mesh_services = mesh
        self.last_error = None
        self.last_sync = datetime.now(timezone.utc)
        if new and self.after_register is not None:
            self.after_register(new)
        if gone and self.after_deregister is not None:
            self.after_deregister(gone)
        return True

    def _run(self) -> None:
        while True:
            triggered = self._event.wait(WATCH_INTERVAL)
            self._event.clear()
            if self._stopping.is_set():
                return
            if not triggered and (self.services_dir is None
                                  or dir_signature(self.services_dir) == self._signature) and (
                    self.resync_on is None or self.resync_on() == self._resync_seen):
                continue  # nothing changed in the definitions directory (nor the ACKed config version)
            try:
                self.sync_now()
            except Exception:  # a bug in a collaborator must not kill the worker silently
                log.exception("consul sync crashed; retrying at the next interval")

    def status(self) -> dict[str, Any]:
        if not self.enabled:
            return {"enabled": False}
        return {
            "enabled": True,
            "services_dir": str(self.services_dir),
            "registered": list(self.registered),
            "last_sync": self.last_sync.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace(
                "+00:00", "Z") if self.last_sync else None,
            "last_error": self.last_error,
        }
