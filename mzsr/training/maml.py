"""Second-order MAML for MZSR: the inner loop over blur-kernel tasks and the release's meta-loss.

Per task: fast weights start at theta; for j = 1..J, one plain SGD step on L1 over D_tr (support),
then the query loss L_j = L1 over D_te with the new fast weights. Meta-loss, as the release's
train.py: L_j averaged over the tasks, then the mean over j of w_j L_j. Gradients flow through the
inner steps (second order) unless `first_order`.

All tasks of a meta-batch run with their own fast weights: as one grouped convolution on a GPU
(groups = tasks), one task after another elsewhere (`tasks_forward`; docs/results.md and
benchmarks/README.md have the measurements behind the choice).
"""

from __future__ import annotations

from functools import partial

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
# meta_train runs `tasks_forward`. The options channels_last and split_backward, the forward kinds of
# `make_forward` and `vmap_meta_loss` are experimental: candidates that benchmarks/speed/training.py
# times against it (all give the same meta-gradient in float64); nothing else uses them.


class _SplitConv3x3(torch.autograd.Function):
    """3x3 convolution (stride 1, padding 1) whose backward is two differentiable ops: the input
    gradient as `conv_transpose2d`, the weight gradient as `conv2d_weight`. Differentiating them again
    (second-order MAML) runs standard conv kernels; PyTorch's own double backward of a convolution
    instead computes one term as a convolution whose filter is the whole P x P activation (output
    3 x 3), once per group. Same values; which is faster is the benchmark's question."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups):
        ctx.save_for_backward(x, weight)
        ctx.groups, ctx.has_bias = groups, bias is not None
        return F.conv2d(x, weight, bias, padding=1, groups=groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        # under autocast the output (and so grad) may be bf16 while x or weight are float32
        gx = gw = gb = None
        if need_x:
            gx = F.conv_transpose2d(grad, weight.to(grad.dtype), padding=1, groups=ctx.groups).to(x.dtype)
        if need_w:
            gw = torch.nn.grad.conv2d_weight(x.to(grad.dtype), weight.shape, grad, padding=1, groups=ctx.groups).to(
                weight.dtype
            )
        if need_b and ctx.has_bias:
            gb = grad.sum((0, 2, 3)).to(weight.dtype)
        return gx, gw, gb, None


def conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1, split_backward: bool = False
) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1, groups=groups)`: with the split backward, or (one group)
    `mzsr.network.conv.conv3x3`, whose backward is written out on the CPU path."""
    if split_backward:
        return _SplitConv3x3.apply(x, weight, bias, groups)
    if groups == 1:
        return conv.conv3x3(x, weight, bias)
    return F.conv2d(x, weight, bias, padding=1, groups=groups)


def grouped_forward(
    params: list[torch.Tensor], x: torch.Tensor, channels_last: bool = False, split_backward: bool = False
) -> torch.Tensor:
    """MZSRNet forward for T tasks at once.

    params: per layer weight (T, O, I, 3, 3) and bias (T, O), alternating; x: (T, B, 3, H, W).
    Returns (T, B, 3, H, W) = x + net_t(x_t) for each task t. `channels_last`: the activations in
    NHWC memory format; `split_backward`: see `conv3x3`.
    """
    t, b, c, h, w = x.shape
    inp = x.permute(1, 0, 2, 3, 4).reshape(b, t * c, h, w)
    if channels_last:
        inp = inp.contiguous(memory_format=torch.channels_last)
    out = inp
    layers = len(params) // 2
    for i in range(layers):
        weight, bias = params[2 * i], params[2 * i + 1]
        out = conv3x3(out, weight.reshape(-1, *weight.shape[2:]), bias.reshape(-1), t, split_backward)
        if i < layers - 1:
            out = torch.relu(out)
    out = inp + out
    return out.reshape(b, t, c, h, w).permute(1, 0, 2, 3, 4)


def looped_forward(
    params: list[torch.Tensor], x: torch.Tensor, channels_last: bool = False, split_backward: bool = False
) -> torch.Tensor:
    """Same result as `grouped_forward`, one task after another (faster on CPUs, where the activations
    are channels-last on `mzsr.network.conv`'s CPU path whatever `channels_last` says)."""
    outs = []
    for t in range(x.shape[0]):
        h = conv.activation_layout(x[t])
        if channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        layers = len(params) // 2
        for i in range(layers):
            h = conv3x3(h, params[2 * i][t], params[2 * i + 1][t], 1, split_backward)
            if i < layers - 1:
                h = torch.relu(h)
        outs.append(x[t] + h)
    return torch.stack(outs)


def tasks_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Per-task forward with per-task weights: grouped convolutions on GPUs, a task loop elsewhere."""
    return grouped_forward(params, x) if x.is_cuda else looped_forward(params, x)


FORWARDS = ("auto", "grouped", "looped", "vmap")


def make_forward(kind: str = "auto", channels_last: bool = False, split_backward: bool = False):
    """The per-task forward `(params, x) -> out` of `inner_loop`: "auto" (grouped on GPUs, looped
    elsewhere), "grouped" or "looped", with the given options; plain "auto" is `tasks_forward`."""
    if kind == "auto" and not (channels_last or split_backward):
        return tasks_forward
    if kind == "auto":

        def forward(params, x):
            return (grouped_forward if x.is_cuda else looped_forward)(params, x, channels_last, split_backward)

        return forward
    if kind not in ("grouped", "looped"):
        raise ValueError(f"unknown task forward {kind!r}; use 'auto', 'grouped' or 'looped'")
    return partial(
        grouped_forward if kind == "grouped" else looped_forward,
        channels_last=channels_last,
        split_backward=split_backward,
    )


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
):
    """Run `steps` SGD steps per task; return the (steps, T) query losses after each step."""
    tasks = support_x.shape[0]
    fast = [p.unsqueeze(0).expand(tasks, *p.shape) for p in theta]
    query_losses = []
    for _ in range(steps):
        # Tasks are independent, so the gradient of the summed losses is each task's own gradient.
        support_loss = per_task_l1(forward(fast, support_x), support_y).sum()
        grads = torch.autograd.grad(support_loss, fast, create_graph=create_graph)
        fast = [w - inner_lr * g for w, g in zip(fast, grads)]
        query_losses.append(per_task_l1(forward(fast, query_x), query_y))
    return torch.stack(query_losses)


def weighted_query_loss(losses: torch.Tensor, weights) -> torch.Tensor:
    """The release's meta-loss from the (steps, T) query losses: L_j averaged over the tasks, then
    reduce_mean over j of w_j L_j, i.e. (1/J) sum_j w_j L_j (the mean, not the sum, over the J steps)."""
    w = torch.as_tensor(weights, dtype=losses.dtype, device=losses.device)
    return (w * losses.mean(dim=1)).mean()


def meta_loss(
    theta, batch, steps: int, inner_lr: float, weights, first_order: bool, forward=tasks_forward
) -> torch.Tensor:
    """The release's meta-loss (`weighted_query_loss`) of one meta-batch of (support_x, support_y, query_x, query_y)."""
    losses = inner_loop(theta, *batch, steps, inner_lr, create_graph=not first_order, forward=forward)
    return weighted_query_loss(losses, weights)


# ---------------------------------------------------------------- experimental: torch.func


def single_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """MZSRNet forward of one task: params (weight, bias per layer, alternating), x (B, 3, H, W)."""
    h = x
    layers = len(params) // 2
    for i in range(layers):
        h = F.conv2d(h, params[2 * i], params[2 * i + 1], padding=1)
        if i < layers - 1:
            h = torch.relu(h)
    return x + h


def vmap_meta_loss(theta, batch, steps: int, inner_lr: float, weights, first_order: bool) -> torch.Tensor:
    """`meta_loss` written with torch.func: one task's inner loop (functional `grad` of its support L1,
    SGD, query L1) mapped over the tasks by `vmap` (which runs batched weights as grouped convolutions);
    the outer backward differentiates through the inner `grad` calls unless `first_order`."""

    def one_task(sx, sy, qx, qy):
        fast, losses = list(theta), []
        for _ in range(steps):
            grads = torch.func.grad(lambda p: (single_forward(p, sx) - sy).abs().mean())(fast)
            if first_order:
                grads = [g.detach() for g in grads]
            fast = [w - inner_lr * g for w, g in zip(fast, grads)]
            losses.append((single_forward(fast, qx) - qy).abs().mean())
        return torch.stack(losses)

    losses = torch.func.vmap(one_task)(*batch)  # (T, steps)
    return weighted_query_loss(losses.T, weights)
