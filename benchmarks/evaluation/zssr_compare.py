"""ZSSR as first written here (variant simple) against ZSSR as the original runs it with a given
kernel (variant original) and MZSR(10) with the released Direct x2 model, on three Set14 images
under g2.0 (x2, direct).

Y-PSNR (2-px shave) against the mod-cropped HR, the iterations each ZSSR actually ran (its lr
policy may stop before the cap) and wall seconds. Each trained ZSSR net is also scored with the
other back-projection choice (0 or 2 rounds), to separate the training from the post-processing.
The --json file is rewritten after every image, so an interrupted run keeps what it finished.

    python -m benchmarks.evaluation.zssr_compare --iterations 500 --threads 1 \
        --json benchmarks/results/zssr_compare_cpu.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import REPO, paper_lr, set14, write_result
from mzsr.adaptation.adapt import AdaptOptions, adapt
from mzsr.adaptation.inference import to_tensor, to_uint8_image
from mzsr.adaptation.zssr import final_output, resolve_config, train_zssr
from mzsr.degradation.degrade import to_uint8
from mzsr.degradation.kernels import named_degradation
from mzsr.degradation.resize import imresize
from mzsr.evaluation.metrics import psnr
from mzsr.files.checkpoints import load_model

WEIGHTS = REPO / "models" / "direct_x2.safetensors"
METHODS = (
    "Bicubic",
    "MZSR(10)",
    "ZSSR simple",
    "ZSSR simple, back-projection 2",
    "ZSSR original",
    "ZSSR original, back-projection 0",
)


def run_image(name: str, model, kernel, iterations: int, seed: int):
    """Rows (method, PSNR, iterations, seconds) for one Set14 image."""
    ((_, hr),) = set14(stems=[name])
    lr = paper_lr(hr, kernel, "direct")
    rows = [("Bicubic", psnr(to_uint8(imresize(lr, 2)), hr, 2), 0, 0.0)]
    out = adapt(model, lr, kernel, 2, "direct", AdaptOptions(steps=(10,), schedule="direct_x2"), "cpu")[0]
    rows.append(("MZSR(10)", psnr(out.sr, hr, 2), out.steps, out.seconds))
    k = torch.as_tensor(kernel, dtype=torch.float32)
    lr_t = to_tensor(lr, "cpu")
    for variant in ("simple", "original"):
        cfg = resolve_config({"variant": variant, "iterations": iterations})
        torch.manual_seed(seed)  # as zssr() does: the same net as `zssr(lr, kernel, 2, "direct", cfg, "cpu", seed)`
        start = time.perf_counter()
        trained = train_zssr(lr_t, k, 2, "direct", cfg, np.random.default_rng(seed))
        seconds = time.perf_counter() - start
        # the variant's own output first, then the same net with the other back-projection choice
        for rounds in dict.fromkeys((cfg["back_projection"], 2 - cfg["back_projection"])):
            start = time.perf_counter()
            sr = to_uint8_image(final_output(trained.net, lr_t, k, 2, "direct", cfg["self_ensemble"], rounds))
            label = f"ZSSR {variant}" + ("" if rounds == cfg["back_projection"] else f", back-projection {rounds}")
            rows.append((label, psnr(sr, hr, 2), trained.iterations, seconds + time.perf_counter() - start))
    return hr.shape[:2], rows


def table(results: dict) -> str:
    lines = [
        "| image (HR size) | method | Y-PSNR (dB) | iterations run | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, (shape, rows) in results.items():
        for method, value, steps, seconds in rows:
            lines.append(f"| {name} ({shape[0]}x{shape[1]}) | {method} | {value:.2f} | {steps} | {seconds:.1f} |")
    for method in METHODS:
        picked = [row for _, rows in results.values() for row in rows if row[0] == method]
        if picked:
            lines.append(
                f"| mean of {len(picked)} | {method} | {np.mean([r[1] for r in picked]):.2f} | "
                f"{np.mean([r[2] for r in picked]):.0f} | {np.mean([r[3] for r in picked]):.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--iterations", type=int, default=3000, help="ZSSR iteration cap (the original's max_iters is 3000)"
    )
    ap.add_argument("--images", nargs="+", default=["face", "comic", "foreman"], help="Set14 image names")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="the result file (rewritten after every image)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernel = named_degradation("g2.0").kernel
    model, _ = load_model(WEIGHTS, expected_scale=2, device="cpu")
    results: dict = {}
    for name in args.images:
        results[name] = run_image(name, model, kernel, args.iterations, args.seed)
        print(table(results), flush=True)
        write_result(
            args.json,
            {
                "iteration_cap": args.iterations,
                "seed": args.seed,
                "weights": str(WEIGHTS.relative_to(REPO)),
                "images": {
                    n: {
                        "hr_size": list(shape),
                        "rows": [dict(zip(("method", "psnr", "iterations", "seconds"), r)) for r in rows],
                    }
                    for n, (shape, rows) in results.items()
                },
            },
        )


if __name__ == "__main__":
    main()
