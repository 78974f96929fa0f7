"""The access log reconciler: follows the JSON access log Envoy writes (where Envoy itself says it
writes, see :mod:`meshcore.agent._access_log`) and counts policy decisions per caller, in its own
thread, for the metrics endpoint. Runs only while metrics are served (nobody else reads the counts).
"""

from __future__ import annotations

from collections.abc import Callable

from meshcore.agent._access_log import AccessLogFollower, PolicyCounts, envoy_access_log_path


class AccessLogReconciler:
    def __init__(self, admin: Callable[[], str],
                 locate: Callable[[str], str | None] = envoy_access_log_path):
        self._admin = admin
        self._locate = locate
        self.follower: AccessLogFollower | None = None

    def start(self) -> None:
        if self.follower is None:
            self.follower = AccessLogFollower(lambda: self._locate(self._admin())).start()

    def counts(self) -> PolicyCounts | None:
        return self.follower.counts() if self.follower is not None else None

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower = None
