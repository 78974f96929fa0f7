"""Fleet operations over SSH (Fabric): status, logs, restart and bug reports for every host of an inventory.

The pure parts (inventory JSON -> hosts, probe output -> :class:`HostReport`, certificate metadata,
redaction) are in :mod:`.inventory` and :mod:`.report`; SSH is in :mod:`.remote`; the commands in
:mod:`.operations`. ``meshctl fleet ...`` and ``meshctl bug-report`` are in :mod:`meshcore.cli.fleet`.
"""

from .inventory import Host, InventoryError, find_host, hosts_from_inventory, load_inventory
from .operations import bug_report, fleet_logs, fleet_restart, fleet_status, scan_archive
from .remote import FabricSession, RemoteError, Result, Session, for_each_host
from .report import (HostReport, build_host_report, certificate_metadata, certificates_from_status,
                     format_table, redact, split_sections, unit_state)

__all__ = [
    "Host", "InventoryError", "find_host", "hosts_from_inventory", "load_inventory",
    "bug_report", "fleet_logs", "fleet_restart", "fleet_status", "scan_archive",
    "FabricSession", "RemoteError", "Result", "Session", "for_each_host",
    "HostReport", "build_host_report", "certificate_metadata", "certificates_from_status", "format_table",
    "redact", "split_sections", "unit_state",
]
