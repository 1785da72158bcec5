"""machine_info states what a latency depends on; ExecuTorch's threadpool can be sized from Python."""

import os
import platform
from importlib import metadata
from pathlib import Path

import pytest
import torch

from edgec.runtimes import machine


def test_machine_info_reads_this_machine():
    info = machine.machine_info()
    assert info["cpu"] and isinstance(info["cpu"], str)
    assert info["logical_cores"] == os.cpu_count() >= info["usable_cores"] >= 1
    assert set(info["isa"]) == set(machine.ISA_FLAGS)
    assert all(isinstance(v, bool) for v in info["isa"].values())
    flags = machine._cpuinfo().get("flags")
    if flags is not None:
        assert info["isa"] == {f: f in flags.split() for f in machine.ISA_FLAGS}
    listed = any(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    assert (info["llc_bytes"] is not None) == listed  # no guessed size when sysfs lists no cache
    assert not listed or info["llc_bytes"] >= 256 << 10
    assert info["python"] == platform.python_version()
    assert info["runtimes"] == {p: metadata.version(p) for p in machine.RUNTIME_PACKAGES}


def test_machine_info_without_cpuinfo_or_packages(monkeypatch):
    monkeypatch.setattr(machine, "_cpuinfo", lambda: {})
    monkeypatch.setattr(machine, "RUNTIME_PACKAGES", ("onnxruntime", "edgec-no-such-runtime"))
    info = machine.machine_info()
    assert info["cpu"] == (platform.processor() or platform.machine())
    assert not any(info["isa"].values())
    assert info["runtimes"] == {"onnxruntime": metadata.version("onnxruntime"), "edgec-no-such-runtime": None}


def test_cpuinfo_takes_the_first_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: CPU A\nflags\t\t: fpu avx2 fma\n\n"
                    "processor\t: 1\nmodel name\t: CPU B\nflags\t\t: fpu\n")
    assert machine._cpuinfo(path) == {"processor": "0", "model name": "CPU A", "flags": "fpu avx2 fma"}
    assert machine._cpuinfo(tmp_path / "absent") == {}


def test_set_executorch_threads_then_load_and_run(tmp_path):
    from executorch.runtime import Runtime

    from edgec.exporters.executorch import export_pte

    before = machine.executorch_threads()
    assert before is not None and before >= 1  # the pinned executorch 1.5.1 has the control
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    export_pte(linear, (x,), tmp_path / "linear.pte", quantize=False)
    try:
        for n in (1, 3):
            assert machine.set_executorch_threads(n) == n == machine.executorch_threads()
            # loaded after the resize: XNNPACK takes the pool in force at load time
            method = Runtime.get().load_program(tmp_path / "linear.pte").load_method("forward")
            (y,) = method.execute([x])
            torch.testing.assert_close(y, linear(x).detach())
    finally:
        machine.set_executorch_threads(before)  # the pool as other tests in this process found it
    assert machine.executorch_threads() == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            machine.set_executorch_threads(bad)
