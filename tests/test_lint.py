"""The tree is lint-clean: `ruff check` (pyflakes, import order; pyproject's [tool.ruff]) and `ruff format`
on the Python files, `snakefmt --check` (pyproject's [tool.snakefmt]) on the Snakefile and the rule files.

Both are in the `test` extra; where one is not installed its test is skipped and says so."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    """The tool beside this Python (the venv's), else on PATH; skip when neither has it."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (it is in the test extra: pip install -e '.[test]')")
    return found


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    proc = _run(_tool("ruff"), "check", "--no-cache", "--output-format", "concise", ".")
    assert proc.returncode == 0, (
        f"ruff check found problems (fix them, or `ruff check --fix .`):\n{proc.stdout}{proc.stderr}"
    )


def test_snakefmt_would_change_nothing():
    proc = _run(_tool("snakefmt"), "--check", "--compact-diff", "Snakefile", "workflow/")
    assert proc.returncode == 0, (
        f"snakefmt would reformat (run `snakefmt Snakefile workflow/`):\n{proc.stdout}{proc.stderr}"
    )


def test_ruff_format_would_change_nothing():
    proc = _run(_tool("ruff"), "format", "--check", "--no-cache", ".")
    assert proc.returncode == 0, f"ruff format would reformat (run `ruff format .`):\n{proc.stdout}{proc.stderr}"
