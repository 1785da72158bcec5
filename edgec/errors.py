"""The user-facing error hierarchy.

Anything raised as an `EdgecError` is the user's to fix: the CLI prints its
message as one line and exits non-zero, without a traceback. Anything else is
a bug and keeps its traceback.
"""


class EdgecError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class InputError(EdgecError):
    """A missing, corrupt or malformed input (model path, calibration data, recipe)."""


class UnsupportedModelError(EdgecError):
    """The model's architecture is not one edgec can take apart."""


class ExportError(EdgecError):
    """An exporter could not produce a valid artifact."""


class BackendError(EdgecError):
    """A runtime or backend is missing or refused the artifact."""
