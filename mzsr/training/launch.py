"""Starting a training stage on several processes (mzsr.training.distributed): torchrun on one machine,
srun in a SLURM job, each process running `python -m mzsr.training.launch <spec>`; the launcher
waits for them, passes their output to the job's log, and names the rank that failed."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mzsr import MZSRError, error_line
from mzsr.files.atomic import atomic_write_text
from mzsr.training.distributed import Ranks, join, rank_device

REPO = Path(__file__).resolve().parents[2]


def run_rank(spec_path: str) -> None:
    """One rank of a training job described by `spec_path` (written by `launch`)."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec["threads"]))
    torch.set_default_dtype(getattr(torch, spec.get("dtype", "float32")))
    ranks, device = join(spec["device"])
    try:
        if spec["stage"] == "meta":
            from mzsr.training.meta import meta_train as train
        else:
            from mzsr.training.pretrain import pretrain as train
        train(**spec["arguments"], device=device, ranks=ranks)
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "?"))
    try:
        run_rank(argv[0])
    except MZSRError as e:
        print(f"rank {rank}: {error_line(e)}", file=sys.stderr, flush=True)
        return 1
    return 0


# ------------------------------------------------------------------------------------ the launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def launch_command(spec_path: Path, processes: int, nodes: int, threads: int) -> list[str]:
    """The command that starts the ranks: srun inside a SLURM job, else torchrun on this machine."""
    worker = [sys.executable, "-m", "mzsr.training.launch", str(spec_path)]
    if os.environ.get("SLURM_JOB_ID") and shutil.which("srun"):
        return [
            "srun",
            f"--ntasks={processes}",
            f"--nodes={nodes}",
            f"--ntasks-per-node={processes // nodes}",
            f"--cpus-per-task={threads}",
            "--kill-on-bad-exit=1",
            "--label",
            *worker,
        ]
    if nodes > 1:
        raise MZSRError(f"{nodes} nodes need a SLURM job (snakemake --profile slurm); on one machine use nodes: 1")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={processes}",
        *worker[1:],
    ]


def launch(
    stage: str,
    arguments: dict,
    device: str,
    processes: int,
    nodes: int,
    threads: int,
    work_dir,
    dtype: str = "float32",
) -> None:
    """Run training `stage` ("meta" or "pretrain"; `arguments` those of meta_train or pretrain, JSON
    values) on `processes` ranks over `nodes` nodes with `threads` threads each, and wait for it.
    Their output goes to this process's stderr (the job's log). `dtype`: of the weights and the
    arithmetic (the tests and the equivalence benchmark compare ranks in float64 too)."""
    if not os.environ.get("SLURM_JOB_ID"):  # one machine: its GPUs, before starting anything
        rank_device(device, Ranks(0, processes), processes)
    spec_path = Path(work_dir) / "ranks.json"
    spec = {"stage": stage, "arguments": arguments, "device": device, "threads": threads, "dtype": dtype}
    command = launch_command(spec_path, processes, nodes, threads)
    atomic_write_text(spec_path, json.dumps(spec, indent=1, default=str) + "\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(threads),
        "MASTER_PORT": os.environ.get("MASTER_PORT") or str(_free_port()),
        "TQDM_DISABLE": "1",
    }
    print(f"starting {processes} training processes: {' '.join(command)}", file=sys.stderr, flush=True)
    tail = collections.deque(maxlen=200)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as ranks:
        for line in ranks.stdout:  # into the job's log, and the last lines kept to name a failed rank
            sys.stderr.write(line)
            tail.append(line)
    if ranks.returncode != 0:
        raise MZSRError(
            f"training on {processes} processes failed ({failed_rank(tail) or f'exit status {ranks.returncode}'});"
            f" the job's log has each rank's output. The last checkpoint stays in {work_dir}, and a rerun"
            " resumes from it"
        )


def failed_rank(lines) -> str | None:
    """Which rank failed, from the launcher's last lines: a rank's own error line ("rank N: mzsr:
    error: ..."), srun's "task N: <how>", or torchrun's root cause ("rank : N ... exitcode : E")."""
    text = "".join(lines)
    if found := re.search(r"rank (\d+): mzsr: error: (.*)", text):
        return f"rank {found.group(1)}: {found.group(2).strip()}"
    if found := re.search(r"srun: error: \S+: tasks? (\d+)[-\d]*: (.*)", text):
        return f"rank {found.group(1)}: {found.group(2).strip()}"
    if found := re.search(r"Root Cause(?:.*\n)*?\s*rank\s*:\s*(\d+)(?:.*\n)*?\s*exitcode\s*:\s*(-?\d+)", text):
        return f"rank {found.group(1)}: exit code {found.group(2)}"
    return None


if __name__ == "__main__":
    sys.exit(main())
