"""The pre-training dataset over a patch store and the sampler that fixes which patches each step sees."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from mzsr import MZSRError
from mzsr.data.patches import dihedral
from mzsr.data.stores import open_store, verify_patch_store


class PatchDataset(torch.utils.data.Dataset):
    """Random access into the HDF5 patch store; the file is opened once per worker process.

    Items are (index, augmentation) pairs chosen by `StepBatchSampler`, so a run is a pure function
    of (seed, step) and resumes exactly. An item is the HR patch (3, P, P) uint8, or with `with_lr` the
    pair (HR patch, LR patch) of a pre-training store, both in the same flip/rotation.
    """

    def __init__(self, path: str | Path, with_lr: bool = False):
        self.path, self.with_lr = str(path), with_lr
        verify_patch_store(self.path)
        with open_store(self.path) as f:
            self.length = f["patches"].shape[0]
            self.patch_size = f["patches"].shape[1]
            self.lr_scale = int(f.attrs.get("lr_scale", 0)) if "lr_patches" in f else 0
        if with_lr and not self.lr_scale:
            raise MZSRError(
                f"{self.path}: a patch store without LR patches (made by an older mzsr, or for meta-training);"
                " pre-training needs one made with lr_scale: delete it and rerun the step that makes it"
            )
        self._file = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item):
        index, aug = item
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        names = ("patches", "lr_patches") if self.with_lr else ("patches",)
        try:
            out = tuple(
                torch.from_numpy(np.ascontiguousarray(dihedral(self._file[n][index], aug))).permute(2, 0, 1)
                for n in names
            )
        except OSError as e:
            raise MZSRError(
                f"{self.path}: cannot read patch {index} ({' '.join(str(e).split())[:160]}); the store is"
                " corrupt: delete it and rerun the step that makes it"
            ) from None
        return out if self.with_lr else out[0]


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps start..steps-1, a batch of (patch index, flip/rotation).

    The patches are taken in epochs, as the release reads its TFRecord: every patch once per epoch, in
    the order of a permutation drawn from rng(seed, epoch), batch after batch across epoch boundaries.
    Flips/rotations (only with `augment`; the release's pre-training reads patches as stored, mode 0)
    come from rng(seed, step). So a batch is a pure function of (seed, step) and a run resumes exactly.
    `part` keeps one slice of every batch: a training rank's share of the global batch.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        seed: int,
        start: int,
        steps: int,
        augment: bool = False,
        part: slice = slice(None),
    ):
        self.length, self.batch_size, self.seed, self.start, self.steps = length, batch_size, seed, start, steps
        self.augment, self.part = augment, part
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, 0x5EED, epoch]).permutation(self.length)
        return self._orders[epoch]

    def indices(self, step: int) -> np.ndarray:
        """The store rows of one step's batch."""
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = np.divmod(positions, self.length)
        return np.array([self._order(int(e))[o] for e, o in zip(epochs, offsets)], dtype=np.int64)

    def __iter__(self):
        for step in range(self.start, self.steps):
            idx = self.indices(step)
            aug = (
                np.random.default_rng([self.seed, step]).integers(0, 8, self.batch_size)
                if self.augment
                else np.zeros(self.batch_size, np.int64)
            )
            yield list(zip(idx[self.part].tolist(), aug[self.part].tolist()))
