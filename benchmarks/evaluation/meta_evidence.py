"""Evidence that meta-transfer learning works: theta_M adapts better than theta_T in 1 and 10 steps.

Starting from the authors' pre-trained model (imported from TensorFlow), meta-train on T91 + BSD200
tasks (direct subsampling, x2), then compare on Set14 under g2.0: the imported pre-trained model
and the meta weights, each after 0, 1 and 10 adaptation steps. Resumable: rerun to continue.

    python -m benchmarks.evaluation.meta_evidence --work benchmarks/out/meta --iterations 2000 [--patch-size 48]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks.evaluation.set14_official import evaluate
from benchmarks.harness import SHARED, set14, write_result
from mzsr.data.stores import write_patch_store
from mzsr.data.tasks import write_task_shard
from mzsr.files.checkpoints import import_tf_checkpoint, load_model, save_weights
from mzsr.files.images import list_images
from mzsr.training.meta import meta_train


def _shard(args):
    write_task_shard(*args[:-1], **args[-1])
    return args[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", type=Path, default=SHARED, help="folder with train/T91, train/BSD200, test/Set14, checkpoints/"
    )
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/meta"))
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument(
        "--budget-minutes",
        type=float,
        help="instead of --iterations: train in chunks of 100 until this much time is spent",
    )
    ap.add_argument("--patch-size", type=int, default=64, help="meta-training patch size (paper: 64)")
    ap.add_argument("--meta-batch", type=int, default=5)
    ap.add_argument(
        "--tasks",
        type=int,
        default=None,
        help="training tasks (default: iterations x meta-batch, fresh ones every iteration; "
        "with --budget-minutes 100,000 x meta-batch)",
    )
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--first-order", action="store_true")
    ap.add_argument("--loss-weights", default="uniform")
    ap.add_argument("--outer-lr", type=float, default=1e-4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--eval-device", default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    ckpt = args.data / "checkpoints" / "mzsr-official-pretrained" / "Pretrained"
    pretrained = args.work / "pretrained.safetensors"
    if not pretrained.exists():
        save_weights(
            pretrained,
            import_tf_checkpoint(ckpt),
            {"scale": 2, "degradation": "bicubic", "step": 500_000, "source": "tf"},
        )

    store = args.work / f"meta{args.patch_size}.h5"
    if not store.exists():  # as the release's meta generator: stride 120, flat patches dropped, 8 flips/rotations
        images = list_images([args.data / "train" / "T91", args.data / "train" / "BSD200"])
        n = write_patch_store(
            images,
            store,
            args.patch_size,
            120,
            None,
            seed=0,
            provenance={"sets": "T91+BSD200"},
            reject_flat=True,
            store_augmented=True,
        )
        print(f"patch store: {n} patches of {args.patch_size}px from {len(images)} images", flush=True)
    n_val = 20
    total = (args.tasks or (100_000 if args.budget_minutes else args.iterations) * args.meta_batch) + n_val
    shards = [args.work / f"tasks{total}_shard{i:03d}.h5" for i in range(args.shards)]
    jobs = [
        (
            store,
            out,
            i,
            total * (i + 1) // args.shards - total * i // args.shards,
            2,
            {"n_support": 8, "n_query": 8, "seed": 0},
        )
        for i, out in enumerate(shards)
        if not out.exists()
    ]
    if jobs:
        with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            list(pool.map(_shard, jobs))
    t_data = time.perf_counter() - t_start

    cfg = {
        "iterations": args.iterations,
        "meta_batch": args.meta_batch,
        "first_order": args.first_order,
        "loss_weights": args.loss_weights,
        "outer_lr": args.outer_lr,
        "checkpoint_every": 250,
        "validate_every": 250,
        "log_every": 25,
        "validation_tasks": n_val,
        "seed": 0,
        "scale": 2,
    }
    t0 = time.perf_counter()
    if args.budget_minutes:  # resumable trainer: each chunk continues from the last checkpoint
        target, chunk_seconds = 0, 0.0
        while time.perf_counter() - t0 + chunk_seconds < 60 * args.budget_minutes:
            target += 100
            t_chunk = time.perf_counter()
            meta_weights = args.work / f"meta_{target}.safetensors"
            meta_train(
                pretrained,
                shards,
                store,
                meta_weights,
                {**cfg, "iterations": target},
                args.work / "train",
                args.work / "meta_log.csv",
                device=args.device,
            )
            chunk_seconds = time.perf_counter() - t_chunk
        args.iterations = cfg["iterations"] = target
    meta_weights = args.work / f"meta_{args.iterations}.safetensors"
    if not meta_weights.exists():
        meta_train(
            pretrained,
            shards,
            store,
            meta_weights,
            cfg,
            args.work / "train",
            args.work / "meta_log.csv",
            device=args.device,
        )
    t_train = time.perf_counter() - t0

    set14_images = [hr for _, hr in set14(args.data / "test" / "Set14")]
    eval_device = args.eval_device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    for name, path in (("pretrained", pretrained), ("meta", meta_weights)):
        model, _ = load_model(path, expected_scale=2)
        results[name] = evaluate(model, set14_images, "g2.0", (0, 1, 10), "direct_x2", eval_device)
    print(
        f"\nSet14 x2, g2.0, Y-PSNR/SSIM; meta-training {args.iterations} iterations of {args.meta_batch} tasks, "
        f"{args.patch_size}px patches, {'first' if args.first_order else 'second'} order, {t_train:.0f} s on {args.device}"
    )
    print("| weights | bicubic | 0 steps | 1 step | 10 steps |\n|---|---|---|---|---|")
    for name, r in results.items():
        cells = " | ".join(f"{r[k][0]:.2f} / {r[k][1]:.4f}" for k in ("bicubic", 0, 1, 10))
        print(f"| {name} | {cells} |")
    if args.json:
        out = {
            "config": cfg,
            "patch_size": args.patch_size,
            "tasks": total,
            "data_seconds": t_data,
            "train_seconds": t_train,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "results": {n: {str(k): v for k, v in r.items()} for n, r in results.items()},
        }
        write_result(args.json, out)


if __name__ == "__main__":
    main()
