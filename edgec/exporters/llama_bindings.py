"""The `llama` extra's packages: llama-cpp-python's bindings of llama.cpp's C API, shared by the GGUF exporter
(llama.cpp's own quantizer) and the llama-cpp runtime, and `gguf`, the format's own Python package; imported only
when one of them runs, with one line saying how to install them."""

from __future__ import annotations

import ctypes
import os

from edgec.errors import BackendError

INSTALL = ("llama.cpp is not installed: pip install -e '.[llama]' (llama-cpp-python builds llama.cpp from source, "
           "about 10 minutes on 2 cores; `make install` does it)")


def llama_cpp():
    """llama-cpp-python's low-level bindings of llama.cpp's C API, or one line saying how to install them."""
    try:
        import llama_cpp
    except ImportError as e:
        raise BackendError(INSTALL) from e
    return llama_cpp


def gguf_package():
    """The format's own Python package, or one line saying how to install it."""
    try:
        import gguf
    except ImportError as e:
        raise BackendError("the gguf package is not installed: pip install -e '.[llama]'") from e
    return gguf


_SILENT = []  # the no-op log callback, kept alive as long as llama.cpp may call it


def quiet(lib) -> None:
    """llama.cpp logs every tensor it loads or quantizes to stderr: silenced unless EDGEC_LLAMA_LOG is set."""
    if not os.environ.get("EDGEC_LLAMA_LOG") and not _SILENT:
        _SILENT.append(lib.llama_log_callback(lambda level, text, data: None))
        lib.llama_log_set(_SILENT[0], ctypes.c_void_p(0))
