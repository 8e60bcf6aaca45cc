"""The oldest Snakemake that pyproject.toml admits runs the workflow too (the rest of the suite runs the
installed one, the newest 9.x release at the time of writing).

From 9.27 a dry run keeps --jobs, which the cluster groups read to tell a cluster run from a local
one (workflow/rules/common.smk, image_group), so a dry run with the SLURM profile lists the group
jobs that a run submits; older 9.x releases list none, hence the floor.

The older Snakemake goes into a virtual environment of its own that sees this environment's packages
(torch, mzsr, the SLURM plugin) behind its own: pip installs only what that release needs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import released_demo_config, run_snakemake

REPO = Path(__file__).resolve().parents[1]


def oldest_snakemake() -> str:
    pyproject = (REPO / "pyproject.toml").read_text()
    floors = set(re.findall(r'"snakemake>=([\d.]+),<10"', pyproject))
    assert len(floors) == 1, f"the workflow and test extras pin different Snakemake floors: {floors}"
    version = floors.pop()
    return version if version.count(".") == 2 else f"{version}.0"


@pytest.fixture(scope="module")
def old_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("oldest_snakemake") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "parent_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    version = oldest_snakemake()
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"snakemake=={version}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = run_snakemake(venv, "--version", python=python, check=True)
    assert found.stdout.strip() == version, found.stdout + found.stderr
    return python


def run(python: Path, workdir: Path, *args: str, env=None) -> str:
    """Snakemake from the repository root (where the profile is) with the older release."""
    proc = run_snakemake(workdir, *args, python=python, cwd=REPO, check=True, timeout=900, env=env)
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_oldest_snakemake_plans_the_cluster_groups(old_python, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MZSR_SLURM_"))}
    env.update(MZSR_SLURM_CONDA="0", MZSR_SLURM_ACCOUNT="planning")
    out = run(
        old_python, tmp_path, "-n", "--profile", "slurm", "--configfile", str(REPO / "config" / "demo.yaml"), env=env
    )
    groups = set(re.findall(r"Group job (\S+) \(jobs in", out))
    assert groups == {f"{kind}-photos-0" for kind in ("inputs", "sr_pretrained", "sr_mzsr", "sr_zssr", "crop")}, out[
        -3000:
    ]


@pytest.mark.slow
def test_the_oldest_snakemake_runs_the_released_demo(old_python, tmp_path):
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(released_demo_config()))
    run(old_python, tmp_path, "--cores", "2", "--configfile", str(tmp_path / "demo.yaml"))
    table = pd.read_csv(tmp_path / "results" / "metrics" / "paper_table.csv")
    assert list(table.columns) == ["degradation", "test_set", "Bicubic", "MZSR(0)", "MZSR(1)", "MZSR(10)"]
    assert (tmp_path / "results" / "report" / "crops" / "photos" / "g2.0" / "chelsea.png").is_file()
