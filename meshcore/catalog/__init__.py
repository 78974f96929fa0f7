"""The service catalog: an immutable model and the sources that fill it (Consul, definition files).

The model and the file source load no network client; the Consul source (py-consul) is imported on
first use of its names, so ``import meshcore.catalog.model`` (or the snapshot) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .definitions import NodeDefinition, ServiceDefinition, load_node_dir, parse_definition
from .files import FileCatalogSource
from .model import Catalog, CatalogUpdate, Node, ServiceInstance, Upstream
from .source import CatalogSource, HealthReporting, SourceHealth

if TYPE_CHECKING:
    from .consul import ConsulCatalogSource, ConsulSettings

_LAZY = {"ConsulCatalogSource": ".consul", "ConsulSettings": ".consul"}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "Catalog", "CatalogUpdate", "Node", "ServiceInstance", "Upstream", "CatalogSource", "HealthReporting", "SourceHealth",
    "ConsulCatalogSource", "ConsulSettings", "FileCatalogSource",
    "NodeDefinition", "ServiceDefinition", "load_node_dir", "parse_definition",
]
