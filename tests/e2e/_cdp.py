"""Headless Chromium driven over the DevTools protocol, for tests that click (the dashboard's click-through).

``--remote-debugging-pipe``: Chromium reads protocol messages on fd 3 and writes on fd 4, each one JSON document
ended by a NUL byte; no port, no websocket client. :class:`Browser` opens one page, evaluates scripts in it (awaiting
promises) and captures screenshots; it is a context manager that stops Chromium when the test is done.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


class CdpError(RuntimeError):
    pass


class Browser:
    def __init__(self, chromium: str, url: str, *, width: int = 1440, height: int = 1900, timeout: float = 60.0):
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="meshcore-cdp-", ignore_cleanup_errors=True)
        to_r, self._to_w = os.pipe()
        self._from_r, from_w = os.pipe()
        # Above any fd the shell or Python may hold, then moved to 3 and 4 by the shell that execs Chromium (bash: dash takes single-digit fds only).
        hi_r, hi_w = fcntl.fcntl(to_r, fcntl.F_DUPFD, 20), fcntl.fcntl(from_w, fcntl.F_DUPFD, 20)
        os.close(to_r)
        os.close(from_w)
        argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}", "--remote-debugging-pipe", url]
        self._log = open(Path(self._profile.name) / "chromium.log", "wb")  # a pipe nobody reads could fill up
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$@" 3<&{hi_r} 4>&{hi_w} {hi_r}<&- {hi_w}>&-', "bash", *argv],
                                     pass_fds=(hi_r, hi_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._log, start_new_session=True)
        os.close(hi_r)
        os.close(hi_w)
        self._buffer = b""
        self._next_id = 0
        self.session = ""
        try:
            page = self._page_target()
            self.session = self.call("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]
        except BaseException:
            self.close()
            raise

    def _page_target(self) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            targets = self.call("Target.getTargets")["targetInfos"]
            pages = [t["targetId"] for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]
            time.sleep(0.2)
        raise CdpError("Chromium opened no page")

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CdpError("no answer from Chromium in time")
            ready, _, _ = select.select([self._from_r], [], [], left)
            if ready:
                chunk = os.read(self._from_r, 1 << 20)
                if not chunk:
                    raise CdpError(f"Chromium closed the pipe: {self._stderr()}")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def _stderr(self) -> str:
        return (Path(self._profile.name) / "chromium.log").read_bytes().decode(errors="replace")[-2000:]

    def call(self, method: str, *, session: bool = False, **params: Any) -> dict:
        """Send one command (to the page's session with ``session``) and wait for its answer (events skipped)."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise CdpError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (a promise is awaited); a thrown error raises :class:`CdpError`.
        While the page is still navigating (its context replaced), it is asked again, up to the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                result = self.call("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                                   returnByValue=True, timeout=int(self.timeout * 1000))
                break
            except CdpError as exc:
                if "context" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CdpError(f"page script failed: {details.get('exception', {}).get('description') or details}")
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        for fd in (self._to_w, self._from_r):
            try:
                os.close(fd)
            except OSError:
                pass
        # Chromium and its helpers (zygote, renderers) share the session it was started in: stop them all.
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._log.close()
        self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Browser", "CdpError"]
