"""vagrant/Vagrantfile: Ruby that parses, declares consul, cp and vm1..vm3, and the inventory groups site.yml uses.

Vagrant cannot boot VMs here; with ruby installed the Vagrantfile is also evaluated against a small
recording stand-in for Vagrant's config API (what machines, networks, providers and provisioners it
declares). The host list is also read from the Ruby text, so the checks run without ruby too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VAGRANTFILE = ROOT / "vagrant" / "Vagrantfile"
LAB_ONLY = {"lab_consul"}

RECORDER = r'''
require "json"
class Recorder
  attr_reader :calls
  def initialize(path, log) ; @path = path ; @log = log ; end
  def method_missing(name, *args, **kw, &blk)
    n = name.to_s
    if n.end_with?("=")
      @log << { "path" => @path, "set" => n.chomp("="), "value" => args[0] }
      return args[0]
    end
    @log << { "path" => @path, "call" => n, "args" => args.map(&:to_s), "kw" => kw.transform_keys(&:to_s).transform_values(&:to_s) }
    child = Recorder.new("#{@path}.#{n}#{args.empty? ? '' : '(' + args.map(&:to_s).join(',') + ')'}", @log)
    blk.call(child) if blk
    child
  end
  def respond_to_missing?(*) = true
end
module Vagrant
  LOG = []
  def self.configure(version) ; yield Recorder.new("config", LOG) ; end
end
load ARGV[0]
puts JSON.generate({ "log" => Vagrant::LOG, "groups" => MESHCORE_GROUPS, "hosts" => MESHCORE_HOSTS.keys })
'''


def site_groups() -> set[str]:
    plays = yaml.safe_load((ROOT / "ansible" / "playbooks" / "site.yml").read_text())
    groups = set()
    for play in plays:
        groups |= {g.strip() for g in re.split(r"[:,]", play["hosts"]) if g.strip() and g.strip() != "localhost"}
    return groups - LAB_ONLY


def text_hosts_and_groups() -> tuple[list[str], dict[str, list[str]]]:
    text = VAGRANTFILE.read_text()
    hosts_block = re.search(r"MESHCORE_HOSTS = \{(.*?)\n\}", text, re.S).group(1)
    hosts = re.findall(r'^\s*"([\w-]+)"\s*=>\s*\{', hosts_block, re.M)
    groups_block = re.search(r"MESHCORE_GROUPS = \{(.*?)\n\}", text, re.S).group(1)
    groups = {g: re.findall(r'"([\w-]+)"', members)
              for g, members in re.findall(r'^\s*"([\w-]+)"\s*=>\s*\[(.*?)\]', groups_block, re.M)}
    return hosts, groups


def test_the_vagrantfile_declares_the_lab_and_the_groups_site_yml_uses():
    hosts, groups = text_hosts_and_groups()
    assert hosts == ["consul", "cp", "vm1", "vm2", "vm3"]
    assert site_groups() <= set(groups), f"groups site.yml needs but the Vagrantfile lacks: {site_groups() - set(groups)}"
    assert groups["meshcore_control_plane"] == ["cp"]
    assert set(groups["bookinfo"]) == {"vm1", "vm2", "vm3"}
    assert {"vm1", "vm2", "vm3"} <= set(groups["meshcore_vms"])
    assert groups["consul_servers"] == ["consul"]
    for members in groups.values():
        assert set(members) <= set(hosts)


def test_vars_give_every_bookinfo_vm_its_services():
    data = yaml.safe_load((ROOT / "vagrant" / "vars.yml").read_text())
    services = data["meshcore_vagrant_services"]
    _, groups = text_hosts_and_groups()
    for vm in groups["bookinfo"]:
        assert {s["name"] for s in services[vm]} == {"productpage", "details", "reviews", "ratings"}
    hosts = text_hosts_and_groups()[0]
    text = VAGRANTFILE.read_text()
    net = re.search(r'MESHCORE_VAGRANT_NET", "([\d.]+)"', text).group(1)
    for host in hosts:
        last = re.search(rf'"{host}"\s*=>\s*{{\s*ip: "#{{MESHCORE_NETWORK}}\.(\d+)"', text).group(1)
        assert data["meshcore_vagrant_addresses"][host] == f"{net}.{last}"


@pytest.mark.skipif(not shutil.which("ruby"), reason="ruby is not installed (apt-get install ruby): "
                    "the Vagrantfile's syntax and evaluation are not checked")
def test_ruby_parses_and_evaluates_the_vagrantfile(tmp_path):
    proc = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stderr
    script = tmp_path / "recorder.rb"
    script.write_text(RECORDER)
    proc = subprocess.run(["ruby", str(script), str(VAGRANTFILE)], capture_output=True, text=True, timeout=30,
                          cwd=VAGRANTFILE.parent)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    log = out["log"]
    defined = [e["args"][0] for e in log if e.get("call") == "define"]
    assert defined == ["consul", "cp", "vm1", "vm2", "vm3"]
    assert out["groups"] == text_hosts_and_groups()[1]
    providers = {e["args"][0] for e in log if e.get("call") == "provider"}
    assert providers == {"virtualbox", "libvirt"}
    boxes = [e["value"] for e in log if e.get("set") == "box"]
    assert boxes and all("bookworm" in b for b in boxes)
    nets = [e for e in log if e.get("call") == "network"]
    assert len(nets) == 5 and all(n["args"][0] == "private_network" for n in nets)
    ansible = [e for e in log if e.get("call") == "provision" and e["kw"].get("type") == "ansible"]
    assert len(ansible) == 1 and ansible[0]["path"].endswith("define(vm3).vm"), ansible
    sets = {e["set"]: e["value"] for e in log if e["path"].endswith("provision(meshcore)") and "set" in e}
    assert Path(sets["playbook"]) == ROOT / "ansible" / "playbooks" / "site.yml"
    assert sets["limit"] == "all" and sets["groups"] == out["groups"]
    assert Path(sets["extra_vars"]).is_file()
    consul = [e for e in log if e.get("call") == "provision" and e["kw"].get("type") == "shell"]
    assert len(consul) == 5 and (VAGRANTFILE.parent / consul[0]["kw"]["path"]).is_file()
