"""Seconds per image of MZSR(1), MZSR(10) and ZSSR on this CPU, and MZSR(10)'s convolution throughput
against a plain forward/backward loop of the same sizes.

One LR image (astronaut under g2.0, --size x --size, x2), the released Direct x2 model; MZSR(n) is the
median of --repeats runs of `mzsr.adaptation.adapt.adapt` (son, n steps, inference), ZSSR one run of
`mzsr.adaptation.zssr.zssr` capped at --zssr-iterations. FLOPs count the 3x3 convolutions
(`benchmarks.speed.cpu.adaptation_gflop`): n x (forward + backward) at LR size and one forward at HR size.

    python -m benchmarks.speed.adapt --threads 1 --zssr-iterations 300 --json out.json
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import REPO, write_result
from benchmarks.speed.cpu import adaptation_gflop, astronaut_lr
from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.adaptation.zssr import zssr
from mzsr.files.checkpoints import load_model
from mzsr.network.model import MZSRNet


def floor_seconds(side: int, steps: int, repeats: int) -> float:
    """The same convolutions as plain module calls: `steps` x forward + backward at LR size, one HR forward."""
    net = MZSRNet()
    x, y = torch.rand(1, 3, side, side), torch.rand(1, 3, 2 * side, 2 * side)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            net.zero_grad(set_to_none=True)
            F.l1_loss(net(x), x).backward()
        with torch.no_grad():
            net(y)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(REPO / "models" / "direct_x2.safetensors"))
    ap.add_argument("--size", type=int, default=256, help="LR side")
    ap.add_argument("--zssr-iterations", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--json", default=None, metavar="OUT", help="write all numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.weights, expected_scale=2)[0]
    lr, deg = astronaut_lr(args.size)
    print(f"CPU threads {torch.get_num_threads()}; LR {args.size}x{args.size} (astronaut, g2.0)", flush=True)
    seconds = {}
    adapt(model, lr, deg.kernel, 2, deg.subsampling, AdaptOptions(steps=(1,)), device="cpu")  # warm-up
    for steps in (1, 10):
        runs = [
            adapt(model, lr, deg.kernel, 2, deg.subsampling, AdaptOptions(steps=(steps,)), device="cpu")[0].seconds
            for _ in range(args.repeats)
        ]
        seconds[f"MZSR({steps})"] = float(np.median(runs))
    z = zssr(lr, deg.kernel, 2, deg.subsampling, {"iterations": args.zssr_iterations}, device="cpu")
    seconds[f"ZSSR ({z.steps} iterations)"] = z.seconds
    floor = floor_seconds(args.size, 10, args.repeats)
    gflop = adaptation_gflop(args.size)
    results = {
        "seconds": seconds,
        "zssr_seconds_per_iteration": z.seconds / z.steps,
        "mzsr10_gflop": gflop,
        "mzsr10_gflops": gflop / seconds["MZSR(10)"],
        "floor_gflops": gflop / floor,
        "loadavg_1min": os.getloadavg()[0],
    }
    print("\n| method | seconds per image | ZSSR / method |\n|---|---|---|")
    for name, sec in seconds.items():
        print(f"| {name} | {sec:.2f} | {z.seconds / sec:.1f} |")
    print(
        f"\nMZSR(10): {gflop:.0f} GFLOP of convolutions at {results['mzsr10_gflops']:.1f} GFLOP/s; plain conv "
        f"forward/backward loop of the same sizes {results['floor_gflops']:.1f} GFLOP/s"
    )
    write_result(args.json, results)


if __name__ == "__main__":
    main()
