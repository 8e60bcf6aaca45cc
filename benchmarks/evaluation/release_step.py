"""The project's meta-step against a float64 re-statement of the release's (train.py + TF-1's Adam).

From the authors' theta_T, on fixed meta-batches at the paper's sizes (5 tasks x 8 + 8 patches of
64 px from T91, x2 direct, 5 inner steps at 0.01, second order, meta lr 1e-4, uniform weights 0.2):

- release: per task, 5 SGD steps on the support L1 (fast weights), query L1 after each; total_losses2[j]
  = the tasks' mean; meta-loss = reduce_mean_j(w_j total_losses2[j]); its gradient (second order) in
  float64, then TF-1's Adam in float64 numpy (lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), eps after it);
- project: mzsr.training.meta_step.MetaStep with the config defaults (float32), as meta_train runs it on a CPU;
- previous recipe: the sum over j and PyTorch's Adam (float32), what the project did before;
- the release's step with float32 meta-gradients, as TensorFlow computes them: how far float32
  arithmetic alone moves the update (the floor for any float32 implementation).

Prints, after 1, 2 and 3 iterations, the relative difference of the weight updates theta_k - theta_0
(norm of the difference over the norm of the release's update) and of the meta-losses.

    python -m benchmarks.evaluation.release_step [--iterations 3] [--json benchmarks/results/release_step_cpu.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import SHARED, write_result
from mzsr.data.patches import grid_patches
from mzsr.degradation.kernels import gaussian_kernels_torch, sample_training_params
from mzsr.files.checkpoints import import_tf_checkpoint
from mzsr.files.images import list_images, read_image_uint8
from mzsr.network.model import MZSRNet
from mzsr.training.maml import meta_loss, query_loss_weights
from mzsr.training.meta import META_DEFAULTS, synthesise
from mzsr.training.meta_step import MetaStep
from mzsr.training.optim import make_optimizer


def meta_batches(n: int, tasks: int, per_task: int, patch: int, seed: int = 0):
    """n meta-batches of (support_x, support_y, query_x, query_y), float64, from T91 patches."""
    rng = np.random.default_rng(seed)
    pool = np.concatenate(
        [grid_patches(read_image_uint8(p), patch, 120) for p in list_images([SHARED / "train" / "T91"])]
    )
    batches = []
    for _ in range(n):
        rows = rng.choice(len(pool), tasks * per_task, replace=False)
        hr = (
            torch.from_numpy(pool[rows])
            .permute(0, 3, 1, 2)
            .double()
            .div(255.0)
            .reshape(tasks, per_task, 3, patch, patch)
        )
        kernels = gaussian_kernels_torch(torch.from_numpy(sample_training_params(rng, 2, tasks)))
        batches.append(synthesise(hr, kernels, 2, "direct", per_task // 2))
    return batches


def release_loss(theta: list[torch.Tensor], batch, inner_steps: int, inner_lr: float, weights) -> torch.Tensor:
    """train.py's weighted_total_losses2, one task after another (map_fn), TF's 'SAME' 3x3 convolutions."""

    def forward(params, x):
        h = x
        for i in range(0, len(params), 2):
            h = F.conv2d(h, params[i], params[i + 1], padding=1)
            h = torch.relu(h) if i + 2 < len(params) else h
        return x + h

    sx, sy, qx, qy = batch
    per_task = []
    for t in range(sx.shape[0]):
        fast, losses = list(theta), []
        for _ in range(inner_steps):
            grads = torch.autograd.grad((forward(fast, sx[t]) - sy[t]).abs().mean(), fast, create_graph=True)
            fast = [w - inner_lr * g for w, g in zip(fast, grads)]
            losses.append((forward(fast, qx[t]) - qy[t]).abs().mean())
        per_task.append(torch.stack(losses))
    total_losses2 = torch.stack(per_task).sum(dim=0) / sx.shape[0]
    return (total_losses2 * torch.as_tensor(weights, dtype=total_losses2.dtype)).mean()


def release_run(theta0: list[np.ndarray], batches, cfg, dtype=torch.float64) -> list[tuple[list[np.ndarray], float]]:
    """(weights, meta-loss) after each iteration of the release's step: the meta-gradient in `dtype`
    (float32 as TensorFlow ran it: the floor of what float32 arithmetic agrees to), Adam in float64."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, cfg["outer_lr"]
    theta = [t.copy() for t in theta0]
    m, v = [np.zeros_like(t) for t in theta], [np.zeros_like(t) for t in theta]
    out = []
    for step, batch in enumerate(batches, start=1):
        params = [torch.tensor(t, dtype=dtype, requires_grad=True) for t in theta]
        batch = tuple(b.to(dtype) for b in batch)
        loss = release_loss(params, batch, cfg["inner_steps"], cfg["inner_lr"], [0.2] * cfg["inner_steps"])
        grads = [g.double().numpy() for g in torch.autograd.grad(loss, params)]
        lr_t = lr * np.sqrt(1 - b2**step) / (1 - b1**step)
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            theta[i] = theta[i] - lr_t * m[i] / (np.sqrt(v[i]) + eps)
        out.append(([t.copy() for t in theta], loss.item()))
    return out


def project_run(state: dict, batches, cfg, previous: bool = False) -> list[tuple[list[np.ndarray], float]]:
    """The project's float32 meta-step (config defaults), or the previous recipe (sum over j, PyTorch's Adam)."""
    model = MZSRNet()
    model.load_state_dict(state)
    theta = list(model.parameters())
    out = []
    if previous:
        opt = torch.optim.Adam(theta, lr=cfg["outer_lr"])
        for batch in batches:
            batch = tuple(t.float() for t in batch)
            weights = query_loss_weights("uniform", cfg["inner_steps"], 0, 1)
            loss = cfg["inner_steps"] * meta_loss(theta, batch, cfg["inner_steps"], cfg["inner_lr"], weights, False)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            out.append(([p.detach().double().numpy().copy() for p in theta], loss.item()))
        return out
    opt = make_optimizer(cfg["optimizer"], theta, cfg["outer_lr"])
    step = MetaStep(theta, opt, cfg["inner_steps"], cfg["inner_lr"], "cpu")
    for batch in batches:
        loss = step(tuple(t.float() for t in batch), query_loss_weights("uniform", cfg["inner_steps"], 0, 1))
        out.append(([p.detach().double().numpy().copy() for p in theta], loss.item()))
    return out


def relative(update, reference) -> float:
    diff = np.sqrt(sum(((u - r) ** 2).sum() for u, r in zip(update, reference)))
    return float(diff / np.sqrt(sum((r**2).sum() for r in reference)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = SHARED / "checkpoints" / "mzsr-official-pretrained" / "Pretrained"
    if not ckpt.with_suffix(".index").exists():
        sys.exit(f"needs the authors' theta_T at {ckpt}")
    cfg = {**META_DEFAULTS}
    state = {k: v.float() for k, v in import_tf_checkpoint(ckpt).items()}
    theta0 = [state[k].double().numpy() for k in MZSRNet().state_dict()]
    batches = meta_batches(args.iterations, cfg["meta_batch"], 16, args.patch)  # 8 support + 8 query
    t0 = time.perf_counter()
    runs = {"release (float64)": release_run(theta0, batches, cfg)}
    runs["release, float32 gradients"] = release_run(theta0, batches, cfg, torch.float32)
    runs["project"] = project_run(state, batches, cfg)
    runs["previous recipe"] = project_run(state, batches, cfg, previous=True)
    seconds = time.perf_counter() - t0
    ref = runs["release (float64)"]
    rows = []
    print(
        f"Meta-step from theta_T: {cfg['meta_batch']} tasks x 8 + 8 patches of {args.patch} px, {cfg['inner_steps']} inner steps, "
        f"second order, meta lr {cfg['outer_lr']}; optimizer {cfg['optimizer']}"
    )
    print("| iteration | recipe | meta-loss | loss rel. diff | update rel. diff |\n|---|---|---|---|---|")
    for k in range(args.iterations):
        ref_update = [t - t0_ for t, t0_ in zip(ref[k][0], theta0)]
        for name, run in runs.items():
            update = [t - t0_ for t, t0_ in zip(run[k][0], theta0)]
            row = {
                "iteration": k + 1,
                "recipe": name,
                "loss": run[k][1],
                "loss_rel_diff": abs(run[k][1] - ref[k][1]) / abs(ref[k][1]),
                "update_rel_diff": relative(update, ref_update),
            }
            rows.append(row)
            print(
                f"| {k + 1} | {name} | {row['loss']:.8f} | {row['loss_rel_diff']:.2e} | {row['update_rel_diff']:.2e} |"
            )
    if args.json:
        write_result(args.json, {"seconds": round(seconds, 1), "rows": rows})


if __name__ == "__main__":
    main()
