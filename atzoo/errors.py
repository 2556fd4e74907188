"""User-facing errors.

Anything a user can cause with bad input (a misspelt name, an out-of-range value, a
missing file) raises :class:`AtzooError`. The CLI turns it into one line on stderr and
exit code 2, without a traceback (``ATZOO_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import re
import reprlib


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


class InterruptedRun(AtzooError):
    """A run stopped by a signal: SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption).

    Attributes:
        run_dir: the run directory.
        resumable: whether it holds this run (``--resume`` continues it); False when the
            run was stopped before it started and everything was undone (``--force``: the
            old run is back in place).
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        exit_code: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell
            reports a process ended by that signal.
        checkpoint_step: the step of the checkpoint written on the way out (SIGTERM stops
            at a step boundary and writes one), else None.
    """

    exit_code = 130

    def __init__(self, message: str, run_dir: object = None, resumable: bool = False, *,
                 signal_name: str = "SIGINT", exit_code: int = 130, checkpoint_step: int | None = None) -> None:
        super().__init__(message)
        self.run_dir, self.resumable = run_dir, resumable
        self.signal_name, self.exit_code, self.checkpoint_step = signal_name, exit_code, checkpoint_step


class RunDirError(AtzooError):
    """A run directory may not be written, or another atzoo process holds it."""


#: The longest message the CLI prints; anything longer is cut (a value taken from a file
#: must never fill a terminal or a log).
MAX_MESSAGE_CHARS = 400

#: Words of library sentences that tell a user to switch a safety off (torch's
#: "re-running with weights_only=False", numpy's "allow_pickle"); such sentences are dropped.
_UNSAFE_HINTS = ("weights_only", "weights only", "allow_pickle", "trusted source", "trust the source",
                 "can still be loaded", "re-running")


def brief(value: object, limit: int = 60) -> str:
    """A bounded ``repr`` of ``value`` for error messages (a file may hold anything).

    ``reprlib`` stops at a few items per container and a few levels, so even a YAML alias
    bomb or a gigabyte string costs microseconds here.
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(message: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """The one line the CLI prints for ``message``: its first line, without any hint to
    turn a safety off (torch's ``weights_only=False``, numpy's ``allow_pickle``), cut to
    ``limit`` characters."""
    text = str(message).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "") or "unknown error"
    first = re.sub(r"\s*\([^()]*\)", lambda m: "" if _is_hint(m.group(0)) else m.group(0), first)
    kept = [part for part in re.split(r"(?<=[.!?;])\s+", first) if not _is_hint(part)]
    cleaned = " ".join(" ".join(kept).split()) or "refused unsafe content"
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def _is_hint(text: str) -> bool:
    return any(word in text.lower() for word in _UNSAFE_HINTS)


def _make_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxdict, short.maxtuple, short.maxset = 2, 4, 4, 4, 4
    short.maxstring, short.maxother, short.maxlong = 40, 40, 40
    return short


_REPR = _make_repr()
