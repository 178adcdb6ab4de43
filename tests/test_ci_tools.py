"""Tests that need external programs: skipped where the programs are missing, failed under CI=true."""

import os

pytest_plugins = "pytester"

INNER = """
import pytest

@pytest.mark.tools("no-such-program-for-sitok")
def test_needs_a_missing_program():
    pass

@pytest.mark.tools("sh")
def test_needs_sh():
    pass
"""


def _run(pytester, monkeypatch, ci):
    with open(os.path.join(os.path.dirname(__file__), "conftest.py"), encoding="utf-8") as fh:
        pytester.makeconftest(fh.read())
    pytester.makeini("[pytest]\nmarkers =\n    tools(*names): needs programs\n")
    pytester.makepyfile(INNER)
    monkeypatch.setenv("CI", ci)
    return pytester.runpytest_inprocess("-q")


def test_missing_program_is_a_skip_off_ci(pytester, monkeypatch):
    _run(pytester, monkeypatch, "").assert_outcomes(passed=1, skipped=1)


def test_missing_program_is_a_failure_on_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, "true")
    result.assert_outcomes(passed=1, errors=1)  # a setup error: the run fails
    result.stdout.fnmatch_lines(["*CI=true and no-such-program-for-sitok not on PATH*"])
