"""``meshctl canary``: progressive delivery run by the control plane, started, watched and aborted from here.

``start`` asks the control plane (``POST /v1/canaries``) to move a service's traffic from a stable
subset to a canary subset step by step, judging the canary by its error rate and p99 latency as the
calling Envoys measure them; then it follows the canary, printing each decision, and exits 0 when it
is promoted and 1 when it is rolled back or aborted. The canary itself runs in the control plane: the
command may exit (``--no-wait``, Ctrl-C) and ``meshctl canary status`` on any host shows it.

Wire it into meshctl with ``register(subparsers, common)``; ``python -m meshcore.cli.canary`` runs it standalone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime

import yaml

from ..api._wire import encode
from ..api.operator import CanaryDecision, CanaryRequest, CanaryStatus
from ..errors import ControlPlaneUnavailable
from ._client import Client, client_for
from ._run import dispatch
from ._commands import HELP
from ._types import MeshctlParser, checked, integer
from ..traffic import canary as sm
from ..traffic import workflows as wf

POLL_S = 0.5
UNREACHABLE_GIVE_UP_S = 120.0

DESCRIPTION = ("Automated canary analysis: shift a service's traffic to a new version step by step while its "
               "error rate and p99 latency, read from Envoy's own stats, stay inside the limits; promote it at "
               "the end, roll it back by itself the moment they do not. Runs in the control plane.")


def _client(args) -> Client:
    return client_for(args)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch).strftime("%H:%M:%S")


def decision_line(service: str, d: CanaryDecision) -> str:
    """One decision as a line for a person: time, action, weights, numbers, reason."""
    nums = []
    if d.requests is not None:
        nums.append(f"{d.requests} req")
    if d.error_rate is not None:
        nums.append(f"{d.error_rate * 100:.2f}% errors")
    if d.p99_ms is not None:
        nums.append(f"p99 {d.p99_ms:.1f}ms")
    head = f"{_when(d.at)}  {service}  {d.action:<8} {d.weight:>3}% -> {d.next_weight:>3}%"
    return head + (f"  [{', '.join(nums)}]" if nums else "") + f"  {d.reason}"


def _steps(st: CanaryStatus) -> str:
    return ",".join(map(str, st.steps))


def _print_state(st: CanaryStatus) -> None:
    spec = st.spec
    p99 = "-" if spec.max_p99_ms is None else f"{spec.max_p99_ms:g}ms"
    print(f"{st.service}: {st.phase}, {spec.canary} at {st.weight}% ({spec.stable} "
          f"{100 - st.weight}%); steps {_steps(st)} every {spec.interval_s:g}s; "
          f"limits: errors {spec.max_error_rate * 100:g}%, p99 {p99}, at least {spec.min_requests} requests")
    if st.reason:
        print(f"  {st.reason}")
    for d in st.decisions:
        print("  " + decision_line(st.service, d))


def _emit(data: CanaryStatus | list[CanaryStatus], fmt: str) -> None:
    wire = encode(data)  # the API's JSON, as the control plane answered it
    if fmt == "json":
        print(json.dumps(wire, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(wire, sort_keys=False), end="")


def follow(client: Client, service: str, seen: int, quiet: bool = False, poll: float = POLL_S) -> CanaryStatus:
    """Print decisions after the first ``seen`` until the canary finishes; return its final state.

    A control plane that is briefly unreachable (a restart) is waited for, up to two minutes."""
    down_since: float | None = None
    while True:
        try:
            st = client.canary(service)
            down_since = None
        except ControlPlaneUnavailable:
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since > UNREACHABLE_GIVE_UP_S:
                raise
            time.sleep(1)
            continue
        for d in st.decisions[seen:]:
            if not quiet:
                print(decision_line(service, d), flush=True)
        seen = len(st.decisions)
        if st.phase != "progressing":
            return st
        time.sleep(poll)


def _exit_code(st: CanaryStatus) -> int:
    return 0 if st.phase == "promoted" else 1


# --- commands ----------------------------------------------------------------------------------------------


def cmd_start(args) -> int:
    client = _client(args)
    st = client.start_canary(CanaryRequest(
        service=args.service, to=args.to, stable=args.stable or None, steps=args.steps, interval=args.interval,
        max_error_rate=args.max_error_rate, max_p99=args.max_p99 or None, min_requests=args.min_requests,
        max_holds=args.max_holds, label=args.label, namespace=args.namespace))
    table = args.output == "table"
    if table:
        spec = st.spec
        print(f"canary {args.service}: {spec.stable} -> {spec.canary} in steps "
              f"{_steps(st)}, {spec.interval_s:g}s each", flush=True)
        for d in st.decisions:
            print(decision_line(args.service, d), flush=True)
    if args.no_wait:
        if table:
            print(f"running in the control plane; follow it with `meshctl canary status {args.service}`")
        else:
            _emit(st, args.output)
        return 0
    try:
        final = follow(client, args.service, len(st.decisions), quiet=not table)
    except KeyboardInterrupt:
        print(f"\nstopped watching; the canary keeps running in the control plane "
              f"(`meshctl canary status {args.service}`, `meshctl canary abort {args.service}`)", file=sys.stderr)
        return 130
    if table:
        print(f"{args.service}: {final.phase}" + (f": {final.reason}" if final.reason else ""))
    else:
        _emit(final, args.output)
    return _exit_code(final)


def cmd_status(args) -> int:
    client = _client(args)
    if args.service:
        st = client.canary(args.service)
        if args.output != "table":
            _emit(st, args.output)
        else:
            _print_state(st)
        return 0
    states = client.canaries()
    if args.output != "table":
        _emit(states, args.output)
        return 0
    if not states:
        print("no canaries; start one with `meshctl canary start SERVICE --to SUBSET`")
        return 0
    rows = [["SERVICE", "PHASE", "FROM", "TO", "WEIGHT", "STEPS", "LAST DECISION"]]
    for st in states:
        last = st.decisions[-1] if st.decisions else None
        rows.append([st.service, st.phase, st.spec.stable, st.spec.canary, f"{st.weight}%", _steps(st),
                     f"{_when(last.at if last else None)} {last.action if last else '-'}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_abort(args) -> int:
    st = _client(args).abort_canary(args.service)
    if args.output != "table":
        _emit(st, args.output)
    else:
        print(f"{args.service}: aborted; all traffic back to {st.spec.stable}")
    return 0


# --- parser -----------------------------------------------------------------------------------------------


def register(subparsers, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``meshctl canary`` to ``subparsers`` (``common`` brings --server, -o and --token)."""
    sp = subparsers.add_parser("canary", parents=[common], help=HELP["canary"],
                               description=DESCRIPTION)
    csub = sp.add_subparsers(dest="canary_command", required=True, metavar="COMMAND")

    p = csub.add_parser("start", parents=[common], help="Start a canary and follow it until promoted or rolled back.",
                        description="Start a canary in the control plane and follow it. Exits 0 when the canary "
                                    "is promoted, 1 when it is rolled back or aborted.",
                        epilog="Example: meshctl canary start reviews --from v1 --to v2 --steps 10,25,50,100 "
                               "--interval 1m --max-error-rate 1% --max-p99 500ms")
    p.add_argument("service", help="the service (Consul service name), e.g. reviews")
    p.add_argument("--to", required=True, metavar="SUBSET", type=checked("subset", wf.check_subset_name),
                   help="the canary subset (new version), e.g. v2")
    p.add_argument("--from", dest="stable", metavar="SUBSET", type=checked("subset", wf.check_subset_name),
                   help="the stable subset (default: the one subset the service's traffic goes to now)")
    p.add_argument("--steps", default="10,25,50,100", type=checked("steps", sm.parse_steps),
                   help="canary weights in percent, rising (default %(default)s)")
    p.add_argument("--interval", default="1m", type=checked("interval", sm.parse_interval),
                   help="how long each step is measured (default %(default)s)")
    p.add_argument("--max-error-rate", default="1%", type=checked("rate", sm.parse_rate),
                   help="roll back above this 5xx share (default %(default)s)")
    p.add_argument("--max-p99", type=checked("duration", sm.parse_ms),
                   help="roll back above this p99 latency, e.g. 500ms (default: no latency limit)")
    p.add_argument("--min-requests", type=integer(low=0), default=20,
                   help="requests a step needs before it is judged (default %(default)s)")
    p.add_argument("--max-holds", type=integer(low=0), default=5,
                   help="intervals in a row with too few requests before rolling back (default %(default)s)")
    p.add_argument("--label", default="version", help="workload label new subsets select on (default %(default)s)")
    p.add_argument("-n", "--namespace", default="default", help="namespace of new resources (default %(default)s)")
    p.add_argument("--no-wait", action="store_true", help="return once started; the canary runs on")
    p.set_defaults(fn=cmd_start)

    p = csub.add_parser("status", parents=[common], help="Show canaries: phase, weight, steps and decisions.",
                        description="Show every canary, or one with its decision history.")
    p.add_argument("service", nargs="?")
    p.set_defaults(fn=cmd_status)

    p = csub.add_parser("abort", parents=[common], help="Stop a canary: all traffic back to the stable subset.",
                        description="Stop a running canary: all traffic back to the stable subset at once.")
    p.add_argument("service")
    p.set_defaults(fn=cmd_abort)
    return sp


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="control plane HTTP API URL (default: $MESHCORE_SERVER, the demo in "
                                         "./.meshcore-demo, then http://127.0.0.1:15000)")
    common.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table", help="output format")
    common.add_argument("--token", help="operator API token (default: discovered as for other commands)")
    parser = MeshctlParser(prog="meshctl", description="Operate a meshcore service mesh.")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)
    return parser


def main(argv=None) -> int:
    """Standalone entry: ``python -m meshcore.cli.canary start reviews --to v2`` (``canary`` optional)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["canary"]:
        argv.insert(0, "canary")
    return dispatch(build_parser().parse_args(argv))


__all__ = ["register", "main", "follow", "decision_line"]


if __name__ == "__main__":
    sys.exit(main())
