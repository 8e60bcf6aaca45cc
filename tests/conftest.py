"""Shared fixtures: where ../shared/data is, small deterministic images, a small pipeline config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TF_CHECKPOINT = SHARED_DATA / "checkpoints" / "mzsr-official-pretrained" / "Pretrained"
SET14 = SHARED_DATA / "test" / "Set14"


# ------------------------------------------------------------------------------------ which tests run
# `python -m pytest` runs the quick suite (pyproject's addopts: not slow, not slurm); `--full` runs
# every test, as .ci/run and the README's test command do. Tests marked shared_data skip, with the
# reason, where the development data folder is absent.


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        help="run every test: the slow and the SLURM ones too (CI, the README's test command)",
    )


def pytest_configure(config):
    if config.getoption("full"):
        config.option.markexpr = ""


def pytest_collection_modifyitems(config, items):
    if (SHARED_DATA / "test" / "Set14").is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs the project's shared data folder at {SHARED_DATA} (absent on this machine)")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)


def released_demo_config() -> dict:
    """The released-model demo (config/demo_released.yaml) made small: one photo, one degradation,
    bicubic and MZSR."""
    demo = yaml.safe_load((REPO / "config" / "demo_released.yaml").read_text())
    return {
        **demo,
        "test_sets": {"photos": "skimage:chelsea"},
        "degradations": ["g2.0"],
        "methods": ["bicubic", "mzsr"],
        "adapt": {"steps": [0, 1, 10], "schedule": "auto"},
    }


def snakemake_command(workdir: Path, *args: str, python=sys.executable, snakefile=REPO / "Snakefile") -> list[str]:
    """`python -m snakemake ARGS` on this repository's Snakefile (`snakefile=None`: the one Snakemake
    finds in its working directory), working in `workdir`."""
    cmd = [str(python), "-m", "snakemake", *args, "--directory", str(workdir)]
    return cmd if snakefile is None else [*cmd, "-s", str(snakefile)]


def run_snakemake(
    workdir: Path,
    *args: str,
    cwd=None,
    check: bool = False,
    timeout: float = 600,
    python=sys.executable,
    snakefile=REPO / "Snakefile",
    **popen,
) -> subprocess.CompletedProcess:
    """The one way tests run Snakemake: `snakemake_command` as a subprocess (in `cwd`, default
    `workdir`), its output captured; with `check`, a non-zero exit fails the test with the output's tail.
    `popen` (env, start_new_session, ...) goes to subprocess.run."""
    cmd = snakemake_command(workdir, *args, python=python, snakefile=snakefile)
    proc = subprocess.run(cmd, cwd=cwd or workdir, capture_output=True, text=True, timeout=timeout, **popen)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A natural-looking HxWx3 float image in [0, 1]: smooth random field plus edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack(
        [
            0.5 + 0.3 * np.sin(6 * xx + rng.uniform(0, 3)) * np.cos(4 * yy),
            0.5 + 0.25 * np.cos(9 * yy + 5 * xx),
            (xx + yy) / 2,
        ],
        axis=-1,
    )
    img[h // 3 : h // 2, w // 4 : w // 2] += 0.2
    return np.clip(img + 0.02 * rng.standard_normal(img.shape), 0, 1)


# ------------------------------------------------------------------------------------ reliability count
# The cases of docs/reliability.md are the tests of these files; the run prints how many were tried and passed.
RELIABILITY_FILES = (
    "tests/test_bad_inputs.py",
    "tests/test_interruptions.py",
    "tests/test_filesystem.py",
    "tests/test_option_sweep.py",
    "tests/test_stores.py",
)


def pytest_terminal_summary(terminalreporter):
    outcomes: dict[str, str] = {}
    for outcome in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if nodeid.split("::")[0] in RELIABILITY_FILES and outcomes.get(nodeid, "passed") == "passed":
                outcomes[nodeid] = outcome  # a failure in any phase (setup, call, teardown) counts
    if outcomes:
        passed = sum(outcome == "passed" for outcome in outcomes.values())
        terminalreporter.write_line(f"reliability cases: {len(outcomes)} tried, {passed} passed")
