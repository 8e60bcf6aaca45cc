"""Meta-transfer learning (stage 2) from theta_T over blur-kernel tasks: the tasks, their meta-batches
and validation, and the training loop `meta_train`. The MAML mathematics is in mzsr.training.maml, the
meta-step (eager or CUDA graph) in mzsr.training.meta_step.

Tasks: every iteration takes `meta_batch` tasks not used before (the release draws fresh ones each
time); a task shard holds only its kernel parameters and patch-store rows, and `make_batch` reads the
HR patches and synthesises the LR inputs on the training device. Adam on theta is TensorFlow 1's by
default (mzsr.training.optim); the first `first_order_iterations` iterations may run first-order (the release's
SECOND_ORDER_GRAD_ITER warm-up, 0 there).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mzsr import MZSRError, settings
from mzsr.data.tasks import TaskPool
from mzsr.degradation.degrade import degrade_torch
from mzsr.degradation.resize import imresize_torch
from mzsr.device import pick_device
from mzsr.files.checkpoints import load_weights, save_weights
from mzsr.network.conv import grad_dtype
from mzsr.network.model import MZSRNet
from mzsr.training.distributed import Ranks, check_processes, resumable_checkpoint
from mzsr.training.maml import per_task_l1, query_loss_weights, tasks_forward
from mzsr.training.meta_step import MetaStep
from mzsr.training.optim import make_optimizer
from mzsr.training.state import CsvLog, check_finite, load_training_state, save_training_state

# The config's meta section (mzsr/config.schema.yaml) less weights_folder (where models come from,
# not how they are trained), at the config's scale; "subsampling" is the subsampling of the tasks' LR
# ("direct" or "bicubic", the paper's two models), which the workflow sets per model it trains.
META_DEFAULTS = {
    **settings.defaults("meta", without=("weights_folder",)),
    "scale": settings.default("scale"),
    "subsampling": "direct",
}


@torch.no_grad()
def synthesise(hr: torch.Tensor, kernels: torch.Tensor, scale: int, subsampling: str, n_support: int):
    """(support_x, support_y, query_x, query_y) of tasks from their HR patches (T, S+Q, 3, P, P) and
    kernels (T, k, k): LR = the task's degradation of each patch, input = its bicubic upscale to P
    (as the release's dataGenerator: its noise_std is 0, and its clip to [0, 1] only rounds), all on
    the patches' device."""
    t, n = hr.shape[:2]
    flat = hr.flatten(0, 1)
    lr = degrade_torch(flat, kernels.repeat_interleave(n, dim=0), scale, subsampling).clamp_(0.0, 1.0)
    x = imresize_torch(lr, scale=scale, output_shape=flat.shape[-2:]).reshape(hr.shape)
    return x[:, :n_support], hr[:, :n_support], x[:, n_support:], hr[:, n_support:]


def make_batch(pool: TaskPool, task_ids, device, subsampling: str, dtype=torch.float32):
    """One meta-batch of the given tasks, synthesised on `device` in `dtype` (the weights')."""
    hr, kernels = pool.batch(task_ids, device)
    return tuple(t.to(dtype) for t in synthesise(hr, kernels, pool.scale, subsampling, pool.n_support))


@torch.no_grad()
def _psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    mse = ((pred.clamp(0, 1) - target) ** 2).flatten(1).mean(dim=1)
    return float((10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean())


def validate(theta, batch, inner_lr: float, step_counts=(0, 1, 5)) -> dict[int, float]:
    """Query PSNR (RGB, dB) on held-aside tasks after 0, 1 and 5 inner steps."""
    sx, sy, qx, qy = batch
    tasks = sx.shape[0]
    fast = [p.detach().unsqueeze(0).expand(tasks, *p.shape).clone().requires_grad_(True) for p in theta]
    result, done = {}, 0
    for target in sorted(step_counts):
        while done < target:
            loss = per_task_l1(tasks_forward(fast, sx), sy).sum()
            grads = torch.autograd.grad(loss, fast)
            fast = [(w - inner_lr * g).detach().requires_grad_(True) for w, g in zip(fast, grads)]
            done += 1
        with torch.no_grad():
            result[target] = _psnr(tasks_forward(fast, qx), qy)
    return result


def split_pool(pool_size: int, validation_tasks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-aside validation task ids and training task ids, fixed by the seed."""
    order = np.random.default_rng([seed, 999_983]).permutation(pool_size)
    n_val = min(validation_tasks, max(pool_size - 1, 0))
    return np.sort(order[:n_val]), np.sort(order[n_val:])


def tasks_for_iteration(train_ids: np.ndarray, meta_batch: int, iteration: int) -> np.ndarray:
    """Task ids of one meta-batch: fresh tasks for every iteration, as the release draws them (the
    shards' tasks are independent draws, so taking them in order is a random order)."""
    return train_ids[iteration * meta_batch : (iteration + 1) * meta_batch]


def check_pool_size(pool_size: int, n_val: int, cfg: dict) -> None:
    """A pool too small for one fresh task per (iteration, meta-batch slot) is an error, not a cycle."""
    needed = cfg["iterations"] * cfg["meta_batch"]
    if pool_size - n_val < needed:
        raise MZSRError(
            f"the task shards hold {pool_size} tasks; with {n_val} held aside for validation that leaves "
            f"{pool_size - n_val}, fewer than the {needed} that {cfg['iterations']} iterations x meta-batch "
            f"{cfg['meta_batch']} use (raise tasks.count or leave it unset)"
        )


def meta_train(
    init_weights,
    shard_paths,
    patch_store,
    out_weights,
    cfg: dict,
    work_dir,
    log_csv,
    device=None,
    on_step=None,
    ranks: Ranks = Ranks(),
) -> Path:
    """Meta-transfer learning from `init_weights` (theta_T) over the tasks of `shard_paths`, whose HR
    patches are rows of `patch_store`; resumes from work_dir/last.pt when present.

    On several `ranks` (mzsr.training.distributed) each runs its share of every meta-batch and rank 0
    alone validates, logs and writes. The weights are those of one process, trained in the dtype of
    torch's default (float32; tests compare ranks in float64). `on_step(step)` is called after every
    finished iteration (progress hooks, fault-injection tests).
    """
    cfg = settings.with_defaults(cfg, META_DEFAULTS, "meta-training")
    check_processes(ranks.size, 1, cfg["meta_batch"], "a meta-batch")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(device)
    gradients = grad_dtype(cfg["grad_precision"], device)
    torch.manual_seed(cfg["seed"])
    pool = TaskPool(shard_paths, patch_store)
    if pool.scale != cfg["scale"]:
        raise MZSRError(f"the task shards were drawn for x{pool.scale} kernels, meta-training is x{cfg['scale']}")
    model = MZSRNet().to(device)
    model.load_state_dict(load_weights(init_weights, expected_scale=cfg["scale"])[0])
    theta = list(model.parameters())
    optimizer = make_optimizer(cfg["optimizer"], theta, cfg["outer_lr"])
    start = 0
    if (ckpt := resumable_checkpoint(work_dir, ranks)) is not None:
        start = load_training_state(ckpt, model, optimizer)["step"]
    # after resuming: it sets Adam's `capturable` (and where its step counters live) for this device and mode
    meta_step = MetaStep(
        theta,
        optimizer,
        cfg["inner_steps"],
        cfg["inner_lr"],
        device,
        cuda_graph=cfg["cuda_graph"],
        grad_dtype=gradients,
        keep_graphs=False,
        ranks=ranks,
        tasks=cfg["meta_batch"],
    )
    val_ids, train_ids = split_pool(len(pool), cfg["validation_tasks"], cfg["seed"])
    check_pool_size(len(pool), len(val_ids), cfg)
    dtype = theta[0].dtype
    val_batch = make_batch(pool, val_ids, device, cfg["subsampling"], dtype) if len(val_ids) and ranks.main else None
    log = (
        CsvLog(log_csv, ["step", "loss", "psnr_0", "psnr_1", "psnr_5", "seconds"], resume_step=start)
        if ranks.main
        else None
    )
    t0 = time.perf_counter()
    bar = tqdm(
        total=cfg["iterations"], initial=start, desc="meta-train", unit="it", disable=None if ranks.main else True
    )
    mine = ranks.share(cfg["meta_batch"])
    for it in range(start, cfg["iterations"]):
        task_ids = tasks_for_iteration(train_ids, cfg["meta_batch"], it)[mine]
        batch = make_batch(pool, task_ids, device, cfg["subsampling"], dtype)
        weights = query_loss_weights(
            cfg["loss_weights"], cfg["inner_steps"], it, cfg["anneal_steps"], cfg["final_weight_floor"]
        )
        first_order = cfg["first_order"] or it < cfg["first_order_iterations"]
        loss = meta_step(batch, weights, first_order, check=lambda value: check_finite(value, it, work_dir))
        step = it + 1
        bar.update(1)
        row = {}
        if val_batch is not None and (step % cfg["validate_every"] == 0 or step == cfg["iterations"]):
            psnrs = validate(theta, val_batch, cfg["inner_lr"])
            row = {f"psnr_{k}": f"{v:.3f}" for k, v in psnrs.items()}
            bar.set_postfix(psnr_0=row["psnr_0"], psnr_1=row["psnr_1"], psnr_5=row["psnr_5"])
        if ranks.main and (row or step % cfg["log_every"] == 0):
            log.write(step=step, loss=f"{loss.item():.6f}", seconds=f"{time.perf_counter() - t0:.2f}", **row)
        if ranks.main and (step % cfg["checkpoint_every"] == 0 or step == cfg["iterations"]):
            save_training_state(work_dir, step, model, optimizer)
        if on_step is not None:
            on_step(step)
    bar.close()
    pool.close()
    if not ranks.main:
        return Path(out_weights)
    meta = {
        "scale": cfg["scale"],
        "degradation": cfg["subsampling"],
        "step": cfg["iterations"],
        "source": "meta",
        "config": cfg,
    }
    save_weights(out_weights, {k: v.detach().cpu() for k, v in model.state_dict().items()}, meta)
    return Path(out_weights)
