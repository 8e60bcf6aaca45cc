"""Extend the long meta-training run of a released model by one slot of GPU time, and adopt the result.

One resumable run per released model (direct_x2 first, then bicubic_x2) lives in the repository:
models/training/<model>/ holds its state (weights + Adam state, last.pt), its log (log.csv) and one
row per slot (slots.csv). A slot of GPU time continues it for as many iterations as fit:

    # here (CPU): the data the GPU machine needs, within the 64 MiB that travels with the tree
    python -m benchmarks.tools.extend_release bundle --out .gpu_bundle
    # there (GPU): resume, train until the time budget, save, evaluate on Set14
    python -m benchmarks.tools.extend_release train --bundle .gpu_bundle --model direct_x2 --minutes 6 --out $OUT
    # here, with the files that came back: state, log and slot row into models/training/, and the
    # model into models/ when it beats the released one on Set14 (mean MZSR(10) of its degradations)
    python -m benchmarks.tools.extend_release adopt FILES_AT --model direct_x2

The recipe is the paper configuration's (config/config.yaml: meta, tasks and meta patches), trained
from the authors' theta_T on T91 + BSD200 (the DIV2K stand-in that ../shared/data holds). The bundle
carries the meta patches un-augmented as 64x64 PNGs (the store built from them on the GPU machine,
with the 8 flips/rotations, equals the one cut from the images), theta_T and Set14.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.evaluation.set14_fidelity import mean_table, score_rows
from benchmarks.harness import REPO, SHARED, set14
from mzsr import MZSRError
from mzsr.data.stores import write_patch_store
from mzsr.data.tasks import write_task_shard
from mzsr.files.checkpoints import import_tf_checkpoint, save_weights
from mzsr.files.images import list_images, read_image_uint8, write_png
from mzsr.files.released import config_digest, release_info
from mzsr.training.meta import META_DEFAULTS, meta_train
from mzsr.training.state import bind_settings

MODELS = {"direct_x2": ("direct", ["g0.2", "g2.0", "ani"]), "bicubic_x2": ("bicubic", ["gb1.3"])}
DATA = "T91 + BSD200 (DIV2K stand-in), 64 px meta patches, stride 120, flat ones dropped, 8 flips/rotations"
STEPS = (0, 1, 10)
SLOT_COLUMNS = [
    "date",
    "device",
    "torch",
    "start_step",
    "end_step",
    "train_seconds",
    "seconds_per_iteration",
    "set14",
    "adopted",
]


OPERATIONAL = ("checkpoint_every", "log_every", "validate_every", "cuda_graph")  # not part of the recipe's digest


def recipe_digest(recipe: dict) -> str:
    return config_digest({**recipe, "meta": {k: v for k, v in recipe["meta"].items() if k not in OPERATIONAL}})


def paper_recipe(model: str, tiny: bool = False) -> dict:
    """Meta, task and patch settings of the run: config/config.yaml's (tiny: a CPU check in seconds)."""
    paper = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    meta = {k: v for k, v in paper["meta"].items() if k in META_DEFAULTS}
    meta.update(scale=2, subsampling=MODELS[model][0], checkpoint_every=100, log_every=50)
    tasks = {k: paper["tasks"][k] for k in ("n_support", "n_query", "seed")}
    patches = {k: paper["patches"]["meta"][k] for k in ("patch_size", "stride", "reject_flat", "flat_threshold")}
    shards = paper["tasks"]["shards"]
    if tiny:
        meta.update(
            iterations=4,
            meta_batch=1,
            inner_steps=1,
            checkpoint_every=2,
            validate_every=4,
            validation_tasks=1,
            log_every=1,
        )
        tasks.update(n_support=2, n_query=2)
        patches.update(patch_size=32, stride=32)
        shards = 2
    # the meta-loss is the release's mean over the query steps (before, the sum): part of the recipe
    return {"meta": meta, "tasks": tasks, "patches": patches, "shards": shards, "meta_loss": "release_mean"}


# ------------------------------------------------------------------------------------ bundle (CPU)


def bundle(out: Path, data: Path, tiny: bool = False) -> None:
    """theta_T, the meta patches as PNGs (un-augmented) and Set14, in `out`."""
    recipe = paper_recipe("direct_x2", tiny)["patches"]
    images = list_images([data / "train" / "T91", data / "train" / "BSD200"])
    if tiny:
        images = images[:3]
    out.mkdir(parents=True, exist_ok=True)
    save_weights(
        out / "theta_T.safetensors",
        import_tf_checkpoint(data / "checkpoints" / "mzsr-official-pretrained" / "Pretrained"),
        {"scale": 2, "degradation": "bicubic", "step": 500_000, "source": "tf:authors' Pretrained"},
    )
    store = out / "cut.h5"
    write_patch_store(
        images,
        store,
        recipe["patch_size"],
        recipe["stride"],
        None,
        seed=0,
        reject_flat=recipe["reject_flat"],
        flat_threshold=recipe["flat_threshold"],
    )
    import h5py

    patch_dir = out / "meta_patches"
    shutil.rmtree(patch_dir, ignore_errors=True)
    with h5py.File(store, "r") as f:
        for i, patch in enumerate(f["patches"]):
            write_png(patch_dir / f"{i:06d}.png", patch)
    store.unlink()
    set14 = out / "Set14"
    set14.mkdir(exist_ok=True)
    for p in sorted((data / "test" / "Set14").glob("*.png"))[: 1 if tiny else None]:
        if tiny:  # a 64x64 corner: adaptation in a second on a CPU
            write_png(set14 / p.name, read_image_uint8(p)[:64, :64])
        else:
            shutil.copy(p, set14 / p.name)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"{out}: {len(list(patch_dir.iterdir()))} meta patches, theta_T, {len(list(set14.iterdir()))} Set14 images;"
        f" {size / 2**20:.1f} MiB"
    )


# ------------------------------------------------------------------------------------ train (GPU)


class OutOfTime(Exception):
    """Raised by the step hook at a checkpoint when the next chunk would not fit the budget."""


def _shard(job):
    store, out, index, count, scale, tasks = job
    write_task_shard(store, out, index, count, scale, **tasks)


def prepare_data(bundle_dir: Path, work: Path, recipe: dict) -> tuple[Path, list[Path]]:
    """The augmented meta patch store and the run's task shards, rebuilt from the bundle."""
    work.mkdir(parents=True, exist_ok=True)
    store = work / "meta.h5"
    if not store.exists():  # one 64x64 PNG = one grid patch; 8 flips/rotations as the release stores them
        p = recipe["patches"]
        write_patch_store(
            sorted((bundle_dir / "meta_patches").glob("*.png")),
            store,
            p["patch_size"],
            p["stride"],
            None,
            seed=0,
            reject_flat=p["reject_flat"],
            flat_threshold=p["flat_threshold"],
            store_augmented=True,
        )
    meta = recipe["meta"]
    total = meta["iterations"] * meta["meta_batch"] + meta["validation_tasks"]
    n = recipe["shards"]
    shards = [work / f"tasks{total}_{i}.h5" for i in range(n)]
    jobs = [
        (store, out, i, total * (i + 1) // n - total * i // n, meta["scale"], recipe["tasks"])
        for i, out in enumerate(shards)
        if not out.exists()
    ]
    if jobs:
        with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            list(pool.map(_shard, jobs))
    return store, shards


def budgeted_meta_train(init: Path, shards, store: Path, cfg: dict, work: Path, minutes: float, device: str):
    """meta_train in work/train (resuming from its last.pt) until `minutes` of training are spent:
    it stops at the last checkpoint before the budget. Returns (start step, end step, seconds, state)."""
    last = work / "train" / "last.pt"
    start_step = torch.load(last, weights_only=True)["step"] if last.exists() else 0
    t_train = time.perf_counter()
    marks = [(t_train, start_step)]

    def hook(step):  # at each checkpoint: stop when another chunk would overrun the budget
        if step % cfg["checkpoint_every"]:
            return
        marks.append((time.perf_counter(), step))
        (t0, s0), (t1, s1) = marks[0], marks[-1]
        if t1 - t_train + (t1 - t0) / max(s1 - s0, 1) * cfg["checkpoint_every"] > 60 * minutes:
            raise OutOfTime

    try:
        meta_train(
            init,
            shards,
            store,
            work / "meta_final.safetensors",
            cfg,
            work / "train",
            work / "log.csv",
            device=device,
            on_step=hook,
        )
    except OutOfTime:
        pass
    state = torch.load(last, map_location="cpu", weights_only=True)
    return start_step, state["step"], time.perf_counter() - t_train, state


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() and device != "cpu" else "cpu"


def set14_means(state: dict, meta: dict, bundle_dir: Path, degradations, device: str) -> dict:
    """{degradation: {steps: [PSNR, SSIM]}} of the weights on the bundle's Set14."""
    from mzsr.network.model import MZSRNet

    model = MZSRNet()
    model.load_state_dict(state["model"])
    model.eval()
    images = set14(bundle_dir / "Set14")
    device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    table = mean_table(score_rows(model, meta, images, degradations, STEPS, "auto", device))
    return {name: {str(k): [round(v[0], 3), round(v[1], 4)] for k, v in by.items()} for name, by in table.items()}


def train(args) -> None:
    t_start = time.perf_counter()
    recipe = paper_recipe(args.model, args.tiny)
    if args.no_cuda_graph:
        recipe["meta"]["cuda_graph"] = False
    state_dir = args.state_dir or REPO / "models" / "training" / args.model
    work = args.work
    store, shards = prepare_data(args.bundle, work, recipe)
    (work / "train").mkdir(parents=True, exist_ok=True)
    # the state of a run made with another recipe is stale: set aside by meta_train, which starts over
    bind_settings(work / "train", {"recipe": recipe_digest(recipe)})
    if (state_dir / "last.pt").exists():
        shutil.copy(state_dir / "last.pt", work / "train" / "last.pt")
    if (state_dir / "log.csv").exists():
        shutil.copy(state_dir / "log.csv", work / "log.csv")
    cfg = recipe["meta"]
    start_step, end_step, train_seconds, state = budgeted_meta_train(
        args.bundle / "theta_T.safetensors", shards, store, cfg, work, args.minutes, args.device
    )
    card = device_name(args.device)
    info = {
        "name": args.model,
        "iterations": end_step,
        "start": "theta_T: the authors' pre-trained x2 model (500K steps, bicubic), imported from TensorFlow",
        "data": DATA,
        "device": card,
        "config_digest": recipe_digest(recipe),
        "recipe": recipe,
        "log": f"models/training/{args.model}/log.csv",
    }
    meta = {"scale": 2, "degradation": cfg["subsampling"], "step": end_step, "source": "meta", "config": cfg}
    t_eval = time.perf_counter()
    info["set14"] = set14 = set14_means(state, meta, args.bundle, MODELS[args.model][1], args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    save_weights(args.out / f"{args.model}.safetensors", state["model"], {**meta, "released": info})
    shutil.copy(work / "train" / "last.pt", args.out / "last.pt")
    shutil.copy(work / "log.csv", args.out / "log.csv")
    slot = {
        "date": time.strftime("%Y-%m-%d"),
        "device": card,
        "torch": torch.__version__,
        "start_step": start_step,
        "end_step": end_step,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_iteration": round(train_seconds / max(end_step - start_step, 1), 4),
        "set14": set14,
        "eval_seconds": round(time.perf_counter() - t_eval, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    (args.out / "slot.json").write_text(json.dumps(slot, indent=1))
    print(json.dumps(slot, indent=1))


def ab(args) -> None:
    """The release's first-order warm-up against second order throughout, at equal training time,
    each arm from theta_T with the same tasks; Set14 after each."""
    recipe = paper_recipe(args.model, args.tiny)
    if args.no_cuda_graph:
        recipe["meta"]["cuda_graph"] = False
    store, shards = prepare_data(args.bundle, args.work, recipe)
    arms = {"second order throughout": 0, f"first order for {args.warm_up} iterations": args.warm_up}
    result = {
        "device": device_name(args.device),
        "torch": torch.__version__,
        "minutes_per_arm": args.minutes,
        "arms": {},
    }
    for i, (arm, warm_up) in enumerate(arms.items()):
        cfg = {**recipe["meta"], "first_order_iterations": warm_up}
        work = args.work / f"arm{i}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "train").mkdir(parents=True)
        _, end, seconds, state = budgeted_meta_train(
            args.bundle / "theta_T.safetensors", shards, store, cfg, work, args.minutes, args.device
        )
        meta = {"scale": 2, "degradation": cfg["subsampling"], "step": end, "source": "meta", "config": cfg}
        result["arms"][arm] = {
            "iterations": end,
            "train_seconds": round(seconds, 1),
            "set14": set14_means(state, meta, args.bundle, MODELS[args.model][1], args.device),
        }
        print(arm, json.dumps(result["arms"][arm]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab.json").write_text(json.dumps(result, indent=1))
    print("| arm | iterations | " + " | ".join(f"{d} MZSR(1) / MZSR(10)" for d in MODELS[args.model][1]) + " |")
    for arm, r in result["arms"].items():
        cells = " | ".join(f"{by['1'][0]:.2f} / {by['10'][0]:.2f}" for by in r["set14"].values())
        print(f"| {arm} | {r['iterations']} | {cells} |")


# ------------------------------------------------------------------------------------ adopt (CPU)


def mean_after(set14: dict, steps: str = "10") -> float:
    """Mean PSNR after `steps` over the model's degradations (the adoption criterion)."""
    return float(np.mean([by[steps][0] for by in set14.values()]))


def adopt(args) -> None:
    """State, log and slot row into models/training/<model>/; the model into models/ if it is better."""
    came = Path(args.files)
    slot = json.loads((came / "slot.json").read_text())
    state_dir = args.state_dir or REPO / "models" / "training" / args.model
    models_dir = args.models_dir or REPO / "models"
    state_dir.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "log.csv"):
        shutil.copy(came / name, state_dir / name)
    released = models_dir / f"{args.model}.safetensors"
    old = release_info(released).get("set14") if released.exists() else None
    degradations = MODELS[args.model][1]
    better = old is None or set(old) != set(degradations) or mean_after(slot["set14"]) >= mean_after(old)
    if better:
        shutil.copy(came / f"{args.model}.safetensors", released)
    slots = state_dir / "slots.csv"
    new = not slots.exists()
    with open(slots, "a", newline="") as f:
        w = csv.DictWriter(f, SLOT_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({**slot, "set14": json.dumps(slot["set14"], sort_keys=True), "adopted": better})
    verdict = "adopted as" if better else "kept out of"
    print(
        f"{args.model}: steps {slot['start_step']} -> {slot['end_step']} on {slot['device']}, "
        f"{slot['seconds_per_iteration']} s/iteration; Set14 mean MZSR(10) {mean_after(slot['set14']):.2f} dB"
        f" (released: {mean_after(old) if old else float('nan'):.2f}); {verdict} {released}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("bundle", help="write the data that the GPU machine needs")
    p.add_argument("--out", type=Path, default=REPO / ".gpu_bundle")
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--tiny", action="store_true", help="3 training images, 32 px patches, one Set14 corner (CPU check)")
    p = sub.add_parser("train", help="resume the model's run, train until the budget, save, evaluate")
    p.add_argument("--bundle", type=Path, default=REPO / ".gpu_bundle")
    p.add_argument("--model", choices=MODELS, default="direct_x2")
    p.add_argument("--minutes", type=float, required=True, help="training budget (data, evaluation not counted)")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=Path("/tmp/mzsr_release"))
    p.add_argument("--state-dir", type=Path, help="default models/training/<model>")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--no-cuda-graph", action="store_true", help="eager meta-steps (meta.cuda_graph: false)")
    p = sub.add_parser("ab", help="first-order warm-up against second order throughout, equal time per arm")
    p.add_argument("--bundle", type=Path, default=REPO / ".gpu_bundle")
    p.add_argument("--model", choices=MODELS, default="direct_x2")
    p.add_argument("--minutes", type=float, required=True, help="training time of each arm")
    p.add_argument("--warm-up", type=int, default=1000, help="first-order iterations of the warm-up arm")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=Path("/tmp/mzsr_ab"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--no-cuda-graph", action="store_true", help="eager meta-steps (meta.cuda_graph: false)")
    p = sub.add_parser("adopt", help="take a slot's files into models/")
    p.add_argument("files", help="the folder with the files the GPU run returned")
    p.add_argument("--model", choices=MODELS, default="direct_x2")
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--models-dir", type=Path)
    args = ap.parse_args(argv)
    try:
        {
            "bundle": lambda: bundle(args.out, args.data, args.tiny),
            "train": lambda: train(args),
            "ab": lambda: ab(args),
            "adopt": lambda: adopt(args),
        }[args.command]()
    except MZSRError as e:
        print(f"extend_release: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
