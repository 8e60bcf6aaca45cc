"""How many SLURM jobs `snakemake --profile slurm` submits for the paper's configuration.

Plans the run (`snakemake -n --profile slurm`, nothing runs, no cluster needed) on
config/config.yaml with its test sets replaced by folders of small dummy PNGs of the benchmark sets'
sizes (Set5: 5 images, BSD100: 100, Urban100: 100; with --div2k, DIV2K's 100 validation images too),
once with the per-image jobs grouped (config cluster.group: true, the default) and once without,
and counts the submissions: one per group job, one per job outside a group (the `all` target runs
in Snakemake itself). DIV2K's validation set is an archive in config/config.yaml, downloaded by one
more CPU job whose images Snakemake lists only after it ran; here it is a folder of the same size,
and the download job is added to the count.

    python -m benchmarks.tools.count_submissions                 # Set5 + BSD100 + Urban100
    python -m benchmarks.tools.count_submissions --div2k         # ... and DIV2K valid
    python -m benchmarks.tools.count_submissions --images-per-gpu-job 40   # sized for another site
    python -m benchmarks.tools.count_submissions --sizes Set5=2 BSD100=3 --degradations g2.0   # small, for tests

Prints a table and, with --json, writes the counts.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path

from benchmarks.harness import write_result

REPO = Path(__file__).resolve().parents[2]
BENCHMARK_SIZES = {"Set5": 5, "BSD100": 100, "Urban100": 100}
DIV2K_VALID = 100
NOT_SUBMITTED = {"all"}  # the default target: no output, no script, run by Snakemake itself

# the smallest valid PNG: 1x1 RGB, one zero pixel
_PNG = b"\x89PNG\r\n\x1a\n" + b"".join(
    len(d).to_bytes(4, "big") + t + d + zlib.crc32(t + d).to_bytes(4, "big")
    for t, d in (
        (b"IHDR", (1).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"),
        (b"IDAT", zlib.compress(b"\x00\x00\x00\x00")),
        (b"IEND", b""),
    )
)


def write_test_sets(root: Path, sizes: dict[str, int]) -> dict[str, str]:
    """Folders of dummy PNGs, one per test set; planning only lists the files."""
    sets = {}
    for name, count in sizes.items():
        folder = root / "benchmarks" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (folder / f"img_{i:03d}.png").write_bytes(_PNG)
        sets[name] = str(folder)
    return sets


def snakemake_env() -> dict[str, str]:
    """The profile without site settings and without conda (planning needs neither)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MZSR_SLURM_"))}
    env.update(MZSR_SLURM_CONDA="0", MZSR_SLURM_ACCOUNT="planning")
    return env


def plan(workdir: Path, configfiles: list[Path], extra: list[str] = (), timeout: float = 900) -> str:
    """The output of `snakemake -n --profile slurm` from the repository root, working in workdir."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--profile",
        "slurm",
        "--directory",
        str(workdir),
        "--configfile",
        *map(str, configfiles),
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=snakemake_env(), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-5000:]}")
    return out


def submissions(dry_run: str) -> Counter:
    """{what: SLURM jobs} of a dry run's listing: group jobs by kind (group name up to its first
    "-"), other jobs by rule. Group members are listed indented under their group's header."""
    counts: Counter = Counter()
    for line in dry_run.splitlines():
        if m := re.search(r"\] Group job (\S+) \(jobs in", line):
            counts[f"group {m.group(1).split('-')[0]}"] += 1
        elif (m := re.match(r"^(?:rule|checkpoint) (\w+):$", line)) and m.group(1) not in NOT_SUBMITTED:
            counts[m.group(1)] += 1
    return counts


def planned_jobs(dry_run: str) -> Counter:
    """{rule: jobs} from the dry run's job stats table (the `all` target included)."""
    counts: Counter = Counter()
    table = dry_run.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    for line in table.splitlines():
        if (m := re.match(r"^(\w+)\s+(\d+)$", line)) and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def count(
    sizes: dict[str, int],
    degradations: list[str] | None = None,
    archive_jobs: int = 0,
    cluster: dict | None = None,
    workdir: Path | None = None,
) -> dict:
    """Submission counts with and without groups for config/config.yaml on test sets of `sizes`
    (`cluster`: settings of the config's cluster section, e.g. images_per_gpu_job)."""
    import yaml

    with tempfile.TemporaryDirectory(prefix="mzsr-count-") as tmp:
        root = Path(workdir or tmp)
        # config files given together are merged: the test sets of config/config.yaml that are not
        # counted point to a folder that does not exist (skipped, with a warning)
        paper_sets = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["test_sets"]
        layer = {
            "test_sets": {**{name: str(root / "absent" / name) for name in paper_sets}, **write_test_sets(root, sizes)}
        }
        if degradations:
            layer["degradations"] = list(degradations)
        result = {"sizes": dict(sizes), "archive_jobs": archive_jobs}
        for label, group in (("ungrouped", False), ("grouped", True)):
            config = root / f"{label}.yaml"
            config.write_text(yaml.safe_dump({**layer, "cluster": {**(cluster or {}), "group": group}}))
            out = plan(root / "run", [REPO / "config" / "config.yaml", config])
            subs = submissions(out)
            if archive_jobs:
                subs["test_set_archive"] += archive_jobs
            result[label] = {
                "submissions": sum(subs.values()),
                "by_kind": dict(sorted(subs.items())),
                "planned_jobs": sum(planned_jobs(out).values()) + archive_jobs,
            }
        return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--div2k", action="store_true", help="add DIV2K's 100 validation images (and their download job)"
    )
    parser.add_argument("--sizes", nargs="+", metavar="SET=N", help="test sets and their image counts instead")
    parser.add_argument("--degradations", nargs="+", help="instead of config/config.yaml's")
    parser.add_argument("--images-per-cpu-job", type=int, help="instead of config/config.yaml's cluster setting")
    parser.add_argument("--images-per-gpu-job", type=int, help="instead of config/config.yaml's cluster setting")
    parser.add_argument("--json", type=Path, help="write the counts here")
    args = parser.parse_args(argv)
    sizes = dict(BENCHMARK_SIZES)
    if args.sizes:
        sizes = {k: int(v) for k, v in (s.split("=", 1) for s in args.sizes)}
    archive_jobs = 0
    if args.div2k:
        sizes["DIV2K_valid"], archive_jobs = DIV2K_VALID, 1
    cluster = {
        k: v
        for k, v in (("images_per_cpu_job", args.images_per_cpu_job), ("images_per_gpu_job", args.images_per_gpu_job))
        if v is not None
    }
    result = count(sizes, args.degradations, archive_jobs, cluster)
    print(
        f"test sets: {', '.join(f'{k} ({v})' for k, v in sizes.items())}"
        + (" + the DIV2K download job" if archive_jobs else "")
    )
    for label in ("ungrouped", "grouped"):
        r = result[label]
        print(
            f"{label:>9}: {r['submissions']:5d} SLURM jobs ({r['planned_jobs']} jobs planned)   "
            + ", ".join(f"{k} {v}" for k, v in r["by_kind"].items())
        )
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
