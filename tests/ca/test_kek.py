"""load_kek / generate_kek_file: sources, permissions, lengths."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from meshcore.ca import generate_kek_file, load_kek
from meshcore.errors import ConfigError


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_env_base64(tmp_path: Path) -> None:
    key = os.urandom(32)
    assert load_kek(env={"MESHCORE_KEK": base64.b64encode(key).decode()}) == key
    assert load_kek(env={"MESHCORE_KEK": base64.urlsafe_b64encode(key).decode()}) == key


def test_file_raw_and_base64(tmp_path: Path) -> None:
    key = os.urandom(32)
    assert load_kek(_write(tmp_path / "raw", key), env={}) == key
    assert load_kek(str(_write(tmp_path / "b64", base64.b64encode(key) + b"\n")), env={}) == key
    assert load_kek(env={"MESHCORE_KEK_FILE": str(tmp_path / "raw")}) == key


def test_explicit_file_wins_over_env(tmp_path: Path) -> None:
    key = os.urandom(32)
    env = {"MESHCORE_KEK": base64.b64encode(os.urandom(32)).decode()}
    assert load_kek(_write(tmp_path / "k", key), env=env) == key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_group_or_world_readable_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "kek", os.urandom(32), mode)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        load_kek(path, env={})


def test_wrong_length_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly 32"):
        load_kek(_write(tmp_path / "short", base64.b64encode(os.urandom(16))), env={})
    with pytest.raises(ConfigError, match="exactly 32"):
        load_kek(env={"MESHCORE_KEK": base64.b64encode(os.urandom(31)).decode()})
    with pytest.raises(ConfigError, match="neither a raw"):
        load_kek(_write(tmp_path / "junk", b"\xff" * 20), env={})


def test_none_given_is_refused_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MESHCORE_KEK") as err:
        load_kek(env={})
    assert "openssl rand" in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        load_kek(tmp_path / "missing", env={})


def test_generate_kek_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "meshcore" / "kek"
    key = generate_kek_file(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_kek(path, env={}) == key
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_kek_file(path)
    assert load_kek(path, env={}) == key
    assert generate_kek_file(tmp_path / "other") != key
