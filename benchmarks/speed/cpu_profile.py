"""Where a CPU's time goes: a meta-iteration and a 10-step adaptation, by kind of work, today's path
against the new one (benchmarks/speed/cpu.py has the timings).

One child process per (workload, path, threads) warms up on the same shapes, then runs the work once under
`torch.profiler` with oneDNN's verbose log on. The kinds:

- conv forward / input gradient / weight gradient / layout reorders: oneDNN's own timing of each
  primitive it ran (forward_training, backward_data, backward_weights, reorder);
- conv ops outside oneDNN's kernels: the rest of the convolution operators' self time (PyTorch's
  own convolution code, e.g. the large-filter convolution of its double backward, and set-up);
- other PyTorch ops: the self time of every other operator (ReLU and its backward, adds, copies,
  the loss, SGD or Adam, the son's blur and the bicubic resize);
- bicubic resize (adaptation): the son and its bicubic upscale, timed alone in the same process;
- Python and autograd: the wall time that no operator accounts for;
- second-order pass (meta): the time inside the backward of the convolutions' backward (PyTorch's
  `ConvolutionBackwardBackward0`, the new path's `ConvGradBackward`), a part of the rows above.

    python -m benchmarks.speed.cpu_profile                    # both sizes, 1 and 2 threads: ~15 min here
    python -m benchmarks.speed.cpu_profile --threads 1 --sizes 32 --only adapt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from benchmarks.harness import REPO, write_result
from benchmarks.speed.cpu import PATHS, astronaut_lr, path_context, warmed_run

PRIMITIVES = {
    "forward_training": "conv forward",
    "forward_inference": "conv forward",
    "backward_data": "conv input gradient",
    "backward_weights": "conv weight gradient",
}
KINDS = (
    "conv forward",
    "conv input gradient",
    "conv weight gradient",
    "layout reorders",
    "conv ops outside oneDNN's kernels",
    "other PyTorch ops",
    "Python and autograd",
)
SECOND_ORDER = ("ConvolutionBackwardBackward0", "ConvGradBackward")


def child(workload: str, path: str, size: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from mzsr.adaptation.adapt import make_son
    from mzsr.degradation.resize import imresize_torch

    with path_context(path):
        run = warmed_run(workload, path, size)
        print("--- timed run ---", flush=True)  # oneDNN's lines after this belong to the profiled run
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            run()
            wall = time.perf_counter() - start
        print("--- end ---", flush=True)
    ops = prof.key_averages()
    aten_self = sum(e.self_cpu_time_total for e in ops if e.key.startswith("aten::")) / 1e6
    conv_self = sum(
        e.self_cpu_time_total for e in ops if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward")
    )
    second = sum(e.cpu_time_total for e in ops if e.key in SECOND_ORDER) / 1e6
    result = {"wall": wall, "aten_self": aten_self, "conv_self": conv_self / 1e6, "second_order": second}
    if workload == "adapt":
        lr, deg = astronaut_lr(size)
        father = torch.from_numpy(lr.transpose(2, 0, 1)[None]).float()
        k = torch.as_tensor(deg.kernel, dtype=torch.float32)
        start = time.perf_counter()
        son = make_son(father, k, 2, deg.subsampling)
        imresize_torch(son, 2.0, output_shape=father.shape[-2:])
        result["resize"] = time.perf_counter() - start
    return result


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
        kind = fields[fields.index("exec") + 2]  # primitive kind
        prop = fields[fields.index("exec") + 4]  # propagation
        name = "layout reorders" if kind == "reorder" else PRIMITIVES.get(prop, f"other oneDNN ({kind})")
        seconds[name] += float(fields[-1]) / 1000
    return seconds


def profile_case(workload, path, size, threads) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ONEDNN_VERBOSE": "1"}
    cmd = [sys.executable, "-m", "benchmarks.speed.cpu_profile", "--child", workload, path, str(size)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{workload} {path}: child failed\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    kinds = dict(onednn_seconds(done.stdout))
    # oneDNN's time sits inside the self time of aten's convolution ops; the rest of the ops is "other"
    kinds["conv ops outside oneDNN's kernels"] = max(result["conv_self"] - sum(kinds.values()), 0.0)
    kinds["other PyTorch ops"] = result["aten_self"] - result["conv_self"]
    kinds["Python and autograd"] = max(result["wall"] - result["aten_self"], 0.0)
    return {**result, "kinds": kinds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="meta-iteration patch sizes")
    ap.add_argument("--only", nargs="+", choices=("meta", "adapt"), default=["meta", "adapt"])
    ap.add_argument("--adapt-size", type=int, default=256)
    ap.add_argument("--json", type=Path, help="write all numbers here")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        workload, path, size = args.child
        print(json.dumps(child(workload, path, int(size))))
        return
    from mzsr.network.conv import native_bfloat16

    paths = PATHS if native_bfloat16() else PATHS[:2]
    cases = [("meta", s) for s in args.sizes if "meta" in args.only]
    cases += [("adapt", args.adapt_size)] if "adapt" in args.only else []
    rows = []
    for threads in args.threads:
        for workload, size in cases:
            for path in paths:
                row = {"workload": workload, "size": size, "threads": threads, "path": path}
                row.update(profile_case(workload, path, size, threads))
                rows.append(row)
                print_row(row)
                write_result(args.json, rows)


def print_row(row) -> None:
    kinds = row["kinds"]
    label = f"{row['workload']} {row['size']}, {row['threads']} thread(s), {row['path']}"
    parts = [f"{k} {kinds.get(k, 0.0):.2f} s ({100 * kinds.get(k, 0.0) / row['wall']:.0f}%)" for k in KINDS]
    extra = [f"{k} {v:.2f} s" for k, v in kinds.items() if k not in KINDS]
    if row["workload"] == "meta":
        extra.append(f"second-order pass {row['second_order']:.2f} s ({100 * row['second_order'] / row['wall']:.0f}%)")
    else:
        extra.append(f"son + bicubic resize {row['resize']:.3f} s")
    print(f"{label}: wall {row['wall']:.2f} s = " + "; ".join(parts + extra), flush=True)


if __name__ == "__main__":
    main()
