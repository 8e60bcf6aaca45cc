"""Extend a released model's long meta-training run for a time budget on a GPU machine, and adopt the result.

One resumable run per released model (direct_x2 first, then bicubic_x2) lives in the repository:
models/training/<model>/ holds its state (weights + Adam state, last.pt), its log (log.csv) and one
row per session (slots.csv). On any machine with the clone, the development data and a GPU:

    # resume the run, train for the budget, evaluate on Set14, save state + log + model in --out
    python -m benchmarks.tools.extend_release train --budget-minutes 60 --device cuda
    # state, log and a slots.csv row into models/training/<model>/, and the model into models/
    # when its Set14 mean MZSR(10) beats the released one's
    python -m benchmarks.tools.extend_release adopt

As a SLURM job (the data folder is ../shared/data beside the clone unless MZSR_SHARED_DATA names another):

    sbatch --gres=gpu:1 --time=01:20:00 --wrap \\
        "python -m benchmarks.tools.extend_release train --budget-minutes 60 --device cuda"

The budget counts training only: data preparation (a few minutes the first time, kept in --work) and
the Set14 evaluation come on top. Training stops at the last checkpoint that fits the budget.

The recipe is the paper configuration's (config/config.yaml: meta, tasks and meta patches), trained
from the authors' theta_T (imported from their TensorFlow checkpoint) on T91 + BSD200, the DIV2K
stand-in that the development data holds.
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
from benchmarks.harness import REPO, SHARED, run_device, set14
from mzsr import MZSRError
from mzsr.data.stores import write_patch_store
from mzsr.data.tasks import write_task_shard
from mzsr.facts import training_run_key
from mzsr.files.checkpoints import import_tf_checkpoint, save_weights
from mzsr.files.images import list_images
from mzsr.files.released import config_digest, release_info
from mzsr.network.model import MZSRNet
from mzsr.training.meta import META_DEFAULTS, meta_train
from mzsr.training.state import bind_settings

MODELS = {"direct_x2": ("direct", ["g0.2", "g2.0", "ani"]), "bicubic_x2": ("bicubic", ["gb1.3"])}
DATA = "T91 + BSD200 (DIV2K stand-in), 64 px meta patches, stride 120, flat ones dropped, 8 flips/rotations"
STEPS = (0, 1, 10)
SLOT_COLUMNS = ["date", "device", "torch", "start_step", "end_step", "train_seconds", "seconds_per_iteration"]
SLOT_COLUMNS += ["set14", "adopted"]


def recipe_digest(recipe: dict) -> str:
    """The digest of what the run learns (how it runs left out: mzsr.facts.training_run_key)."""
    return config_digest({**recipe, "meta": training_run_key("meta", recipe["meta"])})


def paper_recipe(model: str, tiny: bool = False) -> dict:
    """Meta, task and patch settings of the run: config/config.yaml's (tiny: a CPU check in seconds)."""
    paper = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    meta = {k: v for k, v in paper["meta"].items() if k in META_DEFAULTS}
    meta.update(scale=2, subsampling=MODELS[model][0], checkpoint_every=100, log_every=50)
    tasks = {k: paper["tasks"][k] for k in ("n_support", "n_query", "seed")}
    patches = {k: paper["patches"]["meta"][k] for k in ("patch_size", "stride", "reject_flat", "flat_threshold")}
    shards = paper["tasks"]["shards"]
    if tiny:
        meta.update(iterations=4, meta_batch=1, inner_steps=1, checkpoint_every=2, validate_every=4)
        meta.update(validation_tasks=1, log_every=1)
        tasks.update(n_support=2, n_query=2)
        patches.update(patch_size=32, stride=32)
        shards = 2
    # the meta-loss is the release's mean over the query steps (before, the sum): part of the recipe
    return {"meta": meta, "tasks": tasks, "patches": patches, "shards": shards, "meta_loss": "release_mean"}


class OutOfTime(Exception):
    """Raised by the step hook at a checkpoint when the next chunk would not fit the budget."""


def _shard(job):
    store, out, index, count, scale, tasks = job
    write_task_shard(store, out, index, count, scale, **tasks)


def prepare_data(data: Path, work: Path, recipe: dict, tiny: bool) -> tuple[Path, Path, list[Path]]:
    """theta_T, the augmented meta patch store and the run's task shards in `work` (made once)."""
    work.mkdir(parents=True, exist_ok=True)
    theta_t = work / "theta_T.safetensors"
    if not theta_t.exists():
        weights = import_tf_checkpoint(data / "checkpoints" / "mzsr-official-pretrained" / "Pretrained")
        meta = {"scale": 2, "degradation": "bicubic", "step": 500_000, "source": "tf:authors' Pretrained"}
        save_weights(theta_t, weights, meta)
    store = work / "meta.h5"
    if not store.exists():  # as the release's meta generator: 8 flips/rotations of every grid patch
        images = list_images([data / "train" / "T91", data / "train" / "BSD200"])[: 3 if tiny else None]
        p = recipe["patches"]
        write_patch_store(
            images,
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
        with ProcessPoolExecutor(max_workers=min(len(jobs), len(os.sched_getaffinity(0)))) as pool:
            list(pool.map(_shard, jobs))
    return theta_t, store, shards


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
        final = work / "meta_final.safetensors"
        meta_train(init, shards, store, final, cfg, work / "train", work / "log.csv", device=device, on_step=hook)
    except OutOfTime:
        pass
    state = torch.load(last, map_location="cpu", weights_only=True)
    return start_step, state["step"], time.perf_counter() - t_train, state


def set14_means(state: dict, meta: dict, data: Path, degradations, device: str, tiny: bool) -> dict:
    """{degradation: {steps: [PSNR, SSIM]}} of the weights on Set14 (tiny: one 64x64 corner)."""
    model = MZSRNet()
    model.load_state_dict(state["model"])
    model.eval()
    images = set14(data / "test" / "Set14")
    images = [(stem, hr[:64, :64]) for stem, hr in images[:1]] if tiny else images
    table = mean_table(score_rows(model, meta, images, degradations, STEPS, "auto", device))
    return {name: {str(k): [round(v[0], 3), round(v[1], 4)] for k, v in by.items()} for name, by in table.items()}


def train(args) -> None:
    t_start = time.perf_counter()
    recipe = paper_recipe(args.model, args.tiny)
    if args.no_cuda_graph:
        recipe["meta"]["cuda_graph"] = False
    state_dir = args.state_dir or REPO / "models" / "training" / args.model
    work = args.work or REPO / "benchmarks" / "out" / f"extend_{args.model}"
    out = args.out or work / "result"
    theta_t, store, shards = prepare_data(args.data, work, recipe, args.tiny)
    (work / "train").mkdir(parents=True, exist_ok=True)
    # the state of a run made with another recipe is stale: set aside by meta_train, which starts over
    bind_settings(work / "train", {"recipe": recipe_digest(recipe)})
    for name, to in (("last.pt", work / "train" / "last.pt"), ("log.csv", work / "log.csv")):
        if (state_dir / name).exists():
            shutil.copy(state_dir / name, to)
    cfg = recipe["meta"]
    device = str(run_device(args.device))
    start_step, end_step, train_seconds, state = budgeted_meta_train(
        theta_t, shards, store, cfg, work, args.budget_minutes, device
    )
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
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
    info["set14"] = scores = set14_means(state, meta, args.data, MODELS[args.model][1], device, args.tiny)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / f"{args.model}.safetensors", state["model"], {**meta, "released": info})
    shutil.copy(work / "train" / "last.pt", out / "last.pt")
    shutil.copy(work / "log.csv", out / "log.csv")
    slot = {
        "date": time.strftime("%Y-%m-%d"),
        "device": card,
        "torch": torch.__version__,
        "start_step": start_step,
        "end_step": end_step,
        "train_seconds": round(train_seconds, 1),
        "seconds_per_iteration": round(train_seconds / max(end_step - start_step, 1), 4),
        "set14": scores,
        "eval_seconds": round(time.perf_counter() - t_eval, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    (out / "slot.json").write_text(json.dumps(slot, indent=1))
    print(json.dumps(slot, indent=1))
    print(f"next: python -m benchmarks.tools.extend_release adopt {out} --model {args.model}")


def mean_after(scores: dict, steps: str = "10") -> float:
    """Mean PSNR after `steps` over the model's degradations (the adoption criterion)."""
    return float(np.mean([by[steps][0] for by in scores.values()]))


def adopt(args) -> None:
    """State, log and slot row into models/training/<model>/; the model into models/ if it is better."""
    work = args.work or REPO / "benchmarks" / "out" / f"extend_{args.model}"
    came = args.result or work / "result"
    if not (came / "slot.json").is_file():
        raise MZSRError(f"{came}: no slot.json (run `extend_release train` first)")
    slot = json.loads((came / "slot.json").read_text())
    state_dir = args.state_dir or REPO / "models" / "training" / args.model
    models_dir = args.models_dir or REPO / "models"
    state_dir.mkdir(parents=True, exist_ok=True)
    models_dir.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "log.csv"):
        shutil.copy(came / name, state_dir / name)
    released = models_dir / f"{args.model}.safetensors"
    old = release_info(released).get("set14") if released.exists() else None
    comparable = old is not None and set(old) == set(MODELS[args.model][1])
    better = not comparable or mean_after(slot["set14"]) > mean_after(old)
    if better:
        shutil.copy(came / f"{args.model}.safetensors", released)
    slots = state_dir / "slots.csv"
    new = not slots.exists()
    with open(slots, "a", newline="") as f:
        w = csv.DictWriter(f, SLOT_COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({**slot, "set14": json.dumps(slot["set14"], sort_keys=True), "adopted": better})
    print(
        f"{args.model}: steps {slot['start_step']} -> {slot['end_step']} on {slot['device']}, "
        f"{slot['seconds_per_iteration']} s/iteration; Set14 mean MZSR(10) {mean_after(slot['set14']):.2f} dB"
        f" (released: {mean_after(old) if comparable else float('nan'):.2f}); "
        f"{'adopted as' if better else 'kept out of'} {released}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="resume the model's run, train for the budget, evaluate on Set14, save")
    p.add_argument("--budget-minutes", type=float, required=True, help="training time (data, evaluation not counted)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto")
    p.add_argument("--data", type=Path, default=SHARED, help="T91, BSD200, Set14 and the authors' checkpoint")
    p.add_argument("--out", type=Path, help="state, log, model and slot.json (default WORK/result)")
    p.add_argument("--tiny", action="store_true", help="3 images, 32 px patches, 4 iterations: a CPU check")
    p.add_argument("--no-cuda-graph", action="store_true", help="eager meta-steps (meta.cuda_graph: false)")
    p = sub.add_parser("adopt", help="take a train result into models/training/<model>/ and, if better, models/")
    p.add_argument("result", type=Path, nargs="?", help="train's --out (default WORK/result)")
    p.add_argument("--models-dir", type=Path, help="default models/")
    for p in sub.choices.values():
        p.add_argument("--model", choices=MODELS, default="direct_x2")
        p.add_argument("--work", type=Path, help="data and training folder (default benchmarks/out/extend_<model>)")
        p.add_argument("--state-dir", type=Path, help="the run's state (default models/training/<model>)")
    args = ap.parse_args(argv)
    try:
        train(args) if args.command == "train" else adopt(args)
    except MZSRError as e:
        print(f"extend_release: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
