"""Meta-training on R ranks: seconds per meta-iteration, and how much of it is the all-reduce.

Each row runs the production meta-step (mzsr.training.meta_step.MetaStep with its Ranks) on random
data (speed does not depend on the values) at the release's sizes: a meta-batch of 5 tasks x (8
support + 8 query) 64x64 patches, 5 second-order inner steps. R = 1 runs in this process; R > 1 runs
as meta_train's ranks do, started with torchrun (gloo between CPU processes, NCCL between GPUs: on a
GPU machine each rank takes its own GPU, and the command measures them). A rank runs its share of the
5 tasks (R = 2: 3 and 2); the slowest rank sets the pace, so rank 0 (the larger share) is reported:
s/iteration, and the part spent in the all-reduce of the meta-gradient (with the wait for the other
ranks in it) and in the rest. A CPU row with R ranks gives each rank `--threads` threads; the
machine's cores are shared, so the one-process row at R x threads is its fair comparison.

    python -m benchmarks.speed.distributed [--device auto|cpu|cuda] [--ranks 1 2] [--threads 1]
        [--patch 64] [--iterations 5] [--quick] [--json OUT]

(--patch 32 on a CPU: a 64 px second-order iteration takes minutes on one core.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import REPO, run_device, write_result
from mzsr.device import synchronize
from mzsr.network.model import MZSRNet
from mzsr.training.distributed import Ranks, join
from mzsr.training.meta_step import MetaStep
from mzsr.training.optim import make_optimizer

FULL = {"tasks": 5, "shots": 8, "patch": 64, "inner_steps": 5}
QUICK = {"tasks": 3, "shots": 2, "patch": 16, "inner_steps": 2}


class TimedRanks(Ranks):
    """Ranks that add up the wall time of their all-reduces (the device synchronised around each)."""

    def __init__(self, ranks: Ranks, device: torch.device):
        super().__init__(ranks.rank, ranks.size, ranks.local_rank)
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "seconds", [0.0])

    def sum_(self, tensors):
        synchronize(self.device)
        t0 = time.perf_counter()
        super().sum_(tensors)
        synchronize(self.device)
        self.seconds[0] += time.perf_counter() - t0


def run_rank(ranks: Ranks, device: torch.device, sizes: dict, iterations: int, warmup: int) -> dict:
    """Time `iterations` meta-iterations of this rank's share of the meta-batch."""
    torch.manual_seed(0)
    model = MZSRNet().to(device)
    theta = list(model.parameters())
    timed = TimedRanks(ranks, device)
    step = MetaStep(
        theta,
        make_optimizer("adam_tf1", theta, 1e-4),
        sizes["inner_steps"],
        0.01,
        device,
        cuda_graph=True,
        ranks=timed,
        tasks=sizes["tasks"],
    )
    mine = ranks.share(sizes["tasks"])
    tasks = mine.stop - mine.start
    shape = (tasks, sizes["shots"], 3, sizes["patch"], sizes["patch"])
    generator = torch.Generator().manual_seed(ranks.rank)
    batch = tuple(torch.rand(shape, generator=generator).to(device) for _ in range(4))
    weights = [1.0 / sizes["inner_steps"]] * sizes["inner_steps"]
    for _ in range(warmup):
        step(batch, weights)
    synchronize(device)
    timed.seconds[0] = 0.0
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        step(batch, weights)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    per_iteration = statistics.median(times)
    all_reduce = timed.seconds[0] / iterations
    return {
        "ranks": ranks.size,
        "tasks_on_rank_0": tasks,
        "s_per_iteration": round(per_iteration, 4),
        "s_all_reduce": round(all_reduce, 5),
        "s_rest": round(per_iteration - all_reduce, 4),
        "graphed": step.graphed,
    }


def worker(args) -> None:
    """One rank under torchrun: join the group, time, and (rank 0) write the row."""
    torch.set_num_threads(args.threads)
    ranks, device = join(args.device)
    try:
        row = run_rank(ranks, device, sizes_of(args), args.iterations, args.warmup)
        if ranks.main:
            Path(args.worker).write_text(json.dumps(row))
    finally:
        torch.distributed.destroy_process_group()


def several(args, size: int) -> dict:
    """The row of `size` ranks, started with torchrun as meta_train's ranks are."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        forwarded = [f"--device={args.device}", f"--threads={args.threads}", f"--iterations={args.iterations}"]
        forwarded += [f"--warmup={args.warmup}", f"--worker={out}"] + (["--quick"] if args.quick else [])
        forwarded += [f"--patch={args.patch}"] if args.patch else []
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={size}"]
        command += ["-m", "benchmarks.speed.distributed", *forwarded]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
        subprocess.run(command, check=True, env=env, cwd=REPO)
        return json.loads(out.read_text())


def sizes_of(args) -> dict:
    sizes = QUICK if args.quick else FULL
    return {**sizes, "patch": args.patch} if args.patch else sizes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--patch", type=int, help="patch size (default: the release's 64)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a rank under torchrun: where rank 0 writes
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    device = run_device(args.device)
    sizes = sizes_of(args)
    rows = []
    for size in args.ranks:
        if size == 1:
            for threads in sorted(
                {args.threads, args.threads * max(args.ranks)} if device.type == "cpu" else {args.threads}
            ):
                torch.set_num_threads(threads)
                rows.append({**run_rank(Ranks(), device, sizes, args.iterations, args.warmup), "threads": threads})
        else:
            rows.append({**several(args, size), "threads": args.threads})
    base = next(r["s_per_iteration"] for r in rows if r["ranks"] == 1)
    for row in rows:
        row["speedup_vs_first"] = round(base / row["s_per_iteration"], 3)
        print(
            f"R={row['ranks']} threads/rank={row['threads']}: {row['s_per_iteration']:.3f} s/iteration"
            f" (all-reduce {row['s_all_reduce'] * 1e3:.2f} ms, rest {row['s_rest']:.3f} s;"
            f" rank 0 runs {row['tasks_on_rank_0']} of {sizes['tasks']} tasks) x{row['speedup_vs_first']:.2f}"
        )
    write_result(args.json, {"device": str(device), "sizes": sizes, "rows": rows})


if __name__ == "__main__":
    main()
