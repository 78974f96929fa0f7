"""``meshctl state migrate``: move a single control plane's state directory into Consul KV for N replicas.

``meshctl state migrate --from-dir STATE_DIR [--consul ADDR] [--prefix P] [--kek-file F] [--dry-run] [-o json]``
copies the CA, issued-certificate record, revocations, join tokens, operator tokens and certificate roles and
imported trust bundles (see :mod:`meshcore.state.migrate` and ``docs/ha-state.md``). Idempotent: a second run
writes nothing and says so. Exit 0 when done (or nothing to do), 1 on an error, 4 when Consul KV holds something
else at a key (a conflict, never overwritten).
"""

from __future__ import annotations

import argparse
import os
import sys

from ._commands import HELP
from ._output import out
from ._output import table as _table

EXIT_CONFLICT = 4


def cmd_migrate(args) -> int:
    from ..ca import load_kek
    from ..catalog._consul_settings import ConsulSettings
    from ..state import ConsulStateBackend
    from ..state.migrate import migrate

    kek = load_kek(args.kek_file)
    settings = ConsulSettings.from_env(**({"address": args.consul} if args.consul else {}))
    backend = ConsulStateBackend(settings, prefix=args.prefix)
    if args.output == "table":
        print(f"{'planning' if args.dry_run else 'migrating'}: {args.from_dir} -> {backend.location} ...",
              file=sys.stderr, flush=True)
    plan = migrate(args.from_dir, backend, kek, dry_run=args.dry_run)

    def render(_) -> None:
        _table([[s.what, s.key, s.action, s.detail] for s in plan.steps], ["STATE", "KEY", "ACTION", "DETAIL"])
        if plan.conflicts:
            print(f"\n{len(plan.conflicts)} conflict(s): Consul KV holds other state there; nothing of it was "
                  "overwritten. Check --prefix (another mesh?) or remove those keys if they are stale.")
        elif not plan.written:
            print(f"\nnothing to do: {plan.target} already holds this state directory's state")
        elif plan.dry_run:
            print(f"\ndry run: {plan.written} step(s) would write; nothing was written")
        else:
            print(f"\nmigrated: {plan.written} step(s) written. Start the control plane replicas with "
                  "--store consul and the same KEK file")

    out(plan.to_json(), args.output, render)
    return EXIT_CONFLICT if plan.conflicts else 0


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``state migrate``."""
    from ..state import DEFAULT_PREFIX

    sp = subparsers.add_parser("state", parents=[common], help=HELP["state"],
                               description="The control plane's shared state (CA, tokens, trust bundles) in "
                                           "Consul KV, for several replicas.")
    sub = sp.add_subparsers(dest="state_command", metavar="{migrate}", required=True)
    mg = sub.add_parser("migrate", parents=[common], help="Copy a state directory into Consul KV (idempotent).",
                        description="Copy a single control plane's state directory into Consul KV under "
                                    "--prefix, sealed as it is with the KEK. Idempotent; conflicts are reported "
                                    f"(exit {EXIT_CONFLICT}), never overwritten. Run it with the control plane "
                                    "stopped.")
    mg.add_argument("--from-dir", required=True, help="the control plane's --state-dir")
    mg.add_argument("--consul", default=None, help="Consul HTTP address (default: $CONSUL_HTTP_ADDR, then "
                                                   "127.0.0.1:8500); token from $CONSUL_HTTP_TOKEN")
    mg.add_argument("--prefix", default=os.environ.get("MESHCORE_STATE_PREFIX", DEFAULT_PREFIX),
                    help=f"Consul KV prefix of the shared state (default: $MESHCORE_STATE_PREFIX, then {DEFAULT_PREFIX})")
    mg.add_argument("--kek-file", default=None, help="the KEK file (default: $MESHCORE_KEK, then $MESHCORE_KEK_FILE)")
    mg.add_argument("--dry-run", action="store_true", help="show what would be written; write nothing")
    mg.set_defaults(fn=cmd_migrate)
