"""A Consul HTTP API test double (see :mod:`tests.consul_double.server` for what it covers).

Use ``ConsulDouble`` from Python, the ``consul_http``/``consul_acl`` fixtures from
``tests.consul_double.pytest_plugin``, or run it as a service:
``python -m tests.consul_double --bind 127.0.0.1:8500 --node NAME [--acl-token T]``.
"""

from .server import ConsulDouble

__all__ = ["ConsulDouble"]
