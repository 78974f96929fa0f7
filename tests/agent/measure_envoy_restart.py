"""Measure how long a SIGKILLed Envoy is gone: from the kill to a new Envoy answering on its listener.

Runs the agent's own supervisor (hot-restart mode through the keeper, default backoffs) over a real Envoy
with a static bootstrap on loopback ports. Prints, per round, the seconds to the new Envoy's first answer
for a first crash (after a healthy run) and for a second crash right after it (a repeated crash).

    .venv/bin/python -m tests.agent.measure_envoy_restart [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from meshcore.agent.config import _default_envoy_path
from meshcore.agent.supervisor import EnvoySupervisor, HotRestart, envoy_command, stable_base_id
from tests.agent.test_hot_restart import _answers, _bootstrap, _free_port, _wait


def _until(check, timeout: float = 60.0) -> float:
    """Seconds until ``check()`` holds (polled every 50 ms by the tests' own wait)."""
    start = time.monotonic()
    _wait(check, timeout, "the measured condition")
    return time.monotonic() - start


def one_round(base: Path, index: int) -> tuple[float, float]:
    d = base / f"r{index}"
    d.mkdir()
    admin, listen = _free_port(), _free_port()
    argv = envoy_command(_default_envoy_path(), _bootstrap(d / "bootstrap.json", admin, listen),
                         log_level="warning", hot_restart=True)
    hot = HotRestart(stable_base_id(f"measure-{index}", d), d / "envoy.json")
    sup = EnvoySupervisor(argv, hot_restart=hot, output=open(d / "envoy.log", "ab"))
    sup.start()
    try:
        _until(lambda: _answers(listen))
        times = []
        for _ in range(2):  # a first crash, then a repeated one
            pid = sup.pid
            assert pid is not None
            os.kill(pid, 9)
            times.append(_until(lambda old=pid: sup.pid not in (None, old) and _answers(listen)))
        return times[0], times[1]
    finally:
        sup.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [one_round(Path(tmp), i) for i in range(args.rounds)]
    first = [r[0] for r in results]
    second = [r[1] for r in results]
    print(f"SIGKILL -> new Envoy answering, first crash:    median {statistics.median(first):.3f}s  "
          f"(rounds: {', '.join(f'{t:.3f}' for t in first)})")
    print(f"SIGKILL -> new Envoy answering, repeated crash: median {statistics.median(second):.3f}s  "
          f"(rounds: {', '.join(f'{t:.3f}' for t in second)})")


if __name__ == "__main__":
    main()
