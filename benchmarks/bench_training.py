"""Training speed at the paper's settings against the machine's own convolution throughput.

Rows, all measured in one process on random data (speed does not depend on the values):
  pre-train         batch 32 of 96x96 HR patches, bicubic_pair input, MZSRNet, L1, backward, Adam
  pre-train bf16    the same under bf16 autocast, as `pretrain(amp=True)` does (CUDA only)
  meta 2nd order    mzsr.meta.meta_loss: 5 tasks x (8 support + 8 query) 64x64, 5 inner steps, Adam
  meta 1st order    the same with first_order=True
  meta reference    the per-task loop public ports write: functional_call + autograd.grad(create_graph)
  floor             plain MZSRNet forward + backward (no optimizer, no resize) on (32, 3, 96, 96) and on
                    (40, 3, 64, 64): the conv throughput this machine reaches at these sizes

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
(the row's model, data, optimizer and graph); CPU reports the peak resident set size above the one
at the row's start (after malloc_trim), sampled every 10 ms by a thread reading /proc/self/statm.
Each row also records process CPU seconds per iteration and the 1-minute load average: on a shared
CPU, wall time that far exceeds CPU time / threads, or a high load, means other work got the cores.

    python benchmarks/bench_training.py [--device auto|cpu|cuda] [--warmup N] [--iters N] [--quick] [--json OUT]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import threading
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from mzsr.meta import meta_loss
from mzsr.model import MZSRNet
from mzsr.pretrain import bicubic_pair

FULL = {"pre_batch": 32, "pre_patch": 96, "tasks": 5, "shots": 8, "meta_patch": 64, "inner_steps": 5}
QUICK = {"pre_batch": 4, "pre_patch": 32, "tasks": 2, "shots": 2, "meta_patch": 16, "inner_steps": 2}
INNER_LR, PRE_LR, META_LR = 0.01, 4e-4, 1e-4


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


def timed(step, device: torch.device, warmup: int, iters: int) -> tuple[list[float], list[float], float]:
    """Wall and process-CPU seconds of each of `iters` calls of `step` after `warmup` untimed ones, and
    the first call's loss. CPU seconds (all threads) tell a busy shared machine apart from slow code."""
    first = step()
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


def pretrain_step(s: dict, device: torch.device, amp: bool):
    """One pre-training iteration as `mzsr.pretrain.pretrain` runs it, minus the data loader."""
    torch.manual_seed(0)
    model = MZSRNet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=PRE_LR)
    hr = torch.rand(s["pre_batch"], 3, s["pre_patch"], s["pre_patch"], device=device)

    def step():
        with torch.no_grad():
            x = bicubic_pair(hr, 2)
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
    """The usual MAML port: a Python loop over tasks, fast weights as a dict run through functional_call."""
    sx, sy, qx, qy = batch
    total = 0.0
    for t in range(sx.shape[0]):
        fast = dict(params)
        for j in range(steps):
            loss = F.l1_loss(functional_call(model, fast, (sx[t],)), sy[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: w - inner_lr * g for (k, w), g in zip(fast.items(), grads)}
            total = total + weights[j] * F.l1_loss(functional_call(model, fast, (qx[t],)), qy[t])
    return total / sx.shape[0]


def meta_step(s: dict, device: torch.device, first_order: bool, reference: bool):
    """One meta-iteration: mzsr.meta.meta_loss (grouped tasks) or the per-task reference, backward, Adam."""
    torch.manual_seed(0)
    model = MZSRNet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=META_LR)
    batch = meta_batch(s, device)
    weights = [1.0 / s["inner_steps"]] * s["inner_steps"]
    theta, named = list(model.parameters()), dict(model.named_parameters())

    def step():
        if reference:
            loss = reference_meta_loss(model, named, batch, s["inner_steps"], INNER_LR, weights, first_order)
        else:
            loss = meta_loss(theta, batch, s["inner_steps"], INNER_LR, weights, first_order)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


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
    return {"loss": ours.item(), "loss_reference": ref.item(),
            "loss_rel_diff": abs(ours.item() - ref.item()) / abs(ref.item()), "grad_max_rel_diff": grad_rel}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} logical CPUs"


def fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def plan(s: dict, device: torch.device) -> list[tuple]:
    """Rows in run order: (name, step factory, conv FLOPs per iteration, name of the floor row it is held to)."""
    n_meta, p, m = s["tasks"] * s["shots"], s["pre_patch"], s["meta_patch"]
    pre_floor, meta_floor = f"floor: fwd+bwd ({s['pre_batch']}, 3, {p}, {p})", f"floor: fwd+bwd ({n_meta}, 3, {m}, {m})"
    pre_flops = 3 * forward_flops(s["pre_batch"], p, p)
    rows = [
        (pre_floor, lambda: floor_step(s["pre_batch"], p, device), pre_flops, pre_floor),
        ("pre-train fp32", lambda: pretrain_step(s, device, False), pre_flops, pre_floor),
        ("pre-train bf16 autocast", lambda: pretrain_step(s, device, True), pre_flops, pre_floor),
        (meta_floor, lambda: floor_step(n_meta, m, device), 3 * forward_flops(n_meta, m, m), meta_floor),
        ("meta 2nd order (meta_loss)", lambda: meta_step(s, device, False, False), meta_flops(s, False), meta_floor),
        ("meta 2nd order (per-task reference)", lambda: meta_step(s, device, False, True), meta_flops(s, False), meta_floor),
        ("meta 1st order (meta_loss)", lambda: meta_step(s, device, True, False), meta_flops(s, True), meta_floor),
    ]
    return [r for r in rows if device.type == "cuda" or "bf16" not in r[0]]


def measure(make, flops: float, device: torch.device, warmup: int, iters: int) -> dict:
    """Time one row and take its peak memory (the step's model, data and optimizer are built inside)."""
    load = os.getloadavg()[0]
    with PeakMemory(device) as mem:
        wall, cpu, first_loss = timed(make(), device, warmup, iters)
    sec = statistics.median(wall)
    return {"seconds_median": sec, "seconds_min": min(wall), "seconds": wall, "cpu_seconds": cpu,
            "gflop": flops / 1e9, "gflops": flops / 1e9 / sec, "peak_memory_bytes": mem.peak,
            "first_loss": first_loss, "loadavg_1min": [load, os.getloadavg()[0]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations per row, at least 1 (default 1 on CPU, 5 on CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per row (default 3 on CPU, 20 on CUDA)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test in seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--json", default=None, metavar="OUT", help="write all numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: this torch sees no CUDA device")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    cuda = device.type == "cuda"
    warmup = max(1, args.warmup if args.warmup is not None else (5 if cuda else 1))
    iters = max(1, args.iters if args.iters is not None else (20 if cuda else 3))
    s = QUICK if args.quick else FULL
    header = (f"device: {device_name(device)}; torch {torch.__version__}, threads {torch.get_num_threads()}; "
              f"{'quick' if args.quick else 'paper'} sizes {s}; warmup {warmup}, median of {iters}")
    print(header, flush=True)
    check = check_reference()
    print(f"reference check (float64, 3 tasks x 2 shots 12x12, 3 steps): meta-loss {check['loss']:.12f} vs "
          f"{check['loss_reference']:.12f} (rel diff {check['loss_rel_diff']:.1e}), "
          f"meta-gradient max rel diff {check['grad_max_rel_diff']:.1e}", flush=True)
    rows, t_total = {}, time.perf_counter()
    for name, make, flops, floor in plan(s, device):
        t_row = time.perf_counter()
        r = rows[name] = measure(make, flops, device, warmup, iters)
        r["floor"], r["pct_of_floor"] = floor, 100 * r["gflops"] / rows[floor]["gflops"]
        print(f"  {name}: {r['seconds_median']:.3f} s/iter (wall {', '.join(f'{x:.2f}' for x in r['seconds'])}; "
              f"process CPU {', '.join(f'{x:.2f}' for x in r['cpu_seconds'])}), {r['gflops']:.1f} GFLOP/s, "
              f"peak {fmt_bytes(r['peak_memory_bytes'])}, load {r['loadavg_1min'][0]:.1f} "
              f"(row took {time.perf_counter() - t_row:.0f} s)", flush=True)
    ours, ref = rows["meta 2nd order (meta_loss)"], rows["meta 2nd order (per-task reference)"]
    a, b = ours["first_loss"], ref["first_loss"]
    check["float32_first_loss"] = {"meta_loss": a, "reference": b, "rel_diff": abs(a - b) / abs(b)}
    print(f"same-seed float32 first meta-loss: meta_loss {a:.8f}, reference {b:.8f} (rel diff {abs(a - b) / abs(b):.1e})")
    mem_kind = "max_memory_allocated" if cuda else "peak RSS growth"
    print(f"\n{header}\n\n| row | s/iter | fastest s/iter | GFLOP/iter | GFLOP/s | % of floor | {mem_kind} |\n"
          "|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['seconds_median']:.3f} | {r['seconds_min']:.3f} | {r['gflop']:.1f} | {r['gflops']:.1f} | "
              f"{r['pct_of_floor']:.0f}% | {fmt_bytes(r['peak_memory_bytes'])} |")
    print(f"\nper-task reference time / meta_loss time (2nd order, medians): "
          f"{ref['seconds_median'] / ours['seconds_median']:.2f} (above 1: meta_loss is faster); "
          f"rows took {time.perf_counter() - t_total:.0f} s")
    if args.json:
        out = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "sizes": s, "warmup": warmup, "iters": iters,
               "memory_kind": mem_kind, "check": check, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
