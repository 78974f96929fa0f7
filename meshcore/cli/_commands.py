"""The meshctl commands that live in their own modules, in the order ``meshctl --help`` lists them.

``meshctl --help`` and the commands of :mod:`meshcore.cli.main` (``get``, ``apply``, ...) must start
fast, so :func:`meshcore.cli.main.build_parser` imports a module below only when its command runs
(or its own ``--help`` is asked for); for the others it lists the name with the one-line help
written here. Each module's ``register`` takes its help from :data:`HELP`, so it is written once.
"""

from __future__ import annotations

import argparse

#: (command, module in meshcore.cli, one-line help), in --help order; a module's commands are adjacent.
MODULE_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("ca", "ca", "The mesh CA: state and root rotation."),
    ("certs", "ca", "Certificates the CA issued."),
    ("node", "node", "Node identities: revoke a lost or compromised VM."),
    ("trust-bundle", "security", "Trust bundles: export this domain's, import other domains'."),
    ("operator", "security", "Operator identities: client certificates from the mesh CA."),
    ("traffic", "traffic", "Split, route and switch traffic between versions."),
    ("analyze", "analyze", "Find problems across resources and the catalog (hosts, subsets, selectors, shadowed "
                           "routes, policies that never match)."),
    ("canary", "canary", "Progressive delivery with automatic rollback."),
    ("consul", "consul", "Consul config entries: import them as meshcore resources, check what meshcore does not honour."),
    ("store", "store", "The resource store's health; restore what Consul KV lost (`store restore`)."),
    ("state", "state", "Shared control plane state in Consul KV: `state migrate` from a state directory."),
    ("graph", "graph", "Service graph with request rate, error rate and p99 per edge."),
    ("dashboard", "dashboard", "Open the web dashboard in a browser."),
    ("alerts", "alerts", "Active alerts, alert rules, Prometheus rule export."),
    ("install", "install", "Install meshcore on an inventory's hosts (profiles, --set, -f values.yaml) with the "
                           "Ansible playbooks."),
    ("render", "render", "Render per-VM files for air-gapped sites (Envoy bootstrap, agent config, Consul service "
                         "files, trust bundle)."),
    ("inventory", "inventory", "Ansible inventory from the catalog (also a dynamic inventory script: --list, "
                               "--host H)."),
    ("fleet", "fleet", "Status, logs and restarts on every host over SSH."),
    ("bug-report", "fleet", "Collect config dumps, unit status, logs and certificate metadata from every host "
                            "into one archive."),
)

HELP: dict[str, str] = {name: text for name, _, text in MODULE_COMMANDS}


#: the options of :func:`common_options` that take a value (meshctl finds the command word after them).
VALUE_OPTIONS = frozenset({"--server", "-o", "--output", "--token", "--cert", "--key", "--cacert"})


def common_options(suppress: bool = False) -> argparse.ArgumentParser:
    """The options every meshctl command takes (a parent parser): where the control plane is, how to
    authenticate, the output format. meshctl takes them before the command too (``meshctl --server URL
    status``, as the docs write it): the top-level parser holds the defaults and each command's copy is
    built with ``suppress=True``, so a value given before the command is not reset by the command's default."""
    from ._types import http_url

    def default(value):
        return argparse.SUPPRESS if suppress else value

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", type=http_url, default=default(None),
                        help="control plane HTTP API URL (default: $MESHCORE_SERVER, the demo in "
                             "./.meshcore-demo, then http://127.0.0.1:15000)")
    common.add_argument("-o", "--output", choices=("table", "json", "yaml"), default=default("table"),
                        help="output format (default: table)")
    common.add_argument("--token", default=default(None),
                        help="operator API token (default: $MESHCORE_TOKEN, $MESHCORE_TOKEN_FILE, "
                             "then the control plane state dir's admin.token)")
    common.add_argument("--cert", default=default(None),
                        help="operator client certificate (`meshctl operator cert issue`; $MESHCORE_CERT)")
    common.add_argument("--key", default=default(None), help="its private key ($MESHCORE_KEY)")
    common.add_argument("--cacert", default=default(None),
                        help="trust bundle to verify the control plane with ($MESHCORE_CACERT)")
    return common
