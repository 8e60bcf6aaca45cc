"""Peak extra memory of `mzsr upscale` on a 2560x1920 photo (Wood.jpg) on the CPU.

Runs the command in a child process and reports its peak resident memory minus the memory of the
same child after imports (so the figure is what adaptation and inference add), with the output
size and wall time. Target: under 4 GB extra.

    python -m benchmarks.speed.large_image [--steps 1] [--photo ../shared/data/photos/Wood.jpg]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import SHARED

CHILD = """
import resource, sys, time
import torch
from mzsr.files.checkpoints import save_weights
from mzsr.cli import main
from mzsr.network.model import MZSRNet
torch.manual_seed(0)
save_weights(sys.argv[1], MZSRNet().state_dict(), {"scale": 2, "degradation": "direct", "step": 0})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
rc = main(["upscale", sys.argv[2], "--out", sys.argv[3], "--weights", sys.argv[1], "--kernel", "g2.0",
           "--steps", sys.argv[4], "--device", "cpu"])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"RESULT rc={rc} base_mib={base / 1024:.0f} peak_mib={peak / 1024:.0f} seconds={time.perf_counter() - start:.1f}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, default=SHARED / "photos" / "Wood.jpg")
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, f"{tmp}/w.safetensors", str(args.photo), f"{tmp}/sr", str(args.steps)],
            capture_output=True,
            text=True,
            env={"TQDM_DISABLE": "1", **__import__("os").environ},
        )
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")), None)
        if line is None:
            sys.exit(f"child failed:\n{out.stderr[-2000:]}")
        fields = dict(kv.split("=") for kv in line.split()[1:])
        from PIL import Image

        size = Image.open(next(Path(tmp, "sr").glob("*.png"))).size
    extra = int(fields["peak_mib"]) - int(fields["base_mib"])
    print(
        f"{args.photo.name} -> {size[0]}x{size[1]}, MZSR({args.steps}) on the CPU: {fields['seconds']} s, "
        f"peak extra memory {extra} MiB (peak RSS {fields['peak_mib']} MiB; target < 4096 MiB extra)"
    )


if __name__ == "__main__":
    main()
