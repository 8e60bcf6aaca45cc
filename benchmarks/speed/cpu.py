"""This checkout's CPU path against the code of another revision (by default the version before the
CPU speed work), in one run: seconds and peak memory, or (--profile) where the time goes.

Paths, each measurement in a fresh child process, alternating within every repeat in an order that
turns from repeat to repeat (a run right after another is often faster here):

- today: float32 with mzsr as it is at --baseline (its `mzsr/` unpacked from git into a scratch folder);
- today, bfloat16 gradients: the same with grad_precision bfloat16;
- float32: this checkout's mzsr, float32 (the default);
- fast: this checkout's mzsr with grad_precision bfloat16 (adaptation: the hidden layers in bfloat16;
  meta-iteration: the gradients' convolutions).

The bfloat16 paths run only on CPUs with AMX or AVX512-BF16. Each child picks the CPU with
mzsr.device.pick_device, as the trainers and the command do.

Workloads: a second-order meta-iteration (5 tasks x (8 + 8) patches, 5 inner steps, TF-1's Adam) at
each --sizes, and a 10-step adaptation of astronaut (256x256 LR, g2.0, models/direct_x2.safetensors;
son, 10 steps, inference). First the tolerances: float64 meta-gradients (2 tasks x (4 + 4) x 32 px)
of this checkout against --baseline's, and each path's float32/bfloat16 one against float64; then
the adapted outputs against today's in grey levels.

--profile runs each once under torch.profiler with oneDNN's verbose log and splits the wall time into
convolution forward, input gradient, weight gradient, layout reorders (oneDNN's own timing of each
primitive), the rest of the convolution operators, other PyTorch ops, and Python and autograd; for the
meta-iteration also the second-order pass (the backward of the convolutions' backward), a part of those.

    python -m benchmarks.speed.cpu --json out.json                 # 1 and 2 threads, 32 and 64 px, 3 repeats
    python -m benchmarks.speed.cpu --profile --threads 1 --sizes 32 --json profile.json
    python -m benchmarks.speed.cpu --quick                         # smoke test
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import REPO, peak_memory, write_result
from mzsr.network.model import MZSRNet

# The version before the CPU speed work: "today" in docs/results.md ("Speed on a CPU").
BASELINE = "432f4c1"
PATHS = {
    "today": "today (float32)",
    "today_bf16": "today, bfloat16 gradients",
    "float32": "float32",
    "fast": "fast (grad_precision bfloat16)",
}
BFLOAT16_PATHS = ("today_bf16", "fast")
PRIMITIVES = {
    "forward_training": "conv forward",
    "forward_inference": "conv forward",
    "backward_data": "conv input gradient",
    "backward_weights": "conv weight gradient",
}
SECOND_ORDER = ("ConvolutionBackwardBackward0", "ConvGradBackward")


def meta_step(path: str, size: int, inner_steps: int, dtype=torch.float32, tasks=5, shots=8, seed=0):
    """One second-order meta-iteration as a callable on a seeded theta and batch; and theta."""
    from mzsr.network.model import init_release_
    from mzsr.training.meta_step import MetaStep
    from mzsr.training.optim import make_optimizer

    torch.manual_seed(seed)
    theta = list(init_release_(MZSRNet()).to(dtype).parameters())
    opt = make_optimizer("adam_tf1", theta, 1e-4)
    batch = [torch.rand(tasks, shots, 3, size, size).to(dtype) for _ in range(4)]
    weights = [1.0 / inner_steps] * inner_steps
    grad_dtype = torch.bfloat16 if path in BFLOAT16_PATHS else None
    ms = MetaStep(theta, opt, inner_steps, 0.01, "cpu", grad_dtype=grad_dtype)
    return (lambda: ms(batch, weights, False)), theta


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
    up on the same shapes: the timed meta-iteration is the second of a run, as all but the first of a
    training run are (the first maps its activations' memory); the adaptation after a 1-step one."""
    if workload == "meta":
        step = meta_step(path, size, 5)[0]
        step()
        return step
    from mzsr.adaptation.adapt import AdaptOptions, adapt
    from mzsr.files.checkpoints import load_model

    lr, deg = astronaut_lr(size)
    model = load_model(REPO / "models" / "direct_x2.safetensors", expected_scale=2)[0]
    precision = "bfloat16" if path in BFLOAT16_PATHS else "float32"
    adapt(model, lr, deg.kernel, 2, deg.subsampling, AdaptOptions(steps=(1,), grad_precision=precision), device="cpu")
    options = AdaptOptions(steps=(10,), grad_precision=precision)
    return lambda: adapt(model, lr, deg.kernel, 2, deg.subsampling, options, device="cpu")[0].sr


def adaptation_gflop(lr_side: int, steps: int = 10, scale: int = 2) -> float:
    """The convolutions' work in a `steps`-step adaptation of a square LR image (2 FLOPs per multiply-add):
    each step's forward, input gradients (all layers but the first) and weight gradients at the LR
    size, then the inference at the HR size."""
    from mzsr.network.model import CHANNELS, NUM_LAYERS, WIDTH

    widths = [CHANNELS] + [WIDTH] * (NUM_LAYERS - 1) + [CHANNELS]
    per_pixel = sum(2 * 9 * a * b for a, b in zip(widths[:-1], widths[1:]))
    first_layer = 2 * 9 * widths[0] * widths[1]
    return (steps * (3 * per_pixel - first_layer) * lr_side**2 + per_pixel * (scale * lr_side) ** 2) / 1e9


def child(workload: str, path: str, size: int, profile: bool, out_file: str) -> dict:
    """One measurement in this process: a warm-up, then the timed (or profiled) run; or (workload
    "gradient") the tolerances' meta-gradient in `size` bits, saved to `out_file`."""
    import mzsr
    from mzsr.device import pick_device

    expected = Path(os.environ.get("MZSR_BENCHMARK_PACKAGE", REPO)).resolve()
    if not Path(mzsr.__file__).resolve().is_relative_to(expected):
        raise SystemExit(f"{path}: imported mzsr from {mzsr.__file__}, not from {expected}")
    pick_device("cpu")  # as the trainers and the command do
    if workload == "gradient":
        step, theta = meta_step(path, 32, 5, {64: torch.float64, 32: torch.float32}[size], tasks=2, shots=4, seed=1)
        step()
        np.save(out_file, torch.cat([p.grad.flatten() for p in theta]).double().numpy())
        return {}
    run = warmed_run(workload, path, size)
    if not profile:
        with peak_memory() as mem:
            wall, cpu = time.perf_counter(), time.process_time()
            out = run()
            result = {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
        if isinstance(out, np.ndarray):  # an SR image: the parent compares them
            np.save(out_file, out)
            result["gflop_per_s"] = adaptation_gflop(size) / result["seconds"]
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


def measure(workload, path, size, threads, profile: bool, out_file: Path, baseline: Path) -> dict:
    """One child process: this checkout's mzsr, or (the today paths) the one unpacked in `baseline`."""
    package = baseline if path.startswith("today") else REPO
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "ONEDNN_VERBOSE": "1" if profile else "0",
        "PYTHONPATH": str(REPO),  # the benchmarks; mzsr comes from the working folder, first on the path
        "MZSR_BENCHMARK_PACKAGE": str(package),
    }
    cmd = [sys.executable, "-m", "benchmarks.speed.cpu", "--child", workload, path, str(size), str(int(profile))]
    done = subprocess.run([*cmd, str(out_file)], cwd=package, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{workload} {path}: child failed\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if profile:  # oneDNN's time sits inside the self time of aten's convolution ops; the rest is "other"
        kinds = result["kinds"] = dict(onednn_seconds(done.stdout))
        kinds["conv ops outside oneDNN's kernels"] = max(result["conv_self"] - sum(kinds.values()), 0.0)
        kinds["other PyTorch ops"] = result["aten_self"] - result["conv_self"]
        kinds["Python and autograd"] = max(result["wall"] - result["aten_self"], 0.0)
    return result


def unpack_baseline(revision: str, scratch: Path) -> Path:
    """The `mzsr/` package of `revision` (git archive) in a folder of its own."""
    folder = scratch / "baseline"
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision, "mzsr"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"--baseline {revision}: {archive.stderr.decode().strip()} (it needs a git checkout)")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def tolerances(paths, baseline: Path, scratch: Path) -> dict:
    """Meta-gradients (2 tasks x (4 + 4) x 32 px, 5 inner steps): this checkout's float64 one against
    the baseline's, and each path's float32 (or bfloat16) one against this checkout's float64 one."""

    def gradient(path, bits):
        out = scratch / f"gradient_{path}_{bits}.npy"
        measure("gradient", path, bits, 1, False, out, baseline)
        return torch.from_numpy(np.load(out))

    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    exact = gradient("float32", 64)
    result = {"float64, this checkout vs the baseline": rel(gradient("today", 64), exact)}
    for path in paths:
        result[f"{PATHS[path]} vs float64"] = rel(gradient(path, 32), exact)
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
    ap.add_argument("--baseline", default=BASELINE, help=f"the revision whose mzsr is today's (default {BASELINE})")
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

    paths = [p for p in PATHS if native_bfloat16() or p not in BFLOAT16_PATHS]
    print(f"paths: {', '.join(PATHS[p] for p in paths)}" + ("" if "fast" in paths else " (no native bfloat16)"))
    cases = [("meta", s) for s in args.sizes if "meta" in args.only]
    cases += [("adapt", args.adapt_size)] if "adapt" in args.only else []
    repeats = 1 if args.profile else args.repeats
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        baseline = unpack_baseline(args.baseline, Path(scratch))
        checks = {} if args.profile else tolerances(paths, baseline, Path(scratch))
        for name, value in checks.items():
            print(f"meta-gradient relative difference, {name}: {value:.2e}", flush=True)
        for threads in args.threads:
            for workload, size in cases:
                runs = {p: [] for p in paths}
                for repeat in range(repeats):
                    for p in paths[repeat % len(paths) :] + paths[: repeat % len(paths)]:
                        out_file = Path(scratch, f"{p}.npy")
                        runs[p].append(measure(workload, p, size, threads, args.profile, out_file, baseline))
                row = {"workload": workload, "size": size, "threads": threads, "runs": runs}
                if workload == "adapt" and not args.profile:
                    today = np.load(Path(scratch, "today.npy")).astype(int)
                    row["max_grey_difference"] = {
                        p: int(np.abs(np.load(Path(scratch, f"{p}.npy")).astype(int) - today).max()) for p in paths
                    }
                rows.append(row)
                print_row(row, args.profile)
                write_result(args.json, {"baseline": args.baseline, "tolerances": checks, "rows": rows})


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
        ratio = np.median([r["seconds"] for r in row["runs"]["today"]]) / med
        seconds = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        rate = f", {np.median([r['gflop_per_s'] for r in runs]):.0f} GFLOP/s" if "gflop_per_s" in runs[0] else ""
        print(
            f"{label}, {PATHS[p]}: median {med:.2f} s ({seconds}){rate}, "
            f"today / this {ratio:.2f}x, peak RSS growth {mem:.0f} MiB"
            + ("" if grey is None else f", max grey difference from today's {grey}"),
            flush=True,
        )


if __name__ == "__main__":
    main()
