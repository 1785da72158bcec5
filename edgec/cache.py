"""Where edgec keeps what is costly to rebuild and safe to delete (decoder stages, compiled shaders)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$EDGEC_CACHE, else $XDG_CACHE_HOME/edgec, else ~/.cache/edgec."""
    base = os.environ.get("EDGEC_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                        os.path.expanduser("~/.cache"), "edgec")
    return Path(base)
