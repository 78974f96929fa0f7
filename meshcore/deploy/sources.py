"""The IO edge of ``meshctl render``/``inventory``: read the catalog once, from files or Consul.

``--catalog files:DIR`` reads Consul service-definition files (one sub-directory per node, as the
control plane's file source does) and keeps the definitions, so rendered service files carry their
checks. ``--catalog consul`` reads Consul once (``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``, ...).
Without ``--catalog``: ``$MESHCORE_CATALOG``, else ``consul`` when ``CONSUL_HTTP_ADDR`` is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from meshcore.catalog.definitions import NodeDefinition
from meshcore.catalog.model import Catalog
from meshcore.errors import ConfigError

CATALOG_HELP = ("files:DIR (Consul service-definition files, one sub-directory per node) or consul "
                "(CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...); default $MESHCORE_CATALOG, else consul when "
                "CONSUL_HTTP_ADDR is set")


@dataclass(frozen=True)
class LoadedCatalog:
    """A catalog read once; ``definitions`` (node name -> files) only for file catalogs."""

    catalog: Catalog
    source: str
    definitions: Mapping[str, NodeDefinition] = field(default_factory=dict)


def catalog_spec(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    """``--catalog``, else ``$MESHCORE_CATALOG``, else ``consul`` when ``CONSUL_HTTP_ADDR`` is set."""
    env = os.environ if env is None else env
    spec = (explicit or env.get("MESHCORE_CATALOG") or "").strip()
    if spec:
        return spec
    if env.get("CONSUL_HTTP_ADDR"):
        return "consul"
    raise ConfigError("no catalog given: pass --catalog files:DIR or --catalog consul "
                      "(or set MESHCORE_CATALOG, or CONSUL_HTTP_ADDR to read Consul)")


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a library logger for one call whose errors we raise ourselves (no double reporting)."""
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(before)


def load_catalog(spec: str, env: Mapping[str, str] | None = None) -> LoadedCatalog:
    """Read the catalog named by ``spec`` once. Raises ConfigError, ValidationError or ConsulError."""
    kind, _, arg = spec.partition(":")
    if kind == "files" and arg:
        from meshcore.catalog.files import FileCatalogSource

        root = Path(arg)
        if not root.is_dir():
            raise ConfigError(f"--catalog {spec}: {root} is not a directory (expected one sub-directory per node)")
        source = FileCatalogSource(root)
        try:
            with _quiet("meshcore.catalog.files"):
                update = source.refresh()
        finally:
            source.close()
        return LoadedCatalog(update.catalog, f"files:{arg}", {d.name: d for d in source.definitions})
    if kind == "consul" and not arg:
        from meshcore.catalog.consul import ConsulCatalogSource, ConsulSettings

        settings = ConsulSettings.from_env(env)
        consul_source = ConsulCatalogSource(settings)
        try:
            catalog, _ = consul_source.read_catalog()
        finally:
            consul_source.close()
        return LoadedCatalog(catalog, f"consul:{settings.address}")
    raise ConfigError(f"--catalog {spec!r}: use files:DIR or consul")


__all__ = ["CATALOG_HELP", "LoadedCatalog", "catalog_spec", "load_catalog"]
