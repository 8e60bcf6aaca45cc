"""The meta-step that meta_train calls once per iteration: the inner loop, the meta-loss, its backward
and the optimizer step, run eagerly, or on CUDA captured whole into a CUDA graph.

With `meta.cuda_graph` (default true) on a CUDA device the step is captured once per
`first_order` value (and batch shape): a few warm-up steps on a side stream (their effect on theta and
the optimizer state undone), the capture, then one replay per iteration with the batch and loss
weights copied into static tensors. The thousands of kernel launches of a second-order step become
one graph launch, which removes the CPU's launch and autograd overhead. TF-1's Adam
(mzsr.training.optim.AdamTF1) keeps its whole state on the device and is capturable as it is; PyTorch's Adam
runs with `capturable=True` there (`set_capturable`). If the capture fails the step warns once and
runs eagerly. In graph mode the NaN check comes after the optimizer step (the step is one unit):
training still stops at the same iteration and the last good checkpoint stays on disk.

On several ranks (mzsr.training.distributed) each rank's loss is its tasks' part of the meta-loss;
after the backward the ranks sum their gradients and losses in one all-reduce, check the summed
loss, and step. Under a CUDA graph only the meta-loss and its backward are captured there (the
all-reduce and the optimizer step run after each replay), so that the graph holds no communication.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from mzsr.training.distributed import Ranks
from mzsr.training.maml import meta_loss


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

    Eager: `meta_loss` + `zero_grad(set_to_none=True)` + `backward` + `step`. With `cuda_graph` on a CUDA device: on the first
    call for a (first_order, shapes) key, `warmup` eager steps on a side stream (cuDNN autotuning,
    Adam's lazy state, the allocator), theta and the optimizer state put back as they were, the step
    captured into a `torch.cuda.CUDAGraph`, then replayed; later calls copy the inputs into the
    static tensors and replay. `keep_graphs=False` drops the other graphs before capturing a new one
    (meta_train switches first_order once, from true to false). A failed capture warns once and the
    step runs eagerly from then on (`fallback_reason` says why).

    The optimizer must be one whose fresh state is zeros (both Adams): the warm-up's state is reset to
    zero when there was none before it.

    `ranks` and `tasks`: this process's place among several and the meta-batch's whole task count,
    of which `batch` holds this rank's share (see the module docstring).
    """

    def __init__(
        self,
        theta,
        optimizer,
        inner_steps: int,
        inner_lr: float,
        device=None,
        *,
        cuda_graph: bool = False,
        grad_dtype: torch.dtype | None = None,
        warmup: int = 3,
        keep_graphs: bool = True,
        ranks: Ranks = Ranks(),
        tasks: int | None = None,
    ):
        self.theta, self.optimizer = list(theta), optimizer
        self.inner_steps, self.inner_lr = inner_steps, inner_lr
        self.device = torch.device(device) if device is not None else self.theta[0].device
        self.grad_dtype = grad_dtype
        self.warmup, self.keep_graphs = max(int(warmup), 1), keep_graphs
        self.ranks = ranks
        self.tasks = tasks if ranks.size > 1 else None
        self.graphed = bool(cuda_graph) and self.device.type == "cuda"
        self.fallback_reason: str | None = None
        self._graphs: dict[tuple, _Graph] = {}
        set_capturable(optimizer, self._step_captured)

    @property
    def _step_captured(self) -> bool:
        """Whether the optimizer step is part of the graph (one process only: see the module docstring)."""
        return self.graphed and self.ranks.size == 1

    def loss(self, batch, weights, first_order: bool) -> torch.Tensor:
        """The meta-loss alone (forward, inner loop included)."""
        return meta_loss(
            self.theta,
            batch,
            self.inner_steps,
            self.inner_lr,
            weights,
            first_order,
            grad_dtype=self.grad_dtype,
            tasks=self.tasks,
        )

    def _eager(self, batch, weights, first_order: bool, check=None) -> torch.Tensor:
        if self.ranks.size > 1:
            self.optimizer.zero_grad(set_to_none=True)
            return self._sum_and_step(self._local_backward(batch, weights, first_order), check)
        loss = self.loss(batch, weights, first_order)
        if check is not None:
            check(loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss

    def _local_backward(self, batch, weights, first_order: bool) -> torch.Tensor:
        """This rank's part of the meta-loss and its gradients (into the parameters' .grad)."""
        loss = self.loss(batch, weights, first_order)
        loss.backward()
        return loss.detach()

    def _sum_and_step(self, loss: torch.Tensor, check=None) -> torch.Tensor:
        """Sum the ranks' gradients and losses (one all-reduce), check the meta-loss, step."""
        total = loss.reshape(1).clone()
        self.ranks.sum_([p.grad for p in self.theta] + [total])
        total = total.reshape(())
        if check is not None:
            check(total)
        self.optimizer.step()
        return total

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
        if not self._step_captured:  # the graph filled the static .grad tensors; sum them and step
            return self._sum_and_step(loss, check)
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
        state = {
            p: {k: v.clone() for k, v in self.optimizer.state[p].items() if torch.is_tensor(v)}
            for p in params
            if self.optimizer.state.get(p)
        }
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
        body = self._eager if self._step_captured else self._local_backward
        try:
            main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
            side.wait_stream(main)
            with torch.cuda.stream(side), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*capturable=True.*")  # Adam: capturable but not captured
                for _ in range(self.warmup):
                    body(static_batch, static_weights, first_order)
            main.wait_stream(side)
            self._restore(snapshot)
            self.optimizer.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                static_loss = body(static_batch, static_weights, first_order)
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
        warnings.warn(
            f"meta-step: CUDA graph capture failed ({self.fallback_reason}); running the meta-step eagerly",
            RuntimeWarning,
            stacklevel=3,
        )
