"""meshctl with an operator client certificate: which URL to call and the TLS context to call it with.

``--cert``/``--key`` (or ``$MESHCORE_CERT``/``$MESHCORE_KEY``) name the files ``meshctl operator
cert issue`` wrote; the server is then the operator API's TLS address (``--server https://...``, or
the ``https`` entry of a local ``controlplane.json`` serving the plain URL), verified against
``--cacert``/``$MESHCORE_CACERT``, the ``ca.pem`` written beside the certificate, or the control
plane's ``ca_file``.
"""

from __future__ import annotations

import json
import os
import ssl
from pathlib import Path

from ..errors import MeshError
from ._state import state_dirs


def _state_files(state_dir: str | None) -> list[Path]:
    return [d / "controlplane.json" for d in state_dirs(state_dir)]


def _local_info(server: str, state_dir: str | None) -> dict:
    for path in _state_files(state_dir):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if server.rstrip("/") in (str(info.get("http", "")).rstrip("/"), str(info.get("https", "")).rstrip("/")):
            return info
    return {}


def client_tls(server: str, state_dir: str | None = None) -> tuple[str, ssl.SSLContext | None]:
    """``(server to call, TLS context)``; ``(server, None)`` when no operator certificate is configured."""
    cert, key = os.environ.get("MESHCORE_CERT"), os.environ.get("MESHCORE_KEY")
    if not cert and not key:
        return server, None
    if not (cert and key):
        raise MeshError("an operator certificate needs both --cert and --key ($MESHCORE_CERT, $MESHCORE_KEY)")
    info = _local_info(server, state_dir)
    if server.startswith("http://"):
        if not info.get("https"):
            raise MeshError(f"{server} is the plain-HTTP operator API; a client certificate is presented on its TLS "
                            "listener: pass --server https://HOST:PORT (the control plane's --operator-tls-bind)")
        server = str(info["https"]).rstrip("/")
    cafile = os.environ.get("MESHCORE_CACERT")
    if not cafile and (Path(cert).parent / "ca.pem").is_file():
        cafile = str(Path(cert).parent / "ca.pem")
    cafile = cafile or info.get("ca_file")
    if not cafile:
        raise MeshError("cannot verify the control plane: pass --cacert FILE (the mesh trust bundle, written as "
                        "ca.pem by `meshctl operator cert issue`) or set $MESHCORE_CACERT")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise MeshError(f"cannot load the operator certificate {cert} / key {key} / CA {cafile}: {exc}") from exc
    return server, ctx


__all__ = ["client_tls"]
