"""How the per-image jobs travel to a cluster: group jobs, counted from `snakemake -n --profile slurm`.

No cluster is needed: a dry run with the SLURM profile forms the same group jobs that a run submits
(tests/test_slurm.py submits them to a real SLURM). benchmarks/tools/count_submissions.py counts them for
the paper's configuration; here it runs at small size, and a rerun after one image changed is
planned to submit only that image's jobs.
"""

from __future__ import annotations

import importlib.util
import math
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from benchmarks.tools import count_submissions
from conftest import run_snakemake

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "micro.yaml"
PER_IMAGE_RULES = ("lr_image", "sr_bicubic", "sr_pretrained", "sr_mzsr", "sr_zssr", "crop")
GROUP_OF = {
    "lr_image": "inputs",
    "sr_bicubic": "inputs",
    "sr_pretrained": "sr_pretrained",
    "sr_mzsr": "sr_mzsr",
    "sr_zssr": "sr_zssr",
    "crop": "crop",
}
CPU_GROUPS, GPU_GROUPS = ("inputs", "crop"), ("sr_pretrained", "sr_mzsr", "sr_zssr")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="needs snakemake-executor-plugin-slurm (pip install -e '.[test]')",
)


def group_listing(dry_run: str) -> dict[str, list[tuple[str, dict[str, str]]]]:
    """{group name: [(rule, wildcards)]} of the group jobs in a dry run's listing."""
    groups, current, rule = defaultdict(list), None, None
    for line in dry_run.splitlines():
        if m := re.search(r"\] Group job (\S+) \(jobs in", line):
            current = m.group(1)
        elif m := re.match(r"^(\s*)(?:rule|checkpoint) (\w+):$", line):
            if not m.group(1):
                current = None  # a job outside any group
            rule = m.group(2)
        elif current and (m := re.match(r"^\s+wildcards: (.*)$", line)):
            groups[current].append((rule, dict(kv.split("=", 1) for kv in m.group(1).split(", "))))
    return dict(groups)


def test_counts_of_the_paper_configuration_at_small_size():
    """The count script on config/config.yaml with two small test sets: ungrouped, one SLURM job
    per job; grouped, one per chunk of images x degradations of a test set and kind, the same jobs."""
    sizes, degradations = {"Set5": 3, "BSD100": 4}, ["g2.0", "gb1.3"]
    per_cpu, per_gpu = 5, 3
    result = count_submissions.count(
        sizes, degradations, cluster={"images_per_cpu_job": per_cpu, "images_per_gpu_job": per_gpu}
    )
    units = {name: n * len(degradations) for name, n in sizes.items()}  # per-image jobs of one rule
    ungrouped, grouped = result["ungrouped"]["by_kind"], result["grouped"]["by_kind"]
    singles = {k: v for k, v in ungrouped.items() if k not in PER_IMAGE_RULES}
    assert {"train_images", "pretrain", "meta_train", "aggregate"} <= set(singles)
    assert all(ungrouped[rule] == sum(units.values()) for rule in PER_IMAGE_RULES), ungrouped
    expected = {
        f"group {kind}": sum(math.ceil(u / (per_cpu if kind in CPU_GROUPS else per_gpu)) for u in units.values())
        for kind in CPU_GROUPS + GPU_GROUPS
    }
    assert grouped == {**singles, **expected}
    assert result["grouped"]["planned_jobs"] == result["ungrouped"]["planned_jobs"]  # grouping changes no job
    assert result["grouped"]["submissions"] == sum(grouped.values()) < result["ungrouped"]["submissions"]


def write_image(path: Path, seed: int, size: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def snakemake(workdir: Path, *args: str, profile: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    """Snakemake from the repository root (where the profile is) on workdir's micro.yaml."""
    profile_args = ("--profile", "slurm") if profile else ()
    return run_snakemake(
        workdir,
        *args,
        "--configfile",
        str(workdir / "micro.yaml"),
        *profile_args,
        cwd=REPO,
        check=check,
        timeout=300,
        env=count_submissions.snakemake_env(),
    )


@pytest.fixture(scope="module")
def finished_micro(tmp_path_factory):
    """The micro pipeline on images a, b, c as if it had run: every output present and recorded
    (empty files, then snakemake --touch), so that a dry run plans nothing. Shared by the tests
    below, which each change image b (and so plan or run the same jobs)."""
    tmp_path = tmp_path_factory.mktemp("finished_micro")
    for i, name in enumerate("abc"):
        write_image(tmp_path / "test_images" / "tiny" / f"{name}.png", seed=i)
    config = yaml.safe_load(MICRO.read_text())
    config["cluster"] = {"images_per_gpu_job": 2}  # a and b in one GPU chunk, c in the next
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(config))
    plan = snakemake(tmp_path, "-n", "--cores", "1", profile=False).stdout
    for line in plan.splitlines():
        if m := re.match(r"^\s+output: (.*)$", line):
            for out in (tmp_path / o.strip() for o in m.group(1).split(",")):
                if out.name == "train":  # the directory() output of the training images
                    out.mkdir(parents=True, exist_ok=True)
                else:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.touch()
    snakemake(tmp_path, "--touch", "--cores", "1", profile=False)
    dry = snakemake(tmp_path, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr
    return tmp_path


def test_a_rerun_after_one_image_changed_submits_only_its_jobs(finished_micro):
    """Changing image b plans b's per-image jobs, in group jobs that hold nothing else, and the
    tables; nothing of a or c."""
    write_image(finished_micro / "test_images" / "tiny" / "b.png", seed=7)
    out = snakemake(finished_micro, "-n").stdout
    groups = group_listing(out)
    assert {name.split("-")[0] for name in groups} == set(CPU_GROUPS + GPU_GROUPS)
    for name, jobs in groups.items():
        assert name.endswith("-tiny-0"), name  # b is the second image: the first chunk of every kind
        assert sorted(rule for rule, _ in jobs) == sorted(r for r, g in GROUP_OF.items() if g == name.split("-")[0])
        assert all(w["image"] == "b" for _, w in jobs), (name, jobs)
    subs = count_submissions.submissions(out)
    assert subs == {**{f"group {kind}": 1 for kind in CPU_GROUPS + GPU_GROUPS}, "aggregate": 1, "plot_steps": 1}


def test_with_keep_incomplete_the_outputs_of_jobs_to_run_go_first(finished_micro):
    """As the SLURM profile runs (--keep-incomplete), the outputs of the jobs that are to run are
    removed before the first starts: a job that never ran (here: downstream of a failed one) keeps
    no result of an earlier run, and the jobs that are not to run keep theirs."""
    (finished_micro / "test_images" / "tiny" / "b.png").write_bytes(b"not an image")  # lr_image of b fails
    proc = snakemake(finished_micro, "--cores", "1", "--keep-incomplete", "--keep-going", profile=False, check=False)
    assert proc.returncode != 0
    assert "Outputs of the 8 jobs to run removed" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    jobs = finished_micro / "results" / "metrics" / "jobs" / "tiny" / "g2.0"
    for method in ("bicubic", "pretrained", "mzsr", "zssr"):
        assert not (jobs / method / "b.csv").exists(), method
        assert (jobs / method / "a.csv").exists() and (jobs / method / "c.csv").exists(), method
    assert not (finished_micro / "results" / "metrics" / "summary.csv").exists()
