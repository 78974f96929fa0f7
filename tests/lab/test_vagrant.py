"""vagrant/Vagrantfile is a valid Vagrant configuration (`vagrant validate`), without booting anything.

Needs Vagrant (Debian: `apt-get install -y vagrant`, 2.3.4 in bookworm); skips with that hint otherwise.
No provider is needed: `--ignore-provider` validates the machines' settings without VirtualBox or
libvirt, and no box is downloaded. Vagrant's state goes to a temporary directory, not into vagrant/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VAGRANTFILE = ROOT / "vagrant" / "Vagrantfile"


def _vagrant() -> str:
    found = shutil.which("vagrant")
    if not found:
        pytest.skip("vagrant is not installed (Debian: apt-get install -y vagrant)")
    return found


def _validate(vagrantfile_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, VAGRANT_CWD=str(vagrantfile_dir), VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_NO_COLOR="1")
    return subprocess.run([_vagrant(), "validate", "--ignore-provider", "--no-tty"], env=env, capture_output=True,
                          text=True, timeout=180, cwd=tmp_path)


def test_vagrantfile_validates(tmp_path):
    dot = VAGRANTFILE.parent / ".vagrant"
    existed = dot.exists()
    proc = _validate(VAGRANTFILE.parent, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout
    for host in ("consul", "cp", "vm1", "vm2", "vm3"):
        assert f"==> {host}:" in proc.stdout, proc.stdout
    assert existed or not dot.exists(), "vagrant validate left state in vagrant/ instead of the temporary directory"


def test_validate_catches_a_broken_vagrantfile(tmp_path):
    """The check can fail: the same Vagrantfile with an unknown setting is refused."""
    broken = tmp_path / "broken"
    broken.mkdir()
    text = VAGRANTFILE.read_text()
    anchor = 'Vagrant.configure("2") do |config|\n'
    assert anchor in text
    (broken / "Vagrantfile").write_text(text.replace(anchor, anchor + "  config.vm.no_such_setting = true\n"))
    for extra in ("vars.yml", "provision-consul.sh"):
        shutil.copy(VAGRANTFILE.parent / extra, broken / extra)
    proc = _validate(broken, tmp_path)
    assert proc.returncode != 0
    assert "no_such_setting" in proc.stdout + proc.stderr
