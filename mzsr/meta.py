"""Stage 2: meta-transfer learning (second-order MAML) from theta_T over blur-kernel tasks.

On a GPU all tasks of a meta-batch run at once as one grouped convolution (groups = tasks), each
task with its own fast weights, which keeps the card busy where a per-task loop of small
convolutions would leave it idle (1.21x faster on an H100). On a CPU grouped convolutions cost
15-35% more than plain ones, so there the tasks run one after another (benchmarks/bench_training.py).

Per task: fast weights start at theta; for j = 1..J, one plain SGD step on L1 over D_tr (support),
then the query loss L_j = L1 over D_te with the new fast weights. Meta loss, as the release's
train.py: L_j averaged over the tasks, then the MEAN over j of w_j L_j, (1/J) sum_j w_j L_j; Adam on
theta, TensorFlow 1's by default (mzsr.optim). Gradients flow through the inner steps (second order) unless
`first_order` is set, or for the first `first_order_iterations` iterations (the release's warm-up,
SECOND_ORDER_GRAD_ITER, 0 there: it stops the inner gradients until that step).

The meta-step (`make_meta_step` -> `MetaStep`, what `meta_train` calls once per iteration) does the
inner loop, the meta-loss, its backward and the Adam step. It runs eagerly on a CPU (exactly the
earlier `meta_loss` + `backward` + `step`). On CUDA with `meta.cuda_graph` (default true) the whole
step is captured once per `first_order` value (and batch shape) into a `torch.cuda.CUDAGraph`:
a few warm-up steps on a side stream (their effect on theta and the Adam state is undone), then the
capture, then one replay per iteration with the batch and loss weights copied into static tensors.
The thousands of kernel launches of a second-order step become one graph launch: that removes the
CPU's launch and autograd overhead, not the time of the kernels themselves (the benchmark's
profile tells the two apart). TF-1's Adam (mzsr.optim.AdamTF1) keeps its whole state on the device
and is capturable as it is; PyTorch's Adam runs with `capturable=True` there (`set_capturable` moves
its step counters between host and device, so a state saved on a CPU resumes on a GPU and back). If the capture fails the step warns once and runs eagerly. In graph mode the
NaN check comes after the optimizer step (the step is one unit): training still stops at the same
iteration and the last good checkpoint stays on disk.

Candidates the benchmark times (options of `MetaStep`, all the same meta-gradient in float64):
`forward` "grouped" / "looped" / "vmap" (torch.func.vmap over tasks of functional grad),
`channels_last`, `split_backward` (each 3x3 convolution's backward as two differentiable ops,
`conv_transpose2d` for the input gradient and `conv2d_weight` for the weight gradient, so that the
second-order pass runs standard conv kernels instead of the one convolution with a P x P filter per
task that PyTorch's double backward of a convolution computes), and `autocast_dtype` (bf16).

Tasks: every iteration takes `meta_batch` tasks not used before (the release draws fresh ones each
time); a task shard holds only its kernel parameters and patch-store rows, and `make_batch` reads the
HR patches and synthesises the LR inputs on the training device.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import MZSRError, settings
from .checkpoints import load_weights, save_weights
from .data import TaskPool
from .degrade import degrade_torch
from .device import pick_device
from .model import MZSRNet
from .optim import make_optimizer
from .resize import imresize_torch
from .training import CsvLog, check_finite, latest_checkpoint, load_training_state, save_training_state

# The config's meta section (mzsr/config.schema.yaml) less weights_folder (where models come from,
# not how they are trained), at the config's scale; "subsampling" is the subsampling of the tasks' LR
# ("direct" or "bicubic", the paper's two models), which the workflow sets per model it trains.
META_DEFAULTS = {
    **settings.defaults("meta", without=("weights_folder",)),
    "scale": settings.default("scale"),
    "subsampling": "direct",
}


def query_loss_weights(policy: str, inner_steps: int, iteration: int, anneal_steps: int,
                       floor: float = META_DEFAULTS["final_weight_floor"]) -> list[float]:
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
            gw = torch.nn.grad.conv2d_weight(x.to(grad.dtype), weight.shape, grad, padding=1, groups=ctx.groups).to(weight.dtype)
        if need_b and ctx.has_bias:
            gb = grad.sum((0, 2, 3)).to(weight.dtype)
        return gx, gw, gb, None


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1, split_backward: bool = False) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1, groups=groups)`, or the same with the split backward."""
    if split_backward:
        return _SplitConv3x3.apply(x, weight, bias, groups)
    return F.conv2d(x, weight, bias, padding=1, groups=groups)


def grouped_forward(params: list[torch.Tensor], x: torch.Tensor, channels_last: bool = False, split_backward: bool = False) -> torch.Tensor:
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


def looped_forward(params: list[torch.Tensor], x: torch.Tensor, channels_last: bool = False, split_backward: bool = False) -> torch.Tensor:
    """Same result as `grouped_forward`, one task after another (faster on CPUs)."""
    outs = []
    for t in range(x.shape[0]):
        h = x[t]
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
    return partial(grouped_forward if kind == "grouped" else looped_forward, channels_last=channels_last, split_backward=split_backward)


def per_task_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of each task: (T, B, ...) -> (T,)."""
    return (pred - target).abs().flatten(1).mean(dim=1)


def inner_loop(theta: list[torch.Tensor], support_x, support_y, query_x, query_y, steps: int, inner_lr: float, create_graph: bool,
               forward=tasks_forward):
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


def meta_loss(theta, batch, steps: int, inner_lr: float, weights, first_order: bool, forward=tasks_forward) -> torch.Tensor:
    """The release's meta-loss (`weighted_query_loss`) of one meta-batch of (support_x, support_y, query_x, query_y)."""
    losses = inner_loop(theta, *batch, steps, inner_lr, create_graph=not first_order, forward=forward)
    return weighted_query_loss(losses, weights)


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


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Switch PyTorch's Adam between eager and CUDA-graph-capturable mode, its state included (a no-op
    for optimizers without the flag, such as AdamTF1, whose state always lives on the device).

    `load_state_dict` takes `capturable` from the saved groups and keeps the step counters where the
    flag says (on the host when false, on the parameters' device when true). A state saved by a
    CPU run (false) resumed on a GPU, or saved under a CUDA graph (true) resumed on a CPU, would
    then fail to capture or to step; this sets the flag and moves the counters (float32, exact for
    integer counts) to where it needs them. A no-op when they already agree.
    """
    for group in optimizer.param_groups:
        if "capturable" not in group:
            continue
        group["capturable"] = capturable
        for p in group["params"]:
            state = optimizer.state.get(p)
            step = state.get("step") if state else None
            if torch.is_tensor(step):
                state["step"] = step.to(dtype=torch.float32, device=p.device) if capturable else step.to("cpu")



class _Graph:
    """One captured meta-step: the graph and its static inputs and output."""

    def __init__(self, graph, batch, weights, loss):
        self.graph, self.batch, self.weights, self.loss = graph, batch, weights, loss


class MetaStep:
    """One meta-iteration per call: inner loop, meta-loss, backward, optimizer step; returns the loss.

    `step(batch, weights, first_order=False, check=None)`: batch = (support_x, support_y, query_x,
    query_y), weights = the J query-loss weights; `check(loss)` (the NaN guard) runs before the
    backward when eager, after the replay when graphed.

    Eager: `meta_loss` (or the chosen candidate) + `zero_grad(set_to_none=True)` + `backward` +
    `step`, exactly what `meta_train` did before. With `cuda_graph` on a CUDA device: on the first
    call for a (first_order, shapes) key, `warmup` eager steps on a side stream (cuDNN autotuning,
    Adam's lazy state, the allocator), theta and the optimizer state put back as they were, the step
    captured into a `torch.cuda.CUDAGraph`, then replayed; later calls copy the inputs into the
    static tensors and replay. `keep_graphs=False` drops the other graphs before capturing a new one
    (meta_train switches first_order once, from true to false). A failed capture warns once and the
    step runs eagerly from then on (`fallback_reason` says why).

    The optimizer must be one whose fresh state is zeros (both Adams): the warm-up's state is reset to
    zero when there was none before it.
    """

    def __init__(self, theta, optimizer, inner_steps: int, inner_lr: float, device=None, *, cuda_graph: bool = False,
                 forward: str = "auto", channels_last: bool = False, split_backward: bool = False,
                 autocast_dtype: torch.dtype | None = None, warmup: int = 3, keep_graphs: bool = True):
        self.theta, self.optimizer = list(theta), optimizer
        self.inner_steps, self.inner_lr = inner_steps, inner_lr
        self.device = torch.device(device) if device is not None else self.theta[0].device
        if forward not in FORWARDS:
            raise ValueError(f"unknown task forward {forward!r}; use one of {', '.join(FORWARDS)}")
        if forward == "vmap" and (channels_last or split_backward):
            raise ValueError("the vmap forward takes neither channels_last nor split_backward")
        self.forward_kind = forward
        self._forward = None if forward == "vmap" else make_forward(forward, channels_last, split_backward)
        self.autocast_dtype = autocast_dtype
        self.warmup, self.keep_graphs = max(int(warmup), 1), keep_graphs
        self.graphed = bool(cuda_graph) and self.device.type == "cuda"
        self.fallback_reason: str | None = None
        self._graphs: dict[tuple, _Graph] = {}
        set_capturable(optimizer, self.graphed)

    def loss(self, batch, weights, first_order: bool) -> torch.Tensor:
        """The meta-loss alone (forward, inner loop included), with this step's candidate options."""
        amp = (torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=False)
               if self.autocast_dtype is not None else contextlib.nullcontext())
        with amp:
            if self.forward_kind == "vmap":
                return vmap_meta_loss(self.theta, batch, self.inner_steps, self.inner_lr, weights, first_order)
            return meta_loss(self.theta, batch, self.inner_steps, self.inner_lr, weights, first_order, forward=self._forward)

    def _eager(self, batch, weights, first_order: bool, check=None) -> torch.Tensor:
        loss = self.loss(batch, weights, first_order)
        if check is not None:
            check(loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def __call__(self, batch, weights, first_order: bool = False, check=None) -> torch.Tensor:
        if not self.graphed:
            return self._eager(batch, weights, first_order, check)
        key = (bool(first_order), len(weights), tuple((tuple(t.shape), t.dtype) for t in batch))
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key, batch, weights, first_order)
            if entry is None:
                return self._eager(batch, weights, first_order, check)
        for static, new in zip(entry.batch, batch):
            static.copy_(new)
        entry.weights.copy_(torch.as_tensor(weights, dtype=entry.weights.dtype))
        entry.graph.replay()
        loss = entry.loss.clone()  # the static output is overwritten by the next replay
        if check is not None:
            check(loss)
        return loss

    @property
    def graph_count(self) -> int:
        return len(self._graphs)

    def _params(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _snapshot(self):
        params = self._params()
        state = {p: {k: v.clone() for k, v in self.optimizer.state[p].items() if torch.is_tensor(v)}
                 for p in params if self.optimizer.state.get(p)}
        return [p.detach().clone() for p in params], state

    @torch.no_grad()
    def _restore(self, snapshot) -> None:
        values, state = snapshot
        for p, v in zip(self._params(), values):
            p.copy_(v)
            current, saved = self.optimizer.state.get(p), state.get(p)
            for k, t in (current or {}).items():
                if torch.is_tensor(t):
                    t.copy_(saved[k]) if saved is not None else t.zero_()

    def _capture(self, key, batch, weights, first_order: bool) -> _Graph | None:
        if not self.keep_graphs:
            self._graphs.clear()
        static_batch = tuple(t.detach().clone() for t in batch)
        static_weights = torch.as_tensor(weights, dtype=self.theta[0].dtype).to(self.device)
        snapshot = self._snapshot()
        try:
            main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
            side.wait_stream(main)
            with torch.cuda.stream(side), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capturable=True.*")  # Adam: capturable but not captured
                for _ in range(self.warmup):
                    self._eager(static_batch, static_weights, first_order)
            main.wait_stream(side)
            self._restore(snapshot)
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                static_loss = self._eager(static_batch, static_weights, first_order)
        except Exception as e:  # noqa: BLE001 - any failure: warn and run eagerly
            self._give_up(e, snapshot)
            return None
        entry = self._graphs[key] = _Graph(graph, static_batch, static_weights, static_loss.detach())
        return entry

    def _give_up(self, error: Exception, snapshot) -> None:
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(self.device)
        self._restore(snapshot)
        self.optimizer.zero_grad(set_to_none=True)
        self._graphs.clear()
        self.graphed = False
        set_capturable(self.optimizer, False)
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        self.fallback_reason = f"{type(error).__name__}: {first_line}"
        warnings.warn(f"meta-step: CUDA graph capture failed ({self.fallback_reason}); running the meta-step eagerly",
                      RuntimeWarning, stacklevel=3)


def make_meta_step(theta, optimizer, cfg: dict, device=None, **options) -> MetaStep:
    """The meta-step of a meta config (inner_steps, inner_lr, cuda_graph; META_DEFAULTS for the rest).

    Call it after resuming the optimizer state: it sets Adam's `capturable` for the mode it runs in.
    `options` go to `MetaStep` (the benchmark's candidates)."""
    cfg = settings.with_defaults(cfg, META_DEFAULTS, "meta-training")
    return MetaStep(theta, optimizer, cfg["inner_steps"], cfg["inner_lr"], device, cuda_graph=bool(cfg["cuda_graph"]), **options)

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


def make_batch(pool: TaskPool, task_ids, device, subsampling: str):
    """One meta-batch of the given tasks, synthesised on `device`."""
    hr, kernels = pool.batch(task_ids, device)
    return synthesise(hr, kernels, pool.scale, subsampling, pool.n_support)


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
    cfg = settings.with_defaults(cfg, META_DEFAULTS, "meta-training")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(device)
    torch.manual_seed(cfg["seed"])
    pool = TaskPool(shard_paths, patch_store)
    if pool.scale != cfg["scale"]:
        raise MZSRError(f"the task shards were drawn for x{pool.scale} kernels, meta-training is x{cfg['scale']}")
    model = MZSRNet().to(device)
    model.load_state_dict(load_weights(init_weights, expected_scale=cfg["scale"])[0])
    theta = list(model.parameters())
    optimizer = make_optimizer(cfg["optimizer"], theta, cfg["outer_lr"])
    start = 0
    if (ckpt := latest_checkpoint(work_dir)) is not None:
        start = load_training_state(ckpt, model, optimizer)["step"]
    # after resuming: it sets Adam's `capturable` (and where its step counters live) for this device and mode
    meta_step = make_meta_step(theta, optimizer, cfg, device, keep_graphs=False)
    val_ids, train_ids = split_pool(len(pool), cfg["validation_tasks"], cfg["seed"])
    check_pool_size(len(pool), len(val_ids), cfg)
    val_batch = make_batch(pool, val_ids, device, cfg["subsampling"]) if len(val_ids) else None
    log = CsvLog(log_csv, ["step", "loss", "psnr_0", "psnr_1", "psnr_5", "seconds"], resume_step=start)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg["iterations"], initial=start, desc="meta-train", unit="it", disable=None)
    for it in range(start, cfg["iterations"]):
        batch = make_batch(pool, tasks_for_iteration(train_ids, cfg["meta_batch"], it), device, cfg["subsampling"])
        weights = query_loss_weights(cfg["loss_weights"], cfg["inner_steps"], it, cfg["anneal_steps"], cfg["final_weight_floor"])
        first_order = cfg["first_order"] or it < cfg["first_order_iterations"]
        loss = meta_step(batch, weights, first_order, check=lambda value: check_finite(value, it, work_dir))
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
    meta = {"scale": cfg["scale"], "degradation": cfg["subsampling"], "step": cfg["iterations"], "source": "meta", "config": cfg}
    save_weights(out_weights, {k: v.detach().cpu() for k, v in model.state_dict().items()}, meta)
    return Path(out_weights)
