"""The boundary to py-consul: error translation and a raw request helper.

Every call meshcore makes to Consul goes through :func:`consul_errors`, which turns py-consul
and ``requests`` exceptions into meshcore's errors with a message that says which Consul, what
meshcore was doing, and what the operator should check.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Iterator

import consul
import requests
from consul.base import Response

from ..errors import ConsulAuthError, ConsulError, MeshError
from ._consul_settings import ConsulSettings


@contextmanager
def consul_errors(
    settings: ConsulSettings,
    doing: str,
    error: type[MeshError] = ConsulError,
    auth_error: type[MeshError] = ConsulAuthError,
) -> Iterator[None]:
    """Translate failures inside the block into ``error``/``auth_error`` (``raise ... from exc``)."""
    try:
        yield
    except consul.ACLPermissionDenied as exc:
        raise auth_error(auth_message(settings, doing, str(exc))) from exc
    except consul.ConsulException as exc:
        raise error(f"Consul at {settings.address} failed while {doing}: {exc}") from exc
    except requests.RequestException as exc:
        raise error(f"cannot reach Consul at {settings.address} while {doing}: {exc}. "
                    "Check that the Consul agent is running and CONSUL_HTTP_ADDR points at it") from exc


def auth_message(settings: ConsulSettings, doing: str, body: str) -> str:
    reason = (body or "").strip() or "403 Forbidden"
    return (f"Consul at {settings.address} refused the ACL token while {doing} ({reason}). "
            f"Check {settings.token_source}: the token must exist in this datacenter and grant the "
            "needed rights (service:read + node:read for the catalog, key:read/write on the resource "
            "prefix, service:write for agent registrations)")


def raw(client: consul.Consul, method: str, path: str, *, params: list[tuple[str, Any]] | None = None,
        body: Any = None) -> Response:
    """One request with the client's token; returns py-consul's Response(code, headers, body) unchecked.

    Used where py-consul's callbacks lose information (``/v1/txn`` answers 409 with a JSON body)
    or drop the token (py-consul's ``txn.put`` sends none).
    """
    data = json.dumps(body) if body is not None else ""
    headers = client.prepare_headers()
    call = {"GET": client.http.get, "PUT": client.http.put, "DELETE": client.http.delete}[method]
    if method == "GET":
        return call(lambda r: r, path, params=params, headers=headers)
    return call(lambda r: r, path, params=params, data=data, headers=headers)


def check(response: Response, settings: ConsulSettings, doing: str,
          error: type[MeshError] = ConsulError, auth_error: type[MeshError] = ConsulAuthError) -> Response:
    """Raise the meshcore error matching a non-2xx response; return it unchanged otherwise."""
    if response.code == 403:
        raise auth_error(auth_message(settings, doing, str(response.body)))
    if response.code >= 400:
        raise error(f"Consul at {settings.address} answered {response.code} while {doing}: {str(response.body).strip()}")
    return response
