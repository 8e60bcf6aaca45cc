"""The CPU path of mzsr/network/conv.py against plain PyTorch, in one run: seconds and peak memory, or
(--profile) where the time goes.

Three paths, each measurement in a fresh child process, alternating within every repeat in an order
that turns from repeat to repeat (a run right after another is often faster here):

- reference (plain PyTorch): NCHW activations and PyTorch's own convolution backward (`plain_forward`
  and `PlainNet` below: the code before the CPU path);
- CPU path: mzsr as it runs on a CPU (channels-last, the convolutions' backward written out), float32;
- CPU path, bfloat16 gradients: the same with grad_precision bfloat16 (only on CPUs with AMX or
  AVX512-BF16).

Workloads: a second-order meta-iteration (5 tasks x (8 + 8) patches, 5 inner steps, TF-1's Adam) at
each --sizes, and a 10-step adaptation of astronaut (256x256 LR, g2.0, models/direct_x2.safetensors;
son, 10 steps, inference). First the tolerances: meta-gradients (2 tasks x (4 + 4) x 32 px) of the CPU
path against the reference in float64, and each path's float32/bfloat16 one against float64; then the
adapted outputs against the reference's in grey levels.

--profile runs each once under torch.profiler with oneDNN's verbose log and splits the wall time into
convolution forward, input gradient, weight gradient, layout reorders (oneDNN's own timing of each
primitive), the rest of the convolution operators, other PyTorch ops, and Python and autograd; for the
meta-iteration also the second-order pass (the backward of the convolutions' backward), a part of those.

    python -m benchmarks.speed.cpu --threads 1 --sizes 32 --repeats 2 --json out.json   # ~12 min at load 9
    python -m benchmarks.speed.cpu --profile --threads 1 --sizes 32 --json profile.json
    python -m benchmarks.speed.cpu --quick                                  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import REPO, peak_memory, write_result
from mzsr.network.model import MZSRNet

PATHS = {"reference": "reference (plain PyTorch)", "cpu": "CPU path", "bf16": "CPU path, bfloat16 gradients"}
PRIMITIVES = {
    "forward_training": "conv forward",
    "forward_inference": "conv forward",
    "backward_data": "conv input gradient",
    "backward_weights": "conv weight gradient",
}
SECOND_ORDER = ("ConvolutionBackwardBackward0", "ConvGradBackward")


def plain_forward(params, x, grad_dtype=None):
    """meta_loss's per-task forward in plain PyTorch: one task after another, NCHW, F.conv2d."""
    outs, layers = [], len(params) // 2
    for t in range(x.shape[0]):
        h = x[t]
        for i in range(layers):
            h = F.conv2d(h, params[2 * i][t], params[2 * i + 1][t], padding=1)
            h = torch.relu(h) if i < layers - 1 else h
        outs.append(x[t] + h)
    return torch.stack(outs)


class PlainNet(MZSRNet):
    """MZSRNet in plain PyTorch (NCHW, F.conv2d and its own backward): the adaptation's reference."""

    def forward(self, x, grad_dtype=None):
        h = x
        for i, c in enumerate(self.convs):
            h = F.conv2d(h, c.weight, c.bias, padding=1)
            h = torch.relu(h) if i < len(self.convs) - 1 else h
        return x + h


def meta_step(path: str, size: int, inner_steps: int, dtype=torch.float32, tasks=5, shots=8, seed=0):
    """One second-order meta-iteration as a callable on a seeded theta and batch; and theta."""
    from mzsr.network.model import init_release_
    from mzsr.training.maml import meta_loss
    from mzsr.training.meta_step import MetaStep
    from mzsr.training.optim import make_optimizer

    torch.manual_seed(seed)
    theta = list(init_release_(MZSRNet()).to(dtype).parameters())
    opt = make_optimizer("adam_tf1", theta, 1e-4)
    batch = [torch.rand(tasks, shots, 3, size, size).to(dtype) for _ in range(4)]
    weights = [1.0 / inner_steps] * inner_steps
    if path != "reference":
        ms = MetaStep(theta, opt, inner_steps, 0.01, "cpu", grad_dtype=torch.bfloat16 if path == "bf16" else None)
        return (lambda: ms(batch, weights, False)), theta

    def step():
        loss = meta_loss(theta, batch, inner_steps, 0.01, weights, False, forward=plain_forward)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, theta


def astronaut_lr(side: int):
    """Astronaut under g2.0 at x2, as the paper makes LR inputs, `side` x `side`."""
    from skimage import data

    from mzsr.degradation.degrade import degrade, to_uint8
    from mzsr.degradation.kernels import named_degradation

    deg = named_degradation("g2.0")
    hr = data.astronaut()[: 2 * side, : 2 * side]
    return to_uint8(degrade(hr / 255.0, deg.kernel, 2, deg.subsampling)) / 255.0, deg


def warmed_run(workload: str, path: str, size: int):
    """The meta-iteration or the 10-step adaptation (which returns its SR image) as a callable, warmed
    up on the same shapes, more cheaply."""
    if workload == "meta":
        meta_step(path, size, 1)[0]()  # every convolution shape once
        return meta_step(path, size, 5)[0]
    from mzsr.adaptation.adapt import AdaptOptions, adapt
    from mzsr.files.checkpoints import load_model

    lr, deg = astronaut_lr(size)
    model = load_model(REPO / "models" / "direct_x2.safetensors", expected_scale=2)[0]
    if path == "reference":
        plain = PlainNet()
        plain.load_state_dict(model.state_dict())
        model = plain
    precision = "bfloat16" if path == "bf16" else "float32"
    adapt(model, lr, deg.kernel, 2, deg.subsampling, AdaptOptions(steps=(1,), grad_precision=precision), device="cpu")
    options = AdaptOptions(steps=(10,), grad_precision=precision)
    return lambda: adapt(model, lr, deg.kernel, 2, deg.subsampling, options, device="cpu")[0].sr


def child(workload: str, path: str, size: int, profile: bool, out_file: str) -> dict:
    """One measurement in this process: a warm-up, then the timed (or profiled) run."""
    run = warmed_run(workload, path, size)
    if not profile:
        with peak_memory() as mem:
            wall, cpu = time.perf_counter(), time.process_time()
            out = run()
            result = {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
        if isinstance(out, np.ndarray):  # an SR image: the parent compares them
            np.save(out_file, out)
        return result | {"peak_rss_growth_mib": mem["bytes"] / 2**20, "loadavg_1min": os.getloadavg()[0]}
    from torch.profiler import ProfilerActivity, profile

    print("--- timed run ---", flush=True)  # oneDNN's lines after this belong to the profiled run
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
    print("--- end ---", flush=True)
    ops = prof.key_averages()
    conv = ("aten::mkldnn_convolution", "aten::convolution_backward")
    return {
        "wall": wall,
        "aten_self": sum(e.self_cpu_time_total for e in ops if e.key.startswith("aten::")) / 1e6,
        "conv_self": sum(e.self_cpu_time_total for e in ops if e.key in conv) / 1e6,
        "second_order": sum(e.cpu_time_total for e in ops if e.key in SECOND_ORDER) / 1e6,
    }


def onednn_seconds(stdout: str) -> dict[str, float]:
    """Seconds per kind from oneDNN's verbose lines of the profiled run."""
    seconds: dict[str, float] = defaultdict(float)
    timed = False
    for line in stdout.splitlines():
        if line.startswith("--- "):
            timed = line == "--- timed run ---"
            continue
        fields = line.split(",")
        if not timed or not line.startswith("onednn_verbose") or "exec" not in fields[:4]:
            continue
        kind, prop = fields[fields.index("exec") + 2], fields[fields.index("exec") + 4]
        seconds["layout reorders" if kind == "reorder" else PRIMITIVES.get(prop, f"other oneDNN ({kind})")] += (
            float(fields[-1]) / 1000
        )
    return seconds


def measure(workload, path, size, threads, profile: bool, out_file: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ONEDNN_VERBOSE": "1" if profile else "0"}
    cmd = [sys.executable, "-m", "benchmarks.speed.cpu", "--child", workload, path, str(size), str(int(profile))]
    done = subprocess.run([*cmd, str(out_file)], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{workload} {path}: child failed\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if profile:  # oneDNN's time sits inside the self time of aten's convolution ops; the rest is "other"
        kinds = result["kinds"] = dict(onednn_seconds(done.stdout))
        kinds["conv ops outside oneDNN's kernels"] = max(result["conv_self"] - sum(kinds.values()), 0.0)
        kinds["other PyTorch ops"] = result["aten_self"] - result["conv_self"]
        kinds["Python and autograd"] = max(result["wall"] - result["aten_self"], 0.0)
    return result


def tolerances(paths) -> dict:
    """Meta-gradients (2 tasks x (4 + 4) x 32 px, 5 inner steps): the CPU path against the reference in
    float64, and each path's float32 (or bfloat16) gradient against the reference's float64 one."""

    def gradient(path, dtype):
        step, theta = meta_step(path, 32, 5, dtype, tasks=2, shots=4, seed=1)
        step()
        return torch.cat([p.grad.flatten() for p in theta]).double()

    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    exact = gradient("reference", torch.float64)
    result = {"CPU path vs reference, float64": rel(gradient("cpu", torch.float64), exact)}
    for path in paths:
        result[f"{PATHS[path]}{'' if path == 'bf16' else ', float32'} vs float64"] = rel(
            gradient(path, torch.float32), exact
        )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="meta-iteration patch sizes")
    ap.add_argument("--only", nargs="+", choices=("meta", "adapt"), default=["meta", "adapt"])
    ap.add_argument("--repeats", type=int, default=3, help="per (workload, threads); median reported")
    ap.add_argument("--adapt-size", type=int, default=256, help="LR side of the adaptation image")
    ap.add_argument("--profile", action="store_true", help="where the time goes, one profiled run each")
    ap.add_argument("--quick", action="store_true", help="16 px, 96x96 adaptation, 1 thread, 1 repeat")
    ap.add_argument("--json", type=Path, help="write all numbers here")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        workload, path, size, profile, out_file = args.child
        print(json.dumps(child(workload, path, int(size), profile == "1", out_file)))
        return
    if args.quick:
        args.threads, args.sizes, args.repeats, args.adapt_size = [1], [16], 1, 96
    from mzsr.network.conv import native_bfloat16

    paths = list(PATHS) if native_bfloat16() else ["reference", "cpu"]
    print(f"paths: {', '.join(PATHS[p] for p in paths)}" + ("" if "bf16" in paths else " (no native bfloat16)"))
    checks = {} if args.profile else tolerances(paths)
    for name, value in checks.items():
        print(f"meta-gradient relative difference, {name}: {value:.2e}")
    cases = [("meta", s) for s in args.sizes if "meta" in args.only]
    cases += [("adapt", args.adapt_size)] if "adapt" in args.only else []
    repeats = 1 if args.profile else args.repeats
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for threads in args.threads:
            for workload, size in cases:
                runs = {p: [] for p in paths}
                for repeat in range(repeats):
                    for p in paths[repeat % len(paths) :] + paths[: repeat % len(paths)]:
                        runs[p].append(measure(workload, p, size, threads, args.profile, Path(scratch, f"{p}.npy")))
                row = {"workload": workload, "size": size, "threads": threads, "runs": runs}
                if workload == "adapt" and not args.profile:
                    ref = np.load(Path(scratch, "reference.npy")).astype(int)
                    row["max_grey_difference"] = {
                        p: int(np.abs(np.load(Path(scratch, f"{p}.npy")).astype(int) - ref).max()) for p in paths
                    }
                rows.append(row)
                print_row(row, args.profile)
                write_result(args.json, {"tolerances": checks, "rows": rows})


def print_row(row, profile: bool) -> None:
    label = f"{'meta-iteration' if row['workload'] == 'meta' else '10-step adaptation'} {row['size']} px"
    label += f", {row['threads']} thread(s)"
    for p, runs in row["runs"].items():
        if profile:
            r = runs[0]
            parts = [f"{k} {v:.2f} s ({100 * v / r['wall']:.0f}%)" for k, v in r["kinds"].items()]
            second = f"; second-order pass {r['second_order']:.2f} s" if row["workload"] == "meta" else ""
            print(f"{label}, {PATHS[p]}: wall {r['wall']:.2f} s = " + "; ".join(parts) + second, flush=True)
            continue
        med = np.median([r["seconds"] for r in runs])
        mem = np.median([r["peak_rss_growth_mib"] for r in runs])
        grey = row.get("max_grey_difference", {}).get(p)
        ratio = np.median([r["seconds"] for r in row["runs"]["reference"]]) / med
        seconds = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(
            f"{label}, {PATHS[p]}: median {med:.2f} s ({seconds}), "
            f"reference / this {ratio:.2f}x, peak RSS growth {mem:.0f} MiB"
            + ("" if grey is None else f", max grey difference from the reference {grey}"),
            flush=True,
        )


if __name__ == "__main__":
    main()
