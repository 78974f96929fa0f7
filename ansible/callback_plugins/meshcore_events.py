# meshcore: an Ansible stdout callback writing one JSON object per line, for `meshctl install`.
"""Machine-readable progress of a playbook run: one JSON line per play, task and host result.

``meshctl install`` runs ansible-playbook with ``ANSIBLE_STDOUT_CALLBACK=meshcore_events`` and this
directory in ``ANSIBLE_CALLBACK_PLUGINS``, then prints each event as one line as it arrives and a
per-host summary at the end. Events (key ``event``): ``play``, ``task``, ``result`` (``host``,
``status`` ok|changed|failed|ignored|skipped|unreachable, ``task``, ``msg``, ``diff``), ``stats``
(``hosts``: name -> ok, changed, failed, unreachable, skipped, rescued, ignored). Results of
``no_log`` tasks arrive censored by Ansible before they reach a callback.
"""

from __future__ import annotations

import json
import sys

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: meshcore_events
    type: stdout
    short_description: one JSON object per line per play, task and host result (for meshctl install)
    description:
      - Used by C(meshctl install) to show progress and a per-host summary.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "meshcore_events"

    def _emit(self, **event) -> None:
        sys.stdout.write(json.dumps(event, default=str) + "\n")
        sys.stdout.flush()

    # --- plays and tasks -------------------------------------------------------------------------
    def v2_playbook_on_play_start(self, play) -> None:
        self._emit(event="play", name=play.get_name().strip())

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._emit(event="task", name=task.get_name().strip(), handler=False)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._emit(event="task", name=task.get_name().strip(), handler=True)

    # --- results ---------------------------------------------------------------------------------
    def _result(self, result, status: str) -> None:
        res = result._result
        if status == "ok" and res.get("changed"):
            status = "changed"
        msg = res.get("msg") or ""
        if status in ("failed", "unreachable") and not msg:
            msg = res.get("stderr") or res.get("stdout") or ""
        diff = _as_list(res.get("diff"))
        if not diff and isinstance(res.get("results"), list):  # a loop: the items' diffs
            diff = [d for r in res["results"] if isinstance(r, dict) for d in _as_list(r.get("diff"))]
        self._emit(event="result", host=result._host.get_name(), task=result._task.get_name().strip(),
                   action=result._task.action, status=status, msg=str(msg)[:2000], diff=diff or None)

    def v2_runner_on_ok(self, result) -> None:
        self._result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._result(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result) -> None:
        self._result(result, "skipped")

    def v2_runner_on_unreachable(self, result) -> None:
        self._result(result, "unreachable")

    # --- the end ---------------------------------------------------------------------------------
    def v2_playbook_on_stats(self, stats) -> None:
        hosts = {}
        for host in sorted(stats.processed):
            s = stats.summarize(host)
            hosts[host] = {"ok": s["ok"], "changed": s["changed"], "failed": s["failures"],
                           "unreachable": s["unreachable"], "skipped": s["skipped"],
                           "rescued": s["rescued"], "ignored": s["ignored"]}
        self._emit(event="stats", hosts=hosts)

    def v2_playbook_on_no_hosts_matched(self) -> None:
        self._emit(event="warning", msg="no hosts matched")

    def v2_runner_retry(self, result) -> None:
        self._emit(event="retry", host=result._host.get_name(), task=result._task.get_name().strip(),
                   attempt=result._result.get("attempts"), retries=result._result.get("retries"))


def _as_list(diff) -> list:
    if not diff:
        return []
    return diff if isinstance(diff, list) else [diff]
