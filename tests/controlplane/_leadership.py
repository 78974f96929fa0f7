"""A Leadership handle the test moves by hand (the protocol of meshcore.controlplane._contexts)."""

from __future__ import annotations

from collections.abc import Callable

from meshcore.controlplane.leadership import _Subscribers


class ManualLeadership:
    def __init__(self, replica_id: str, leading: bool = False, leader: str = ""):
        self.replica_id = replica_id
        self._leading = leading
        self._leader = leader
        self._term = 1 if leading else 0
        self._subs = _Subscribers()

    def set(self, leading: bool, leader: str = "") -> None:
        """Become leader (``leader`` ignored) or follower of ``leader``; subscribers hear it as the real one says it."""
        if leading and not self._leading:
            self._term += 1
        self._leading, self._leader = leading, leader
        self._subs.notify(leading)

    def is_leader(self) -> bool:
        return self._leading

    def leader(self) -> str:
        return self.replica_id if self._leading else self._leader

    def term(self) -> int:
        return self._term

    def subscribe(self, fn: Callable[[bool], None]) -> Callable[[], None]:
        return self._subs.add(fn)

    def wait_leader(self, timeout: float | None = None) -> bool:
        return self._leading

    def start(self) -> "ManualLeadership":
        return self

    def stop(self) -> None:
        pass

    def fence(self) -> list[dict]:
        return []

    def status(self) -> dict:
        return {"mode": "manual", "replica": self.replica_id, "leader": self.leader(), "is_leader": self._leading}
