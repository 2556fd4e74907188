"""User-facing errors.

Anything a user can cause with bad input (a misspelt name, an out-of-range value, a
missing file) raises :class:`AtzooError`. The CLI turns it into one line on stderr and
exit code 2, without a traceback (``ATZOO_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations


class AtzooError(Exception):
    """A problem with the user's input; its message is one self-contained line."""

    exit_code: int = 2


class ConfigError(AtzooError, ValueError):
    """A configuration key, value or recipe file is invalid."""


class RegistryError(AtzooError, LookupError):
    """A name is not in a registry (the message lists the valid names)."""

    def __str__(self) -> str:  # LookupError/KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(AtzooError):
    """A dataset is missing, malformed, or does not fit the model."""


class CheckpointError(AtzooError):
    """A checkpoint is missing, corrupted, unsafe, or does not match the model."""


class NonFiniteLossError(AtzooError):
    """The training loss (or the weights) became NaN or infinite; the run stopped."""
