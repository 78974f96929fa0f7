"""The key-encryption key (KEK) that seals the CA's private keys and the join-token store.

The KEK is 32 random bytes. It comes from the environment (``MESHCORE_KEK``, base64) or from a
file (raw 32 bytes, or base64 text) readable by its owner only. Losing it means losing the CA.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from meshcore._files import PRIVATE_DIR_MODE, atomic_create
from meshcore.errors import ConfigError

from ._sealed import KEK_LEN

KEK_ENV = "MESHCORE_KEK"
KEK_FILE_ENV = "MESHCORE_KEK_FILE"

_HOW_TO_MAKE = (
    "create one with `openssl rand -base64 32 > FILE && chmod 600 FILE` "
    "(or meshcore.ca.generate_kek_file) and keep a backup: without it the CA cannot be opened"
)


def _decode_b64(text: str) -> bytes | None:
    """Strict base64 (standard or URL-safe alphabet, whitespace ignored); None when not base64."""
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(compact.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None


def _from_env_value(value: str) -> bytes:
    key = _decode_b64(value)
    if key is None:
        raise ConfigError(f"{KEK_ENV} is not valid base64; it must be the base64 of {KEK_LEN} random bytes; {_HOW_TO_MAKE}")
    if len(key) != KEK_LEN:
        raise ConfigError(
            f"{KEK_ENV} decodes to {len(key)} bytes, a KEK must be exactly {KEK_LEN}; {_HOW_TO_MAKE}"
        )
    return key


def _from_file(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ConfigError(f"KEK file {path} does not exist; {_HOW_TO_MAKE}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read KEK file {path}: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"KEK file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"KEK file {path} is readable by group or others (mode {mode:03o}); "
            f"run `chmod 600 {path}` (and check who may have read it)"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read KEK file {path}: {exc}") from exc
    if len(data) == KEK_LEN:
        return data
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = None
    key = _decode_b64(text) if text is not None else None
    if key is None:
        raise ConfigError(
            f"KEK file {path} holds {len(data)} bytes that are neither a raw {KEK_LEN}-byte key nor base64 text; "
            f"{_HOW_TO_MAKE}"
        )
    if len(key) != KEK_LEN:
        raise ConfigError(
            f"KEK file {path} decodes to {len(key)} bytes, a KEK must be exactly {KEK_LEN}; {_HOW_TO_MAKE}"
        )
    return key


def load_kek(path: str | Path | None = None, env: Mapping[str, str] = os.environ) -> bytes:
    """Return the 32-byte KEK.

    Order: the file ``path`` when given; else ``$MESHCORE_KEK`` (base64); else the file named by
    ``$MESHCORE_KEK_FILE``. Raises :class:`ConfigError` saying how to fix it when none is given, the
    file is group/world readable, or the key has the wrong length.
    """
    if path is not None:
        return _from_file(Path(path))
    value = env.get(KEK_ENV)
    if value:
        return _from_env_value(value)
    file_name = env.get(KEK_FILE_ENV)
    if file_name:
        return _from_file(Path(file_name))
    raise ConfigError(
        f"no key-encryption key given: set {KEK_ENV} (base64 of {KEK_LEN} bytes) or pass a KEK file "
        f"(or set {KEK_FILE_ENV}); {_HOW_TO_MAKE}"
    )


def generate_kek_file(path: str | Path) -> bytes:
    """Write a new random KEK (base64 text) to ``path`` with mode 0600 and return it.

    The parent directory is created with mode 0700 when missing. An existing file is never
    overwritten (that would orphan the CA it protects): :class:`ConfigError`.
    """
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
    key = os.urandom(KEK_LEN)
    try:
        atomic_create(path, base64.b64encode(key) + b"\n")
    except FileExistsError as exc:
        raise ConfigError(
            f"KEK file {path} already exists; refusing to overwrite it (the CA sealed with it would be lost). "
            "Remove it yourself if you really mean to start over."
        ) from exc
    return key
