"""Which GPU a module may run on: the rule that keeps a real-GPU module off the software device."""

import pytest

from edgec.exporters.iree import cuda_arch_for
from edgec.runtimes.iree_gpu import Device, runs_on, vendor_of_device

LAVAPIPE = Device("vulkan", 0, "llvmpipe (LLVM 15.0.6, 256 bits)", "software")
MALI = Device("vulkan", 0, "Mali-G715", vendor_of_device("Mali-G715"))
H200 = Device("cuda", 0, "NVIDIA H200", "nvidia", 90)
T4 = Device("cuda", 0, "Tesla T4", "nvidia", 75)


@pytest.mark.parametrize("arch, device, ok", [
    ("llvmpipe", LAVAPIPE, True), ("valhall", LAVAPIPE, False), ("ampere", LAVAPIPE, False),
    ("valhall", MALI, True), ("adreno", MALI, False), ("llvmpipe", MALI, False),
    ("sm_80", H200, True), ("sm_89", H200, True), ("sm_80", T4, False), ("sm_75", T4, True),
])
def test_runs_on(arch, device, ok):
    assert runs_on(device.api, arch, device) is ok


def test_api_must_match():
    assert not runs_on("vulkan", "ampere", H200) and not runs_on("cuda", "sm_80", LAVAPIPE)


def test_cuda_arch_for_a_newer_gpu_is_the_newest_iree_generates():
    assert cuda_arch_for(90) == "sm_89" and cuda_arch_for(80) == "sm_80" and cuda_arch_for(86) == "sm_86"
    assert vendor_of_device("NVIDIA GeForce RTX 4090") == "nvidia" and vendor_of_device("Adreno (TM) 740") == "qualcomm"
