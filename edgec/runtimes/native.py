"""Native libraries that print straight to the process's stdout/stderr.

The QNN backend prints a thread-local-storage notice to stdout when it starts
and XNNPACK its CPU probing to stderr; edgec's stdout carries only results and
its stderr only edgec's own messages. Failures still surface as exceptions.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def silenced(*fds: int):
    """Point the given file descriptors at /dev/null for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = [(fd, os.dup(fd)) for fd in fds]
    try:
        for fd, _ in saved:
            os.dup2(devnull, fd)
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)
