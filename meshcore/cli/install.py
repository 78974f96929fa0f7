"""``meshctl install``: merge a profile's values with -f files and --set, then run the playbooks.

    meshctl install -i INVENTORY --set profile=production --set security.defaultDeny=true
    meshctl install -i INVENTORY -f site-values.yaml --check          # ansible --check --diff
    meshctl install --set profile=demo --show-values -o yaml          # what it would pass, nothing run

Values (schema, merge order, extra-vars) are :mod:`meshcore.deploy.values`; running ansible-playbook
and its progress events are :mod:`meshcore.deploy.playbook`. Invalid values stop everything before
Ansible starts, listing every problem with its source and key path. Wire it into meshctl with
``register(subparsers, common)``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ..deploy import playbook as pb
from ..deploy import values as vals
from ..errors import ConfigError
from ._run import dispatch
from ._types import MeshctlParser
from ._commands import HELP

DESCRIPTION = """\
Install or update meshcore on the hosts of an Ansible inventory, from a profile and your values.

Values merge in this order, later wins: the profile (demo or production; --set profile=NAME, default
production), each -f file in order, each --set in order. Unknown keys and wrong types are refused
before anything runs. The merged values become Ansible extra-vars for meshcore's roles; values you
do not set leave the inventory's variables alone. --show-values prints both and runs nothing.
"""


def _plain(described: str) -> str:
    """A value type's description without the Markdown escape of ``|`` (it is written for docs/deploy.md's table)."""
    return described.replace("\\|", "|")


EPILOG = """\
examples:
  meshctl install -i inventories/mysite --set profile=production
  meshctl install -i inventories/mysite --set security.defaultDeny=true --limit meshcore_control_plane
  meshctl install -i inventories/mysite -f values.yaml --check
  meshctl install --set profile=demo --set ca.leafTTL=2h --show-values -o yaml

known keys (docs/deploy.md describes each):
""" + "\n".join(f"  {k.path:<32} {_plain(k.type.describe())}" for k in vals.SCHEMA)


def register(subparsers, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``meshctl install`` (``common`` brings -o table|json|yaml)."""
    sp = subparsers.add_parser("install", parents=[common], help=HELP["install"],
                               description=DESCRIPTION, epilog=EPILOG,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="one value, dotted key, YAML-typed value (repeatable; after -f files)")
    sp.add_argument("-f", "--values", dest="values_files", action="append", default=[], metavar="FILE",
                    help="YAML values file (repeatable; later files win; - is stdin)")
    sp.add_argument("-i", "--inventory", help="Ansible inventory (file, directory or script); required to run")
    sp.add_argument("--check", action="store_true", help="ansible-playbook --check --diff: show what would change")
    sp.add_argument("--dry-run", "--show-values", dest="show_values", action="store_true",
                    help="print the merged values and the extra-vars, run nothing")
    sp.add_argument("--playbook", default="site.yml",
                    help="playbook of ansible/playbooks (or a path) (default %(default)s)")
    sp.add_argument("--limit", help="only these hosts or groups (ansible-playbook --limit)")
    sp.add_argument("--ansible-dir", help=f"meshcore's ansible directory (default: ${pb.ANSIBLE_DIR_ENV}, else the "
                                          "checkout meshctl runs from)")
    sp.add_argument("--show-skipped", action="store_true", help="also print skipped task results")
    sp.add_argument("-v", "--verbose", action="count", default=0, help="pass -v to ansible-playbook (repeatable)")
    sp.set_defaults(fn=cmd_install)
    return sp


def build_values(args) -> tuple[vals.Values, str]:
    """Merged values from the profile, -f files and --set; also the ansible directory used."""
    ansible_dir = pb.find_ansible_dir(args.ansible_dir)
    layers = [vals.Layer(f, pb.load_values_file(f)) for f in args.values_files]
    layers += [vals.Layer(f"--set {s}", vals.parse_set(s)) for s in args.sets]
    return vals.resolve(layers, pb.load_profiles(ansible_dir)), str(ansible_dir)


def cmd_install(args) -> int:
    values, ansible_dir = build_values(args)
    playbook = pb.resolve_playbook(Path(ansible_dir), args.playbook)
    if args.show_values:
        return _show_values(args, values, playbook)
    if not args.inventory:
        raise ConfigError("say which hosts to install on: -i INVENTORY (see ansible/inventories/example); "
                          "--show-values prints the values without running anything")
    inventory = Path(args.inventory).expanduser()
    if not inventory.exists():
        raise ConfigError(f"-i {args.inventory}: no such inventory")
    run = pb.PlaybookRun(Path(ansible_dir), playbook, str(inventory.resolve()), values.extra_vars(),
                         check=args.check, limit=args.limit, verbose=args.verbose)
    progress = sys.stdout if args.output == "table" else sys.stderr

    def show(event: dict) -> None:
        for line in pb.format_event(event, show_skipped=args.show_skipped, show_diff=args.check):
            print(line, file=progress, flush=True)

    def text(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    mode = "check mode (--check --diff), nothing changes" if args.check else "applying"
    print(f"==> meshctl install: profile {values.profile}, {playbook.name} on {inventory}"
          f"{' --limit ' + args.limit if args.limit else ''}; {mode}", file=progress, flush=True)
    result = pb.run_playbook(run, show, text)
    summary = pb.summarize(result, profile=values.profile, playbook=playbook.name, inventory=str(inventory),
                           check=args.check, limit=args.limit)
    if args.output == "json":
        print(json.dumps(summary, indent=2, sort_keys=True))
    elif args.output == "yaml":
        print(yaml.safe_dump(summary, sort_keys=False), end="")
    else:
        print("\nRECAP", file=progress)
        for host, s in summary["hosts"].items():
            print(f"  {host:<12} ok={s['ok']} changed={s['changed']} failed={s['failed']} "
                  f"unreachable={s['unreachable']} skipped={s['skipped']}", file=progress)
    if result.failed_hosts:
        print(f"meshctl install: failed on {', '.join(result.failed_hosts)}; the FAILED lines above say why. "
              "Fix it and run the same command again (the playbooks are idempotent).", file=sys.stderr)
        return 1
    if not result.ok:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        print(f"meshctl install: ansible-playbook exited {result.returncode}"
              f"{' before any host ran' if not result.hosts else ''}:\n{tail}", file=sys.stderr)
        return 1
    return 0


def _show_values(args, values: vals.Values, playbook: Path) -> int:
    data = {
        "profile": values.profile,
        "values": values.nested(),
        "origins": dict(sorted(values.origins.items())),
        "extra_vars": values.extra_vars(),
        "playbook": str(playbook),
    }
    if args.output == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:  # table and yaml: YAML reads best here
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def main(argv=None) -> int:
    """``python -m meshcore.cli.install`` (the same as ``meshctl install``)."""
    from ._commands import common_options

    p = MeshctlParser(prog="meshctl")
    register(p.add_subparsers(dest="command", required=True), common_options())
    return dispatch(p.parse_args(["install", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
