"""Where `make test`'s wall time goes: test durations from a JUnit XML report, summed per file.

    .venv/bin/python -m tests.tooling.durations [test-artifacts/junit.xml] [--top 25]

`make test` writes the report (pytest ``--junitxml``). With ``-n 2 --dist loadfile`` each file runs whole
on one worker, so the per-file sums show which files make the two workers' shares uneven.
Setup and teardown of fixtures are counted with the test that triggered them, as pytest reports them.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path


def per_file(report: Path) -> dict[str, tuple[float, int]]:
    """``{test file: (seconds, tests)}`` from a JUnit XML report."""
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError) as exc:
        raise SystemExit(f"durations: cannot read {report}: {exc}") from exc
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        # "tests.e2e.test_mesh" or "tests.e2e.test_mesh.TestClass": the module is the part up to test_*
        parts = classname.split(".")
        module = next((i for i, p in enumerate(parts) if p.startswith("test_")), len(parts) - 1)
        name = "/".join(parts[: module + 1]) + ".py"
        seconds[name] += float(case.get("time", "0") or 0)
        counts[name] += 1
    return {name: (seconds[name], counts[name]) for name in seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.tooling.durations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", nargs="?", default="test-artifacts/junit.xml", type=Path)
    parser.add_argument("--top", type=int, default=25, help="how many files to list (default 25)")
    args = parser.parse_args(argv)
    files = per_file(args.report)
    total = sum(s for s, _ in files.values())
    rows = sorted(files.items(), key=lambda kv: kv[1][0], reverse=True)
    print(f"{'seconds':>8} {'share':>6} {'tests':>5}  file")
    for name, (secs, count) in rows[: args.top]:
        print(f"{secs:8.1f} {secs / total if total else 0:6.1%} {count:5d}  {name}")
    print(f"{total:8.1f} {'':>6} {sum(c for _, c in files.values()):5d}  all {len(files)} files "
          f"(sum over workers; the wall time is about this over the worker count when they are balanced)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
