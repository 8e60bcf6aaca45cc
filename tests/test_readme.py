"""The README and docs/ stay honest: the two set-up commands come first and are what CI runs, every
link resolves, and no page points at the development tree or at internal issue numbers."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "models" / "README.md",
    REPO / "config" / "README.md",
    REPO / "CHANGELOG.md",
]


def test_readme_starts_with_the_two_set_up_commands_and_ci_runs_the_second():
    lines = (REPO / "README.md").read_text().splitlines()
    assert lines[0].startswith("# ") and lines[2] == "```bash" and lines[5] == "```"
    demo, test = lines[3], lines[4]
    for command in (demo, test):  # each installs what it needs itself, into the project's venv
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e '.[")
    assert ".[workflow]'" in demo and ".venv/bin/snakemake --cores 2 --configfile config/demo_released.yaml" in demo
    assert (REPO / "config" / "demo_released.yaml").is_file()
    assert ".[test]'" in test and test.endswith(".venv/bin/python -m pytest --full")  # every test, as CI
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == test


def test_readme_is_an_overview():
    assert len((REPO / "README.md").read_text().splitlines()) <= 160


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve_and_no_development_paths_or_issue_numbers(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if not re.match(r"[a-z]+://", target):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
    assert "../shared" not in text, f"{page.name} points at the development tree"
    assert not re.search(r"issue #\d|\(#\d+\)", text), f"{page.name} cites an internal issue number"
