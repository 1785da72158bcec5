"""A service manager's SIGTERM and a full disk: one line, exit 2, nothing left behind."""

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import tmpfs

EDGEC = [sys.executable, "-m", "edgec.toolchain.cli"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _edgec_temp() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith("edgec-")}


def test_sigterm_mid_export_cleans_up(tmp_path):
    out = tmp_path / "out"
    before = _edgec_temp()
    proc = subprocess.Popen([*EDGEC, "export", "vit-digits", "--target", "npu", "-o", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    # wait until the export is writing: its hidden work folder holds files
    while time.time() < deadline and not any(p.is_dir() and any(p.iterdir())
                                             for p in tmp_path.glob(".out.scratch-*")):
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2, err
    assert lines == ["edgec: error: terminated (SIGTERM): nothing was written"], err
    assert not out.exists() and _leftovers(tmp_path) == []
    assert _edgec_temp() <= before


@pytest.fixture
def small_disk(tmp_path):
    # smaller than vit-digits' float graph (0.9 MB): the export runs out of space on its first file
    yield from tmpfs(tmp_path / "small", "512k")


def test_full_disk_is_one_line_naming_the_path_and_the_space(small_disk):
    out = small_disk / "out"
    proc = subprocess.run([*EDGEC, "export", "vit-digits", "--target", "npu", "-o", str(out), "-q"],
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("edgec: error: no space left") and str(small_disk) in lines[0]
    assert " MB" in lines[0] and "needs about" in lines[0]
    assert list(small_disk.iterdir()) == []
