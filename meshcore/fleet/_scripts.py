"""The commands meshctl runs on each host (POSIX sh + the host's python3, which Ansible needs anyway).

Each prints sections headed ``@@name`` so one SSH round trip carries everything and
:func:`meshcore.fleet.report.split_sections` takes it apart. Nothing here reads a private key or a
join token: certificates leave the host as CERTIFICATE PEM blocks cut out of their files on the host.
"""

from __future__ import annotations

import shlex

UNITS = {"agent": "meshcore-agent", "control-plane": "meshcore-control-plane"}
SHOW_PROPS = "LoadState,ActiveState,SubState,MainPID,NRestarts,ActiveEnterTimestamp,Result"

# Reads status.json and asks Envoy's admin /ready. Prints key=value lines.
_ENVOY_PY = r'''
import json, os, sys, urllib.request
try:
    doc = json.load(open(sys.argv[1]))
except Exception as exc:
    print("status_error=%s" % str(exc).replace("\n", " ")); doc = {}
envoy = doc.get("envoy") or {}
pid = envoy.get("pid")
print("pid=%s" % (pid or ""))
print("pid_alive=%d" % (1 if pid and os.path.exists("/proc/%d" % int(pid)) else 0))
admin = envoy.get("admin") or sys.argv[2]
print("admin=%s" % admin)
try:
    with urllib.request.urlopen("http://%s/ready" % admin, timeout=3) as r:
        print("ready_code=%d" % r.status); print("ready_body=%s" % r.read().decode().strip()[:40])
except urllib.error.HTTPError as exc:
    print("ready_code=%d" % exc.code); print("ready_body=%s" % exc.read().decode(errors="replace").strip()[:40])
except Exception as exc:
    print("ready_code=0"); print("ready_error=%s" % str(exc).replace("\n", " ")[:200])
'''

# Cuts CERTIFICATE blocks out of certificate files (never anything else) and prints {path: [pem...]}.
_CERTS_PY = r'''
import glob, json, os, re, sys
block = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
out = {}
for pattern in sys.argv[1:]:
    for path in sorted(glob.glob(pattern)):
        if not os.path.isfile(path) or os.path.getsize(path) > 1 << 20:
            continue
        try:
            text = open(path, errors="replace").read()
        except OSError:
            continue
        pems = block.findall(text)
        if pems:
            out[path] = pems
print(json.dumps(out))
'''


def as_root(command: str, user: str | None) -> str:
    """``command`` as root: as is when we log in as root, else through ``sudo -n`` (never prompts)."""
    if user in (None, "", "root"):
        return command
    return f"sudo -n sh -c {shlex.quote(command)}"


def status_probe(state_dir: str, default_admin: str = "127.0.0.1:19000") -> str:
    """One shell command printing units, status.json and Envoy's readiness as ``@@`` sections."""
    parts = []
    for key, unit in UNITS.items():
        parts.append(f"echo '@@unit {key}'; systemctl show {unit} --property={SHOW_PROPS} 2>&1")
    status = f"{state_dir.rstrip('/')}/status.json"
    parts.append(f"echo '@@status'; cat {shlex.quote(status)} 2>/dev/null; echo")
    parts.append(f"echo '@@envoy'; python3 -c {shlex.quote(_ENVOY_PY)} {shlex.quote(status)} "
                 f"{shlex.quote(default_admin)} 2>&1")
    parts.append("echo '@@end'")
    return "; ".join(parts)


def journal(unit: str, lines: int) -> str:
    return f"journalctl -u {shlex.quote(unit)} -n {int(lines)} --no-pager -o short-iso 2>&1"


def unit_status() -> str:
    units = " ".join(UNITS.values())
    return f"systemctl status --no-pager --full --lines=0 {units} 2>&1; true"


def certificates(patterns: list[str]) -> str:
    return f"python3 -c {shlex.quote(_CERTS_PY)} " + " ".join(shlex.quote(p) for p in patterns)


def envoy_config_dump(admin: str) -> str:
    url = f"http://{admin}/config_dump"
    py = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10)"
          ".read().decode())")
    return f"python3 -c {shlex.quote(py)} {shlex.quote(url)}"


def control_plane_status(meshctl: str, state_dir: str = "/var/lib/meshcore",
                         server: str = "http://127.0.0.1:15000") -> str:
    """The control plane's own view, through meshctl on its host (the admin token passed by file path)."""
    token = f"{state_dir.rstrip('/')}/admin.token"
    env = (f"if [ -z \"$MESHCORE_TOKEN\" ] && [ -r {shlex.quote(token)} ]; then "
           f"MESHCORE_TOKEN_FILE={shlex.quote(token)}; export MESHCORE_TOKEN_FILE; fi; ")
    opts = f"--server {shlex.quote(server)} -o json 2>&1"
    m = shlex.quote(meshctl)
    return (env + f"echo '@@status'; {m} status {opts}; echo '@@ca'; {m} ca status {opts}; "
            f"echo '@@proxies'; {m} get proxies {opts}; echo '@@end'")
