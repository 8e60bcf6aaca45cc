"""What each `mzsr` subcommand does: read the inputs, call the package, write the outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mzsr import MZSRError
from mzsr.cli.parser import ESTIMATE, KERNELGAN_ITERATIONS, KERNELGAN_SCALES, KERNELGAN_SEED, NEEDS_DEGRADATION


def _out_path(out_dir: Path, src: Path) -> Path:
    return out_dir / f"{src.stem}.png"


def _kernel_paths(out_dir: Path, src: Path, scale: int) -> tuple[Path, Path]:
    """The kernel file and its picture for one image: KernelGAN's names, found by --degradation per-image."""
    name = f"{src.stem}_kernel_x{scale}"
    return out_dir / f"{name}.mat", out_dir / f"{name}.png"


def _checked_outputs(args, images: list[Path], outputs=None) -> list[Path]:
    """Before any work: --out is a writable folder, no two inputs write one output (a.png and a.jpg
    both make a.png: refused, as the pipeline refuses two test images with one stem), and no output
    would overwrite an input. The same file given twice is taken once. `outputs(image)`: the files
    one image writes (default: its SR PNG)."""
    from mzsr.files.atomic import check_output_folder

    outputs = outputs or (lambda path: [_out_path(args.out, path)])
    check_output_folder(args.out)
    inputs = {}
    for path in images:
        inputs.setdefault(path.resolve(), path)
    unique, by_output = [], {}
    for path in images:
        outs = outputs(path)
        if outs[0] in by_output:
            if by_output[outs[0]].resolve() == path.resolve():
                continue
            raise MZSRError(
                f"{by_output[outs[0]]} and {path} would both be written to {outs[0]}; rename one, or run them apart"
            )
        for out in outs:
            other = inputs.get(out.resolve()) if out.exists() else None
            if other is not None and other.resolve() == path.resolve():
                raise MZSRError(f"{path}: the output {out} would overwrite this input; give another --out")
            if other is not None:
                raise MZSRError(f"{path}: its output {out} would overwrite the input {other}; give another --out")
        by_output.update((out, path) for out in outs)
        unique.append(path)
    return unique


def cmd_degrade(args) -> int:
    from mzsr.degradation.degrade import write_lr_png
    from mzsr.degradation.kernels import random_kernel_seed
    from mzsr.evaluation.metrics import modcrop
    from mzsr.files.atomic import atomic_open
    from mzsr.files.images import list_images, read_image_uint8

    if args.degradation == ESTIMATE:
        raise MZSRError(
            "--degradation estimate is for LR images (upscale, estimate-kernel); degrade needs a known kernel"
        )
    jobs = _checked_inputs(args, _checked_outputs(args, list_images(args.inputs)), hr=True)
    for path, kernel, subsampling in tqdm(jobs, desc="degrade", unit="img", disable=None):
        hr = modcrop(read_image_uint8(path), args.scale)
        write_lr_png(hr / 255.0, kernel, args.scale, subsampling, _out_path(args.out, path))
        if random_kernel_seed(args.degradation) is not None:
            # rk: each image's own kernel beside its LR image, as the kernel that made it: key "kernel"
            # (MZSR's convention) or, made the KernelGAN way, key "Kernel" (as DIV2KRK ships them)
            import scipy.io

            kernel_path = args.out / "kernels" / f"{path.stem}_kernel_x{args.scale}.mat"
            kernel_path.parent.mkdir(exist_ok=True)
            with atomic_open(kernel_path, "wb") as f:
                scipy.io.savemat(f, {"Kernel" if args.kernel_convention == "kernelgan" else "kernel": kernel})
    return 0


def cmd_import_tf(args) -> int:
    from mzsr.files.atomic import check_output_file
    from mzsr.files.checkpoints import check_weights_suffix, import_tf_checkpoint, save_weights

    check_weights_suffix(args.out)  # the format the name asks for, or a refusal before any work
    check_output_file(args.out)
    state = import_tf_checkpoint(args.checkpoint)
    meta = {"scale": args.scale, "degradation": args.subsampling, "step": 0, "source": f"tf:{args.checkpoint}"}
    save_weights(args.out, state, meta)
    print(f"wrote {args.out} ({sum(v.numel() for v in state.values()):,} parameters)")
    return 0


def _degradation_for(args, image: Path):
    """(kernel, subsampling, label) for one image: a named/file degradation, or the image's own kernel."""
    from mzsr.degradation.kernels import check_convention
    from mzsr.degradation.resolve import kernel_file_for_image, load_kernel_file, resolve_degradation

    if args.degradation is None:
        return None, "bicubic", "bicubic"
    convention = args.kernel_convention
    if args.degradation in (ESTIMATE, "per-image"):
        check_convention(convention, args.subsampling or "direct", args.scale, "--kernel-convention")
    if args.degradation == ESTIMATE:  # estimated right before the image's SR (`_estimate_one`)
        return None, args.subsampling or "direct", "KernelGAN"
    if args.degradation == "per-image":
        path = kernel_file_for_image(image, args.scale)
        if path is None:
            raise MZSRError(
                f"{image}: no kernel file for this image ({image.stem}_kernel_x{args.scale}.mat or kernel.mat)"
            )
        return load_kernel_file(path, convention, args.scale), args.subsampling or "direct", str(path)
    deg = resolve_degradation(
        args.degradation, args.subsampling, image=image.stem, scale=args.scale, convention=convention
    )
    return deg.kernel, deg.subsampling, args.degradation


def _released_for(args, images: list[Path]) -> Path:
    """The released model that fits the kernel's subsampling and the scale (one for all inputs)."""
    from mzsr.files.released import released_weights

    kinds = {_degradation_for(args, image)[1] for image in images} if args.degradation is not None else {"bicubic"}
    if len(kinds) > 1:
        raise MZSRError(
            "the inputs' kernels use both direct and bicubic subsampling: give --weights, or run them apart"
        )
    path = released_weights(kinds.pop(), args.scale)
    print(f"mzsr: weights {path}", file=sys.stderr)
    return path


def _checked_inputs(args, paths: list[Path], hr: bool) -> list[tuple[Path, np.ndarray | None, str]]:
    """(image, kernel, subsampling) of every input, after reading each image and its kernel once:
    a bad file stops the command before anything is written, not after the good files before it."""
    from mzsr.degradation.kernels import validate_kernel
    from mzsr.evaluation.metrics import modcrop
    from mzsr.files.images import read_image

    jobs = []
    for path in paths:
        img = read_image(path)
        if hr:  # ground truth is mod-cropped to the scale (odd sizes lose their last row/column)
            img = modcrop(img, args.scale)
        kernel, subsampling, label = _degradation_for(args, path)
        if kernel is not None:
            validate_kernel(kernel, label, img.shape[:2], image=path)
        if args.degradation == ESTIMATE:
            from mzsr.estimation.estimate import check_estimable

            check_estimable(img.shape, bool(args.real), str(path), method=args.estimator or "learned")
        jobs.append((path, kernel, subsampling))
    return jobs


# ------------------------------------------------------------------------------ kernel estimation


def _estimate_settings(args, used: bool = True) -> tuple[dict, int]:
    """(cfg, seed) for `estimate_kernel` from --estimator/--iterations/--seed/--real, checked before any
    work. `used` False (upscale without --degradation estimate): the options, if given, are refused."""
    given = [f"--{name}" for name in ("estimator", "iterations", "seed", "real") if getattr(args, name) is not None]
    if not used:
        if given:
            raise MZSRError(f"{', '.join(given)}: kernel estimation options, for --degradation estimate only")
        return {}, KERNELGAN_SEED
    if args.scale not in KERNELGAN_SCALES:
        raise MZSRError(f"kernels are estimated at x2 (and x4 from them); --scale {args.scale} is not supported")
    method = args.estimator or "learned"
    if method == "learned":
        kernelgan_only = [name for name in given if name != "--estimator"]
        if kernelgan_only:
            raise MZSRError(f"{', '.join(kernelgan_only)}: KernelGAN's options, for --estimator kernelgan only")
        return {"method": method}, KERNELGAN_SEED
    iterations = KERNELGAN_ITERATIONS if args.iterations is None else args.iterations
    if iterations < 1:
        raise MZSRError(f"--iterations must be >= 1, got {iterations}")
    seed = KERNELGAN_SEED if args.seed is None else args.seed
    if seed < 0:
        raise MZSRError(f"--seed must be >= 0, got {seed}")
    return {"method": method, "iterations": iterations, "real_image": bool(args.real)}, seed


def kernel_picture(kernel: np.ndarray, min_width: int = 200) -> np.ndarray:
    """A grayscale uint8 picture of a kernel: normalised to its maximum (negative ringing shown as 0),
    enlarged by nearest neighbour to at least `min_width` pixels."""
    k = np.clip(np.asarray(kernel, dtype=np.float64), 0.0, None)
    k = k / k.max() if k.max() > 0 else k
    factor = -(-min_width // k.shape[1])
    big = np.repeat(np.repeat(k, factor, axis=0), factor, axis=1)
    return np.round(big * 255.0).astype(np.uint8)


def _write_kernel(mat_path: Path, png_path: Path, est, fmt: str) -> None:
    """One estimate as a .mat file in `fmt` (mzsr: key "kernel", est.kernel; kernelgan: key "Kernel",
    est.kernelgan) and a picture of what the file holds; both atomic."""
    import scipy.io

    from mzsr.files.atomic import atomic_open
    from mzsr.files.images import write_png

    key, kernel = ("Kernel", est.kernelgan) if fmt == "kernelgan" else ("kernel", est.kernel)
    with atomic_open(mat_path, "wb") as f:
        scipy.io.savemat(f, {key: kernel})
    write_png(png_path, kernel_picture(kernel))


def _estimate_one(path: Path, lr: np.ndarray, args, cfg: dict, seed: int, device, out_dir: Path, fmt: str = "mzsr"):
    """Estimate one image's kernel (with its own progress bar), write it and its picture to
    `out_dir`, say so in one line; the estimate."""
    from mzsr.estimation.estimate import estimate_kernel

    est = estimate_kernel(lr, args.scale, cfg, device, seed=seed, progress=_progress(), source=str(path))
    mat_path, png_path = _kernel_paths(out_dir, path, args.scale)
    _write_kernel(mat_path, png_path, est, fmt)
    h, w = (est.kernelgan if fmt == "kernelgan" else est.kernel).shape
    tqdm.write(f"{path}: kernel {w}x{h} (x{est.scale}, {_how(est)}) in {est.seconds:.1f} s -> {mat_path}")
    return est


def _how(est) -> str:
    return "learned estimator" if est.method == "learned" else f"KernelGAN, {est.iterations} iterations"


def _progress() -> bool:
    """KernelGAN's per-image bar where the images bar shows (tqdm's disable=None: on a terminal)."""
    return sys.stderr.isatty()


def cmd_estimate_kernel(args) -> int:
    from mzsr.device import pick_device
    from mzsr.estimation.estimate import check_estimable
    from mzsr.files.images import list_images, read_image

    cfg, seed = _estimate_settings(args)
    device = pick_device(args.device)
    images = _checked_outputs(args, list_images(args.inputs), lambda p: list(_kernel_paths(args.out, p, args.scale)))
    for path in images:  # every image read and checked before any work
        check_estimable(read_image(path).shape, bool(args.real), str(path), method=cfg["method"])
    fmt = args.format or args.kernel_convention  # a file in the LR images' own convention unless told
    for path in tqdm(images, desc="estimate-kernel", unit="img", disable=None):
        _estimate_one(path, read_image(path), args, cfg, seed, device, args.out, fmt)
    return 0


def cmd_upscale(args) -> int:
    from mzsr.adaptation.adapt import PRESETS, AdaptOptions, adapt
    from mzsr.adaptation.schedules import resolve_schedule, weights_subsampling
    from mzsr.degradation.resize import imresize
    from mzsr.device import pick_device
    from mzsr.files.images import list_images, read_image, write_png

    images = list_images(args.inputs)
    estimating = args.degradation == ESTIMATE and args.method != "bicubic"
    estimate_cfg, estimate_seed = _estimate_settings(args, used=args.degradation == ESTIMATE)
    if args.zssr_iterations < 1:
        raise MZSRError(f"--zssr-iterations must be >= 1, got {args.zssr_iterations}")
    if args.method == "bicubic":
        args.degradation = None  # bicubic upscaling ignores the degradation
    if args.steps < 0:
        raise MZSRError(f"--steps must be >= 0, got {args.steps}")
    if not 0 <= args.noise_level < float("inf"):
        raise MZSRError(f"--noise-level must be a finite number >= 0, got {args.noise_level}")
    device = pick_device(args.device)
    if args.method == "mzsr" and args.steps > 0:
        from mzsr.network.conv import grad_dtype

        grad_dtype(args.grad_precision, device)  # a precision this device cannot run: refused before any work
    kernels_dir = args.out / "kernels"
    outputs = None
    if estimating:  # the SR PNG, and the estimated kernel with its picture in <out>/kernels/
        outputs = lambda p: [_out_path(args.out, p), *_kernel_paths(kernels_dir, p, args.scale)]  # noqa: E731
    images = _checked_outputs(args, images, outputs)
    if estimating:
        from mzsr.files.atomic import check_output_folder

        check_output_folder(kernels_dir)
    if args.method == "mzsr":
        if args.steps > 0 and args.degradation is None:
            raise MZSRError(NEEDS_DEGRADATION.format("adaptation (--steps > 0)"))
        from mzsr.files.checkpoints import load_model

        model, weights_meta = load_model(args.weights or _released_for(args, images), expected_scale=args.scale)
    if args.method == "zssr" and args.degradation is None:
        raise MZSRError(NEEDS_DEGRADATION.format("--method zssr"))
    jobs = _checked_inputs(args, images, hr=False)
    for path, kernel, subsampling in tqdm(jobs, desc=f"upscale ({args.method})", unit="img", disable=None):
        lr = read_image(path)
        if args.method == "bicubic":
            write_png(_out_path(args.out, path), imresize(lr, float(args.scale)))
            continue
        if estimating:  # right before this image's SR, so that the first result comes early
            from mzsr.degradation.kernels import in_convention

            estimate = _estimate_one(
                path, lr, args, estimate_cfg, estimate_seed, device, kernels_dir, args.kernel_convention
            )
            kernel = in_convention(estimate.kernel, args.kernel_convention, args.scale, subsampling, str(path))
        if args.method == "zssr":
            from mzsr.adaptation.zssr import zssr

            cfg = {"iterations": args.zssr_iterations}  # paper: the original's own output (2 back-projections)
            if args.preset == "best":
                cfg.update(PRESETS["best"])
            result = zssr(lr, kernel, args.scale, subsampling, cfg, device)
        else:
            schedule = args.schedule
            if args.steps > 0:  # the weights decide the schedule: their subsampling, else the kernel's
                schedule = resolve_schedule(args.schedule, weights_subsampling(weights_meta, subsampling), args.scale)
            options = AdaptOptions(
                steps=(args.steps,),
                schedule=schedule,
                preset=args.preset,
                grid=args.grid,
                noise_level=args.noise_level,
                grad_precision=args.grad_precision,
            )
            (result,) = adapt(
                model, lr, kernel, args.scale, subsampling, options, device, convention=args.kernel_convention
            )
        write_png(_out_path(args.out, path), result.sr)
    return 0


def cmd_evaluate(args) -> int:
    from mzsr.evaluation.metrics import modcrop, psnr, ssim
    from mzsr.files.images import list_images, read_image_uint8

    for d in (args.sr_dir, args.gt_dir):
        if not d.is_dir():
            raise MZSRError(f"{d}: not a folder")
    if args.csv:
        from mzsr.files.atomic import check_output_file

        check_output_file(args.csv)
    gt_by_stem = {p.stem: p for p in list_images([args.gt_dir])}
    rows = []
    for sr_path in list_images([args.sr_dir]):
        gt_path = gt_by_stem.get(sr_path.stem)
        if gt_path is None:
            raise MZSRError(f"{sr_path}: no ground-truth image with stem {sr_path.stem!r} in {args.gt_dir}")
        sr, gt = read_image_uint8(sr_path), modcrop(read_image_uint8(gt_path), args.scale)
        if sr.shape != gt.shape:
            raise MZSRError(
                f"{sr_path}: size {sr.shape[1]}x{sr.shape[0]} differs from mod-cropped ground truth {gt.shape[1]}x{gt.shape[0]}"
            )
        rows.append({"image": sr_path.stem, "psnr": psnr(sr, gt, args.scale), "ssim": ssim(sr, gt, args.scale)})
    if not rows:
        raise MZSRError(f"{args.sr_dir}: no images to evaluate")
    mean = {
        "image": "mean",
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
    }
    for r in rows + [mean]:
        print(f"{r['image']:>20s}  PSNR {r['psnr']:7.3f} dB  SSIM {r['ssim']:.4f}")
    if args.csv:
        from mzsr.files.atomic import atomic_write_text

        lines = ["image,psnr,ssim"] + [f"{r['image']},{r['psnr']:.4f},{r['ssim']:.6f}" for r in rows + [mean]]
        atomic_write_text(args.csv, "\n".join(lines) + "\n")
    return 0


COMMANDS = {
    "degrade": cmd_degrade,
    "import-tf": cmd_import_tf,
    "estimate-kernel": cmd_estimate_kernel,
    "upscale": cmd_upscale,
    "evaluate": cmd_evaluate,
}
