"""The CPU path (mzsr/network/conv.py) against the code as it was, in one run: seconds and peak memory.

Each measurement runs in a fresh child process (so its peak RSS is its own), the paths alternating
within every repeat, in an order that turns from repeat to repeat, so that the machine's load and
any advantage of running second fall on all alike:

- today: `mzsr.network.conv.plain_path()`, NCHW activations and PyTorch's own convolution backward, i.e. the
  code before the CPU path;
- new: the default (channels-last, the written-out double backward), float32;
- new bf16: the same with `gradient_precision("bfloat16")` (opt-in; only on CPUs with AMX or
  AVX512-BF16).

Workloads: a second-order meta-iteration (5 tasks x (8 + 8) patches, 5 inner steps, the meta-step
and TF-1 Adam of meta_train) at 32 and 64 px; a 10-step adaptation of astronaut (256x256 LR, g2.0,
the released direct_x2; son, 10 steps, inference); ZSSR (`--zssr-iterations`) and KernelGAN
(`--kernelgan-iterations`) on the same image. Before the timings, the tolerances: meta-gradients of
the new path against today's in float64 and against float64 in float32/bfloat16, and each path's
adapted output against today's in grey levels.

    python -m benchmarks.speed.cpu                        # 1 and 2 threads, 3 repeats: ~40 min here
    python -m benchmarks.speed.cpu --threads 1 --sizes 32 --only meta adapt --repeats 5
    python -m benchmarks.speed.cpu --quick                # smoke test, about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import REPO, write_result

PATHS = ("today", "new", "new bf16")
WORKLOADS = ("meta", "adapt", "zssr", "kernelgan")


def path_context(path: str):
    from mzsr.network import conv

    if path == "today":
        return conv.plain_path()
    if path == "new bf16":
        return conv.gradient_precision("bfloat16")
    return nullcontext()


def astronaut_lr(side: int = 256):
    """Astronaut under g2.0 at x2, as the paper makes LR inputs, cropped to `side` x `side`."""
    from skimage import data

    from mzsr.degradation.degrade import degrade, to_uint8
    from mzsr.degradation.kernels import named_degradation

    deg = named_degradation("g2.0")
    hr = data.astronaut()[: 2 * side, : 2 * side]
    return to_uint8(degrade(hr / 255.0, deg.kernel, 2, deg.subsampling)) / 255.0, deg


def _peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: since its exec; ru_maxrss would include the parent's before it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _meta_step(size: int, inner_steps: int, dtype=torch.float32, seed: int = 0):
    """A meta-step as meta_train runs it, on a seeded theta and batch; returns (step, batch, weights)."""
    from mzsr.network.model import MZSRNet, init_release_
    from mzsr.training.meta_step import make_meta_step
    from mzsr.training.optim import make_optimizer

    torch.manual_seed(seed)
    theta = list(init_release_(MZSRNet()).to(dtype).parameters())
    step = make_meta_step(theta, make_optimizer("adam_tf1", theta, 1e-4), {"inner_steps": inner_steps}, "cpu")
    batch = [torch.rand(5, 8, 3, size, size).to(dtype) for _ in range(4)]  # the same values in any dtype
    return step, batch, [1.0 / inner_steps] * inner_steps


def warmed_run(workload: str, path: str, size: int):
    """The meta-iteration or the 10-step adaptation as a callable, warmed up on the same shapes (more
    cheaply); call both within `path_context(path)`. The adaptation's returns its SR image."""
    if workload == "meta":
        warm, batch, weights = _meta_step(size, 1)
        warm(batch, weights, False)  # every convolution shape once
        step, batch, weights = _meta_step(size, 5)
        return lambda: step(batch, weights, False)
    from mzsr.adaptation.adapt import AdaptOptions, adapt
    from mzsr.files.checkpoints import load_model

    lr, deg = astronaut_lr(size)
    model = load_model(REPO / "models" / "direct_x2.safetensors", expected_scale=2)[0]
    adapt(model, lr, deg.kernel, 2, deg.subsampling, AdaptOptions(steps=(1,)), device="cpu")
    options = AdaptOptions(steps=(10,), grad_precision="bfloat16" if path == "new bf16" else "float32")
    return lambda: adapt(model, lr, deg.kernel, 2, deg.subsampling, options, device="cpu")[0].sr


def child(workload: str, path: str, size: int, iterations: int) -> dict:
    """One measurement in this process: warm-up (same shapes, cheaper), then the timed run."""
    start_rss = _rss_mib()
    result = {}
    with path_context(path):
        if workload in ("meta", "adapt"):
            run = warmed_run(workload, path, size)
        elif workload == "zssr":
            from mzsr.adaptation.zssr import zssr

            lr, deg = astronaut_lr(size)
            run = lambda: zssr(lr, deg.kernel, 2, deg.subsampling, {"iterations": iterations}, "cpu").sr  # noqa: E731
        else:
            from mzsr.estimation.estimate import estimate_kernel

            lr, _ = astronaut_lr(size)
            run = lambda: estimate_kernel(lr, 2, {"iterations": iterations}, "cpu").kernel  # noqa: E731
        wall, cpu = time.perf_counter(), time.process_time()
        out = run()
        result = {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    result["peak_rss_growth_mib"] = _peak_rss_mib() - start_rss
    if isinstance(out, np.ndarray) and out.dtype == np.uint8:  # an SR image: the parent compares them
        np.save(os.environ["MZSR_BENCH_OUT"], out)
    return result


def measure(workload, path, size, threads, iterations, out_file: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MZSR_BENCH_OUT": str(out_file)}
    cmd = [sys.executable, "-m", "benchmarks.speed.cpu", "--child", workload, path, str(size), str(iterations)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{workload} {path}: child failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def tolerances(paths) -> dict:
    """Meta-gradients (2 tasks x (4 + 4) x 32 px, 5 inner steps): new vs today in float64, and each
    path's float32/bfloat16 gradient against float64."""

    def gradient(path, dtype):
        step, batch, weights = _meta_step(32, 5, dtype, seed=1)
        batch = [b[:2, :4] for b in batch]
        with path_context(path):
            step.loss(batch, weights, False).backward()
        return torch.cat([p.grad.flatten() for p in step.theta]).double()

    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    exact = gradient("today", torch.float64)
    result = {"new vs today, float64": rel(gradient("new", torch.float64), exact)}
    for path in paths:
        result[f"{path} float32 vs float64" if path != "new bf16" else "new bf16 vs float64"] = rel(
            gradient(path, torch.float32), exact
        )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="meta-iteration patch sizes")
    ap.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=3, help="per (workload, threads); median reported")
    ap.add_argument("--zssr-iterations", type=int, default=200)
    ap.add_argument("--kernelgan-iterations", type=int, default=500)
    ap.add_argument("--adapt-size", type=int, default=256, help="LR side of the adaptation image")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 thread, 1 repeat: a smoke test")
    ap.add_argument("--json", type=Path, help="write all numbers here")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        workload, path, size, iterations = args.child
        print(json.dumps(child(workload, path, int(size), int(iterations))))
        return
    if args.quick:
        args.threads, args.sizes, args.repeats = [1], [16], 1
        args.adapt_size, args.zssr_iterations, args.kernelgan_iterations = 96, 5, 20
    from mzsr.network.conv import native_bfloat16

    paths = PATHS if native_bfloat16() else PATHS[:2]
    print(f"paths: {', '.join(paths)}" + ("" if native_bfloat16() else " (no AMX/AVX512-BF16: bfloat16 left out)"))
    checks = tolerances(paths)
    for name, value in checks.items():
        print(f"meta-gradient relative difference, {name}: {value:.2e}")
    cases = [("meta", s) for s in args.sizes if "meta" in args.only]
    cases += [(w, args.adapt_size) for w in ("adapt", "zssr", "kernelgan") if w in args.only]
    iterations = {"zssr": args.zssr_iterations, "kernelgan": args.kernelgan_iterations}
    rows, scratch = [], Path(os.environ.get("TMPDIR", "/tmp")) / f"mzsr-bench-{os.getpid()}"
    scratch.mkdir(exist_ok=True)
    for threads in args.threads:
        for workload, size in cases:
            # bfloat16 is an adaptation and meta-training option; ZSSR and KernelGAN have none
            case_paths = paths if workload in ("meta", "adapt") else PATHS[:2]
            runs = {p: [] for p in case_paths}
            for repeat in range(args.repeats):
                # the order turns each repeat: a run right after another is often faster
                for p in case_paths[repeat % len(case_paths) :] + case_paths[: repeat % len(case_paths)]:
                    out = scratch / f"{p.replace(' ', '_')}.npy"
                    runs[p].append(measure(workload, p, size, threads, iterations.get(workload, 0), out))
            row = {"workload": workload, "size": size, "threads": threads, "runs": runs}
            if workload == "adapt":
                today = np.load(scratch / "today.npy").astype(int)
                row["max_grey_difference"] = {
                    p: int(np.abs(np.load(scratch / f"{p.replace(' ', '_')}.npy").astype(int) - today).max())
                    for p in case_paths
                }
            rows.append(row)
            print_row(row)
            write_result(args.json, {"tolerances": checks, "rows": rows})
    print_table(rows)


def _median(runs, key="seconds"):
    return float(np.median([r[key] for r in runs]))


def _label(row) -> str:
    if row["workload"] == "meta":
        return f"meta-iteration {row['size']} px"
    names = {"adapt": "10-step adaptation", "zssr": "ZSSR", "kernelgan": "KernelGAN"}
    return f"{names[row['workload']]} {row['size']}x{row['size']}"


def print_row(row) -> None:
    parts = [p + " " + ", ".join(f"{r['seconds']:.2f}" for r in runs) + " s" for p, runs in row["runs"].items()]
    print(f"{_label(row)}, {row['threads']} thread(s): " + "; ".join(parts), flush=True)


def print_table(rows) -> None:
    print(
        "\n| work | threads | today s | new s | today / new | new bf16 s | today / bf16 | peak RSS MiB today / new / bf16"
        " | max grey diff new / bf16 |\n|---|---|---|---|---|---|---|---|---|"
    )
    for row in rows:
        runs = row["runs"]
        today, new = _median(runs["today"]), _median(runs["new"])
        bf = _median(runs["new bf16"]) if "new bf16" in runs else None
        mem = " / ".join(f"{_median(r, 'peak_rss_growth_mib'):.0f}" for r in runs.values())
        grey = row.get("max_grey_difference", {})
        grey_text = " / ".join(str(grey[p]) for p in ("new", "new bf16") if p in grey) or "-"
        bf_text = f"{bf:.2f} | {today / bf:.2f}x" if bf else "- | -"
        print(
            f"| {_label(row)} | {row['threads']} | {today:.2f} | {new:.2f} | {today / new:.2f}x | {bf_text} | {mem}"
            f" | {grey_text} |"
        )


if __name__ == "__main__":
    main()
