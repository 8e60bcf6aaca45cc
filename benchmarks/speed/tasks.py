"""What making meta-batches at batch time costs, beside the meta-iteration itself.

Meta-training reads each task's HR patches from the patch store and synthesises its LR inputs on
the training device (mzsr.training.meta.make_batch). Rows, per size, each the median of --iters after --warmup:
  store read      TaskPool.read: the tasks' HR patches from the HDF5 store (one gzip chunk a patch), row by row
  fancy read      the same rows in one h5py fancy-indexing read, for comparison (not used: slower at 80 rows)
  batch           TaskPool.batch: the store read, the patches onto the device, the kernels from (l1, l2, theta)
  synthesis       mzsr.training.meta.synthesise: each patch degraded with its task's kernel, then bicubic-upscaled
  meta-iteration  meta_loss (second order) + backward + Adam step, as meta_train runs it
Each cell is wall seconds (process CPU seconds of all threads): on a shared CPU the wall time
mostly measures the other jobs. Sizes: paper = 5 tasks x (8 + 8) patches of 64 px, 5 inner steps;
small = 2 tasks x (2 + 2) of 16 px, 2 inner steps. The stores are cut from --images as the release's
meta generator does (stride 120, flat patches dropped, 8 flips/rotations stored) into --work, and
reused when there.

    python -m benchmarks.speed.tasks [--device auto|cpu|cuda] [--threads N] [--iters N] [--sizes paper,small]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import TRAIN_FOLDERS, run_device
from mzsr.data.stores import write_patch_store
from mzsr.data.tasks import TaskPool, write_task_shard
from mzsr.files.images import list_images
from mzsr.network.model import MZSRNet
from mzsr.training.maml import meta_loss
from mzsr.training.meta import synthesise, tasks_for_iteration
from mzsr.training.optim import make_optimizer

SIZES = {
    "paper": {"tasks": 5, "shots": 8, "patch": 64, "inner_steps": 5},
    "small": {"tasks": 2, "shots": 2, "patch": 16, "inner_steps": 2},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """Wall and process-CPU seconds of one call."""
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def bench(size: dict, images, work: Path, device: torch.device, warmup: int, iters: int, subsampling: str) -> dict:
    store = work / f"meta{size['patch']}.h5"
    if not store.exists():
        write_patch_store(images, store, size["patch"], 120, None, seed=0, reject_flat=True, store_augmented=True)
    n_tasks = 3 * (warmup + iters) * size["tasks"]  # two thirds more for the reference reads
    shard = work / f"shard{size['patch']}_{n_tasks}.h5"
    if not shard.exists():
        write_task_shard(store, shard, 0, n_tasks, 2, size["shots"], size["shots"], seed=0)
    pool = TaskPool([shard], store)
    model = MZSRNet().to(device)
    theta = list(model.parameters())
    opt = make_optimizer("adam_tf1", theta, 1e-4)
    steps = size["inner_steps"]
    ids = np.arange(len(pool))
    times: dict[str, list[tuple[float, float]]] = {
        "store read": [],
        "fancy read": [],
        "batch": [],
        "synthesis": [],
        "meta-iteration": [],
    }
    for it in range(warmup + iters):
        got = {}
        task_ids = tasks_for_iteration(ids, size["tasks"], it)
        # the reference reads take other tasks, whose rows are not in HDF5's chunk cache yet
        other, third = (tasks_for_iteration(ids, size["tasks"], k * (warmup + iters) + it) for k in (1, 2))
        t_read = timed(lambda: pool.read(pool.rows[other].ravel()), device)
        t_fancy = timed(lambda: pool.patches[np.unique(pool.rows[third])], device)
        t_batch = timed(lambda: got.update(raw=pool.batch(task_ids, device)), device)
        t_syn = timed(
            lambda: got.update(batch=synthesise(*got["raw"], pool.scale, subsampling, pool.n_support)), device
        )

        def step():
            loss = meta_loss(theta, got["batch"], steps, 0.01, [1.0 / steps] * steps, first_order=False)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_meta = timed(step, device)
        if it >= warmup:
            for key, t in zip(times, (t_read, t_fancy, t_batch, t_syn, t_meta)):
                times[key].append(t)
    n = len(pool.patches)
    pool.close()
    return {k: tuple(statistics.median(x) for x in zip(*v)) for k, v in times.items()} | {"store_patches": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--images", type=Path, nargs="+", default=list(TRAIN_FOLDERS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/mzsr_bench_tasks"))
    ap.add_argument("--sizes", default="paper,small")
    ap.add_argument("--subsampling", "--method", dest="subsampling", choices=["direct", "bicubic"], default="direct")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per size (default 3 on CPU, 20 on CUDA)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = run_device(args.device)
    iters = args.iters or (20 if device.type == "cuda" else 3)
    args.work.mkdir(parents=True, exist_ok=True)
    images = list_images(args.images)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(
        f"device {name}; torch {torch.__version__}; {args.subsampling} subsampling; median of {iters} after {args.warmup} warm-up"
    )
    print(
        "| size | store patches | store read s | fancy read s | batch s | synthesis s | meta-iteration s | "
        "(batch + synthesis) / meta-iteration |\n|---|---|---|---|---|---|---|---|"
    )
    for key in args.sizes.split(","):
        s = SIZES[key]
        r = bench(s, images, args.work, device, args.warmup, iters, args.subsampling)
        label = f"{key}: {s['tasks']} x ({s['shots']}+{s['shots']}) x {s['patch']} px, {s['inner_steps']} steps"
        cell = lambda k: f"{r[k][0]:.4f} ({r[k][1]:.4f})"  # noqa: E731
        ratio = [(r["batch"][i] + r["synthesis"][i]) / r["meta-iteration"][i] for i in (0, 1)]
        cells = " | ".join(cell(k) for k in ("store read", "fancy read", "batch", "synthesis"))
        print(
            f"| {label} | {r['store_patches']} | {cells} | "
            f"{cell('meta-iteration')} | {ratio[0]:.2%} ({ratio[1]:.2%}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
