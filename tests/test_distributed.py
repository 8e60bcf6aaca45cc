"""Training on several processes: 2 gloo ranks on this CPU give the one-process weights.

The ranks are started the way the workflow starts them (mzsr.training.launch.launch: torchrun
on one machine), the one-process runs are the plain trainers in this process. Also: a state saved
with 2 ranks resumes with 1, a rank killed mid-run ends the job with an error and its checkpoint in
place, and the problems of a processes setting are one line each. tests/test_slurm.py runs the same
through `snakemake --profile slurm` (srun).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mzsr import MZSRError
from mzsr.facts import processes_problem
from mzsr.files.checkpoints import load_weights, save_weights
from mzsr.network.model import MZSRNet
from mzsr.training.distributed import Ranks
from mzsr.training.launch import launch
from mzsr.training.meta import meta_train
from mzsr.training.pretrain import pretrain
from mzsr.training.state import check_checkpoint
from training_helpers import make_training_data

# 3 tasks per meta-batch on 2 ranks (2 and 1), 5 patches per batch (3 and 2): uneven shares, so
# that weighting each rank by its share, not by 1/R, is what makes the sums right.
META = {
    "iterations": 4,
    "meta_batch": 3,
    "inner_steps": 2,
    "checkpoint_every": 2,
    "validate_every": 2,
    "validation_tasks": 2,
    "log_every": 1,
    "seed": 3,
    "scale": 2,
}
PRETRAIN = {
    "steps": 4,
    "batch_size": 5,
    "patch_size": 24,
    "lr": 1e-3,
    "lr_halve_every": 2,
    "lr_min": 3e-4,
    "checkpoint_every": 2,
    "log_every": 1,
    "seed": 5,
    "num_workers": 0,
    "scale": 2,
}
# The largest weight difference, 2 ranks against 1 process after META's and PRETRAIN's iterations
# (measured: float64 below 1e-15; float32 0 for meta-training, a few 1e-8 for pre-training, where the
# ranks' halves of the batch are summed apart).
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6}


def test_shares_give_the_first_ranks_one_more():
    assert [Ranks(r, 2).share(5) for r in range(2)] == [slice(0, 3), slice(3, 5)]
    assert [Ranks(r, 3).share(4) for r in range(3)] == [slice(0, 2), slice(2, 3), slice(3, 4)]
    assert Ranks().share(5) == slice(0, 5)
    for size in range(1, 6):
        parts = [Ranks(r, size).share(7) for r in range(size)]
        assert sum((list(range(7))[p] for p in parts), []) == list(range(7))


@pytest.mark.parametrize(
    ("processes", "nodes", "items", "problem"),
    [
        (2, 1, 5, None),
        (5, 1, 5, None),
        (8, 2, 32, None),
        (6, 1, 5, "6 processes but a meta-batch of only 5"),
        (3, 2, 5, "2 nodes do not divide 3 processes"),
        (0, 1, 5, "must be at least 1"),
    ],
)
def test_processes_problems_are_one_line(processes, nodes, items, problem):
    found = processes_problem(processes, nodes, items, "a meta-batch")
    assert (found is None) if problem is None else (problem in found and "\n" not in found)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    # META: 4 iterations x 3 tasks + 2 held aside; the killed run below needs many more
    store, meta_store, shards = make_training_data(root, shards=2, tasks=200)
    init = root / "init.safetensors"
    torch.manual_seed(0)
    save_weights(init, MZSRNet().state_dict(), {"scale": 2, "degradation": "bicubic", "step": 0})
    return root, init, store, meta_store, shards


def _arguments(data, stage: str, name: str, cfg: dict) -> dict:
    root, init, store, meta_store, shards = data
    work = root / name
    common = {"out_weights": str(root / f"{name}.safetensors"), "cfg": cfg, "work_dir": str(work)}
    common["log_csv"] = str(work / "log.csv")
    if stage == "meta":
        return {
            "init_weights": str(init),
            "shard_paths": [str(s) for s in shards],
            "patch_store": str(meta_store),
            **common,
        }
    return {"patch_store": str(store), **common}


@contextlib.contextmanager
def default_dtype(dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _one_process(data, stage, name, cfg, dtype):
    train = meta_train if stage == "meta" else pretrain
    with default_dtype(dtype):
        train(**_arguments(data, stage, name, cfg), device="cpu")


def _two_ranks(data, stage, name, cfg, dtype, processes=2):
    arguments = _arguments(data, stage, name, cfg)
    Path(arguments["work_dir"]).mkdir(parents=True, exist_ok=True)
    launch(stage, arguments, "cpu", processes, 1, 1, arguments["work_dir"], dtype=str(dtype).removeprefix("torch."))


def _state(data, name) -> dict[str, torch.Tensor]:
    """The weights of a run's last checkpoint, in the dtype it trained in (the weights file is float32)."""
    return torch.load(data[0] / name / "last.pt", map_location="cpu", weights_only=True)["model"]


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("stage", "cfg"), [("meta", META), ("pretrain", PRETRAIN)], ids=["meta", "pretrain"])
def test_two_ranks_give_the_weights_of_one_process(data, stage, cfg, dtype):
    name = f"{stage}_{str(dtype)[6:]}"
    _one_process(data, stage, name + "_1", cfg, dtype)
    _two_ranks(data, stage, name + "_2", cfg, dtype)
    one, two = _state(data, name + "_1"), _state(data, name + "_2")
    assert next(iter(two.values())).dtype == dtype
    start = load_weights(data[1])[0] if stage == "meta" else None
    if start is not None:
        assert _largest_difference(one, start) > 1e-4, "training must change the weights"
    difference = _largest_difference(one, two)
    print(
        f"{stage} {dtype}: 2 ranks vs 1 process after {cfg.get('iterations', cfg.get('steps'))} steps: {difference:.3g}"
    )
    assert difference <= TOLERANCE[dtype]
    # rank 0 alone wrote the log: one row per step, with validation rows where due
    rows = (data[0] / (name + "_2") / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]


@pytest.mark.slow
def test_a_state_saved_with_two_ranks_resumes_in_one_process(data):
    _two_ranks(data, "meta", "resume", {**META, "iterations": 2}, torch.float32)
    assert torch.load(data[0] / "resume" / "last.pt", weights_only=True)["step"] == 2
    _one_process(data, "meta", "resume", META, torch.float32)  # the same work folder: resumes at step 2
    _one_process(data, "meta", "straight", META, torch.float32)
    assert _largest_difference(_state(data, "resume"), _state(data, "straight")) <= TOLERANCE[torch.float32]


def _rank_pid(spec: Path, rank: int) -> int | None:
    """The process id of rank `rank` of the training job of `spec` (its command line and RANK)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mzsr.training.launch" in cmdline and str(spec).encode() in cmdline and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_the_rerun_resumes(data):
    cfg = {**META, "meta_batch": 2, "iterations": 190, "validate_every": 1000}
    arguments = _arguments(data, "meta", "killed", cfg)
    work = Path(arguments["work_dir"])
    work.mkdir()
    code = (
        "import sys; from mzsr.training.launch import launch;"
        f" launch('meta', {arguments!r}, 'cpu', 2, 1, 1, {str(work)!r})"
    )
    job = subprocess.Popen(
        [sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1]
    )
    deadline = time.monotonic() + 120
    log = work / "log.csv"
    while (
        not (log.exists() and len(log.read_text().splitlines()) > 6)
        or (pid := _rank_pid(work / "ranks.json", 1)) is None
    ):
        assert job.poll() is None, job.stderr.read()
        assert time.monotonic() < deadline, "the job did not get going"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        _, err = job.communicate(timeout=90)
    finally:
        job.kill()
    ended_after = time.monotonic() - killed_at
    assert job.returncode != 0 and ended_after < 60, ended_after
    assert "training on 2 processes failed (rank 1: exit code -9)" in err, err[-3000:]
    assert not Path(arguments["out_weights"]).exists()
    assert check_checkpoint(work / "last.pt") is None  # whole and resumable
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp") or ".tmp" in p.suffixes]
    step = torch.load(work / "last.pt", weights_only=True)["step"]
    assert 0 < step < cfg["iterations"]
    # the rerun resumes: the log keeps the rows up to the checkpoint and finishes the run
    kept = log.read_text().splitlines()[: step + 1]
    launch("meta", arguments, "cpu", 2, 1, 1, work)
    rows = log.read_text().splitlines()
    assert rows[: step + 1] == kept and len(rows) == cfg["iterations"] + 1
    print(f"rank 1 killed at step {step}+: the job ended {ended_after:.1f} s later; the rerun resumed")


def test_more_processes_than_tasks_is_an_error_before_any_work(data, tmp_path):
    arguments = _arguments(data, "meta", "too_many", {**META, "meta_batch": 1})
    with pytest.raises(MZSRError, match="2 processes but a meta-batch of only 1"):
        meta_train(**arguments, device="cpu", ranks=Ranks(0, 2))
    assert not Path(arguments["work_dir"]).exists()


class _TwoAlike(Ranks):
    """Two ranks that hold the same tasks: the all-reduce doubles (for one process to take the
    several-rank path of the meta-step)."""

    def sum_(self, tensors):
        for t in tensors:
            t.mul_(2)


@pytest.mark.parametrize("cuda_graph", [False, pytest.param(True, id="cuda_graph")])
def test_the_meta_step_of_several_ranks_is_the_mean_over_all_their_tasks(cuda_graph):
    """MetaStep's several-rank path (each rank's share of the loss, gradients summed, then the
    step; under a CUDA graph the sum and the step after the replay) = one process's step on all the
    tasks. Two alike ranks of 2 tasks are one process of those 2 tasks twice: the same mean."""
    from mzsr.training.meta_step import MetaStep
    from mzsr.training.optim import make_optimizer

    device = torch.device("cuda" if cuda_graph else "cpu")
    if cuda_graph and not torch.cuda.is_available():
        pytest.skip("needs CUDA (the graph of a several-rank step)")
    g = torch.Generator().manual_seed(5)
    batches = [tuple(torch.rand(2, 2, 3, 10, 10, generator=g).to(device) for _ in range(4)) for _ in range(4)]
    runs = []
    for ranks, tasks in ((Ranks(), None), (_TwoAlike(0, 2), 4)):
        torch.manual_seed(0)
        theta = list(MZSRNet(width=16, layers=4).to(device).parameters())
        step = MetaStep(
            theta,
            make_optimizer("adam_tf1", theta, 1e-3),
            2,
            0.01,
            device,
            cuda_graph=cuda_graph,
            ranks=ranks,
            tasks=tasks,
        )
        losses = [step(b, [0.5, 0.5], first_order=i < 1).item() for i, b in enumerate(batches)]
        assert step.graphed == cuda_graph
        runs.append((losses, [p.detach().clone() for p in theta]))
    (loss_one, theta_one), (loss_two, theta_two) = runs
    torch.testing.assert_close(loss_two, loss_one, rtol=1e-6, atol=0)
    for a, b in zip(theta_one, theta_two):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)


def test_fewer_gpus_than_processes_is_an_error_before_any_work(monkeypatch, tmp_path):
    """A CUDA device with fewer GPUs visible than processes on the machine: one line, nothing started."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(MZSRError, match=r"2 training processes on \S+ but 1 GPU\(s\) visible: one GPU per process"):
        launch("meta", {}, "cuda", 2, 1, 1, tmp_path)
    assert not (tmp_path / "ranks.json").exists()


def test_several_nodes_need_slurm(monkeypatch, tmp_path):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(MZSRError, match="2 nodes need a SLURM job"):
        launch("meta", {}, "cpu", 2, 2, 1, tmp_path)
