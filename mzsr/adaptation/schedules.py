"""The SGD learning rates of adaptation, per released model, as the authors' test.py sets them."""

from __future__ import annotations

from mzsr import MZSRError

# Learning rate per step, as (first step it applies to, lr): the authors' test.py per released model.
LR_SCHEDULES: dict[str, tuple[tuple[int, float], ...]] = {
    "direct_x2": ((0, 0.02), (1, 0.01), (4, 0.005)),  # Direct x2: 0.02, 0.01 for steps 1-3, then 0.005
    "bicubic_x2": ((0, 0.01), (3, 0.001)),  # Bicubic x2: 0.01 for steps 0-2, then 0.001
    "direct_x4": ((0, 0.01), (1, 0.005), (5, 0.001)),  # Direct x4: 0.01, 0.005 for steps 1-4, then 0.001
    "multiscale": ((0, 0.01), (3, 0.005)),  # Multi-scale: 0.01 for steps 0-2, then 0.005
    # The inner-loop lr of meta-training: what the meta-learned init was optimised for.
    "constant_0.01": ((0, 0.01),),
}
# The schedule that comes with weights of a given (subsampling, scale), as released.
RELEASED_SCHEDULES = {("direct", 2): "direct_x2", ("bicubic", 2): "bicubic_x2", ("direct", 4): "direct_x4"}
AUTO = "auto"


def learning_rate(schedule: str, step: int) -> float:
    """The SGD learning rate of adaptation step `step` (0-based) under a named schedule."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; known: {', '.join(LR_SCHEDULES)}")
    lr = LR_SCHEDULES[schedule][0][1]
    for start, value in LR_SCHEDULES[schedule]:
        if step >= start:
            lr = value
    return lr


def resolve_schedule(schedule: str, subsampling: str, scale: int) -> str:
    """A named schedule as it is; "auto": the released schedule of weights for (subsampling, scale)."""
    if schedule != AUTO:
        if schedule not in LR_SCHEDULES:
            raise MZSRError(f"unknown lr schedule {schedule!r}; known: auto, {', '.join(LR_SCHEDULES)}")
        return schedule
    if (subsampling, scale) not in RELEASED_SCHEDULES:
        raise MZSRError(
            f"no released adaptation schedule for {subsampling}-subsampling x{scale} weights; name one"
            f" ({', '.join(LR_SCHEDULES)})"
        )
    return RELEASED_SCHEDULES[(subsampling, scale)]


def weights_subsampling(metadata: dict, fallback: str) -> str:
    """The subsampling meta-trained weights were trained for (their metadata), else `fallback`
    (the test degradation's): pre-trained weights know only plain bicubic downscaling."""
    if metadata.get("source") == "meta" and metadata.get("degradation") in ("direct", "bicubic"):
        return str(metadata["degradation"])
    return fallback
