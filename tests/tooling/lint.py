"""`make lint`: ruff and mypy over meshcore/ and tests/, with a ratchet for what was there before.

Both tools run with the settings in ``pyproject.toml``. Every finding is reduced to a key without
line numbers (``tool|path|code|message``) so that editing a file does not move its old findings.
``tests/tooling/lint-baseline.txt`` lists the findings that predate the ratchet, with counts:

* a finding not in the baseline (or more of one than the baseline allows) fails the run;
* a baseline entry that no longer occurs also fails the run, with the command that shrinks the
  baseline: the file may only get shorter (``--update`` rewrites it, refusing to add entries).

Run: ``python -m tests.tooling.lint`` (``--update`` after fixing old findings, ``-o json`` for scripts).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASELINE = ROOT / "tests" / "tooling" / "lint-baseline.txt"
TARGETS = ("meshcore", "tests")


def _ruff() -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "json", "--no-fix", *TARGETS],
        cwd=ROOT, capture_output=True, text=True,
    )
    if proc.returncode not in (0, 1):
        raise SystemExit(f"ruff failed to run (exit {proc.returncode}):\n{proc.stderr}")
    keys = []
    for item in json.loads(proc.stdout or "[]"):
        path = Path(item["filename"]).resolve().relative_to(ROOT).as_posix()
        keys.append(f"ruff|{path}|{item['code']}|{item['message']}")
    return keys


_MYPY_LINE = re.compile(r"^(?P<path>[^:]+):\d+(?::\d+)?: error: (?P<msg>.*?)(?:  \[(?P<code>[a-z0-9-]+)\])?$")


def _mypy() -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", "--show-error-codes", "meshcore"],
        cwd=ROOT, capture_output=True, text=True,
    )
    if proc.returncode not in (0, 1):
        raise SystemExit(f"mypy failed to run (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    keys = []
    for line in proc.stdout.splitlines():
        m = _MYPY_LINE.match(line.strip())
        if m:
            keys.append(f"mypy|{m['path']}|{m['code'] or 'error'}|{m['msg']}")
    return keys


def _read_baseline() -> Counter[str]:
    counts: Counter[str] = Counter()
    if BASELINE.exists():
        for line in BASELINE.read_text().splitlines():
            if line and not line.startswith("#"):
                count, _, key = line.partition(" ")
                counts[key] += int(count)
    return counts


def _write_baseline(counts: Counter[str]) -> None:
    lines = ["# Findings that predate the lint ratchet: '<count> tool|path|code|message'. This file may only shrink;",
             "# regenerate it with `python -m tests.tooling.lint --update` after fixing some of them."]
    lines += [f"{n} {key}" for key, n in sorted(counts.items()) if n > 0]
    BASELINE.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="ruff + mypy with a shrinking baseline (see module docstring).")
    p.add_argument("--update", action="store_true", help="shrink the baseline to what is still found")
    p.add_argument("--init", action="store_true", help="write the baseline from scratch (only when introducing the ratchet)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    args = p.parse_args(argv)

    found = Counter(_ruff() + _mypy())
    baseline = _read_baseline()
    if args.init:
        _write_baseline(found)
        print(f"baseline written: {sum(found.values())} findings in {BASELINE.relative_to(ROOT)}")
        return 0
    new = {k: n - baseline.get(k, 0) for k, n in found.items() if n > baseline.get(k, 0)}
    gone = {k: n - found.get(k, 0) for k, n in baseline.items() if n > found.get(k, 0)}
    if args.update:
        if new:
            print("refusing to grow the baseline; fix these first:", file=sys.stderr)
            for key in sorted(new):
                print(f"  {key}", file=sys.stderr)
            return 1
        _write_baseline(Counter({k: min(n, found.get(k, 0)) for k, n in baseline.items()}))
        print(f"baseline shrunk by {sum(gone.values())} to {sum(found.values())} findings")
        return 0
    if args.output == "json":
        print(json.dumps({"new": sorted(new), "fixed": sorted(gone), "baseline": sum(baseline.values())}, indent=2))
    else:
        for key in sorted(new):
            tool, path, code, message = key.split("|", 3)
            print(f"{path}: {tool} {code}: {message}  (new: fix it)")
        for key in sorted(gone):
            print(f"fixed, not yet removed from the baseline: {key}")
        if gone and not new:
            print("run `python -m tests.tooling.lint --update` to shrink the baseline")
        if not new and not gone:
            print(f"lint: clean apart from {sum(baseline.values())} baseline findings (ruff + mypy)")
    return 1 if new or gone else 0


if __name__ == "__main__":
    raise SystemExit(main())
