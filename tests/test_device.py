"""mzsr.device: one choice of device for the command, the rule scripts and both trainers."""

from __future__ import annotations

import platform
import subprocess
import sys

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


_STEP_FAULTS = """
import resource, sys
import torch
import torch.nn.functional as F
from mzsr.device import pick_device
from mzsr.network.model import MZSRNet
torch.set_num_threads(1)
if sys.argv[1] == "cpu":
    pick_device("cpu")
torch.manual_seed(0)
net, x, y = MZSRNet(), torch.rand(1, 3, 160, 160), torch.rand(1, 3, 160, 160)
faults = []
for _ in range(5):  # adaptation steps: 6.25 MiB activations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net.zero_grad(set_to_none=True)
    F.l1_loss(net(x), y).backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[2:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc's")
def test_once_a_cpu_is_picked_steps_reuse_their_freed_activation_memory():
    """By default each step first-touches much of its activations again (a page fault per 4 KiB); once a
    CPU is picked, later steps reuse the pages (each run in its own process: the setting is
    process-wide)."""

    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", _STEP_FAULTS, mode], capture_output=True, text=True, check=True)
        return int(done.stdout.strip())

    default, reused = faults("default"), faults("cpu")
    assert default > 3 * 2000  # 6.25 MiB is 1600 pages
    assert reused * 4 < default
