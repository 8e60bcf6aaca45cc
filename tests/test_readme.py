from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    lines = (REPO / "README.md").read_text().splitlines()
    fence = lines.index("```bash")
    demo, test = lines[fence + 1], lines[fence + 2]
    assert "snakemake" in demo and "config/demo_released.yaml" in demo
    assert "pytest" in test
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == test
