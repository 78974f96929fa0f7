"""The service catalog: an immutable model and the sources that fill it (Consul, definition files)."""

from .consul import ConsulCatalogSource, ConsulSettings
from .definitions import NodeDefinition, ServiceDefinition, load_node_dir, parse_definition
from .files import FileCatalogSource
from .model import Catalog, CatalogUpdate, Node, ServiceInstance, Upstream
from .source import CatalogSource

__all__ = [
    "Catalog", "CatalogUpdate", "Node", "ServiceInstance", "Upstream", "CatalogSource",
    "ConsulCatalogSource", "ConsulSettings", "FileCatalogSource",
    "NodeDefinition", "ServiceDefinition", "load_node_dir", "parse_definition",
]
