"""mzsr.device: one choice of device for the command, the rule scripts and both trainers."""

from __future__ import annotations

import pytest
import torch

from mzsr import MZSRError
from mzsr.device import pick_device


def test_auto_takes_cuda_when_present_else_the_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == pick_device("auto").type == expected
    assert pick_device("cpu") == pick_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    "requested, message",
    [
        ("tpu", r"device 'tpu': not a torch device"),
        ("gpu0", r"device 'gpu0': not a torch device"),
        ("cuda:99", r"device 'cuda:99': (CUDA is not available|this machine has \d+ CUDA device)"),
    ],
)
def test_a_device_that_does_not_exist_is_one_clear_error(requested, message):
    with pytest.raises(MZSRError, match=message):
        pick_device(requested)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_the_trainers_refuse_cuda_on_a_machine_without_it(tmp_path):
    from mzsr.training.pretrain import pretrain

    with pytest.raises(MZSRError, match="device 'cuda': CUDA is not available on this machine"):
        pretrain(
            tmp_path / "none.h5",
            tmp_path / "out.safetensors",
            {},
            tmp_path / "work",
            tmp_path / "log.csv",
            device="cuda",
        )
