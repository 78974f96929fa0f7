"""Deploying meshcore onto VMs: rendered per-VM files for air-gapped sites and an Ansible inventory.

:mod:`.render` and :mod:`.inventory` are pure (catalog + settings in, bytes or documents out);
:mod:`.sources` is the one IO edge (reading the catalog). ``meshctl render`` and
``meshctl inventory`` (``meshcore/cli/render.py``, ``meshcore/cli/inventory.py``) write the results.
:mod:`.values` (pure) and :mod:`.playbook` (runs ansible-playbook) are ``meshctl install``'s.
"""

from .inventory import build_inventory, datacenter_group, host_vars, service_group, to_ini, to_yaml
from .render import (
    RenderSettings,
    check_bundle,
    manifest_problems,
    render_all,
    render_node,
    select_nodes,
)
from .sources import LoadedCatalog, catalog_spec, load_catalog
from .values import SCHEMA, Key, Layer, Values, known_keys, parse_set, resolve

__all__ = [
    "LoadedCatalog", "RenderSettings", "build_inventory", "catalog_spec", "check_bundle", "datacenter_group",
    "host_vars", "load_catalog", "manifest_problems", "render_all", "render_node", "select_nodes", "service_group",
    "to_ini", "to_yaml",
    # meshctl install values (pure); running the playbooks is meshcore.deploy.playbook
    "SCHEMA", "Key", "Layer", "Values", "known_keys", "parse_set", "resolve",
]
