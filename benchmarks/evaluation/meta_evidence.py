"""Evidence that meta-transfer learning works: theta_M adapts better than theta_T in 1 and 10 steps.

From the authors' pre-trained model (imported from TensorFlow), second-order meta-training on T91 +
BSD200 tasks (x2, direct subsampling, the release's meta patches at --patch-size, 8 + 8 patches a
task, 5 inner steps, uniform loss weights), then Set14 under g2.0: the imported pre-trained model and
the meta weights, each after 0, 1 and 10 adaptation steps. Resumable: rerun to continue.

    python -m benchmarks.evaluation.meta_evidence --iterations 300 --patch-size 24 --meta-batch 2 --shards 2 \\
        --device cpu [--json FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.evaluation.set14_official import evaluate
from benchmarks.harness import REPO, SHARED, run_device, set14, write_result
from benchmarks.tools.extend_release import prepare_data
from mzsr.data.patches import FLAT_THRESHOLD
from mzsr.files.checkpoints import load_model
from mzsr.training.meta import meta_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--patch-size", type=int, default=64, help="meta-training patch size (paper: 64)")
    ap.add_argument("--meta-batch", type=int, default=5)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "out" / "meta_evidence")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    device = str(run_device(args.device))
    cfg = {
        "iterations": args.iterations,
        "meta_batch": args.meta_batch,
        "subsampling": "direct",
        "loss_weights": "uniform",
        "checkpoint_every": 250,
        "validate_every": 250,
        "log_every": 25,
        "validation_tasks": 20,
        "seed": 0,
        "scale": 2,
    }
    recipe = {
        "meta": cfg,
        "tasks": {"n_support": 8, "n_query": 8, "seed": 0},
        "patches": {
            "patch_size": args.patch_size,
            "stride": 120,
            "reject_flat": True,
            "flat_threshold": FLAT_THRESHOLD,
        },
        "shards": args.shards,
    }
    work = args.work / f"p{args.patch_size}_b{args.meta_batch}"
    t0 = time.perf_counter()
    theta_t, store, shards = prepare_data(SHARED, work, recipe, tiny=False)
    t_data = time.perf_counter() - t0
    meta_weights = work / f"meta_{args.iterations}.safetensors"
    if not meta_weights.exists():
        meta_train(theta_t, shards, store, meta_weights, cfg, work / "train", work / "meta_log.csv", device=device)
    t_train = time.perf_counter() - t0 - t_data

    images = [hr for _, hr in set14()]
    results = {}
    for name, path in (("pretrained", theta_t), ("meta", meta_weights)):
        model, _ = load_model(path, expected_scale=2)
        results[name] = evaluate(model, images, "g2.0", (0, 1, 10), "direct_x2", device)
    print(
        f"\nSet14 x2, g2.0, Y-PSNR/SSIM; meta-training {args.iterations} iterations of {args.meta_batch} tasks, "
        f"{args.patch_size}px patches, second order, {t_train:.0f} s on {device}"
    )
    print("| weights | bicubic | 0 steps | 1 step | 10 steps |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[k][0]:.2f} / {r[k][1]:.4f}" for k in ("bicubic", 0, 1, 10)) + " |")
    out = {"recipe": recipe, "data_seconds": t_data, "train_seconds": t_train}
    out["device"] = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    write_result(args.json, {**out, "set14_g2.0": {n: {str(k): v for k, v in r.items()} for n, r in results.items()}})


if __name__ == "__main__":
    main()
