"""Wall time of `mzsr upscale` on a 256x256 LR image: --steps 10 against --steps 0, same process.

python -m benchmarks.speed.upscale [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data

from mzsr.cli import main as mzsr
from mzsr.files.checkpoints import save_weights
from mzsr.files.images import write_png
from mzsr.network.model import MZSRNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_png(tmp / "lr" / "astronaut.png", data.astronaut()[::2, ::2])  # 256x256 LR
        save_weights(tmp / "w.safetensors", MZSRNet().state_dict(), {"scale": 2, "degradation": "direct", "step": 0})
        times: dict[int, list[float]] = {0: [], 10: []}
        for _ in range(args.repeats):
            for steps in times:
                start = time.perf_counter()
                mzsr(
                    [
                        "upscale",
                        str(tmp / "lr"),
                        "--out",
                        str(tmp / f"sr{steps}"),
                        "--weights",
                        str(tmp / "w.safetensors"),
                        "--kernel",
                        "g2.0",
                        "--steps",
                        str(steps),
                        "--device",
                        "cpu",
                    ]
                )
                times[steps].append(time.perf_counter() - start)
    t0, t10 = np.median(times[0]), np.median(times[10])
    print(f"256x256 LR -> 512x512, CPU threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"| command | seconds |\n|---|---|\n| --steps 0 | {t0:.2f} |\n| --steps 10 | {t10:.2f} |")
    print(f"ratio steps10 / steps0: {t10 / t0:.1f}")


if __name__ == "__main__":
    main()
