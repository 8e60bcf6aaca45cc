"""The workflow deployed as Snakemake users deploy a published workflow: a Snakefile of their own, in a
folder of their own, that imports it as a module (`module mzsr: snakefile: ...; use rule * from mzsr`).
It must run there to the same results as from this repository, its rule scripts finding the mzsr
package of this checkout whatever the working directory is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import released_demo_config, run_snakemake

REPO = Path(__file__).resolve().parents[1]

MODULE_SNAKEFILE = """\
configfile: "config/config.yaml"


module mzsr:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from mzsr


onstart:
    mzsr.onstart()
"""


@pytest.mark.slow
def test_the_workflow_runs_as_a_module_to_the_same_table(tmp_path):
    user = tmp_path / "analysis"  # a user's folder, far from this repository
    (user / "config").mkdir(parents=True)
    (user / "config" / "config.yaml").write_text(yaml.safe_dump(released_demo_config()))
    (user / "Snakefile").write_text(MODULE_SNAKEFILE.format(snakefile=REPO / "Snakefile"))
    # --keep-incomplete, as the SLURM profile runs: the workflow's onstart, called by the user's, clears
    # the outputs of the jobs to run before the first starts
    out = run_snakemake(user, "--cores", "2", "--keep-incomplete", snakefile=None, check=True, timeout=900)
    assert "removed before the first starts (--keep-incomplete)" in out.stdout + out.stderr
    direct = tmp_path / "direct"
    direct.mkdir()
    shutil.copy(user / "config" / "config.yaml", direct / "demo.yaml")
    run_snakemake(direct, "--cores", "2", "--configfile", "demo.yaml", check=True, timeout=900)

    tables = [pd.read_csv(d / "results" / "metrics" / "paper_table.csv") for d in (user, direct)]
    pd.testing.assert_frame_equal(*tables)
    assert list(tables[0].columns) == ["degradation", "test_set", "Bicubic", "MZSR(0)", "MZSR(1)", "MZSR(10)"]
    per_image = [pd.read_csv(d / "results" / "metrics" / "per_image.csv") for d in (user, direct)]
    pd.testing.assert_frame_equal(*(t.drop(columns="seconds") for t in per_image))
    markdown = (user / "results" / "metrics" / "paper_table.md").read_text()
    assert "released direct_x2" in markdown and str(REPO) not in markdown
    assert (user / "results" / "report" / "crops" / "photos" / "g2.0" / "chelsea.png").is_file()
    assert (user / "logs" / "benchmarks" / "sr_mzsr" / "photos" / "g2.0" / "chelsea.tsv").is_file()
