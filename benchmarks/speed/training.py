"""Training speed at the paper's settings against the machine's own convolution throughput, and
the meta-step candidates timed and gradient-checked in one run.

Rows, all measured in one process on random data (speed does not depend on the values):
  floor             plain MZSRNet forward + backward (no optimizer, no resize) on (32, 3, 96, 96) and on
                    (40, 3, 64, 64): the conv throughput this machine reaches at these sizes
  pre-train         batch 32 of 96x96 HR patches with their 48x48 LR, network_input, MZSRNet, L1, backward, TF-1's Adam
  pre-train bf16    the same under bf16 autocast, as `pretrain(amp=True)` does (CUDA only)
  meta rows         one meta-iteration (inner loop, meta-loss, backward, Adam) at 5 tasks x (8 support +
                    8 query) 64x64, 5 inner steps:
    per-task reference loop   the loop public MAML ports write (functional_call + autograd.grad with
                              create_graph, one task after another): the baseline of the speed-ups
    eager / graph             mzsr.training.meta_step.MetaStep run eagerly, or captured whole in a CUDA graph (CUDA only;
                              "graph grouped" is what meta_train runs on a GPU with meta.cuda_graph)
    grouped / looped / vmap   tasks as one grouped convolution, a task loop, or torch.func.vmap
    split bwd                 conv backward as conv_transpose2d + conv2d_weight (see mzsr.training.maml.conv3x3)
    channels_last, bf16, TF32 off   memory format, bf16 autocast, TF32 convolutions disabled (CUDA)

The CUDA defaults mirror meta_train (mzsr.device.pick_device: cuDNN autotuning, TF32 on).
Every meta row's meta-gradient (the .grad of its first step, at the seeded initial theta, on the
same batch) is compared with a float64 meta-gradient of that batch on the same device:
relative error = ||g - g64|| / ||g64|| over all parameters (and the worst layer), against a stated
tolerance per precision: fp32 1e-4, TF32 1e-2, bf16 1e-2 (TOLERANCE). On CUDA the default
precision is TF32 (convolutions), on a CPU fp32.

FLOPs are analytic and count 3x3 convolutions only (ReLU, L1, resize, Adam are noise):
  F(N, H, W) = 2 * 9 * sum(cin * cout) * N * H * W   one MZSRNet forward (449,280 FLOP per pixel)
  backward = 2F (input grad + weight grad; layer 1's unneeded input grad is not subtracted)
  pre-train step = 3F(32, 96, 96) = 397.5 GFLOP
  meta inner step, first order = 3F_s + 3F_q: support forward + gradient, query forward + backward
  meta inner step, second order = 9F_s + 3F_q: the support gradient (2F_s) is itself differentiated, and
      each of its two conv kinds (input grad, weight grad) costs 2x itself backward (4F_s), plus the backward
      through the support forward that feeds it (2F_s): 1 + 2 + 4 + 2 = 9F_s; the query part is 3F_q
  with F_s = F_q = F(40, 64, 64): second order 60F = 4.42 TFLOP, first order 30F per meta-iteration.
"% of floor" = row GFLOP/s / floor GFLOP/s at the same patch size: 100% means the row runs its
convolutions as fast as a plain forward + backward does; the rest is overhead (or slower conv kinds).

Peak memory: CUDA reports torch.cuda.max_memory_allocated() with the peak reset before each row
(the row's model, data, optimizer, warm-up, graph pool); CPU reports the peak resident set size above
the one at the row's start (after malloc_trim), sampled every 10 ms by a thread reading /proc/self/statm.
Each row also records process CPU seconds per iteration and the 1-minute load average: on a shared
CPU, wall time that far exceeds CPU time / threads, or a high load, means other work got the cores.
On CUDA one eager iteration of the grouped 2nd-order step (standard and split backward) is also
profiled: GPU kernel time against wall time, and the kernels that take it.

    python -m benchmarks.speed.training [--device auto|cpu|cuda] [--warmup N] [--iters N] [--quick]
        [--only REGEX] [--no-profile] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import platform
import re
import statistics
import threading
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from benchmarks.harness import run_device, write_result
from mzsr.network.model import MZSRNet
from mzsr.training.maml import make_forward, meta_loss, vmap_meta_loss
from mzsr.training.meta import META_DEFAULTS
from mzsr.training.meta_step import MetaStep
from mzsr.training.optim import make_optimizer
from mzsr.training.pretrain import PRETRAIN_DEFAULTS, network_input

FULL = {"pre_batch": 32, "pre_patch": 96, "tasks": 5, "shots": 8, "meta_patch": 64, "inner_steps": 5}
QUICK = {"pre_batch": 4, "pre_patch": 32, "tasks": 2, "shots": 2, "meta_patch": 16, "inner_steps": 2}
INNER_LR, PRE_LR, META_LR = 0.01, 4e-4, 1e-4
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 1e-2}  # relative error of the meta-gradient vs float64
SPEEDUP_TARGET = 3.0  # the 2nd-order meta-iteration vs the per-task reference loop


def forward_flops(n: int, h: int, w: int) -> float:
    """FLOPs of one MZSRNet forward on (n, 3, h, w): 2 * 9 * cin * cout per pixel per layer."""
    convs = MZSRNet().convs
    return 2.0 * 9 * sum(c.in_channels * c.out_channels for c in convs) * n * h * w


def meta_flops(s: dict, first_order: bool) -> float:
    """Conv FLOPs of one meta-iteration (see the module docstring for the count per inner step)."""
    f = forward_flops(s["tasks"] * s["shots"], s["meta_patch"], s["meta_patch"])
    return s["inner_steps"] * ((3 if first_order else 9) * f + 3 * f)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    step, device: torch.device, warmup: int, iters: int, after_first=None
) -> tuple[list[float], list[float], float]:
    """Wall and process-CPU seconds of each of `iters` calls of `step` after `warmup` untimed ones, and
    the first call's loss (`after_first()` runs right after that call: the gradient check).
    CPU seconds (all threads) tell a busy shared machine apart from slow code."""
    first = step()
    if after_first is not None:
        after_first()
    for _ in range(warmup - 1):
        step()
    wall, cpu = [], []
    for _ in range(iters):
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu, first


class PeakMemory:
    """Peak memory of the code inside `with`: CUDA allocator peak, or CPU RSS growth (sampled)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            self._max = max(self._max, self._rss())

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:  # hand freed heap back to the OS, so the baseline is what is live now
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self._base = self._max = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self._rss()) - self._base


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """TF32 convolutions and matmuls on or off inside (None: leave as set up)."""
    if enabled is None:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pretrain_step(s: dict, device: torch.device, amp: bool):
    """One pre-training iteration as `mzsr.training.pretrain.pretrain` runs it, minus the data loader."""
    torch.manual_seed(0)
    model = MZSRNet().to(device)
    opt = make_optimizer(PRETRAIN_DEFAULTS["optimizer"], model.parameters(), PRE_LR)
    hr = torch.rand(s["pre_batch"], 3, s["pre_patch"], s["pre_patch"], device=device)
    lr = torch.rand(s["pre_batch"], 3, s["pre_patch"] // 2, s["pre_patch"] // 2, device=device)

    def step():
        with torch.no_grad():
            x = network_input(lr, 2, hr.shape[-2:])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.l1_loss(model(x).float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def meta_batch(s: dict, device: torch.device, dtype=torch.float32):
    """(support_x, support_y, query_x, query_y), each (T, shots, 3, P, P), as `make_batch` returns them."""
    shape = (s["tasks"], s["shots"], 3, s["meta_patch"], s["meta_patch"])
    return tuple(torch.rand(shape, device=device, dtype=dtype) for _ in range(4))


def reference_meta_loss(model, params: dict, batch, steps: int, inner_lr: float, weights, first_order: bool):
    """The usual MAML port: a Python loop over tasks, fast weights as a dict run through functional_call;
    the release's meta-loss, (1/J) sum_j w_j L_j with L_j the tasks' mean."""
    sx, sy, qx, qy = batch
    total = 0.0
    for t in range(sx.shape[0]):
        fast = dict(params)
        for j in range(steps):
            loss = F.l1_loss(functional_call(model, fast, (sx[t],)), sy[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: w - inner_lr * g for (k, w), g in zip(fast.items(), grads)}
            total = total + weights[j] * F.l1_loss(functional_call(model, fast, (qx[t],)), qy[t])
    return total / (sx.shape[0] * steps)


class Candidate:
    """One meta row: the per-task reference loop, or a MetaStep with the given options."""

    def __init__(
        self,
        first_order=False,
        reference=False,
        graph=False,
        forward="grouped",
        split=False,
        channels_last=False,
        bf16=False,
        tf32=None,
        note="",
    ):
        self.first_order, self.reference, self.graph, self.forward = first_order, reference, graph, forward
        self.split, self.channels_last, self.bf16, self.tf32, self.note = split, channels_last, bf16, tf32, note
        self.cuda_only = graph or bf16 or tf32 is not None

    @property
    def name(self) -> str:
        order = "1st" if self.first_order else "2nd"
        if self.reference:
            return f"meta {order} order: per-task reference loop (baseline)"
        flags = [
            f
            for f, on in (
                ("split bwd", self.split),
                ("channels_last", self.channels_last),
                ("bf16 autocast", self.bf16),
                ("TF32 off", self.tf32 is False),
            )
            if on
        ]
        return f"meta {order} order: {'graph' if self.graph else 'eager'} {self.forward}" + "".join(
            f", {f}" for f in flags
        )

    def precision(self, device: torch.device) -> str:
        if self.bf16:
            return "bf16"
        return (
            "tf32" if device.type == "cuda" and self.tf32 is not False and torch.backends.cudnn.allow_tf32 else "fp32"
        )

    def build(self, state: dict, batch, s: dict, device: torch.device):
        """(step, theta, meta_step or None) on a fresh model loaded from `state`, Adam on it."""
        model = MZSRNet().to(device)
        model.load_state_dict(state)
        opt = make_optimizer(META_DEFAULTS["optimizer"], model.parameters(), META_LR)
        theta, weights = list(model.parameters()), [1.0 / s["inner_steps"]] * s["inner_steps"]
        if self.reference:
            named = dict(model.named_parameters())

            def step():
                loss = reference_meta_loss(model, named, batch, s["inner_steps"], INNER_LR, weights, self.first_order)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss.item()

            return step, theta, None
        ms = MetaStep(
            theta,
            opt,
            s["inner_steps"],
            INNER_LR,
            device,
            cuda_graph=self.graph,
            forward=self.forward,
            channels_last=self.channels_last,
            split_backward=self.split,
            autocast_dtype=torch.bfloat16 if self.bf16 else None,
        )
        return (lambda: ms(batch, weights, self.first_order).item()), theta, ms


def candidates(cuda: bool) -> list[Candidate]:
    """The meta rows in run order: on CUDA all of them, on a CPU the eager ones (grouped and looped)."""
    if not cuda:
        return [
            Candidate(reference=True),
            Candidate(forward="looped", note="meta_train's CPU path"),
            Candidate(forward="grouped"),
            Candidate(forward="looped", split=True),
            Candidate(forward="grouped", split=True),
            Candidate(forward="looped", channels_last=True),
            Candidate(forward="vmap"),
            Candidate(first_order=True, forward="looped", note="meta_train's CPU path"),
        ]
    return [
        Candidate(reference=True),
        Candidate(forward="grouped", note="meta_train before meta.cuda_graph"),
        Candidate(forward="grouped", split=True),
        Candidate(forward="vmap"),
        Candidate(graph=True, forward="grouped", note="meta_train now (meta.cuda_graph: true)"),
        Candidate(graph=True, forward="grouped", split=True),
        Candidate(graph=True, forward="grouped", channels_last=True),
        Candidate(graph=True, forward="grouped", split=True, channels_last=True),
        Candidate(graph=True, forward="looped"),
        Candidate(graph=True, forward="looped", split=True),
        Candidate(graph=True, forward="vmap"),
        Candidate(graph=True, forward="grouped", tf32=False),
        Candidate(graph=True, forward="grouped", split=True, tf32=False),
        Candidate(graph=True, forward="grouped", bf16=True),
        Candidate(graph=True, forward="grouped", split=True, channels_last=True, bf16=True),
        Candidate(first_order=True, forward="grouped", note="meta_train before meta.cuda_graph"),
        Candidate(first_order=True, graph=True, forward="grouped", note="meta_train now"),
        Candidate(first_order=True, graph=True, forward="grouped", split=True),
    ]


CUDA_ONLY_NOTE = (
    "CUDA-only rows skipped on this CPU: CUDA graph capture (graph ...), bf16 autocast, TF32 off; "
    "run `python -m benchmarks.speed.training --device cuda` on a GPU"
)


def float64_gradient(state: dict, batch, s: dict, device: torch.device, first_order: bool):
    """Meta-loss and meta-gradient of the batch in float64 on `device` (mzsr.training.maml.meta_loss, its default
    forward there: the task loop on a CPU), at the same initial weights as every row; the gradient
    comes back on the rows' device."""
    rows_device = batch[0].device
    model = MZSRNet().to(device).double()
    model.load_state_dict(state)
    theta = list(model.parameters())
    weights = [1.0 / s["inner_steps"]] * s["inner_steps"]
    loss = meta_loss(
        theta, tuple(t.to(device).double() for t in batch), s["inner_steps"], INNER_LR, weights, first_order
    )
    return loss.item(), [g.detach().to(rows_device) for g in torch.autograd.grad(loss, theta)]


def gradient_error(grads, reference) -> dict:
    """Relative error of a meta-gradient against the float64 one: all parameters together, worst layer."""
    diff = torch.cat([(g.double() - r).flatten() for g, r in zip(grads, reference)])
    ref = torch.cat([r.flatten() for r in reference])
    per_layer = [float((g.double() - r).norm() / r.norm().clamp_min(1e-300)) for g, r in zip(grads, reference)]
    return {"rel": float(diff.norm() / ref.norm()), "worst_layer_rel": max(per_layer), "per_layer_rel": per_layer}


def floor_step(n: int, patch: int, device: torch.device):
    """Plain MZSRNet forward + backward of one batch: the conv throughput the other rows are held to."""
    torch.manual_seed(0)
    model = MZSRNet().to(device)
    x, y = torch.rand(2, n, 3, patch, patch, device=device).unbind(0)

    def step():
        loss = F.l1_loss(model(x), y)
        loss.backward()
        return loss.item()

    return step


def check_reference() -> dict:
    """Meta-loss and meta-gradient of meta_loss vs the per-task reference, float64, tiny size."""
    s = {"tasks": 3, "shots": 2, "meta_patch": 12, "inner_steps": 3}
    torch.manual_seed(1)
    model = MZSRNet().double()
    batch = meta_batch(s, torch.device("cpu"), torch.float64)
    weights = [0.2, 0.3, 0.5]
    theta = list(model.parameters())
    ours = meta_loss(theta, batch, 3, INNER_LR, weights, False)
    ref = reference_meta_loss(model, dict(model.named_parameters()), batch, 3, INNER_LR, weights, False)
    g_ours, g_ref = torch.autograd.grad(ours, theta), torch.autograd.grad(ref, theta)
    grad_rel = max(float((a - b).norm() / b.norm()) for a, b in zip(g_ours, g_ref))
    return {
        "loss": ours.item(),
        "loss_reference": ref.item(),
        "loss_rel_diff": abs(ours.item() - ref.item()) / abs(ref.item()),
        "grad_max_rel_diff": grad_rel,
    }


def check_candidates() -> dict:
    """Meta-gradient of every candidate formulation vs the per-task reference, float64 on the CPU,
    tiny size (2 tasks x 2 shots 8x8, 2 steps), second and first order: max relative difference per layer."""
    s = {"tasks": 2, "shots": 2, "meta_patch": 8, "inner_steps": 2}
    torch.manual_seed(2)
    model = MZSRNet().double()
    batch = meta_batch(s, torch.device("cpu"), torch.float64)
    weights, theta = [0.4, 0.6], list(model.parameters())
    forms = {
        "grouped": lambda fo: meta_loss(theta, batch, 2, INNER_LR, weights, fo, forward=make_forward("grouped")),
        "looped": lambda fo: meta_loss(theta, batch, 2, INNER_LR, weights, fo, forward=make_forward("looped")),
        "grouped, split bwd": lambda fo: meta_loss(
            theta, batch, 2, INNER_LR, weights, fo, forward=make_forward("grouped", split_backward=True)
        ),
        "looped, split bwd": lambda fo: meta_loss(
            theta, batch, 2, INNER_LR, weights, fo, forward=make_forward("looped", split_backward=True)
        ),
        "grouped, channels_last": lambda fo: meta_loss(
            theta, batch, 2, INNER_LR, weights, fo, forward=make_forward("grouped", channels_last=True)
        ),
        "vmap": lambda fo: vmap_meta_loss(theta, batch, 2, INNER_LR, weights, fo),
    }
    out = {}
    for fo in (False, True):
        ref = torch.autograd.grad(
            reference_meta_loss(model, dict(model.named_parameters()), batch, 2, INNER_LR, weights, fo), theta
        )
        for name, fn in forms.items():
            g = torch.autograd.grad(fn(fo), theta)
            out[f"{'1st' if fo else '2nd'} order, {name}"] = max(
                float((a - b).norm() / b.norm()) for a, b in zip(g, ref)
            )
    return out


def profile_step(step, device: torch.device, top: int = 8) -> dict:
    """One call of `step` under torch.profiler: wall seconds, summed GPU kernel seconds, top kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        step()
        sync(device)
        wall = time.perf_counter() - start
    kernels: dict[str, list[float]] = {}
    for evt in prof.events():
        if evt.device_type == DeviceType.CUDA:
            k = kernels.setdefault(evt.name, [0.0, 0])
            k[0] += (evt.time_range.end - evt.time_range.start) / 1e6
            k[1] += 1
    total = sum(v[0] for v in kernels.values())
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "wall_s": wall,
        "kernel_s": total,
        "kernel_launches": sum(v[1] for v in kernels.values()),
        "top": [
            {"kernel": n[:90], "seconds": v[0], "calls": v[1], "share": v[0] / total if total else 0.0}
            for n, v in ranked
        ],
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})"
        )
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} logical CPUs"


def fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def measure(make, flops: float, device: torch.device, warmup: int, iters: int, after_first=None) -> dict:
    """Time one row and take its peak memory (the step's model, data and optimizer are built inside)."""
    load = os.getloadavg()[0]
    with PeakMemory(device) as mem:
        wall, cpu, first_loss = timed(make(), device, warmup, iters, after_first)
    sec = statistics.median(wall)
    return {
        "seconds_median": sec,
        "seconds_min": min(wall),
        "seconds": wall,
        "cpu_seconds": cpu,
        "gflop": flops / 1e9,
        "gflops": flops / 1e9 / sec,
        "peak_memory_bytes": mem.peak,
        "first_loss": first_loss,
        "loadavg_1min": [load, os.getloadavg()[0]],
    }


def print_row(name: str, r: dict, t_row: float) -> None:
    extra = ""
    if "grad" in r:
        g = r["grad"]
        extra = f", grad err {g['rel']:.1e} (worst layer {g['worst_layer_rel']:.1e}, tol {r['tolerance']:.0e} {r['precision']}: {'ok' if r['grad_ok'] else 'FAIL'})"
    if r.get("graph_fallback"):
        extra += f", CUDA GRAPH FELL BACK TO EAGER ({r['graph_fallback']})"
    print(
        f"  {name}: {r['seconds_median']:.3f} s/iter (wall {', '.join(f'{x:.2f}' for x in r['seconds'])}; "
        f"process CPU {', '.join(f'{x:.2f}' for x in r['cpu_seconds'])}), {r['gflops']:.1f} GFLOP/s, "
        f"peak {fmt_bytes(r['peak_memory_bytes'])}{extra}, load {r['loadavg_1min'][0]:.1f} "
        f"(row took {time.perf_counter() - t_row:.0f} s)",
        flush=True,
    )


def run_meta_row(
    c: Candidate, s: dict, device: torch.device, state: dict, batch, reference: dict, warmup: int, iters: int
) -> dict:
    """Build, gradient-check (first step) and time one candidate; the float64 reference per order."""
    built = {}

    def make():
        step, theta, ms = c.build(state, batch, s, device)
        built.update(theta=theta, ms=ms)
        return step

    def after_first():
        grads = [p.grad.detach().clone() for p in built["theta"]]
        built["grad"] = gradient_error(grads, reference[c.first_order][1])

    with tf32(c.tf32):
        precision = c.precision(device)
        r = measure(make, meta_flops(s, c.first_order), device, warmup, iters, after_first)
    ms = built.get("ms")
    r.update(
        grad=built["grad"],
        precision=precision,
        tolerance=TOLERANCE[precision],
        grad_ok=built["grad"]["rel"] <= TOLERANCE[precision],
        first_order=c.first_order,
        reference=c.reference,
        graph=c.graph,
        graphed=bool(ms is not None and ms.graphed),
        graph_fallback=ms.fallback_reason if ms else None,
        note=c.note,
        loss_float64=reference[c.first_order][0],
        loss_rel_err=abs(r["first_loss"] - reference[c.first_order][0]) / abs(reference[c.first_order][0]),
    )
    built.clear()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument(
        "--warmup", type=int, default=None, help="untimed iterations per row, at least 1 (default 1 on CPU, 3 on CUDA)"
    )
    ap.add_argument(
        "--iters",
        type=int,
        default=None,
        help="timed iterations per row (default 3 on CPU, 2 with --quick, 10 on CUDA)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test in seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument(
        "--only", default=None, metavar="REGEX", help="time only the rows whose name matches (floors always run)"
    )
    ap.add_argument("--no-profile", action="store_true", help="skip the CUDA kernel profile")
    ap.add_argument(
        "--reference-device",
        choices=["cpu", "same"],
        default="cpu",
        help="where the float64 meta-gradients are computed (default: the CPU, independent of the GPU's kernels)",
    )
    ap.add_argument("--json", default=None, metavar="OUT", help="write all numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = run_device(args.device)
    cuda = device.type == "cuda"
    warmup = max(1, args.warmup if args.warmup is not None else (3 if cuda else 1))
    iters = max(1, args.iters if args.iters is not None else (10 if cuda else 2 if args.quick else 3))
    s = QUICK if args.quick else FULL
    header = (
        f"device: {device_name(device)}; torch {torch.__version__}, threads {torch.get_num_threads()}; "
        f"{'quick' if args.quick else 'paper'} sizes {s}; warmup {warmup}, median of {iters}"
    )
    print(header, flush=True)
    check = check_reference()
    print(
        f"reference check (float64, 3 tasks x 2 shots 12x12, 3 steps): meta-loss {check['loss']:.12f} vs "
        f"{check['loss_reference']:.12f} (rel diff {check['loss_rel_diff']:.1e}), "
        f"meta-gradient max rel diff {check['grad_max_rel_diff']:.1e}",
        flush=True,
    )
    check["candidates_float64_cpu"] = forms = check_candidates()
    print(
        "candidate formulations vs the per-task reference (float64, CPU, 2 tasks x 2 shots 8x8, 2 steps), "
        "max rel diff of the meta-gradient: " + "; ".join(f"{k} {v:.1e}" for k, v in forms.items()),
        flush=True,
    )
    keep = (lambda name: True) if args.only is None else (lambda name: re.search(args.only, name) is not None)

    n_meta, p, m = s["tasks"] * s["shots"], s["pre_patch"], s["meta_patch"]
    pre_floor, meta_floor = f"floor: fwd+bwd ({s['pre_batch']}, 3, {p}, {p})", f"floor: fwd+bwd ({n_meta}, 3, {m}, {m})"
    pre_flops = 3 * forward_flops(s["pre_batch"], p, p)
    plain = [
        (pre_floor, lambda: floor_step(s["pre_batch"], p, device), pre_flops, pre_floor),
        ("pre-train fp32", lambda: pretrain_step(s, device, False), pre_flops, pre_floor),
        ("pre-train bf16 autocast", lambda: pretrain_step(s, device, True), pre_flops, pre_floor),
        (meta_floor, lambda: floor_step(n_meta, m, device), 3 * forward_flops(n_meta, m, m), meta_floor),
    ]
    plain = [r for r in plain if (cuda or "bf16" not in r[0]) and (r[0].startswith("floor") or keep(r[0]))]
    rows, t_total = {}, time.perf_counter()
    mem_kind = "max_memory_allocated" if cuda else "peak RSS growth"
    out = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "sizes": s,
        "warmup": warmup,
        "iters": iters,
        "memory_kind": mem_kind,
        "tolerance": TOLERANCE,
        "check": check,
        "rows": rows,
    }

    def dump(**more) -> None:  # after every row, so that a run cut short still leaves its numbers
        out.update(more)
        write_result(args.json, out)

    for name, make, flops, floor in plain:
        t_row = time.perf_counter()
        r = rows[name] = measure(make, flops, device, warmup, iters)
        r["floor"], r["pct_of_floor"] = floor, 100 * r["gflops"] / rows[floor]["gflops"]
        print_row(name, r, t_row)
        dump()

    # the meta rows: one seeded initial theta and one batch for all, float64 gradients of it on this device
    torch.manual_seed(0)
    state = {k: v.to(device) for k, v in MZSRNet().state_dict().items()}
    batch = meta_batch(s, device)
    cands = [c for c in candidates(cuda) if keep(c.name)]
    reference, t_ref = {}, time.perf_counter()
    ref_device = torch.device("cpu") if args.reference_device == "cpu" else device
    for fo in sorted({c.first_order for c in cands}):
        reference[fo] = float64_gradient(state, batch, s, ref_device, fo)
    if reference:
        print(
            f"float64 meta-gradients of the batch on {ref_device.type} ({', '.join('1st' if fo else '2nd' for fo in sorted(reference))} "
            f"order), meta-loss {', '.join(f'{reference[fo][0]:.8f}' for fo in sorted(reference))}: "
            f"{time.perf_counter() - t_ref:.1f} s",
            flush=True,
        )
    skipped = [c.name for c in candidates(True) if c.cuda_only] if not cuda else []
    for c in cands:
        t_row = time.perf_counter()
        r = rows[c.name] = run_meta_row(c, s, device, state, batch, reference, warmup, iters)
        r["floor"], r["pct_of_floor"] = meta_floor, 100 * r["gflops"] / rows[meta_floor]["gflops"]
        print_row(c.name, r, t_row)
        dump()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if skipped:
        print(f"  ({CUDA_ONLY_NOTE})", flush=True)

    profiles = {}
    if cuda and not args.no_profile:
        for c in (Candidate(forward="grouped"), Candidate(forward="grouped", split=True)):
            try:
                step, _, _ = c.build(state, batch, s, device)
                for _ in range(2):
                    step()
                profiles[c.name] = prof = profile_step(step, device)
            except Exception as e:  # noqa: BLE001 - the profile is extra information only
                print(f"profile of {c.name} failed: {type(e).__name__}: {e}", flush=True)
                continue
            print(
                f"profile, one iteration of {c.name}: wall {prof['wall_s']:.3f} s (under the profiler), GPU kernels "
                f"{prof['kernel_s']:.3f} s in {prof['kernel_launches']} launches; top kernels:",
                flush=True,
            )
            for k in prof["top"]:
                print(f"    {k['seconds']:.3f} s {100 * k['share']:4.1f}% x{k['calls']:<5d} {k['kernel']}")
            del step
            gc.collect()
            torch.cuda.empty_cache()

    base_name = next((n for n, r in rows.items() if r.get("reference") and not r["first_order"]), None)
    base = rows[base_name]["seconds_median"] if base_name else None
    for r in rows.values():
        r["speedup_vs_reference"] = (
            base / r["seconds_median"] if base and "first_order" in r and not r["first_order"] else None
        )
    print(
        f"\n{header}\n\n| row | s/iter | fastest s/iter | GFLOP/iter | GFLOP/s | % of floor | {mem_kind} "
        "| speed-up vs per-task loop | meta-grad rel err vs float64 (tol) |\n|---|---|---|---|---|---|---|---|---|"
    )
    for name, r in rows.items():
        speed = f"{r['speedup_vs_reference']:.2f}x" if r.get("speedup_vs_reference") else ""
        grad = (
            f"{r['grad']['rel']:.1e} ({r['tolerance']:.0e} {r['precision']}{'' if r['grad_ok'] else ' FAIL'})"
            if "grad" in r
            else ""
        )
        label = (
            name
            + (" [fell back to eager]" if r.get("graph_fallback") else "")
            + (f" ({r['note']})" if r.get("note") else "")
        )
        print(
            f"| {label} | {r['seconds_median']:.3f} | {r['seconds_min']:.3f} | {r['gflop']:.1f} | {r['gflops']:.1f} | "
            f"{r['pct_of_floor']:.0f}% | {fmt_bytes(r['peak_memory_bytes'])} | {speed} | {grad} |"
        )
    if skipped:
        print(f"\n{CUDA_ONLY_NOTE}: " + "; ".join(skipped))
    verdict = None
    if base:
        second = {n: r for n, r in rows.items() if "first_order" in r and not r["first_order"] and not r["reference"]}
        good = {n: r for n, r in second.items() if r["grad_ok"] and not r.get("graph_fallback")}
        if good:
            best = min(good, key=lambda n: good[n]["seconds_median"])
            sp = good[best]["speedup_vs_reference"]
            verdict = {"best": best, "speedup": sp, "target": SPEEDUP_TARGET, "met": sp >= SPEEDUP_TARGET}
            print(
                f"\nfastest 2nd-order row within its gradient tolerance: {best}, {good[best]['seconds_median']:.3f} s/iter, "
                f"{sp:.2f}x the per-task reference loop ({base:.3f} s/iter); target {SPEEDUP_TARGET:.0f}x: "
                f"{'met' if verdict['met'] else 'NOT met'}"
            )
        default = next(
            (
                n
                for n, r in second.items()
                if r.get("note", "").startswith("meta_train now") or r.get("note") == "meta_train's CPU path"
            ),
            None,
        )
        if default:
            print(
                f"meta_train's default here ({default}): {rows[default]['speedup_vs_reference']:.2f}x the per-task reference loop"
            )
    print(f"rows took {time.perf_counter() - t_total:.0f} s")
    dump(skipped_cuda_only=skipped, profiles=profiles, verdict=verdict)


if __name__ == "__main__":
    main()
