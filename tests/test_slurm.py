"""Cluster execution: the SLURM profile in slurm/, and `snakemake --profile slurm` against a real SLURM.

The profile tests need only the executor plugin. The cluster tests start a single-node SLURM 22.05
on 127.0.0.1 (tests/slurm_cluster.py: munge, MariaDB, slurmdbd, slurmctld, slurmd, two fake GPUs),
installing its Debian packages first where they are missing; they skip, saying why, where that
cannot be done (not root, no apt-get, a real SLURM installation on the machine).

One run of the micro pipeline (tests/micro.yaml, with longer training so that it can be interrupted)
goes through `snakemake --profile slurm` from the repository root, with test overrides layered on
top as a second profile, and is interrupted three times on the way:
  1. the pre-training job is cancelled with scancel after its first checkpoint: Snakemake retries
     it (the profile's `retries`), and the retry resumes from that checkpoint;
  2. the retried pre-training job is requeued with `scontrol requeue` after its next checkpoint:
     SLURM restarts it (the profile's `slurm-requeue`), and it resumes again;
  3. Snakemake itself is interrupted (SIGINT, as Ctrl-C) while meta-training runs after a
     checkpoint: it cancels its SLURM jobs; the same command run again finishes the pipeline, and
     meta-training resumes from its checkpoint.
Then sacct tells which SLURM jobs ran: every submission that the dry run planned exactly once to
completion (the per-image jobs in group jobs: 14 submissions for the micro pipeline, 21 without
groups), the network rules on the GPU partition with a GPU (CUDA_VISIBLE_DEVICES set inside the
job), a group job asking for one job's CPUs, memory and GPU and the sum of its jobs' run times. A
training job that resumed keeps the log rows of the run before it up to the checkpoint it resumed
from (they are compared with a copy taken at the interruption); one that started over would have
rewritten them. One more job goes through the profile's site settings for a cluster that takes GPU
requests only with --gres (the partition gresonly refuses --gpus), and no process that the test
started, directly or through SLURM, is left. Last, meta-training runs again on two processes (one
SLURM job of two tasks with a GPU each, started by srun, gloo between them), one of them killed on
the way: the job ends at once naming the rank, the retry resumes, and the weights equal the
one-process run's.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from benchmarks.tools import count_submissions
from mzsr import facts
from mzsr.files.checkpoints import load_weights
import slurm_cluster
from conftest import snakemake_command

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "slurm" / "config.yaml"
MICRO = REPO / "tests" / "micro.yaml"
# methods mzsr_kgan, zssr_kgan (not in the demo); the kernels' estimate on a GPU only with KernelGAN
BLIND_GPU_RULES = {facts.ESTIMATE_RULES["kernelgan"], "sr_mzsr_kgan", "sr_zssr_kgan"}
DEMO_GPU_RULES = set(facts.GPU_RULES) - BLIND_GPU_RULES  # the network rules of the demo's run
GPU_GROUPS = {"sr_pretrained", "sr_mzsr", "sr_zssr"}  # group kinds (workflow/rules/common.smk); blind: BLIND_GPU_RULES
JOB_PREFIX = "mzsrtest"  # MZSR_SLURM_JOB_PREFIX of the test run
# Long enough that each training job is still running when the test interrupts it after its first
# checkpoint (a few tenths of a second into training), short enough to keep the run quick.
PRETRAIN_STEPS, PRETRAIN_CHECKPOINT_EVERY = 80, 5
META_ITERATIONS, META_CHECKPOINT_EVERY = 300, 2  # long enough to be caught running on a quiet machine
# Layered on top of slurm/ by the tests: status checks from 2 s on (the plugin waits 40 s before its
# first by default, which would dominate a run of short jobs).
TEST_OVERRIDES = {"slurm-init-seconds-before-status-checks": 2, "latency-wait": 10}
RUN_TIMEOUT = 420  # seconds for one snakemake invocation

pytestmark = pytest.mark.slurm

PLUGIN_MISSING = (
    None
    if importlib.util.find_spec("snakemake_executor_plugin_slurm")
    else ("needs snakemake-executor-plugin-slurm (in the test extra: pip install -e '.[test]')")
)
needs_plugin = pytest.mark.skipif(PLUGIN_MISSING is not None, reason=str(PLUGIN_MISSING))


def profile_env(**site) -> dict[str, str]:
    """This environment without SLURM job variables, GPUs or site settings, plus `site`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "MZSR_SLURM_")) and k != "CUDA_VISIBLE_DEVICES"
    }
    env.update(site)
    return env


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    """`snakemake --profile slurm ...` as run from the repository root (cwd=REPO), working in workdir."""
    return snakemake_command(workdir, *args, "--profile", "slurm", snakefile=None)


def job_blocks(output: str) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(rule, wildcards, resources) of every job in a Snakemake job listing (group members included:
    they are listed indented under their group)."""
    jobs = []
    for line in output.splitlines():
        if m := re.match(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):$", line):
            jobs.append((m.group(1), {}, {}))
        elif jobs and (m := re.match(r"^\s+(wildcards|resources): (.*)$", line)):
            target = jobs[-1][1] if m.group(1) == "wildcards" else jobs[-1][2]
            target.update(kv.split("=", 1) for kv in m.group(2).split(", "))
    return jobs


def write_test_image(path: Path, seed: int, size: int = 64) -> None:
    import skimage.data

    photo = skimage.data.astronaut()
    y, x = np.random.default_rng(seed).integers(0, photo.shape[0] - size, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo[y : y + size, x : x + size]).save(path)


def log_rows(log_csv: Path) -> list[dict[str, str]]:
    with open(log_csv, newline="") as f:
        return list(csv.DictReader(f))


class Interruption:
    """A training job's state when the test interrupted it: the step of the checkpoint on disk and a
    copy of the training log (rows 1..step and perhaps a few more)."""

    def __init__(self, work_dir: Path, job: str):
        self.job = job
        self.step = int(torch.load(work_dir / "last.pt", map_location="cpu", weights_only=True)["step"])
        self.rows = log_rows(work_dir / "log.csv")
        assert len(self.rows) >= self.step > 0, (self.step, len(self.rows))

    def resumed_in(self, final_log: Path, total: int) -> bool:
        """Whether the finished log continued this run: the rows up to its checkpoint are the very
        rows this run wrote (with its timings), and the steps are 1..total without a gap."""
        final = log_rows(final_log)
        assert [int(r["step"]) for r in final] == list(range(1, total + 1)), f"{final_log}: steps are not 1..{total}"
        return final[: self.step] == self.rows[: self.step]


# ------------------------------------------------------------------------------------ the profile


def read_profile(monkeypatch, **site) -> dict:
    """slurm/config.yaml read the way Snakemake reads it (YTE, then YAML), in an environment
    without site settings except `site`."""
    import yte

    for key in [k for k in os.environ if k.startswith("MZSR_SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in site.items():
        monkeypatch.setenv(key, value)
    with open(PROFILE) as f:
        return yte.process_yaml(f, require_use_yte=True)


def test_profile_settings(monkeypatch):
    """What the issue asks of the profile."""
    profile = read_profile(monkeypatch)
    assert profile["executor"] == "slurm"
    assert profile["jobs"] >= 1 and profile["latency-wait"] >= 30 and profile["retries"] >= 1
    assert profile["rerun-incomplete"] is True and profile["slurm-requeue"] is True
    assert profile["keep-incomplete"] is True  # a failed group job keeps what its other images made
    assert profile["slurm-status-command"] == "squeue"  # see the profile: sacct's "CANCELLED by <uid>"
    assert not {"slurm-jobname-prefix", "slurm-efficiency-report", "slurm-no-requeue"} & set(profile)
    assert profile["software-deployment-method"] == "conda"
    assert "slurm_account" not in profile["default-resources"]  # only where MZSR_SLURM_ACCOUNT is set
    assert profile["default-resources"]["slurm_partition"] == "cpu"
    assert {"mem_mb", "runtime"} <= set(profile["default-resources"])
    assert set(profile["set-resources"]) == set(facts.GPU_RULES)
    for rule, resources in profile["set-resources"].items():
        assert resources["slurm_partition"] == "gpu" and resources["cpus_per_gpu"] == "threads", rule
    # the training rules' GPUs (one per process) come from the workflow (test_training_processes_...)
    assert not {"gpu", "gres"} & (
        set(profile["set-resources"]["pretrain"]) | set(profile["set-resources"]["meta_train"])
    )
    site = read_profile(monkeypatch, MZSR_SLURM_ACCOUNT="acct42", MZSR_SLURM_PARTITION="", MZSR_SLURM_CONDA="0")
    assert site["default-resources"]["slurm_account"] == "acct42"
    assert "slurm_partition" not in site["default-resources"]  # empty: the cluster's default partition
    assert "software-deployment-method" not in site  # MZSR_SLURM_CONDA=0: no conda
    assert not any(
        k in r.get("slurm_extra", "") for r in profile["set-resources"].values() for k in ("--gres", "--gpus")
    )
    assert not any(
        {"gres", "gpu_model", "constraint", "cpus_per_task"} & set(r) for r in profile["set-resources"].values()
    )
    assert "mem_mb_per_cpu" not in profile["default-resources"]


def test_profile_site_settings(monkeypatch):
    """What users of the plugin trip over, each an environment variable of the profile."""
    site = read_profile(
        monkeypatch,
        MZSR_SLURM_GPU_FLAG="gres",
        MZSR_SLURM_GPU_MODEL="a100",
        MZSR_SLURM_GPU_CONSTRAINT="a100|h100",
        MZSR_SLURM_CPU_FLAG="cpus-per-task",
        MZSR_SLURM_MEM_PER_CPU="3968",
        MZSR_SLURM_JOB_PREFIX="mzsr",
        MZSR_SLURM_REQUEUE="no",
        MZSR_SLURM_EFFICIENCY_REPORT="1",
    )
    for rule, resources in site["set-resources"].items():
        # --gres=gpu:a100:1 and no --gpus (gpu=0), -C, --cpus-per-task instead of --cpus-per-gpu;
        # the training rules' --gres (GPUs per node) comes from the workflow
        gres = {} if rule in ("pretrain", "meta_train") else {"gpu": 0, "gres": "gpu:a100:1"}
        assert resources == {
            "slurm_partition": "gpu",
            **gres,
            "constraint": "a100|h100",
            "cpus_per_task": "threads",
        }, rule
    assert site["default-resources"]["mem_mb_per_cpu"] == 3968  # the plugin then passes --mem-per-cpu only
    assert site["slurm-jobname-prefix"] == "mzsr"
    assert site["slurm-no-requeue"] is True and "slurm-requeue" not in site
    assert site["slurm-efficiency-report"] is True and site["slurm-efficiency-report-path"] == "logs/slurm"
    model = read_profile(monkeypatch, MZSR_SLURM_GPU_MODEL="a100")["set-resources"]  # with --gpus=a100:N
    assert all(r["gpu_model"] == "a100" and "gres" not in r for r in model.values())
    cluster_default = read_profile(monkeypatch, MZSR_SLURM_REQUEUE="site")
    assert not {"slurm-requeue", "slurm-no-requeue"} & set(cluster_default)
    import yte

    with pytest.raises(yte.exceptions.YteError, match="MZSR_SLURM_GPU_FLAG"):
        read_profile(monkeypatch, MZSR_SLURM_GPU_FLAG="gpu")


@needs_plugin
def test_profile_from_repository_root_with_site_facts_from_environment(tmp_path):
    """`--profile slurm` from the repository root finds slurm/; account and partitions come from the
    environment; the network rules go to the GPU partition with one GPU and CPUs per GPU = threads."""
    env = profile_env(
        MZSR_SLURM_ACCOUNT="acct42", MZSR_SLURM_PARTITION="short", MZSR_SLURM_GPU_PARTITION="a100", MZSR_SLURM_CONDA="0"
    )  # dry runs with conda need conda itself
    # --cores: a dry run otherwise scales every rule's threads down to one core
    proc = subprocess.run(
        snakemake_cmd(tmp_path, "-n", "--cores", "64", "--configfile", str(REPO / "config" / "demo.yaml")),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "Using profile slurm for setting default command line arguments" in out
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())["compute"]
    jobs = [(rule, res) for rule, _, res in job_blocks(out) if rule != "all"]
    assert {rule for rule, _ in jobs} >= DEMO_GPU_RULES | {"train_images", "patches", "aggregate"}
    for rule, res in jobs:
        assert res["slurm_account"] == "acct42", rule
        assert "mem_mb" in res and "runtime" in res, rule
        if rule in DEMO_GPU_RULES:
            threads = (demo.get(rule) or {}).get("threads", demo["default"]["threads"])
            assert (res["slurm_partition"], res["gpu"], res["cpus_per_gpu"]) == ("a100", "1", str(threads)), rule
        else:
            assert res["slurm_partition"] == "short" and "gpu" not in res, rule


@needs_plugin
def test_training_processes_ask_slurm_for_tasks_nodes_and_gpus(tmp_path):
    """compute.<rule>.processes and nodes in a dry run through the profile: one task and one GPU per
    process (--gpus, or --gres per node), the tasks started by the job itself (mpi); a bad setting is
    one error line before any job."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["compute"]["meta_train"] = {**config["compute"].get("meta_train", {}), "processes": 2}
    config["compute"]["pretrain"] = {**config["compute"].get("pretrain", {}), "processes": 2, "nodes": 2}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(config))

    def dry_run(config_file, **site):
        env = profile_env(MZSR_SLURM_ACCOUNT="acct42", MZSR_SLURM_CONDA="0", **site)
        cmd = snakemake_cmd(tmp_path, "-n", "--cores", "64", "--configfile", str(config_file))
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        return proc, {rule: res for rule, _, res in job_blocks(proc.stdout + proc.stderr)}

    proc, jobs = dry_run(tmp_path / "two.yaml")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    threads = config["compute"]["meta_train"].get("threads", config["compute"]["default"]["threads"])
    expected = {"gpu": "2", "tasks": "2", "tasks_per_gpu": "1", "mpi": "srun", "cpus_per_gpu": str(threads)}
    assert {k: jobs["meta_train"].get(k) for k in expected} == expected and jobs["meta_train"]["nodes"] == "1"
    assert (jobs["pretrain"]["gpu"], jobs["pretrain"]["tasks"], jobs["pretrain"]["nodes"]) == ("2", "2", "2")
    assert "tasks" not in jobs["sr_mzsr"] and "mpi" not in jobs["sr_mzsr"]
    _, gres = dry_run(tmp_path / "two.yaml", MZSR_SLURM_GPU_FLAG="gres", MZSR_SLURM_GPU_MODEL="a100")
    assert (gres["meta_train"]["gres"], gres["meta_train"]["gpu"]) == ("gpu:a100:2", "0")
    assert gres["pretrain"]["gres"] == "gpu:a100:1"  # 2 processes on 2 nodes: 1 GPU per node
    config["compute"]["pretrain"]["nodes"] = 3
    config["compute"]["pretrain"]["processes"] = 4
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    proc, _ = dry_run(tmp_path / "bad.yaml")
    assert proc.returncode != 0
    assert "config compute.pretrain: 3 nodes do not divide 4 processes" in proc.stdout + proc.stderr


@needs_plugin
@pytest.mark.parametrize("method", ["learned", "kernelgan"])
def test_the_kernel_estimate_asks_for_a_gpu_only_with_kernelgan(tmp_path, method):
    """The blind methods' kernels in a dry run through the profile: the learned estimator on the CPU
    partition without a GPU, KernelGAN on the GPU partition with compute.estimate_kernel's GPUs and
    threads; the blind SR rules on the GPU partition either way."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["methods"] = ["mzsr", "mzsr_kgan"]
    config["estimate"] = {**config.get("estimate", {}), "method": method}
    config["compute"]["estimate_kernel"] = {"threads": 3, "gpu": 1}
    (tmp_path / "blind.yaml").write_text(yaml.safe_dump(config))
    env = profile_env(MZSR_SLURM_PARTITION="short", MZSR_SLURM_GPU_PARTITION="a100", MZSR_SLURM_CONDA="0")
    cmd = snakemake_cmd(tmp_path, "-n", "--cores", "64", "--configfile", str(tmp_path / "blind.yaml"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    jobs = {rule: res for rule, _, res in job_blocks(proc.stdout + proc.stderr)}
    rule = facts.ESTIMATE_RULES[method]
    assert set(facts.ESTIMATE_RULES.values()) & set(jobs) == {rule}
    if method == "learned":
        assert jobs[rule]["slurm_partition"] == "short" and "gpu" not in jobs[rule]
    else:
        assert (jobs[rule]["slurm_partition"], jobs[rule]["gpu"], jobs[rule]["cpus_per_gpu"]) == ("a100", "1", "3")
    assert (jobs["sr_mzsr_kgan"]["slurm_partition"], jobs["sr_mzsr_kgan"]["gpu"]) == ("a100", "1")


# ------------------------------------------------------------------------------------ the cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running single-node SLURM cluster, taken down (jobs, daemons, /etc/slurm files) at the end."""
    if PLUGIN_MISSING:
        pytest.skip(PLUGIN_MISSING)
    try:
        slurm_cluster.check_machine()
        slurm_cluster.ensure_installed()
    except slurm_cluster.ClusterUnavailable as e:
        pytest.skip(str(e))
    root = tmp_path_factory.mktemp("slurm")
    own_root = len(str(root)) > 60  # unix socket paths are short (108 bytes)
    if own_root:
        root = Path(tempfile.mkdtemp(prefix="mzsr-slurm-"))
    instance = slurm_cluster.SlurmCluster(root)
    try:
        try:
            instance.start()
        except slurm_cluster.ClusterUnavailable as e:
            pytest.skip(str(e))
        yield instance
    finally:
        instance.stop()
        if own_root:
            shutil.rmtree(root, ignore_errors=True)
    # nothing of the cluster (daemons, jobs, the processes the tests started) outlived it
    assert not instance.stragglers, (
        f"processes that outlived the test cluster, ended by its teardown: {instance.stragglers}"
    )


class Watch:
    """Waits on an external process's progress: bounded polling with a deadline, failing early
    when the snakemake process ends."""

    def __init__(self, proc: subprocess.Popen, cluster, deadline: float, output: Path):
        self.proc, self.cluster, self.deadline, self.output = proc, cluster, deadline, output

    def until(self, what: str, probe, interval: float = 0.1):
        while time.monotonic() < self.deadline:
            if value := probe():
                return value
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"snakemake ended ({self.proc.returncode}) before {what}\n{self.output.read_text()[-5000:]}"
                )
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}\n{self.output.read_text()[-5000:]}")

    def running_job(self, comment: str, exclude: set[str] = frozenset()) -> str | None:
        out = self.cluster.cmd("squeue", "-h", "-o", "%A|%k|%T", check=False).stdout
        for line in out.splitlines():
            job, job_comment, state = line.split("|")
            if job_comment == comment and state == "RUNNING" and job not in exclude:
                return job
        return None


def checkpoint(workdir: Path, stage: str) -> Path | None:
    """The work folder of a training stage once it holds a checkpoint."""
    found = sorted((workdir / "resources" / "work" / stage).glob("*/last.pt"))
    return found[0].parent if found else None


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    """The micro pipeline through `snakemake --profile slurm`, interrupted as the module docstring says."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    for i, name in enumerate(("a", "b")):
        write_test_image(workdir / "test_images" / "tiny" / f"{name}.png", seed=10 + i)
    config = yaml.safe_load(MICRO.read_text())
    config["pretrain"].update(steps=PRETRAIN_STEPS, checkpoint_every=PRETRAIN_CHECKPOINT_EVERY, log_every=1)
    config["compute"]["pretrain"] = {"threads": 2}  # asks for --cpus-per-gpu=2
    config["meta"].update(
        iterations=META_ITERATIONS, checkpoint_every=META_CHECKPOINT_EVERY, log_every=1, validate_every=META_ITERATIONS
    )
    (workdir / "micro.yaml").write_text(yaml.safe_dump(config))
    (workdir / "test-profile").mkdir()
    (workdir / "test-profile" / "config.yaml").write_text(yaml.safe_dump(TEST_OVERRIDES))
    # every process started from here on carries the cluster's mark (see test_no_process_outlives_the_run)
    env = cluster.env(
        profile_env(
            MZSR_SLURM_ACCOUNT=slurm_cluster.ACCOUNT,
            MZSR_SLURM_CONDA="0",
            PYTHONUNBUFFERED="1",
            MZSR_SLURM_JOB_PREFIX=JOB_PREFIX,
            MZSR_SLURM_EFFICIENCY_REPORT="1",
        )
    )
    cmd = snakemake_cmd(workdir, "--configfile", str(workdir / "micro.yaml"))
    cmd += ["--profile", str(workdir / "test-profile")]  # layered on top of slurm/

    dry = subprocess.run([*cmd, "-n"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-5000:]
    planned = [(rule, wildcards) for rule, wildcards, _ in job_blocks(dry.stdout + dry.stderr) if rule != "all"]
    # the same without groups, planned only: what the run would submit job by job
    (workdir / "ungrouped.yaml").write_text(yaml.safe_dump({**config, "cluster": {"group": False}}))
    ungrouped = subprocess.run(
        [*snakemake_cmd(workdir, "--configfile", str(workdir / "ungrouped.yaml")), "-n"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ungrouped.returncode == 0, (ungrouped.stdout + ungrouped.stderr)[-5000:]

    run = {
        "workdir": workdir,
        "planned": planned,
        "cmd": cmd,
        "env": env,
        "submissions": count_submissions.submissions(dry.stdout + dry.stderr),
        "ungrouped_submissions": count_submissions.submissions(ungrouped.stdout + ungrouped.stderr),
    }
    started = time.monotonic()
    first_out = workdir / "first_run.txt"
    with open(first_out, "w") as out:
        # A shell that starts the test suite in the background ignores SIGINT, and children inherit that:
        # give Snakemake the default disposition back so that step 3's SIGINT reaches it.
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        watch = Watch(proc, cluster, time.monotonic() + RUN_TIMEOUT, first_out)
        # 1. cancel the pre-training job once it has written a checkpoint; Snakemake retries it
        work = watch.until("a pre-training checkpoint", lambda: checkpoint(workdir, "pretrain"), interval=0.05)
        job = watch.until("the pre-training job", lambda: watch.running_job("rule_pretrain"))
        run["pretrain_cancelled"] = Interruption(work, job)
        cluster.cmd("scancel", job)
        # 2. requeue the retried pre-training job once it has written a checkpoint of its own
        job = watch.until("the retried pre-training job", lambda: watch.running_job("rule_pretrain", {job}))
        mtime = (work / "last.pt").stat().st_mtime_ns
        watch.until(
            "a checkpoint of the retried job", lambda: (work / "last.pt").stat().st_mtime_ns != mtime, interval=0.05
        )
        run["pretrain_requeued"] = Interruption(work, job)
        cluster.cmd("scontrol", "requeue", job)  # starts again after the credential lifetime (CRED_EXPIRE)
        # 3. interrupt Snakemake itself once meta-training has written a checkpoint
        work = watch.until("a meta-training checkpoint", lambda: checkpoint(workdir, "meta_direct"), interval=0.05)
        job = watch.until("the meta-training job", lambda: watch.running_job("rule_meta_train_wildcards_direct"))
        run["meta_interrupted"] = Interruption(work, job)
        proc.send_signal(signal.SIGINT)
        run["first_returncode"] = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run["first_output"] = first_out.read_text()
    # the same command again finishes the pipeline
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    run["second_output"] = second.stdout + second.stderr
    assert second.returncode == 0, run["second_output"][-6000:]
    run["seconds"] = time.monotonic() - started
    print(f"SLURM run of the micro pipeline, interruptions included: {run['seconds']:.0f} s")
    fields = ("JobID", "JobName", "State", "Partition", "AllocTRES", "Timelimit", "Comment", "WorkDir", "SubmitLine")
    run["jobs"] = [row for row in cluster.sacct(*fields) if row["WorkDir"] == str(workdir)]
    run["all_records"] = [row for row in cluster.sacct(*fields, duplicates=True) if row["WorkDir"] == str(workdir)]
    run["task_env"] = cluster.task_env()
    listing = cluster.cmd(
        "sacct",
        "-a",
        "-X",
        "-D",
        f"--clusters={slurm_cluster.CLUSTER}",
        "--starttime=now-1days",
        "--format=JobID,State%16,Partition%9,AllocTRES%44,Timelimit,Elapsed,Comment%60",
    ).stdout
    (workdir / "sacct.txt").write_text(listing)
    print(listing)
    return run


def rule_of(comment: str) -> str:
    """What a SLURM job ran, from the comment the plugin gives it: rule_<rule>[_wildcards_<...>], or
    rule_<group>_<its rules>[_wildcards_<...>] for a group job, <group> = <kind>-<test set>-<chunk>:
    the rule, or "group <kind>" (as count_submissions.submissions() names them)."""
    assert comment.startswith("rule_"), comment
    name = comment[len("rule_") :].split("_wildcards_")[0]
    return f"group {name.split('-')[0]}" if "-" in name else name


def is_gpu_job(kind: str) -> bool:
    return kind in facts.GPU_RULES or kind.removeprefix("group ") in GPU_GROUPS | BLIND_GPU_RULES


def completed(run) -> list[dict[str, str]]:
    return [row for row in run["jobs"] if row["State"] == "COMPLETED"]


@pytest.mark.slow
def test_every_job_ran_once_as_a_completed_slurm_job(slurm_run):
    """Every planned submission (a group job or a job of its own) ran once to completion: the micro
    pipeline's 21 jobs in 14 SLURM jobs, where job by job it would take 21."""
    done = completed(slurm_run)
    planned, ungrouped = slurm_run["submissions"], slurm_run["ungrouped_submissions"]
    print(
        f"SLURM submissions of the micro pipeline: {sum(planned.values())} grouped (completed: {len(done)}), "
        f"{sum(ungrouped.values())} job by job (planned)"
    )
    assert Counter(rule_of(row["Comment"]) for row in done) == planned
    assert len({row["Comment"] for row in done}) == len(done) == sum(planned.values()) == 14
    assert sum(ungrouped.values()) == len(slurm_run["planned"]) == 21
    # the groups hold the per-image jobs, and nothing else
    assert all(count == 1 for kind, count in planned.items() if kind.startswith("group "))
    assert {kind for kind in planned if kind.startswith("group ")} == {
        "group inputs",
        "group crop",
        *(f"group {g}" for g in GPU_GROUPS),
    }
    # the plugin's run ID, one per invocation, after the site's prefix (MZSR_SLURM_JOB_PREFIX)
    assert len({row["JobName"] for row in slurm_run["jobs"]}) == 2
    assert all(row["JobName"].startswith(JOB_PREFIX + "_") for row in slurm_run["jobs"])
    # the efficiency report (MZSR_SLURM_EFFICIENCY_REPORT) of the run that finished
    reports = list((slurm_run["workdir"] / "logs" / "slurm").glob("efficiency_report_*.csv"))
    assert any(len(r.read_text().splitlines()) > 1 for r in reports), reports
    # finished and up to date: the same command plans nothing more
    dry = subprocess.run(
        [*slurm_run["cmd"], "-n"], cwd=REPO, env=slurm_run["env"], capture_output=True, text=True, timeout=300
    )
    assert dry.returncode == 0 and job_blocks(dry.stdout + dry.stderr) == [], (dry.stdout + dry.stderr)[-3000:]
    summary = slurm_run["workdir"] / "results" / "metrics" / "summary.csv"
    assert len(summary.read_text().splitlines()) == 1 + 6  # header + bicubic, pretrained, mzsr x3, zssr


@pytest.mark.slow
def test_network_rules_ran_on_the_gpu_partition_with_a_gpu(slurm_run):
    for row in completed(slurm_run):
        rule, job = rule_of(row["Comment"]), row["JobID"]
        tasks = slurm_run["task_env"].get(job, {})
        assert "batch" in tasks and "0" in tasks, f"{rule} (job {job}): no task record {tasks}"
        if is_gpu_job(rule):
            assert "--gpus=1" in row["SubmitLine"] and "--gres" not in row["SubmitLine"], row
            assert row["Partition"] == "gpu" and "gres/gpu=1" in row["AllocTRES"], row
            assert f"cpu={2 if rule == 'pretrain' else 1}," in row["AllocTRES"], row  # CPUs per GPU = threads
            # the job step that runs the rule sees its GPU
            assert all(re.fullmatch(r"\d+", dev) for dev in tasks.values()), f"{rule} (job {job}): {tasks}"
        else:
            assert row["Partition"] == "cpu" and "gres/gpu" not in row["AllocTRES"], row
            assert set(tasks.values()) == {"unset"}, f"{rule} (job {job}): {tasks}"


@pytest.mark.slow
def test_cancelled_training_job_is_retried_and_resumes_from_its_checkpoint(slurm_run):
    workdir, cancelled = slurm_run["workdir"], slurm_run["pretrain_cancelled"]
    pretrain = [row for row in slurm_run["jobs"] if row["Comment"] == "rule_pretrain"]
    assert [(row["JobID"], row["State"].split()[0]) for row in pretrain] == [
        (cancelled.job, "CANCELLED"),
        (slurm_run["pretrain_requeued"].job, "COMPLETED"),
    ]
    assert "Trying to restart job" in slurm_run["first_output"]  # Snakemake's retry
    assert cancelled.resumed_in(workdir / "results" / "training" / "pretrain_log.csv", PRETRAIN_STEPS)
    # the SLURM log of the failed job is kept; those of successful jobs are removed
    logs = workdir / "logs" / "slurm"
    assert "CANCELLED" in (logs / "rule_pretrain" / f"{cancelled.job}.log").read_text()
    assert not (logs / "rule_pretrain" / f"{slurm_run['pretrain_requeued'].job}.log").exists()
    assert not (logs / "rule_aggregate").exists()


@pytest.mark.slow
def test_requeued_training_job_resumes_from_its_checkpoint(slurm_run):
    requeued = slurm_run["pretrain_requeued"]
    records = [row["State"].split()[0] for row in slurm_run["all_records"] if row["JobID"] == requeued.job]
    assert records == ["REQUEUED", "COMPLETED"], records
    assert requeued.step > slurm_run["pretrain_cancelled"].step
    assert requeued.resumed_in(slurm_run["workdir"] / "results" / "training" / "pretrain_log.csv", PRETRAIN_STEPS)


@pytest.mark.slow
def test_interrupted_run_resumes_training_when_rerun(slurm_run):
    interrupted = slurm_run["meta_interrupted"]
    assert slurm_run["first_returncode"] != 0
    meta = [row for row in slurm_run["jobs"] if rule_of(row["Comment"]) == "meta_train"]
    assert [(row["JobID"], row["State"].split()[0]) for row in meta][0] == (interrupted.job, "CANCELLED"), meta
    assert [row["State"].split()[0] for row in meta][1:] == ["COMPLETED"], meta
    assert interrupted.resumed_in(
        slurm_run["workdir"] / "results" / "training" / "meta_direct_log.csv", META_ITERATIONS
    )


@pytest.mark.slow
def test_a_group_job_asks_for_one_job_and_the_sum_of_run_times(slurm_run):
    """The per-image jobs of a group job run one after another: it asks for the CPUs, memory and GPU
    of one of them and for the sum of their run times (10 minutes each in tests/micro.yaml)."""
    groups = {
        rule_of(row["Comment"]): row for row in completed(slurm_run) if rule_of(row["Comment"]).startswith("group ")
    }
    jobs = Counter(
        f"group {'inputs' if rule in ('lr_image', 'sr_bicubic') else rule}" for rule, _ in slurm_run["planned"]
    )
    for kind, row in groups.items():
        assert row["Timelimit"] == f"00:{10 * jobs[kind]:02d}:00", (kind, row)
        assert "cpu=1," in row["AllocTRES"] and "mem=1000M" in row["AllocTRES"], row
        assert ("gres/gpu=1" in row["AllocTRES"]) == is_gpu_job(kind), row
    assert jobs["group inputs"] == 4 and jobs["group sr_zssr"] == 2


@pytest.mark.slow
def test_a_site_that_takes_gpus_with_gres_only(slurm_run, cluster):
    """The profile's site settings on a partition that refuses --gpus (as sites with select/cons_res
    do): one GPU job with --gres=gpu:<model>:1, a node feature (-C), --cpus-per-task instead of
    --cpus-per-gpu, --mem-per-cpu instead of --mem, --no-requeue; it runs and its job step sees the GPU."""
    refused = cluster.cmd(
        "sbatch",
        "-A",
        slurm_cluster.ACCOUNT,
        "-p",
        slurm_cluster.GRES_ONLY_PARTITION,
        "--gpus=1",
        "--wrap",
        "true",
        check=False,
    )
    assert refused.returncode != 0 and "--gres only" in refused.stderr, refused
    env = {k: v for k, v in slurm_run["env"].items() if k != "MZSR_SLURM_EFFICIENCY_REPORT"}
    env.update(
        MZSR_SLURM_GPU_PARTITION=slurm_cluster.GRES_ONLY_PARTITION,
        MZSR_SLURM_GPU_FLAG="gres",
        MZSR_SLURM_GPU_MODEL=slurm_cluster.GPU_MODEL,
        MZSR_SLURM_GPU_CONSTRAINT=slurm_cluster.NODE_FEATURE,
        MZSR_SLURM_CPU_FLAG="cpus-per-task",
        MZSR_SLURM_MEM_PER_CPU="700",
        MZSR_SLURM_REQUEUE="no",
    )
    before = {row["JobID"] for row in cluster.sacct("JobID")}
    target = "results/metrics/jobs/tiny/g2.0/pretrained/a.csv"
    proc = subprocess.run(
        [*slurm_run["cmd"], "--force", target], cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    fields = ("JobID", "State", "Partition", "AllocTRES", "Comment", "SubmitLine")
    rows = [row for row in cluster.sacct(*fields) if row["JobID"] not in before]
    assert len(rows) == 1 and rule_of(rows[0]["Comment"]) == "group sr_pretrained", rows
    row, line = rows[0], rows[0]["SubmitLine"]
    assert (row["State"], row["Partition"]) == ("COMPLETED", slurm_cluster.GRES_ONLY_PARTITION), row
    assert "gres/gpu=1" in row["AllocTRES"] and "cpu=1," in row["AllocTRES"] and "mem=700M" in row["AllocTRES"], row
    assert f"--gres=gpu:{slurm_cluster.GPU_MODEL}:1" in line and "--gpus" not in line, line
    assert (
        f"-C {slurm_cluster.NODE_FEATURE}" in line and "--cpus-per-task=1" in line and "--cpus-per-gpu" not in line
    ), line
    assert "--mem-per-cpu 700" in line and "--mem " not in line and "--no-requeue" in line, line
    steps = cluster.task_env()[row["JobID"]]
    assert re.fullmatch(r"\d+", steps["0"]), steps  # the job step that ran the rule had the GPU


@pytest.mark.slow
def test_no_process_outlives_the_run(slurm_run, cluster):
    """Every process that the test started, itself or through SLURM (batch scripts, the
    `snakemake --executor slurm-jobstep` in them, job steps), has ended once the queue is empty:
    SLURM ends a cancelled job's processes by their process group (slurm_cluster.py), so that none
    that lost its parent escapes; the cluster's teardown checks again after stopping the daemons."""
    deadline = time.monotonic() + 60
    while cluster.cmd("squeue", "-h", "-o", "%A").stdout.split() and time.monotonic() < deadline:
        time.sleep(0.5)
    deadline = time.monotonic() + 20  # KillWait (5 s) and the end of the last job steps
    while (left := cluster.processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left behind: {left}"


# ------------------------------------------------------------------------------------ two processes


def rank_process(cluster, rank: int) -> int | None:
    """The pid of training rank `rank` that srun started in a job of the test cluster."""
    for pid in cluster.processes():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mzsr.training.launch" in cmdline and f"SLURM_PROCID={rank}".encode() in environ:
            return pid
    return None


@pytest.mark.slow
def test_two_process_meta_training_through_the_profile(slurm_run, cluster):
    """Meta-training again with compute.meta_train.processes: 2 through the profile: one SLURM job
    with two tasks, one GPU each, started by srun (gloo between the CPU processes). Rank 1 is killed
    (SIGKILL) after a checkpoint: the job ends at once with an error that names the rank, leaves its
    checkpoint whole, and Snakemake's retry resumes from it. The weights equal the one-process run's."""
    workdir = slurm_run["workdir"]
    weights = workdir / "resources" / "models" / "meta_direct.safetensors"
    one_process = load_weights(weights)[0]
    work = checkpoint(workdir, "meta_direct")
    shutil.rmtree(work)  # the finished one-process run: start over
    config = yaml.safe_load((workdir / "micro.yaml").read_text())
    config["compute"]["meta_train"] = {"processes": 2, "threads": 1}
    (workdir / "two_processes.yaml").write_text(yaml.safe_dump(config))
    cmd = snakemake_cmd(workdir, "--configfile", str(workdir / "two_processes.yaml"))
    cmd += [
        "--profile",
        str(workdir / "test-profile"),
        "--forcerun",
        "meta_train",
        "--",
        str(weights.relative_to(workdir)),
    ]
    before = {row["JobID"] for row in cluster.sacct("JobID")}
    out = workdir / "two_processes.txt"
    with open(out, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=slurm_run["env"], stdout=f, stderr=subprocess.STDOUT)
    try:
        watch = Watch(proc, cluster, time.monotonic() + RUN_TIMEOUT, out)
        watch.until("a checkpoint of the two-process run", lambda: (work / "last.pt").exists(), interval=0.05)
        pid = watch.until("rank 1", lambda: rank_process(cluster, 1))
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        assert proc.wait(timeout=RUN_TIMEOUT) == 0, out.read_text()[-6000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    two = load_weights(weights)[0]
    difference = max(float((one_process[k] - two[k]).abs().max()) for k in one_process)
    print(f"meta-training through SLURM, 2 processes vs 1: largest weight difference {difference:.3g}")
    assert difference <= 2e-6
    fields = ("JobID", "State", "AllocTRES", "Comment", "SubmitLine", "End")
    jobs = [row for row in cluster.sacct(*fields) if row["JobID"] not in before]
    assert [(rule_of(r["Comment"]), r["State"].split()[0]) for r in jobs] == [
        ("meta_train", "FAILED"),
        ("meta_train", "COMPLETED"),
    ], jobs
    failed, done = jobs
    ended = time.mktime(time.strptime(failed["End"], "%Y-%m-%dT%H:%M:%S"))
    assert ended - killed_at < 60, (failed["End"], killed_at)  # no hang: the job ended soon after the kill
    for row in jobs:  # two tasks with a GPU each, started by the job itself (srun)
        line = row["SubmitLine"]
        assert "--gpus=2" in line and "--ntasks=2" in line and "--ntasks-per-gpu=1" in line, line
        assert "--nodes=1" in line and "gres/gpu=2" in row["AllocTRES"], row
    assert set(cluster.task_env()[done["JobID"]]) >= {"batch", "0"}  # the srun step of the two ranks
    log = (workdir / "logs" / "slurm" / "rule_meta_train" / "direct" / f"{failed['JobID']}.log").read_text()
    assert "training on 2 processes failed (rank 1: Killed)" in log, log[-4000:]
    assert not list(work.glob("*.tmp*")) and not list(work.glob(".*"))
    rows = log_rows(workdir / "results" / "training" / "meta_direct_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, META_ITERATIONS + 1))
