"""The production meta-step (mzsr.training.meta_step.MetaStep) at the paper's sizes: seconds per
iteration, peak memory and meta-gradient error against float64, eager and (CUDA) as a CUDA graph.

Rows, in one process on random data (speed does not depend on the values):
  floor       plain MZSRNet forward + backward on the meta-batch's patches (T * shots, 3, P, P): the
              convolution throughput this machine reaches at this size
  meta rows   one meta-iteration (inner loop, meta-loss, backward, TF-1's Adam) of 5 tasks x (8 support
              + 8 query) 64x64, 5 inner steps, second and first order, as meta_train runs it: eager (the
              tasks as one grouped convolution on a GPU, a task loop on a CPU), and on CUDA captured
              whole in a CUDA graph (meta.cuda_graph); on a CPU with native bfloat16 also the second
              order with bfloat16 gradients (grad_precision: bfloat16)

Each meta row's meta-gradient (the .grad its first step leaves, at the same seeded theta, on the same
batch) is compared with a float64 meta-gradient of that batch computed on the CPU: ||g - g64|| / ||g64||
over all parameters, against a tolerance per precision (TOLERANCE; CUDA runs TF32 convolutions, as
mzsr.device.pick_device sets them up). FLOPs count the 3x3 convolutions only: F = one forward of the
T * shots patches; a first-order inner step costs 3F (support) + 3F (query), a second-order one 9F + 3F
(the support gradient is differentiated again). Peak memory: CUDA's allocator peak, or on a CPU the
growth of the peak RSS (benchmarks.harness.peak_memory).

    python -m benchmarks.speed.training [--device auto|cpu|cuda] [--threads N] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.harness import peak_memory, run_device, write_result
from mzsr.network.conv import native_bfloat16
from mzsr.network.model import MZSRNet
from mzsr.training.maml import meta_loss
from mzsr.training.meta import META_DEFAULTS
from mzsr.training.meta_step import MetaStep
from mzsr.training.optim import make_optimizer

FULL = {"tasks": 5, "shots": 8, "patch": 64, "inner_steps": 5}
QUICK = {"tasks": 2, "shots": 2, "patch": 16, "inner_steps": 2}
META_LR = 1e-4
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 1e-2}  # relative error of the meta-gradient vs float64


def forward_flops(n: int, patch: int) -> float:
    """FLOPs of one MZSRNet forward on (n, 3, patch, patch): 2 * 9 * cin * cout per pixel per layer."""
    return 2.0 * 9 * sum(c.in_channels * c.out_channels for c in MZSRNet().convs) * n * patch * patch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, flops: float, device: torch.device, warmup: int, iters: int, after_first=None) -> dict:
    """Wall and process-CPU seconds of `iters` calls of `step()` after `warmup` untimed ones (the first
    followed by `after_first()`), and the peak memory of all of them."""
    load = os.getloadavg()[0]
    with peak_memory(device) as mem:
        step()
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
    sec = statistics.median(wall)
    return {
        "seconds_median": sec,
        "seconds_min": min(wall),
        "seconds": wall,
        "cpu_seconds": cpu,
        "gflop": flops / 1e9,
        "gflops": flops / 1e9 / sec,
        "peak_memory_bytes": mem["bytes"],
        "loadavg_1min": [load, os.getloadavg()[0]],
    }


def floor_step(n: int, patch: int, device: torch.device):
    """Plain MZSRNet forward + backward of one batch: the conv throughput the meta rows are held to."""
    torch.manual_seed(0)
    model = MZSRNet().to(device)
    x, y = torch.rand(2, n, 3, patch, patch, device=device).unbind(0)
    return lambda: F.l1_loss(model(x), y).backward()


def float64_gradient(state: dict, batch, s: dict, first_order: bool) -> list[torch.Tensor]:
    """The meta-gradient of the batch in float64 on the CPU, at the rows' initial weights."""
    model = MZSRNet().double()
    model.load_state_dict(state)
    theta, steps = list(model.parameters()), s["inner_steps"]
    batch = tuple(t.cpu().double() for t in batch)
    loss = meta_loss(theta, batch, steps, META_DEFAULTS["inner_lr"], [1.0 / steps] * steps, first_order)
    return list(torch.autograd.grad(loss, theta))


def meta_row(s, device, state, batch, reference, warmup, iters, first_order, graph, grad_dtype) -> dict:
    """Time one meta-step configuration; its first step's meta-gradient against `reference`."""
    model = MZSRNet().to(device)
    model.load_state_dict(state)
    theta, steps = list(model.parameters()), s["inner_steps"]
    opt = make_optimizer(META_DEFAULTS["optimizer"], theta, META_LR)
    ms = MetaStep(theta, opt, steps, META_DEFAULTS["inner_lr"], device, cuda_graph=graph, grad_dtype=grad_dtype)
    weights, err = [1.0 / steps] * steps, {}

    def check():
        g = torch.cat([p.grad.detach().cpu().double().flatten() for p in theta])
        g64 = torch.cat([r.flatten() for r in reference])
        err["rel"] = float((g - g64).norm() / g64.norm())

    f = forward_flops(s["tasks"] * s["shots"], s["patch"])
    flops = steps * ((3 if first_order else 9) * f + 3 * f)
    r = measure(lambda: ms(batch, weights, first_order).item(), flops, device, warmup, iters, check)
    if grad_dtype is not None:
        precision = "bf16"
    else:
        precision = "tf32" if device.type == "cuda" and torch.backends.cudnn.allow_tf32 else "fp32"
    r.update(
        grad_rel_err=err["rel"],
        precision=precision,
        tolerance=TOLERANCE[precision],
        grad_ok=err["rel"] <= TOLERANCE[precision],
        first_order=first_order,
        graph=graph,
        graphed=ms.graphed,
        graph_fallback=ms.fallback_reason,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--quick", action="store_true", help=f"tiny sizes {QUICK}: a smoke test in seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations per row (default 1 on CPU, 3 on CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations per row (default 3 on CPU, 10 on CUDA)")
    ap.add_argument("--json", default=None, metavar="OUT", help="write all numbers here (after every row)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = run_device(args.device)
    cuda = device.type == "cuda"
    warmup = max(1, args.warmup or (3 if cuda else 1))
    iters = max(1, args.iters or (10 if cuda else 3))
    s = QUICK if args.quick else FULL
    n, p = s["tasks"] * s["shots"], s["patch"]
    print(
        f"{device.type}, {torch.get_num_threads()} threads, sizes {s}, warm-up {warmup}, median of {iters}", flush=True
    )
    rows = {}
    out = {"device": device.type, "sizes": s, "warmup": warmup, "iters": iters, "tolerance": TOLERANCE, "rows": rows}
    floor = f"floor: fwd+bwd ({n}, 3, {p}, {p})"
    rows[floor] = measure(floor_step(n, p, device), 3 * forward_flops(n, p), device, warmup, iters)
    print_row(floor, rows[floor])
    write_result(args.json, out)

    torch.manual_seed(0)
    state = {k: v.to(device) for k, v in MZSRNet().state_dict().items()}
    batch = tuple(torch.rand(s["tasks"], s["shots"], 3, p, p, device=device) for _ in range(4))
    forward = "grouped" if cuda else "looped"
    configs = [(fo, graph, None) for fo in (False, True) for graph in ((False, True) if cuda else (False,))]
    if not cuda and native_bfloat16():
        configs.insert(1, (False, False, torch.bfloat16))
    for first_order in (False, True):
        reference = float64_gradient(state, batch, s, first_order)
        for fo, graph, grad_dtype in (c for c in configs if c[0] == first_order):
            name = f"meta {'1st' if fo else '2nd'} order: {'graph' if graph else 'eager'} {forward}"
            name += ", bfloat16 gradients" if grad_dtype is not None else ""
            r = rows[name] = meta_row(s, device, state, batch, reference, warmup, iters, fo, graph, grad_dtype)
            r["pct_of_floor"] = 100 * r["gflops"] / rows[floor]["gflops"]
            print_row(name, r)
            write_result(args.json, out)
            if cuda:
                torch.cuda.empty_cache()
    print("\n| row | s/iter | fastest s/iter | GFLOP/s | % of floor | peak memory | meta-grad rel err (tol) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        grad = f"{r['grad_rel_err']:.1e} ({r['tolerance']:.0e} {r['precision']})" if "grad_rel_err" in r else ""
        grad += "" if r.get("grad_ok", True) else " FAIL"
        print(
            f"| {name} | {r['seconds_median']:.3f} | {r['seconds_min']:.3f} | {r['gflops']:.1f} | "
            f"{r.get('pct_of_floor', 100):.0f}% | {r['peak_memory_bytes'] / 2**20:.0f} MiB | {grad} |"
        )


def print_row(name: str, r: dict) -> None:
    extra = f", grad err {r['grad_rel_err']:.1e}" if "grad_rel_err" in r else ""
    extra += f", CUDA GRAPH FELL BACK TO EAGER ({r['graph_fallback']})" if r.get("graph_fallback") else ""
    print(
        f"  {name}: {r['seconds_median']:.3f} s/iter (wall {', '.join(f'{x:.2f}' for x in r['seconds'])}; "
        f"process CPU {', '.join(f'{x:.2f}' for x in r['cpu_seconds'])}), {r['gflops']:.1f} GFLOP/s, "
        f"peak {r['peak_memory_bytes'] / 2**20:.0f} MiB{extra}, load {r['loadavg_1min'][0]:.1f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
