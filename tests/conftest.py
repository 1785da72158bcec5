"""The end-to-end files (tests/toolchain) run first: `make test` spreads files over two processes, and the
long files started last would leave one process working alone at the end."""

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    # the long files first, so the two processes finish together; stable: file order kept otherwise
    items.sort(key=lambda item: not ("tests/toolchain/" in item.nodeid or "test_families" in item.nodeid))


@pytest.fixture(scope="session")
def desktop_runner() -> Path:
    """`make desktop` once per test process; a lock keeps two processes from building at once."""
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler to build the desktop runner: apt-get install g++")
    build = ROOT / "build"
    build.mkdir(exist_ok=True)
    with open(build / "desktop.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = subprocess.run(["make", "-s", "desktop"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"make desktop failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return build / "desktop" / "edgec-run"
