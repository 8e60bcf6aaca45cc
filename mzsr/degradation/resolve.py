"""A degradation from its spec: a named one, a random per-image kernel (rk), or a kernel file (.mat
with key "kernel" or "Kernel", .npy), in the kernel convention its LR images were made in."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from mzsr import MZSRError
from mzsr.degradation.kernels import (
    NAMED_DEGRADATIONS,
    Degradation,
    check_convention,
    in_convention,
    kernelgan_to_mzsr,
    named_degradation,
    place_kernel,
    random_kernel_for_image,
    random_kernel_seed,
    validate_kernel,
)
from mzsr.facts import KERNEL_FILE_SUFFIXES


def _read_mat(path: Path) -> dict:
    """The variables of a .mat file: scipy for MATLAB's v4-v7 formats, h5py for v7.3 (HDF5, MATLAB's
    default since R2006b for -v7.3 and what `save` writes for large variables; stored transposed)."""
    import scipy.io

    try:
        return scipy.io.loadmat(path)
    except NotImplementedError:  # scipy: "Please use HDF reader for matlab v7.3 files"
        import h5py

        with h5py.File(path, "r") as f:
            return {name: np.asarray(ds[()]).T for name, ds in f.items() if isinstance(ds, h5py.Dataset)}


def load_kernel_file(path: str | Path, convention: str = "mzsr", scale: int = 2) -> np.ndarray:
    """Read a kernel from .npy or .mat for LR images made in `convention`. "mzsr": key "kernel" (the MZSR
    authors') is taken as it is, key "Kernel" (KernelGAN's and ZSSR's) is converted from KernelGAN's
    shifted convention (`kernelgan_to_mzsr`). "kernelgan": either key is used as KernelGAN's and
    ZSSR's code uses a kernel, its centre of mass moved to size // 2 + 0.5 (scale - size mod 2)."""
    check_convention(convention, source=str(path))
    path = Path(path)
    if not path.is_file():
        raise MZSRError(f"{path}: no such kernel file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            k = np.load(path, allow_pickle=False)
        elif suffix == ".mat":
            mat = _read_mat(path)
            keys = [key for key in ("kernel", "Kernel") if key in mat]
            if not keys:
                found = sorted(k for k in mat if not k.startswith("__"))
                raise MZSRError(f"{path}: no 'kernel' or 'Kernel' variable in the .mat file (found {found})")
            k = np.ascontiguousarray(mat[keys[0]])  # MATLAB's arrays come column-major: sums would round otherwise
            if keys[0] == "Kernel" and convention == "mzsr":  # KernelGAN's convention: its half-pixel shift undone
                return kernelgan_to_mzsr(k, str(path))
        else:
            raise MZSRError(f"{path}: unsupported kernel file type {suffix!r} (use .mat or .npy)")
    except MZSRError:
        raise
    except Exception as e:  # corrupt files raise a zoo of exception types
        raise MZSRError(f"{path}: cannot read kernel file ({e})") from None
    if convention == "kernelgan":
        return place_kernel(k, "kernelgan", scale, str(path))
    return validate_kernel(k, str(path))


def resolve_degradation(
    spec: str,
    subsampling: str | None = None,
    image: str | Path | None = None,
    scale: int = 2,
    convention: str = "mzsr",
) -> Degradation:
    """A degradation from a name (g0.2, g2.0, ani, gb1.3, bicubic), a kernel file plus a subsampling, or
    `rk`/`rk<N>`: a random kernel of its own for every image (see `random_kernel_for_image`), which
    needs the `image` (its stem, the pipeline's {image}; a Path gives its stem) and the `scale`.
    `convention` (KERNEL_CONVENTIONS): where the kernel sits, as the LR images were made (`in_convention`)."""
    p = Path(spec)
    if (seed := random_kernel_seed(spec)) is not None:
        if subsampling is not None and subsampling != "direct":
            raise MZSRError(f"degradation {spec!r} uses direct subsampling; --subsampling {subsampling} contradicts it")
        if image is None:
            raise MZSRError(f"degradation {spec!r} draws a kernel of its own for every image: it needs the image")
        stem = image.stem if isinstance(image, Path) else str(image)
        kernel = in_convention(random_kernel_for_image(seed, stem, scale), convention, scale, "direct", spec)
        return Degradation(
            spec, kernel, "direct", f"random DIV2KRK-style kernel of image {stem!r} (seed {seed}), direct subsampling"
        )
    if spec in NAMED_DEGRADATIONS:
        d = named_degradation(spec)
        if subsampling is not None and subsampling != d.subsampling:
            raise MZSRError(
                f"degradation {spec!r} uses {d.subsampling} subsampling; --subsampling {subsampling} contradicts it"
            )
        if d.kernel is None:
            return d
        return replace(d, kernel=in_convention(d.kernel, convention, scale, d.subsampling, spec))
    if p.suffix.lower() in KERNEL_FILE_SUFFIXES:
        subsampling = subsampling or "direct"
        check_convention(convention, subsampling, scale, str(p))
        return Degradation(p.stem, load_kernel_file(p, convention, scale), subsampling, f"kernel file {p}")
    raise MZSRError(
        f"{spec!r} is neither a named degradation ({', '.join(NAMED_DEGRADATIONS)}), a random per-image "
        "kernel (rk, rk<seed>) nor a .mat/.npy kernel file"
    )


def kernel_file_for_image(image: str | Path, scale: int) -> Path | None:
    """The kernel file that belongs to one test image, if any.

    Looks for KernelGAN's `<stem>_kernel_x<scale>.mat` beside the image or in a `kernels/` folder
    beside it, then for the MZSR authors' single `kernel.mat` for the whole folder.
    """
    image = Path(image)
    name = f"{image.stem}_kernel_x{scale}.mat"
    for candidate in (image.parent / name, image.parent / "kernels" / name, image.parent / "kernel.mat"):
        if candidate.is_file():
            return candidate
    return None
