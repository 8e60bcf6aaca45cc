"""Training on several processes (ranks), one per GPU, on one machine or across the nodes of a SLURM job.

Nothing home-made carries the work: torch.distributed does the collectives (NCCL between GPUs, gloo
on CPUs), `torchrun --standalone` starts the ranks on one machine, and `srun` starts them in a SLURM
job (one task per rank; the ranks meet at the first host of the job step): mzsr.training.launch.

How each stage uses the ranks (the result is the one-process result, up to the order of sums):
- meta-training: every rank draws the same meta-batch and runs its share of the tasks (5 tasks on 2
  ranks: 3 and 2) through the full second-order meta-gradient locally; the ranks then sum their
  gradients, each already weighted by its task count over the meta-batch, and take one identical
  optimiser step. DistributedDataParallel cannot do this: it does not support `torch.autograd.grad`
  or gradients of gradients, and nothing here is differentiated through the communication.
- pre-training: DistributedDataParallel, the global batch split across the ranks (`Ranks.share`),
  each rank's loss weighted by its share of the global batch.
Rank 0 alone validates, logs, shows progress and writes checkpoints and the weights. A state saved
with R ranks resumes with any other R, and with one process.

A rank that dies ends the job: its peers' next collective fails (or, for a rank that hangs, times
out after `collective_timeout()` seconds), torchrun or srun (--kill-on-bad-exit) stops the others,
and the job fails with the last checkpoint in place.
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from mzsr import MZSRError
from mzsr.facts import processes_problem

# Seconds a collective waits for a rank that neither answers nor dies (a hung node, a stuck file
# system); a rank that dies is noticed at once. Rank 0 validates and writes checkpoints while the
# others wait, so this must exceed those.
DEFAULT_COLLECTIVE_TIMEOUT_S = 600
TIMEOUT_VARIABLE = "MZSR_COLLECTIVE_TIMEOUT"


def collective_timeout() -> int:
    """Seconds before a collective gives up: MZSR_COLLECTIVE_TIMEOUT, else DEFAULT_COLLECTIVE_TIMEOUT_S."""
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_COLLECTIVE_TIMEOUT_S
    if not value.isdigit() or int(value) < 1:
        raise MZSRError(f"{TIMEOUT_VARIABLE}={value!r}: not a whole number of seconds")
    return int(value)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes; `Ranks()` is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that validates, logs and writes."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous part of n items: the first n mod size ranks take one more (5 on 2: 3, 2)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum tensors of one dtype and device over the ranks, in place, in one collective."""
        if self.size == 1:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def check_processes(processes: int, nodes: int, work_items: int, what: str) -> None:
    """mzsr.facts.processes_problem as an error, before any work."""
    if problem := processes_problem(processes, nodes, work_items, what):
        raise MZSRError(problem)


def resumable_checkpoint(work_dir, ranks: Ranks) -> Path | None:
    """`latest_checkpoint` of the work folder, decided by rank 0 alone (it may set a bad one aside)
    before the other ranks look."""
    from mzsr.training.state import latest_checkpoint

    found = latest_checkpoint(work_dir) if ranks.main else None
    ranks.barrier()
    if not ranks.main and (Path(work_dir) / "last.pt").exists():
        found = Path(work_dir) / "last.pt"
    return found


# ------------------------------------------------------------------------------------ inside a rank


def _slurm_first_host() -> str:
    """The first host of this SLURM job step, where rank 0 runs (`scontrol show hostnames`)."""
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    try:
        names = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as e:
        raise MZSRError(f"cannot list the hosts of SLURM node list {nodelist!r} ({e})") from None
    if not names:
        raise MZSRError(f"SLURM node list {nodelist!r} names no host")
    return names[0]


def ranks_from_environment() -> tuple[Ranks, int]:
    """(this process's Ranks, ranks on this node), from torchrun's variables (RANK, WORLD_SIZE,
    LOCAL_RANK, LOCAL_WORLD_SIZE) or srun's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
    SLURM_STEP_TASKS_PER_NODE); under srun, MASTER_ADDR becomes the step's first host."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        ranks = Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        return ranks, int(env.get("LOCAL_WORLD_SIZE", ranks.size))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        ranks = Ranks(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE", str(ranks.size)).split("(")[0].split(",")[0]
        env.setdefault("MASTER_ADDR", _slurm_first_host())
        return ranks, int(per_node)
    raise MZSRError("not started as a training rank: neither torchrun's RANK/WORLD_SIZE nor srun's SLURM_PROCID is set")


def rank_device(requested: str, ranks: Ranks, local_size: int) -> torch.device:
    """This rank's device: its own GPU (by its rank on the node) when the config's device is CUDA."""
    from mzsr.device import pick_device

    device = pick_device(requested)
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_size > count:
        raise MZSRError(
            f"{local_size} training processes on {socket.gethostname()} but {count} GPU(s) visible:"
            " one GPU per process (ask for as many GPUs as processes, or use fewer processes)"
        )
    return pick_device(f"cuda:{ranks.local_rank}")


def join(requested_device: str) -> tuple[Ranks, torch.device]:
    """Join the training group (NCCL on GPUs, gloo otherwise) and return (Ranks, device)."""
    ranks, local_size = ranks_from_environment()
    device = rank_device(requested_device, ranks, local_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method="env://",
        rank=ranks.rank,
        world_size=ranks.size,
        timeout=datetime.timedelta(seconds=collective_timeout()),
    )
    return ranks, device
