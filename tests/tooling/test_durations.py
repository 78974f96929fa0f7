"""tests.tooling.durations sums a JUnit report's test times per file."""

from __future__ import annotations

import pytest

from tests.tooling.durations import main, per_file

REPORT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.e2e.test_mesh" name="test_a" time="10.5"/>
<testcase classname="tests.e2e.test_mesh" name="test_b" time="2.0"/>
<testcase classname="tests.cli.test_get.TestTables" name="test_c" time="0.25"/>
<testcase classname="tests.test_errors" name="test_d" time="1"/>
</testsuite></testsuites>
"""


def test_sums_per_file_and_folds_classes_into_their_module(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(REPORT)
    assert per_file(report) == {
        "tests/e2e/test_mesh.py": (12.5, 2),
        "tests/cli/test_get.py": (0.25, 1),
        "tests/test_errors.py": (1.0, 1),
    }


def test_prints_the_slowest_file_first(tmp_path, capsys):
    report = tmp_path / "junit.xml"
    report.write_text(REPORT)
    assert main([str(report), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-1] == "tests/e2e/test_mesh.py"
    assert lines[2].split()[-1] == "tests/test_errors.py"
    assert "all 3 files" in lines[-1]


def test_an_unreadable_report_says_which_file(tmp_path):
    with pytest.raises(SystemExit, match="cannot read .*missing.xml"):
        per_file(tmp_path / "missing.xml")
