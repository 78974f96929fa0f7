"""``meshctl alerts``: the mesh's active alerts, the rules in force, and the rules as a Prometheus rule file.

* ``meshctl alerts [list] [-o table|json|yaml] [--state pending|firing]``: pending and firing alerts from
  the control plane (``GET /v1/alerts``);
* ``meshctl alerts rules [-o ...]``: the effective rules, shipped defaults included (``GET /v1/alerts/rules``);
* ``meshctl alerts export [-f rules.yaml ...] [--from-server] [--no-defaults] [--window 5m] [--out FILE]``:
  a Prometheus rule file (PromQL over the series the agents and the control plane export) for the
  shipped defaults, overridden by the control plane's rules (``--from-server``) and then by the
  AlertRules in the given files. Works offline unless ``--from-server``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..api._wire import encode
from ..api.operator import AlertRuleView, AlertView
from ..errors import MeshError
from ..observe.alerts import Rule, effective_rules
from ..observe.prom_rules import DEFAULT_WINDOW, NO_SERIES, render_rule_file
from ._client import Client, client_for
from ._run import dispatch
from ._commands import HELP
from ._types import MeshctlParser, duration_text

OUTPUTS = ("table", "json", "yaml")
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def _client(args) -> Client:
    return client_for(args)


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _emit(data, output: str, table) -> None:
    if output == "json":
        print(json.dumps(encode(data), indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(encode(data), sort_keys=False), end="")
    else:
        print(table(data))


def render_alerts(alerts: list[AlertView]) -> str:
    if not alerts:
        return "No active alerts."
    rows = [("STATE", "SEVERITY", "ALERT", "LABELS", "VALUE", "SINCE", "SUMMARY")]
    for a in sorted(alerts, key=lambda a: (a.state != "firing", _SEVERITY_ORDER.get(a.severity, 9), a.name)):
        labels = ",".join(f"{k}={v}" for k, v in sorted(a.labels.items()) if k not in ("alertname", "severity"))
        rows.append((a.state, a.severity, a.name, labels or "-", a.value_text or f"{a.value:g}",
                     a.fired_at or a.active_since or "-", str(a.annotations.get("summary", ""))))
    return _table(rows)


def render_rules(rules: list[AlertRuleView]) -> str:
    rows = [("NAME", "SIGNAL", "CONDITION", "FOR", "SEVERITY", "STATE", "ORIGIN")]
    for r in rules:
        cond = "-" if not r.signal else f"{r.op} {r.threshold}"
        match = ",".join(f"{k}={v}" for k, v in sorted(r.match.items()))
        signal = (r.signal or "-") + (f"{{{match}}}" if match else "")
        origin = r.origin + (" (overrides default)" if r.overrides_default else "")
        rows.append((r.name, signal, cond, r.for_text, r.severity, "disabled" if r.disabled else "enabled", origin))
    return _table(rows)


def cmd_list(args) -> int:
    _emit(_client(args).alerts(getattr(args, "state", None) or ""), args.output, render_alerts)
    return 0


def cmd_rules(args) -> int:
    _emit(_client(args).alert_rules(), args.output, render_rules)
    return 0


def export_rules(files: list[str], *, defaults: bool = True,
                 server_rules: list[AlertRuleView] | None = None) -> list[Rule]:
    """The rules to export: defaults (or the control plane's effective rules), then the files' AlertRules."""
    from ..resources.loader import load_files

    resources = load_files(files) if files else []
    base = [Rule.from_view(r) for r in server_rules] if server_rules is not None else []
    from_files = effective_rules(resources, defaults=False)
    if server_rules is None:
        merged = {r.name: r for r in effective_rules([], defaults=defaults)}
    else:
        merged = {r.name: r for r in base if defaults or r.origin != "default"}
    merged.update({r.name: r for r in from_files})
    return sorted(merged.values(), key=lambda r: r.name)


def cmd_export(args) -> int:
    server_rules = _client(args).alert_rules() if args.from_server else None
    rules = export_rules(args.filename or [], defaults=not args.no_defaults, server_rules=server_rules)
    enabled = [r for r in rules if not r.disabled and r.signal and r.signal not in NO_SERIES]
    meshcore_only = sorted(r.name for r in rules if not r.disabled and r.signal in NO_SERIES)
    text = render_rule_file(rules, window=args.window)
    if args.out:
        from .._files import atomic_write

        try:
            atomic_write(Path(args.out), text, 0o644)
        except OSError as exc:
            raise MeshError(f"cannot write the rule file {args.out}: {exc}") from exc
        print(f"wrote {len(enabled)} alerting rule(s) to {args.out}; check it with `promtool check rules {args.out}` "
              "and add it to rule_files in prometheus.yml", file=sys.stderr)
        if meshcore_only:
            print(f"left out (no Prometheus series; meshcore evaluates them): {', '.join(meshcore_only)}",
                  file=sys.stderr)
    else:
        print(text, end="")
    return 0


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``alerts`` (``list`` by default), ``alerts rules`` and ``alerts export``."""
    sp = subparsers.add_parser("alerts", parents=[common], help=HELP["alerts"],
                               description="Pending and firing alerts the control plane evaluates (AlertRule "
                                           "resources plus the shipped defaults).")
    sp.add_argument("--state", choices=("pending", "firing"), help="only alerts in this state")
    sp.set_defaults(fn=cmd_list)
    sub = sp.add_subparsers(dest="alerts_command", metavar="{list,rules,export}")
    ls = sub.add_parser("list", parents=[common], help="Pending and firing alerts (the default).")
    ls.add_argument("--state", choices=("pending", "firing"), help="only alerts in this state")
    ls.set_defaults(fn=cmd_list)
    rl = sub.add_parser("rules", parents=[common], help="The rules in force, shipped defaults included.")
    rl.set_defaults(fn=cmd_rules)
    ex = sub.add_parser("export", parents=[common], help="Write the rules as a Prometheus rule file.",
                        description="Write the alert rules as a Prometheus rule file: the shipped defaults, "
                                    "overridden by the control plane's rules (--from-server) and by the AlertRules "
                                    "in -f files (same name replaces; disabled: true drops).")
    ex.add_argument("-f", "--filename", action="append", metavar="FILE",
                    help="AlertRule YAML file or directory (repeatable; other kinds in it are ignored)")
    ex.add_argument("--from-server", action="store_true", help="start from the control plane's effective rules")
    ex.add_argument("--no-defaults", action="store_true", help="leave out the shipped default rules")
    ex.add_argument("--window", default=DEFAULT_WINDOW, type=duration_text(), help="rate() window of the expressions (default %(default)s)")
    ex.add_argument("--out", help="write the rule file here (default: stdout)")
    ex.set_defaults(fn=cmd_export)


def main(argv=None) -> int:
    p = MeshctlParser(prog="meshctl")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server")
    common.add_argument("--token")
    common.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    register(p.add_subparsers(dest="command", required=True), common)
    args = p.parse_args(["alerts", *(sys.argv[1:] if argv is None else argv)])
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
