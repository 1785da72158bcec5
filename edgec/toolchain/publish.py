"""Write a bundle so that OUT is either the old one or the whole new one, never half of either.

The work and scratch folders are hidden siblings of OUT: on OUT's own disk, so a
full disk is met (and named) there, and removed on any failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgec.errors import InputError


class Terminated(BaseException):
    """SIGTERM (a service manager, a CI timeout): unwinds like Ctrl-C so every cleanup runs."""


def _no_space(error: BaseException | None) -> OSError | None:
    """The ENOSPC behind an error, however deep a library wrapped it."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error
        error = error.__cause__ or error.__context__
    return None


def _publish(work: Path, out: Path) -> None:
    """Swap the finished work directory into place; an old OUT is replaced whole."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [work, *work.rglob("*")]:  # temp files are created private
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(out: Path, needs_bytes: int | None = None) -> Iterator[tuple[Path, Path]]:
    """(work, scratch): fill `work`; it becomes `out` when the block ends without an error."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.scratch-", dir=out.parent))
    saved_tmp, tempfile.tempdir = tempfile.tempdir, str(scratch)  # libraries' temp files too
    try:
        yield work, scratch
        shutil.rmtree(scratch, ignore_errors=True)
        _publish(work, out)
    except BaseException as e:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
        if _no_space(e) is None:
            raise
        free = shutil.disk_usage(out.parent).free  # work, scratch and temp files all live there
        need = f"about {needs_bytes / 1e6:,.0f} MB" if needs_bytes else "more"
        raise InputError(f"no space left on the disk of {out.parent} ({free / 1e6:,.1f} MB free): the export "
                         f"needs {need} there while it runs; free space or give -o on another disk") from None
    finally:
        tempfile.tempdir = saved_tmp
