"""Stage 1: large-scale pre-training of theta_T on bicubic x s pairs, as the release's Large-Scale_Training.

The store pairs each HR patch with the uint8 LR patch of its image's MATLAB-bicubic downscale
(mzsr.data.patches.bicubic_lr, the release's DIV2K_train_LR_bicubic); the network input is that quantised
LR patch bicubic-upscaled on the device. Patches in epochs, as stored (no flips/rotations); L1 (the
mean absolute difference); TF-1's Adam; lr 4e-4 halved every 100K steps (staircase) down to 1e-4;
the release's initialisation when starting from scratch.

On several ranks (mzsr.training.distributed): DistributedDataParallel, each rank a contiguous share
of every global batch (the patches one process sees at that step), its L1 sum divided by the global
batch's size (times the rank count, which DDP's gradient average divides out again).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mzsr import MZSRError, settings
from mzsr.data.datasets import PatchDataset, StepBatchSampler
from mzsr.degradation.resize import imresize_torch
from mzsr.device import pick_device
from mzsr.files.checkpoints import save_weights
from mzsr.network.model import MZSRNet, init_release_
from mzsr.training.distributed import Ranks, check_processes, resumable_checkpoint
from mzsr.training.optim import make_optimizer
from mzsr.training.state import (
    CsvLog,
    check_finite,
    load_training_state,
    save_training_state,
    step_lr,
)

# The config's pretrain section (mzsr/config.schema.yaml) less tf_checkpoint (an import instead of
# training), with the patch size and scale it trains at, as the workflow passes them.
PRETRAIN_DEFAULTS = {
    **settings.defaults("pretrain", without=("tf_checkpoint",)),
    "patch_size": settings.default("patches.pretrain.patch_size"),
    "scale": settings.default("scale"),
}


def network_input(lr: torch.Tensor, scale: int, hr_size) -> torch.Tensor:
    """The network's input for an LR batch: MATLAB-bicubic upscale by the scale to the HR size."""
    return imresize_torch(lr, float(scale), output_shape=hr_size)


def pretrain(
    patch_store,
    out_weights,
    cfg: dict,
    work_dir,
    log_csv,
    device=None,
    init_weights=None,
    on_step=None,
    ranks: Ranks = Ranks(),
) -> Path:
    """Train theta_T; resumes from work_dir/last.pt when present. Returns the weights path.

    On several `ranks` rank 0 alone logs and writes (see the module docstring); the weights are in
    torch's default dtype. `on_step(step)` is called after every finished step (progress hooks,
    fault-injection tests).
    """
    cfg = settings.with_defaults(cfg, PRETRAIN_DEFAULTS, "pre-training")
    check_processes(ranks.size, 1, cfg["batch_size"], "a batch")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(device)
    torch.manual_seed(cfg["seed"])
    model = init_release_(MZSRNet()).to(device)
    if init_weights:
        from mzsr.files.checkpoints import load_weights

        model.load_state_dict(load_weights(init_weights, expected_scale=cfg["scale"])[0])
    optimizer = make_optimizer(cfg["optimizer"], model.parameters(), cfg["lr"])
    start = 0
    if (ckpt := resumable_checkpoint(work_dir, ranks)) is not None:
        start = load_training_state(ckpt, model, optimizer)["step"]
    log = CsvLog(log_csv, ["step", "loss", "lr", "seconds"], resume_step=start) if ranks.main else None
    dataset = PatchDataset(patch_store, with_lr=True)
    if dataset.lr_scale != cfg["scale"]:
        raise MZSRError(
            f"{patch_store}: its LR patches are x{dataset.lr_scale}, pre-training is x{cfg['scale']};"
            " rebuild the store at this scale"
        )
    if cfg["patch_size"] % cfg["scale"] or cfg["patch_size"] > dataset.patch_size:
        raise MZSRError(
            f"{patch_store}: holds {dataset.patch_size}px patches; pre-training at {cfg['patch_size']}px needs"
            f" a size no larger and divisible by the scale {cfg['scale']}"
        )
    mine = ranks.share(cfg["batch_size"])
    sampler = StepBatchSampler(
        len(dataset), cfg["batch_size"], cfg["seed"], start, cfg["steps"], cfg["augment"], part=mine
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg["num_workers"],
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if cfg["num_workers"] > 0 else None,
    )
    use_amp = bool(cfg["amp"]) and device.type == "cuda"
    patch = cfg["patch_size"]
    net, loss_of = model, F.l1_loss
    if ranks.size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

        def loss_of(pred, target):
            """This rank's part of the global batch's L1 mean, times R: DDP averages (divides by R)."""
            return (pred - target).abs().sum() * (ranks.size / (cfg["batch_size"] * target[0].numel()))

    dtype = next(model.parameters()).dtype
    step = start
    t0 = time.perf_counter()
    bar = tqdm(total=cfg["steps"], initial=start, desc="pre-train", unit="step", disable=None if ranks.main else True)
    for hr, lr in loader:
        hr, lr = (t.to(device, non_blocking=True).to(dtype).div_(255.0) for t in (hr, lr))
        if hr.shape[-1] > patch:  # the store may hold larger patches than this stage trains on
            hr, lr = hr[..., :patch, :patch], lr[..., : patch // cfg["scale"], : patch // cfg["scale"]]
        lr_now = step_lr(step, cfg["lr"], cfg["lr_halve_every"], cfg["lr_min"])
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        with torch.no_grad():
            x = network_input(lr, cfg["scale"], hr.shape[-2:])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_of(net(x).to(dtype), hr)
        if ranks.size == 1:
            check_finite(loss, step, work_dir)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ranks.size > 1:  # the global batch's loss, from every rank's share
            loss = loss.detach().reshape(1) / ranks.size
            ranks.sum_([loss])
            check_finite(loss, step, work_dir)
        optimizer.step()
        step += 1
        bar.update(1)
        if ranks.main and (step % cfg["log_every"] == 0 or step == cfg["steps"]):
            log.write(step=step, loss=f"{loss.item():.6f}", lr=lr_now, seconds=f"{time.perf_counter() - t0:.2f}")
        if ranks.main and (step % cfg["checkpoint_every"] == 0 or step == cfg["steps"]):
            save_training_state(work_dir, step, model, optimizer)
        if on_step is not None:
            on_step(step)
    bar.close()
    if not ranks.main:
        return Path(out_weights)
    meta = {"scale": cfg["scale"], "degradation": "bicubic", "step": step, "source": "pretrain", "config": cfg}
    save_weights(out_weights, {k: v.detach().cpu() for k, v in model.state_dict().items()}, meta)
    return Path(out_weights)
