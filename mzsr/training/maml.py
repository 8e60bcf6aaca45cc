"""Second-order MAML for MZSR: the inner loop over blur-kernel tasks and the release's meta-loss.

Per task: fast weights start at theta; for j = 1..J, one plain SGD step on L1 over D_tr (support),
then the query loss L_j = L1 over D_te with the new fast weights. Meta-loss, as the release's
train.py: L_j averaged over the tasks, then the mean over j of w_j L_j. Gradients flow through the
inner steps (second order) unless `first_order`.

All tasks of a meta-batch run with their own fast weights: as one grouped convolution on a GPU
(groups = tasks), one task after another elsewhere (`tasks_forward`; docs/results.md has the
measurements behind the choice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mzsr import settings
from mzsr.network import conv

FINAL_WEIGHT_FLOOR = settings.defaults("meta")["final_weight_floor"]


def query_loss_weights(
    policy: str, inner_steps: int, iteration: int, anneal_steps: int, floor: float = FINAL_WEIGHT_FLOOR
) -> list[float]:
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


# ---------------------------------------------------------------- the per-task forward


def grouped_forward(params: list[torch.Tensor], x: torch.Tensor, grad_dtype: torch.dtype | None = None) -> torch.Tensor:
    """MZSRNet forward for T tasks at once, as one grouped convolution per layer (groups = tasks).

    params: per layer weight (T, O, I, 3, 3) and bias (T, O), alternating; x: (T, B, 3, H, W).
    Returns (T, B, 3, H, W) = x + net_t(x_t) for each task t. Gradients in another dtype
    (`grad_dtype`) are the CPU path's, `looped_forward`'s.
    """
    if grad_dtype is not None:
        raise ValueError("gradients in another dtype run on the CPU path: use looped_forward")
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


def looped_forward(params: list[torch.Tensor], x: torch.Tensor, grad_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Same result as `grouped_forward`, one task after another on `mzsr.network.conv`'s path
    (channels-last and the written-out second-order backward on a CPU, gradients in `grad_dtype`)."""
    outs = []
    layers = len(params) // 2
    for t in range(x.shape[0]):
        h = conv.activation_layout(x[t])
        for i in range(layers):
            h = conv.conv3x3(h, params[2 * i][t], params[2 * i + 1][t], grad_dtype)
            if i < layers - 1:
                h = torch.relu(h)
        outs.append(x[t] + h)
    return torch.stack(outs)


def tasks_forward(params: list[torch.Tensor], x: torch.Tensor, grad_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-task forward with per-task weights: grouped convolutions on GPUs, a task loop elsewhere
    (faster on CPUs; docs/results.md has the measurements behind the choice)."""
    return (grouped_forward if x.is_cuda else looped_forward)(params, x, grad_dtype)


# ---------------------------------------------------------------- the inner loop and the meta-loss


def per_task_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of each task: (T, B, ...) -> (T,)."""
    return (pred - target).abs().flatten(1).mean(dim=1)


def inner_loop(
    theta: list[torch.Tensor],
    support_x,
    support_y,
    query_x,
    query_y,
    steps: int,
    inner_lr: float,
    create_graph: bool,
    forward=tasks_forward,
    grad_dtype: torch.dtype | None = None,
):
    """Run `steps` SGD steps per task; return the (steps, T) query losses after each step.
    `forward(params, x, grad_dtype)` is the per-task forward (tests pass plain PyTorch's as an oracle)."""
    tasks = support_x.shape[0]
    fast = [p.unsqueeze(0).expand(tasks, *p.shape) for p in theta]
    query_losses = []
    for _ in range(steps):
        # Tasks are independent, so the gradient of the summed losses is each task's own gradient.
        support_loss = per_task_l1(forward(fast, support_x, grad_dtype), support_y).sum()
        grads = torch.autograd.grad(support_loss, fast, create_graph=create_graph)
        fast = [w - inner_lr * g for w, g in zip(fast, grads)]
        query_losses.append(per_task_l1(forward(fast, query_x, grad_dtype), query_y))
    return torch.stack(query_losses)


def weighted_query_loss(losses: torch.Tensor, weights, tasks: int | None = None) -> torch.Tensor:
    """The release's meta-loss from the (steps, T) query losses: L_j averaged over the tasks, then
    reduce_mean over j of w_j L_j, i.e. (1/J) sum_j w_j L_j (the mean, not the sum, over the J steps).

    With `tasks` (the whole meta-batch, of which these T are one rank's share) the sum over these
    tasks divided by `tasks`: the ranks' losses, and their gradients, then add up to the meta-loss."""
    w = torch.as_tensor(weights, dtype=losses.dtype, device=losses.device)
    per_step = losses.mean(dim=1) if tasks is None else losses.sum(dim=1) / tasks
    return (w * per_step).mean()


def meta_loss(
    theta,
    batch,
    steps: int,
    inner_lr: float,
    weights,
    first_order: bool,
    forward=tasks_forward,
    grad_dtype=None,
    tasks: int | None = None,
) -> torch.Tensor:
    """The release's meta-loss (`weighted_query_loss`) of one meta-batch of (support_x, support_y,
    query_x, query_y), or a rank's part of it (`tasks`: the whole meta-batch's task count)."""
    losses = inner_loop(theta, *batch, steps, inner_lr, not first_order, forward, grad_dtype)
    return weighted_query_loss(losses, weights, tasks)
