"""``meshctl dashboard``: open the control plane's web dashboard in a browser.

Finds the control plane as every meshctl command does (``--server``, ``$MESHCORE_SERVER``, the demo in
./.meshcore-demo, the system one) and the operator token likewise, checks that the token is accepted,
then opens ``<server>/#token=<token>``. The token travels in the URL fragment, which the browser never
sends to a server; the page moves it into the tab's sessionStorage and drops it from the address bar.
``--print-url`` prints that URL (with the token: treat it as a secret); otherwise the URL is printed
without it. Wire it into meshctl with ``register(subparsers, common)``.
"""

from __future__ import annotations

import argparse
import json
import sys
import webbrowser
from urllib.parse import quote

from ..errors import ApiError, MeshError
from ._client import Client, discover_server
from ._run import dispatch
from ._types import MeshctlParser
from ._commands import HELP


def dashboard_url(server: str, token: str | None) -> str:
    """The page's URL, carrying ``token`` in the fragment when there is one."""
    base = server.rstrip("/") + "/"
    return base + (f"#token={quote(token, safe='')}" if token else "")


def cmd_dashboard(args) -> int:
    server = discover_server(args.server, getattr(args, "state_dir", None))
    client = Client(server, token=getattr(args, "token", None), state_dir=getattr(args, "state_dir", None))
    try:
        client.get("/v1/dashboard/summary")  # reachable, and the token is accepted: say so now, not in the browser
    except ApiError as exc:
        if exc.status in (401, 403):
            raise MeshError(f"the control plane at {server} refused the operator token: {exc}. Pass one with "
                            "--token or $MESHCORE_TOKEN (a read-only token is enough for the dashboard)") from exc
        if exc.status == 404:
            raise MeshError(f"the control plane at {server} serves no dashboard (older version?); upgrade it") from exc
        raise
    url = dashboard_url(server, client.token)
    shown = url if args.print_url else dashboard_url(server, None)
    if args.output == "json":
        print(json.dumps({"url": shown, "server": server, "browser": not args.no_browser}, indent=2))
    else:
        print(f"meshcore dashboard: {shown}")
    if not args.no_browser:
        if not webbrowser.open(url, new=2):
            print("meshctl dashboard: no browser could be started here; open the URL above yourself "
                  "(rerun with --print-url to get it with the token)", file=sys.stderr)
    return 0


def register(subparsers, common: argparse.ArgumentParser | None = None) -> None:
    """Add ``dashboard``."""
    desc = ("Open the control plane's web dashboard (service graph, golden signals, proxies, certificates, "
            "alerts) in a browser, signed in with your operator token.")
    sp = subparsers.add_parser("dashboard", parents=[common] if common is not None else [],
                               help=HELP["dashboard"], description=desc)
    if common is None:
        sp.add_argument("--server", help="control plane HTTP API URL")
        sp.add_argument("--token", help="operator token")
        sp.add_argument("-o", "--output", choices=("table", "json"), default="table")
    sp.add_argument("--no-browser", action="store_true", help="only print the URL, do not start a browser")
    sp.add_argument("--print-url", action="store_true",
                    help="print the URL with the operator token in it (a secret: for another machine's browser)")
    sp.set_defaults(fn=cmd_dashboard)


def main(argv=None) -> int:
    p = MeshctlParser(prog="meshctl")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["dashboard", *(sys.argv[1:] if argv is None else argv)])
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
