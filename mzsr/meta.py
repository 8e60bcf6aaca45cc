"""Stage 2: meta-transfer learning (second-order MAML) from theta_T over blur-kernel tasks.

On a GPU all tasks of a meta-batch run at once as one grouped convolution (groups = tasks), each
task with its own fast weights, which keeps the card busy where a per-task loop of small
convolutions would leave it idle (1.21x faster on an H100). On a CPU grouped convolutions cost
15-35% more than plain ones, so there the tasks run one after another (benchmarks/bench_training.py).

Per task: fast weights start at theta; for j = 1..J, one plain SGD step on L1 over D_tr (support),
then the query loss L_j = L1 over D_te with the new fast weights. Meta loss = mean over tasks of
sum_j w_j L_j; Adam on theta. Gradients flow through the inner steps (second order) unless
`first_order` is set, or for the first `first_order_iterations` iterations (the release's warm-up,
SECOND_ORDER_GRAD_ITER, 0 there: it stops the inner gradients until that step).

Tasks: every iteration takes `meta_batch` tasks not used before (the release draws fresh ones each
time); a task shard holds only its kernel parameters and patch-store rows, and `make_batch` reads the
HR patches and synthesises the LR inputs on the training device.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import MZSRError
from .checkpoints import load_weights, save_weights
from .data import TaskPool
from .degrade import degrade_torch
from .model import MZSRNet
from .resize import imresize_torch
from .training import CsvLog, check_finite, latest_checkpoint, load_training_state, save_training_state, setup_device

META_DEFAULTS = {
    "iterations": 100_000,
    "meta_batch": 5,
    "inner_steps": 5,
    "inner_lr": 0.01,
    "outer_lr": 1e-4,
    "first_order": False,
    "first_order_iterations": 0,  # the release's SECOND_ORDER_GRAD_ITER: first-order MAML before this iteration
    "loss_weights": "uniform",  # what the authors' release does in practice; "annealed" = as intended
    "anneal_steps": 3200,
    "final_weight_floor": 0.006,
    "checkpoint_every": 1000,
    "log_every": 50,
    "validate_every": 1000,
    "validation_tasks": 10,
    "seed": 0,
    "scale": 2,
    "method": "direct",  # subsampling of the tasks' LR: "direct" or "bicubic" (the paper's two models)
}


def query_loss_weights(policy: str, inner_steps: int, iteration: int, anneal_steps: int, floor: float = 0.006) -> list[float]:
    """Weights w_j of the query losses after each inner step.

    "uniform": all 1/J (the release: its step counter never advances, so all w_j stay 0.2 for J = 5).
    "annealed" (MAML++ multi-step loss, as the release intends): non-final weights decay linearly
    from 1/J to `floor` over `anneal_steps` iterations; the final weight takes the rest.
    """
    uniform = 1.0 / inner_steps
    if policy == "uniform":
        return [uniform] * inner_steps
    if policy != "annealed":
        raise ValueError(f"unknown loss-weight policy {policy!r}; use 'uniform' or 'annealed'")
    progress = min(iteration / anneal_steps, 1.0) if anneal_steps > 0 else 1.0
    early = max(uniform - progress * (uniform - floor), floor)
    return [early] * (inner_steps - 1) + [1.0 - early * (inner_steps - 1)]


def grouped_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """MZSRNet forward for T tasks at once.

    params: per layer weight (T, O, I, 3, 3) and bias (T, O), alternating; x: (T, B, 3, H, W).
    Returns (T, B, 3, H, W) = x + net_t(x_t) for each task t.
    """
    t, b, c, h, w = x.shape
    inp = x.permute(1, 0, 2, 3, 4).reshape(b, t * c, h, w)
    out = inp
    layers = len(params) // 2
    for i in range(layers):
        weight, bias = params[2 * i], params[2 * i + 1]
        out = F.conv2d(out, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), padding=1, groups=t)
        if i < layers - 1:
            out = torch.relu(out)
    out = inp + out
    return out.reshape(b, t, c, h, w).permute(1, 0, 2, 3, 4)


def looped_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Same result as `grouped_forward`, one task after another (faster on CPUs)."""
    outs = []
    for t in range(x.shape[0]):
        h = x[t]
        layers = len(params) // 2
        for i in range(layers):
            h = F.conv2d(h, params[2 * i][t], params[2 * i + 1][t], padding=1)
            if i < layers - 1:
                h = torch.relu(h)
        outs.append(x[t] + h)
    return torch.stack(outs)


def tasks_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Per-task forward with per-task weights: grouped convolutions on GPUs, a task loop elsewhere."""
    return grouped_forward(params, x) if x.is_cuda else looped_forward(params, x)


def per_task_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of each task: (T, B, ...) -> (T,)."""
    return (pred - target).abs().flatten(1).mean(dim=1)


def inner_loop(theta: list[torch.Tensor], support_x, support_y, query_x, query_y, steps: int, inner_lr: float, create_graph: bool):
    """Run `steps` SGD steps per task; return the (steps, T) query losses after each step."""
    tasks = support_x.shape[0]
    fast = [p.unsqueeze(0).expand(tasks, *p.shape) for p in theta]
    query_losses = []
    for _ in range(steps):
        # Tasks are independent, so the gradient of the summed losses is each task's own gradient.
        support_loss = per_task_l1(tasks_forward(fast, support_x), support_y).sum()
        grads = torch.autograd.grad(support_loss, fast, create_graph=create_graph)
        fast = [w - inner_lr * g for w, g in zip(fast, grads)]
        query_losses.append(per_task_l1(tasks_forward(fast, query_x), query_y))
    return torch.stack(query_losses)


def meta_loss(theta, batch, steps: int, inner_lr: float, weights, first_order: bool) -> torch.Tensor:
    """Mean over tasks of sum_j w_j L_j for one meta-batch of (support_x, support_y, query_x, query_y)."""
    losses = inner_loop(theta, *batch, steps, inner_lr, create_graph=not first_order)
    w = torch.as_tensor(weights, dtype=losses.dtype, device=losses.device)
    return (w[:, None] * losses).sum(dim=0).mean()


@torch.no_grad()
def synthesise(hr: torch.Tensor, kernels: torch.Tensor, scale: int, method: str, n_support: int):
    """(support_x, support_y, query_x, query_y) of tasks from their HR patches (T, S+Q, 3, P, P) and
    kernels (T, k, k): LR = the task's degradation of each patch, input = its bicubic upscale to P
    (as the release's dataGenerator), all on the patches' device."""
    t, n = hr.shape[:2]
    flat = hr.flatten(0, 1)
    lr = degrade_torch(flat, kernels.repeat_interleave(n, dim=0), scale, method)
    x = imresize_torch(lr, scale=scale, output_shape=flat.shape[-2:]).reshape(hr.shape)
    return x[:, :n_support], hr[:, :n_support], x[:, n_support:], hr[:, n_support:]


def make_batch(pool: TaskPool, task_ids, device, method: str):
    """One meta-batch of the given tasks, synthesised on `device`."""
    hr, kernels = pool.batch(task_ids, device)
    return synthesise(hr, kernels, pool.scale, method, pool.n_support)


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
        raise MZSRError(f"the task shards hold {pool_size} tasks; with {n_val} held aside for validation that leaves "
                        f"{pool_size - n_val}, fewer than the {needed} that {cfg['iterations']} iterations x meta-batch "
                        f"{cfg['meta_batch']} use (raise tasks.count or leave it unset)")


def meta_train(init_weights, shard_paths, patch_store, out_weights, cfg: dict, work_dir, log_csv, device=None,
               on_step=None) -> Path:
    """Meta-transfer learning from `init_weights` (theta_T) over the tasks of `shard_paths`, whose HR
    patches are rows of `patch_store`; resumes from work_dir/last.pt when present.

    `on_step(step)` is called after every finished iteration (progress hooks, fault-injection tests).
    """
    cfg = {**META_DEFAULTS, **cfg}
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = setup_device(device)
    torch.manual_seed(cfg["seed"])
    pool = TaskPool(shard_paths, patch_store)
    if pool.scale != cfg["scale"]:
        raise MZSRError(f"the task shards were drawn for x{pool.scale} kernels, meta-training is x{cfg['scale']}")
    model = MZSRNet().to(device)
    model.load_state_dict(load_weights(init_weights, expected_scale=cfg["scale"])[0])
    theta = list(model.parameters())
    optimizer = torch.optim.Adam(theta, lr=cfg["outer_lr"])
    start = 0
    if (ckpt := latest_checkpoint(work_dir)) is not None:
        start = load_training_state(ckpt, model, optimizer)["step"]
    val_ids, train_ids = split_pool(len(pool), cfg["validation_tasks"], cfg["seed"])
    check_pool_size(len(pool), len(val_ids), cfg)
    val_batch = make_batch(pool, val_ids, device, cfg["method"]) if len(val_ids) else None
    log = CsvLog(log_csv, ["step", "loss", "psnr_0", "psnr_1", "psnr_5", "seconds"], resume_step=start)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg["iterations"], initial=start, desc="meta-train", unit="it", disable=None)
    for it in range(start, cfg["iterations"]):
        batch = make_batch(pool, tasks_for_iteration(train_ids, cfg["meta_batch"], it), device, cfg["method"])
        weights = query_loss_weights(cfg["loss_weights"], cfg["inner_steps"], it, cfg["anneal_steps"], cfg["final_weight_floor"])
        first_order = cfg["first_order"] or it < cfg["first_order_iterations"]
        loss = meta_loss(theta, batch, cfg["inner_steps"], cfg["inner_lr"], weights, first_order)
        check_finite(loss, it, work_dir)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step = it + 1
        bar.update(1)
        row = {}
        if val_batch is not None and (step % cfg["validate_every"] == 0 or step == cfg["iterations"]):
            psnrs = validate(theta, val_batch, cfg["inner_lr"])
            row = {f"psnr_{k}": f"{v:.3f}" for k, v in psnrs.items()}
            bar.set_postfix(psnr_0=row["psnr_0"], psnr_1=row["psnr_1"], psnr_5=row["psnr_5"])
        if row or step % cfg["log_every"] == 0:
            log.write(step=step, loss=f"{loss.item():.6f}", seconds=f"{time.perf_counter() - t0:.2f}", **row)
        if step % cfg["checkpoint_every"] == 0 or step == cfg["iterations"]:
            save_training_state(work_dir, step, model, optimizer)
        if on_step is not None:
            on_step(step)
    bar.close()
    pool.close()
    meta = {"scale": cfg["scale"], "degradation": cfg["method"], "step": cfg["iterations"], "source": "meta", "config": cfg}
    save_weights(out_weights, {k: v.detach().cpu() for k, v in model.state_dict().items()}, meta)
    return Path(out_weights)
