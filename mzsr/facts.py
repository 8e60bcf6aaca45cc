"""Facts that the package, the Snakemake workflow and the SLURM profile share: which files are images,
how each named degradation subsamples, what names a random per-image kernel, what a data source is,
and which rules run a network. Standard library only, so that the Snakefile (workflow/rules/common.smk)
and the profile import it without torch or numpy: one place for each fact.
"""

from __future__ import annotations

import re

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# The paper's named test degradations and their subsampling (their kernels are in mzsr.degradation.kernels).
NAMED_SUBSAMPLING = {"g0.2": "direct", "g2.0": "direct", "ani": "direct", "gb1.3": "bicubic", "bicubic": "bicubic"}

# rk, rk<seed>: each image's own random DIV2KRK-style kernel (direct subsampling), at x2 and x4 only.
RANDOM_KERNEL_SPEC = re.compile(r"rk([0-9]*)")
RANDOM_KERNEL_SCALES = (2, 4)

KERNEL_FILE_SUFFIXES = (".mat", ".npy")

# The learned kernel estimator's released weights, relative to the repository (the models folder of
# mzsr.files.released; mzsr.estimation.kernel_net): an input of the workflow's rule estimate_kernel,
# so that new weights rerun the estimates. Rule train_kernel_estimator retrains them.
KERNEL_NET_WEIGHTS = "models/kernel_net_x2.safetensors"
# The file stem of a released SR model, <subsampling>_x<scale> (direct_x2, bicubic_x2, direct_x4): the
# models folder also holds the kernel estimator's kernel_net_x2, which is none.
SR_MODEL_NAME = re.compile(r"(direct|bicubic)_x[0-9]+")

SKIMAGE = "skimage:"
DIV2K = "div2k:"

# The rule that estimates the blind methods' kernels, by estimate.method: the learned estimator (a
# tenth of a second per image) runs on a CPU, KernelGAN (thousands of iterations of two networks per
# image) on a GPU. The workflow defines the one the config chooses; both take compute.estimate_kernel.
ESTIMATE_RULES = {"learned": "estimate_kernel", "kernelgan": "estimate_kernel_kernelgan"}

# The workflow's rules that run a network on a GPU: the SLURM profile sends them to the GPU
# partition, and each asks for compute.<rule>.gpu GPUs.
GPU_RULES = (
    "pretrain",
    "meta_train",
    "sr_pretrained",
    "sr_mzsr",
    "sr_zssr",
    ESTIMATE_RULES["kernelgan"],
    "sr_mzsr_kgan",
    "sr_zssr_kgan",
)


# The settings of a training stage that say how it runs, not what it learns. Everything else in the
# stage's settings identifies the run: its work folder's name (workflow/rules/common.smk) and the
# settings its checkpoints are bound to (scripts/pretrain.py, scripts/meta_train.py) leave these out,
# so that changing one of them resumes the run instead of starting it over.
HOW_A_RUN_RUNS = {
    "pretrain": ("checkpoint_every", "log_every"),
    "meta": ("checkpoint_every", "log_every", "validate_every", "cuda_graph"),
}


def training_run_key(stage: str, settings: dict) -> dict:
    """The settings that identify a training run of `stage` ("pretrain" or "meta")."""
    return {k: v for k, v in settings.items() if k not in HOW_A_RUN_RUNS[stage]}


def degradation_subsampling(spec: str) -> str:
    """The subsampling of a degradation spec: a named one's own; kernel files and rk use direct."""
    return NAMED_SUBSAMPLING.get(spec, "direct")


def is_random_kernel(spec: str) -> bool:
    return RANDOM_KERNEL_SPEC.fullmatch(str(spec)) is not None


def source_kind(source: str) -> str:
    """skimage (photos bundled with scikit-image), archive (zip file, URL, div2k:...) or folder."""
    if source.startswith(SKIMAGE):
        return "skimage"
    if source.startswith((DIV2K, "http://", "https://")) or source.lower().endswith(".zip"):
        return "archive"
    return "folder"


def skimage_names(source: str) -> list[str]:
    """The photo names of "skimage:a,b" (blanks ignored); a ValueError when it names none."""
    names = [n.strip() for n in source[len(SKIMAGE) :].split(",") if n.strip()]
    if not source.startswith(SKIMAGE) or not names:
        raise ValueError(f"{source}: name at least one scikit-image photo, e.g. skimage:coffee,rocket")
    return names


def processes_problem(processes: int, nodes: int, work_items: int, what: str) -> str | None:
    """What is wrong with a training stage's processes and nodes, or None: each process needs at least
    one of the `work_items` (the meta-batch's tasks, the batch's patches), and nodes must divide the
    processes (the same number of processes, GPUs, on every node)."""
    if processes < 1 or nodes < 1:
        return f"processes ({processes}) and nodes ({nodes}) must be at least 1"
    if processes > work_items:
        return (
            f"{processes} processes but {what} of only {work_items}: every process needs at least one"
            f" (use at most {work_items} processes, or a larger {what})"
        )
    if processes % nodes:
        return f"{nodes} nodes do not divide {processes} processes: every node runs the same number"
    return None
